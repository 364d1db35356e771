"""A split of a generated dataset on disk: deterministic (one random stream per image, keyed by
seed, split and index), atomic (built in a hidden temporary folder, renamed into place when
complete) and cached (a complete split made with the same parameters, recorded in its
``annotations.json``'s ``info``, is reused).

Every generator of the package records its name, ``fpn_plugin.data.generate_shapes...``, in
``info["generator"]``: a folder holding such a record is the package's own, which may be replaced;
anything else is a user's and is never deleted.
"""

import json
import logging
import os
import shutil
import socket
import tempfile
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "ANNOTATIONS_FILE",
    "IMAGES_FOLDER",
    "GENERATOR_PREFIX",
    "GENERATOR_VERSION",
    "split_params",
    "checked_split_args",
    "image_rng",
    "save_image",
    "write_coco_json",
    "generate_split",
]

logger = logging.getLogger(__name__)

#: A split's COCO instances file and its folder of images.
ANNOTATIONS_FILE = "annotations.json"
IMAGES_FOLDER = "images"
#: What every generator's name recorded in ``info["generator"]`` starts with.
GENERATOR_PREFIX = "fpn_plugin.data.generate_shapes"
#: Bump when the generators' output changes for the same parameters: cached datasets get rebuilt.
GENERATOR_VERSION = 3  # 3: keypoints
_IMAGE_EXT = ".jpg"
_JPEG_QUALITY = 92


def split_params(
    split: str, num_images: int, seed: int, image_size: int, min_size: float, max_size: float
) -> Dict[str, Any]:
    """The parameters that determine a split's content, as stored in its JSON ``info.params``."""
    return {
        "split": split,
        "num_images": int(num_images),
        "seed": int(seed),
        "image_size": int(image_size),
        "min_size": float(min_size),
        "max_size": float(max_size),
        "generator_version": GENERATOR_VERSION,
    }


def _read_annotations(split_dir: str) -> Optional[Dict[str, Any]]:
    """The parsed annotation file of a split folder, or None if it is missing or not a JSON
    object."""
    try:
        with open(os.path.join(split_dir, ANNOTATIONS_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _generator_info(data: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The ``info`` of annotations written by one of the package's generators, else None."""
    info = data.get("info") if data is not None else None
    generator = info.get("generator") if isinstance(info, dict) else None
    return info if isinstance(generator, str) and generator.startswith(GENERATOR_PREFIX) else None


def _is_complete(
    split_dir: str, params: Dict[str, Any], companions: Sequence[Tuple[str, str]] = ()
) -> bool:
    """True if ``split_dir`` holds a dataset generated with ``params`` whose images are all present,
    and, for each (folder, extension) of ``companions``, ``folder/<image stem><extension>``."""
    data = _read_annotations(split_dir)
    info = _generator_info(data)
    if info is None or info.get("params") != params:
        return False
    names = [img.get("file_name") for img in data.get("images", [])]
    if len(names) != params["num_images"] or not all(isinstance(n, str) for n in names):
        return False
    paths = [os.path.join(split_dir, IMAGES_FOLDER, n) for n in names]
    for folder, ext in companions:
        paths += [os.path.join(split_dir, folder, os.path.splitext(n)[0] + ext) for n in names]
    return all(os.path.isfile(p) for p in paths)


def _looks_generated(split_dir: str) -> bool:
    """True if ``split_dir`` is (a damaged or outdated copy of) a folder this module wrote, so that
    it may be deleted: never delete a user's own data that happens to sit at the same path."""
    if os.path.lexists(os.path.join(split_dir, ANNOTATIONS_FILE)):
        return _generator_info(_read_annotations(split_dir)) is not None
    # No annotation file (e.g. deleted by hand): ours only if nothing but our image files is there.
    entries = os.listdir(split_dir)
    images = os.path.join(split_dir, IMAGES_FOLDER)
    if entries != [IMAGES_FOLDER] or not os.path.isdir(images):
        return not entries
    return all(
        n.endswith(_IMAGE_EXT) and n[: -len(_IMAGE_EXT)].isdigit() for n in os.listdir(images)
    )


def _temp_prefix(split: str) -> str:
    return f".{split}.tmp-"


def _remove_stale_temp_dirs(root: str, split: str) -> None:
    """Delete temporary folders left by generations of this host that were killed (POSIX only)."""
    if os.name != "posix":
        return
    host, prefix = socket.gethostname(), _temp_prefix(split)
    for entry in os.listdir(root):
        if not entry.startswith(prefix):
            continue
        parts = entry[len(prefix) :].rsplit("-", 2)  # host, pid, random suffix
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
        except OSError:
            pass  # alive, owned by someone else


def image_rng(params: Dict[str, Any], index: int) -> np.random.Generator:
    """The random stream of image ``index`` of a split.

    One stream per image, keyed by (seed, split, index): image i does not depend on
    num_images, and two splits generated with the same seed still differ.
    """
    split_key = zlib.crc32(params["split"].encode("utf-8"))
    return np.random.default_rng([params["seed"], split_key, index])


def save_image(out_dir: str, index: int, pixels: np.ndarray, images: List[Dict[str, Any]]) -> int:
    """Save image ``index`` of a split, ``pixels`` (H, W, 3) uint8 RGB, as
    ``out_dir/images/<index>.jpg`` and append its COCO image record to ``images``. Returns its
    image id (``index + 1``)."""
    file_name = f"{index:06d}{_IMAGE_EXT}"
    Image.fromarray(pixels).save(
        os.path.join(out_dir, IMAGES_FOLDER, file_name), quality=_JPEG_QUALITY, subsampling=0
    )
    image_id = index + 1
    height, width = pixels.shape[:2]
    images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    return image_id


def write_coco_json(
    path: str,
    info: Dict[str, Any],
    images: List[Dict[str, Any]],
    annotations: List[Dict[str, Any]],
    categories: List[Dict[str, Any]],
) -> None:
    """Write a COCO-format JSON file (compact: the same bytes for the same content)."""
    data = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"))


def checked_split_args(
    root: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int,
    min_size: float,
    max_size: float,
) -> str:
    """The absolute path of ``root``; raises ``ValueError`` naming a bad argument of a split."""
    if not split or split.startswith(".") or os.sep in split or (os.altsep and os.altsep in split):
        raise ValueError(f"split must be a plain folder name such as 'train', got {split!r}")
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if int(image_size) < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    if not 1 <= min_size <= max_size:
        raise ValueError(
            f"need 1 <= min_size <= max_size (pixels), got min_size={min_size}, max_size={max_size}"
        )
    return os.path.abspath(os.path.expanduser(os.fspath(root)))


def generate_split(
    root: str,
    params: Dict[str, Any],
    write: Callable[[str, Dict[str, Any], bool], None],
    progress: bool,
    companions: Sequence[Tuple[str, str]] = (),
) -> str:
    """Generate the split ``params["split"]`` under ``root`` (absolute) atomically, unless a
    complete one (see :func:`_is_complete`, ``companions``) made with ``params`` is there:
    ``write(folder, params, progress)`` fills a hidden temporary folder, renamed into place when
    complete. Returns the path of the split's ``annotations.json``."""
    split, num_images, image_size = params["split"], params["num_images"], params["image_size"]
    split_dir = os.path.join(root, split)
    json_file = os.path.join(split_dir, ANNOTATIONS_FILE)
    if _is_complete(split_dir, params, companions):
        return json_file
    ours = os.path.isdir(split_dir) and _looks_generated(split_dir)
    if os.path.lexists(split_dir) and not ours:
        raise FileExistsError(
            f"'{split_dir}' exists and was not written by fpn_plugin's shapes generator; "
            "remove it or generate under another root."
        )

    try:
        os.makedirs(root, exist_ok=True)
        _remove_stale_temp_dirs(root, split)
        prefix = f"{_temp_prefix(split)}{socket.gethostname()}-{os.getpid()}-"
        tmp_dir = tempfile.mkdtemp(prefix=prefix, dir=root)
    except PermissionError as e:
        raise PermissionError(
            f"Cannot write the fpn_shapes dataset under {root!r} ({e.strerror}); set the "
            "environment variable FPN_PLUGIN_DATA (or DATASETS.FPN_SHAPES.ROOT) to a writable "
            "folder."
        ) from e
    try:
        logger.info(
            f"Generating {num_images} fpn_shapes images ({image_size} px) into '{split_dir}' ..."
        )
        write(tmp_dir, params, progress)
        if _is_complete(split_dir, params, companions):  # another process finished first
            return json_file
        if os.path.lexists(split_dir):  # incomplete or outdated: moved aside (one rename), deleted
            old_dir = tempfile.mkdtemp(prefix=f".{split}.old-", dir=root)
            os.rename(split_dir, os.path.join(old_dir, split))
            shutil.rmtree(old_dir, ignore_errors=True)
        try:
            os.rename(tmp_dir, split_dir)
        except OSError:
            # Lost a race to a process that wrote something else?
            if not _is_complete(split_dir, params, companions):
                raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # no-op once renamed
    return json_file
