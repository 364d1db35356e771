"""The embedded synthetic ``fpn_shapes`` dataset.

``fpn_shapes`` is a detection / instance-segmentation dataset that needs no download, so an FPN
detector can be trained and evaluated on a CPU within minutes. Every image (``image_size`` x
``image_size`` pixels, RGB JPEG) holds 2 to 8 solid, non-overlapping shapes of four classes,
:data:`SHAPE_CLASSES` = ("circle", "square", "triangle", "cross"), each in a random saturated colour
from its class's hue band (red, yellow-green, cyan, violet: tiny shapes are blobs, colour keeps
their class tellable), squares, triangles and crosses at a random rotation. The background is a
smooth random colour field plus mild Gaussian noise, so objects cannot be found by thresholding
one colour.

Object sizes -- ``sqrt(w * h)`` of the box, in pixels -- are log-uniform between ``min_size`` (8)
and ``max_size`` (400), so the COCO small (area < 32^2), medium and large (area > 96^2) buckets are
all populated and every FPN level P2-P6 (anchor sizes 32..512) has objects to learn from.

Annotations are in COCO "instances" format: ``bbox`` [x, y, w, h] is the tight box of the object's
polygon, ``segmentation`` that polygon (exact for squares, triangles and crosses; a 32- to 128-gon
for circles; the image shows exactly that polygon, anti-aliased), ``area`` the polygon's area,
``iscrowd`` 0. Each annotation also carries its ``color`` [r, g, b]. Coordinates are continuous
pixel coordinates: the image covers [0, image_size] x [0, image_size] and pixel (i, j) the unit
square [i, i + 1] x [j, j + 1], as in COCO and Detectron2.

Every object also has four keypoints, :data:`SHAPE_KEYPOINT_NAMES` = ("top", "right", "bottom",
"left"): the extreme points of its polygon (the midpoint of the polygon's vertices that reach the
box's top edge, right edge, ...), so each lies on the object's outline and on its box. They are
stored COCO-style, ``keypoints`` [x, y, v] * 4 with v = 2 (labelled, visible) and
``num_keypoints`` 4, in COCO's pixel-index convention (continuous coordinate - 0.5, which
Detectron2's ``load_coco_json`` adds back). A horizontal flip swaps "left" and "right"
(:data:`SHAPE_KEYPOINT_FLIP_MAP`); :data:`SHAPE_KEYPOINT_OKS_SIGMAS` are the sigmas for COCO's
keypoint evaluation (``TEST.KEYPOINT_OKS_SIGMAS``).

Generation is deterministic (same parameters: same JSON bytes, same image bytes), atomic (a
dataset is built in a hidden temporary folder and renamed into place, so an interrupted run never
leaves a folder that looks complete), and cached (a complete folder made with the same parameters,
recorded under the JSON's ``info``, is reused). Typical use::

    from fpn_plugin.data import register_shapes_datasets
    register_shapes_datasets()  # registers "fpn_shapes_train" (1000 images), "fpn_shapes_val" (100)
    # cfg.DATASETS.TRAIN = ("fpn_shapes_train",); cfg.DATASETS.TEST = ("fpn_shapes_val",)

The images are generated on the first ``DatasetCatalog.get``, under :func:`default_data_root`.
Build the test data loader (which calls ``DatasetCatalog.get``) before a ``COCOEvaluator``: the
evaluator reads the JSON file when it is constructed. :func:`fpn_plugin.data.register_coco_folder`
registers any other COCO-format folder.

The panoptic variant, the same shapes in front of textured background regions with COCO-panoptic
annotations, is :mod:`fpn_plugin.data.shapes_panoptic`; it reuses this module's drawing and its
cached, atomic generation.
"""

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from detectron2.data.datasets import load_coco_json

from .coco import register_idempotent

__all__ = [
    "SHAPE_CLASSES",
    "SHAPES_TRAIN",
    "SHAPES_VAL",
    "SHAPE_KEYPOINT_NAMES",
    "SHAPE_KEYPOINT_FLIP_MAP",
    "SHAPE_KEYPOINT_CONNECTION_RULES",
    "SHAPE_KEYPOINT_OKS_SIGMAS",
    "generate_shapes_dataset",
    "default_data_root",
    "register_shapes_datasets",
    "register_shapes_datasets_from_config",
]

logger = logging.getLogger(__name__)

#: Class names of ``fpn_shapes``; COCO category ids are 1, 2, 3, 4 in this order.
SHAPE_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "cross")
#: Names under which :func:`register_shapes_datasets` registers the two splits.
SHAPES_TRAIN = "fpn_shapes_train"
SHAPES_VAL = "fpn_shapes_val"
#: Keypoints of every object: the extreme points of its outline, in this order.
SHAPE_KEYPOINT_NAMES: Tuple[str, ...] = ("top", "right", "bottom", "left")
#: Keypoint pairs swapped by a horizontal flip (Detectron2's ``keypoint_flip_map`` metadata).
SHAPE_KEYPOINT_FLIP_MAP: Tuple[Tuple[str, str], ...] = (("left", "right"),)
#: Lines drawn between keypoints by Detectron2's ``Visualizer``: (name, name, RGB colour).
SHAPE_KEYPOINT_CONNECTION_RULES: Tuple[Tuple[str, str, Tuple[int, int, int]], ...] = (
    ("top", "right", (255, 255, 255)),
    ("right", "bottom", (255, 255, 255)),
    ("bottom", "left", (255, 255, 255)),
    ("left", "top", (255, 255, 255)),
)
#: OKS sigma per keypoint for COCO keypoint AP (``TEST.KEYPOINT_OKS_SIGMAS``). The points are
#: geometric and sharp, like COCO's eyes (0.025) rather than its hips (0.107).
SHAPE_KEYPOINT_OKS_SIGMAS: Tuple[float, ...] = (0.05, 0.05, 0.05, 0.05)

# Bump when the generator's output changes for the same parameters: cached datasets get rebuilt.
_GENERATOR_VERSION = 3  # 3: keypoints
_GENERATOR = "fpn_plugin.data.generate_shapes_dataset"
_GENERATORS = (_GENERATOR, "fpn_plugin.data.generate_shapes_panoptic_dataset")
_ANNOTATIONS = "annotations.json"
_IMAGES = "images"
_IMAGE_EXT = ".jpg"
_JPEG_QUALITY = 92

_MIN_OBJECTS, _MAX_OBJECTS = 2, 8
_BORDER = 1.0  # px kept free between every box and the image border
_GAP = 2.0  # px kept free between two boxes (anti-aliased edges never share a pixel)
_SUPERSAMPLE = 4  # shapes are rasterised at 4x and box-filtered down: anti-aliased edges
_NOISE_STD = 6.0  # std of the Gaussian pixel noise, in 0..255 grey levels
_MIN_CONTRAST = 80.0  # min RGB distance between an object's colour and the background under it
_POSITION_TRIES = 64  # random positions tried per object before it is dropped
_DECIMALS = 2  # polygon coordinates are stored (and drawn) rounded to 0.01 px


# ------------------------------------------------------------------------------------------------
# Shapes
# ------------------------------------------------------------------------------------------------


def _circle_vertex_count(radius: float) -> int:
    """Vertices of the polygon standing for a circle of ``radius`` px: a multiple of 4 in [32, 128],
    about one per 3 px of circumference (the polygon is within 0.06 px of the circle)."""
    return int(min(128, max(32, 4 * math.ceil(2 * math.pi * radius / 12))))


def _unit_shape(class_id: int, vertex_count: int = 32) -> np.ndarray:
    """(V, 2) vertices of shape ``class_id`` (index into SHAPE_CLASSES), centred on 0,
    within [-1, 1]^2."""
    name = SHAPE_CLASSES[class_id]
    if name == "circle":
        angles = 2 * np.pi * np.arange(vertex_count) / vertex_count
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if name == "triangle":  # equilateral, centred on its centroid
        angles = -np.pi / 2 + 2 * np.pi * np.arange(3) / 3
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if name == "cross":  # a "+" whose arms are a third of its width thick
        t = 1.0 / 3.0
        return np.array(
            [
                [t, -1],
                [t, -t],
                [1, -t],
                [1, t],
                [t, t],
                [t, 1],
                [-t, 1],
                [-t, t],
                [-1, t],
                [-1, -t],
                [-t, -t],
                [-t, -1],
            ]
        )
    raise ValueError(f"unknown shape class {class_id}")


def _shape_polygon(class_id: int, size: float, angle: float, max_side: float) -> np.ndarray:
    """(V, 2) polygon of a shape, centred on 0, whose tight box has ``sqrt(w * h) == size`` px,
    rotated by ``angle`` radians, shrunk if needed so that neither box side exceeds ``max_side``
    px."""
    if SHAPE_CLASSES[class_id] == "circle":
        # Vertices at 0, 90, 180, 270 degrees: the box is exactly the circle's, 2r x 2r.
        poly = _unit_shape(class_id, _circle_vertex_count(size / 2))
    else:
        c, s = math.cos(angle), math.sin(angle)
        poly = _unit_shape(class_id) @ np.array([[c, s], [-s, c]])
    extent = poly.max(axis=0) - poly.min(axis=0)
    scale = min(size / math.sqrt(extent[0] * extent[1]), max_side / extent.max())
    return poly * scale


def _polygon_area(poly: np.ndarray) -> float:
    """Area (px^2) of a simple polygon, by the shoelace formula."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _extreme_points(poly: np.ndarray) -> np.ndarray:
    """(4, 2) keypoints of a polygon (V, 2), in :data:`SHAPE_KEYPOINT_NAMES` order: its top (min y),
    right (max x), bottom (max y) and left (min x) extreme points.

    Where several vertices reach the extreme (an edge parallel to the box side), the midpoint of
    those vertices is taken: a choice that mirrors under a horizontal flip, so "left" flips to
    "right".
    """
    tol = 0.5 * 10.0**-_DECIMALS
    points = []
    for axis, pick in ((1, np.min), (0, np.max), (1, np.max), (0, np.min)):
        extreme = pick(poly[:, axis])
        points.append(poly[np.abs(poly[:, axis] - extreme) <= tol].mean(axis=0))
    return np.array(points)


def _random_color(
    rng: np.random.Generator,
    saturation: Tuple[float, float],
    value: Tuple[float, float],
    hue: Tuple[float, float] = (0.0, 6.0),
) -> np.ndarray:
    """An RGB colour (3,) float in [0, 255] with hue (in [0, 6), 6 = 360 degrees), saturation and
    value uniform in the given ranges."""
    hue = rng.uniform(*hue) % 6.0
    sat, val = rng.uniform(*saturation), rng.uniform(*value)
    chroma = val * sat
    x = chroma * (1 - abs(hue % 2 - 1))
    rgb = [
        (chroma, x, 0),
        (x, chroma, 0),
        (0, chroma, x),
        (0, x, chroma),
        (x, 0, chroma),
        (chroma, 0, x),
    ][int(hue) % 6]
    return (np.array(rgb) + (val - chroma)) * 255.0


def _class_hues(class_id: int) -> Tuple[float, float]:
    """Hue band of a class's colours: 4 bands 90 degrees apart, each 36 degrees wide.

    Below ~16 px a rotated square, a triangle, a cross and a circle are the same blob; a hue band
    per class keeps the classes tellable apart at every size, so AP measures detection at every
    pyramid level rather than the impossibility of classifying 8 px shapes.
    """
    centre = 1.5 * class_id
    return centre - 0.3, centre + 0.3


# ------------------------------------------------------------------------------------------------
# One image
# ------------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(H, W, 3) float32: a smooth field interpolating a 3x3 grid of random, weakly saturated
    colours."""
    grid = np.stack([_random_color(rng, (0.0, 0.6), (0.2, 0.95)) for _ in range(9)]).reshape(
        3, 3, 3
    )
    field = Image.fromarray(grid.round().astype(np.uint8)).resize(
        (image_size, image_size), Image.BICUBIC
    )
    return np.asarray(field, dtype=np.float32).copy()


def _place_objects(
    rng: np.random.Generator, image_size: int, min_size: float, max_size: float
) -> List[Tuple[int, np.ndarray]]:
    """Random non-overlapping shapes: a list of (class_id, (V, 2) polygon in image px).

    Sizes are drawn first and placed largest first, so that big objects -- the rarest to fit -- are
    not the ones dropped; an object that fits nowhere after ``_POSITION_TRIES`` tries is dropped
    (and, while there are fewer than 2, replaced by a new random one).
    """
    max_side = image_size - 2 * _BORDER
    log_lo, log_hi = math.log(min_size), math.log(max(min_size, min(max_size, max_side)))
    count = int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))
    sizes = sorted(np.exp(rng.uniform(log_lo, log_hi, size=count)), reverse=True)
    placed: List[Tuple[int, np.ndarray]] = []
    boxes = np.zeros((0, 4))  # placed boxes, x0 y0 x1 y1
    attempts = 0
    while sizes or (len(placed) < _MIN_OBJECTS and attempts < 100):
        size = sizes.pop(0) if sizes else math.exp(rng.uniform(log_lo, log_hi))
        attempts += 1
        class_id = int(rng.integers(len(SHAPE_CLASSES)))
        poly = _shape_polygon(class_id, size, rng.uniform(0, 2 * math.pi), max_side)
        lo, hi = poly.min(axis=0), poly.max(axis=0)
        # Candidate offsets keeping the box within [_BORDER, image_size - _BORDER].
        low = _BORDER - lo
        offsets = rng.uniform(
            low, np.maximum(low, image_size - _BORDER - hi), size=(_POSITION_TRIES, 2)
        )
        cand = np.concatenate([offsets + lo, offsets + hi], axis=1)
        separate = (
            (cand[:, None, 2] + _GAP <= boxes[None, :, 0])
            | (boxes[None, :, 2] + _GAP <= cand[:, None, 0])
            | (cand[:, None, 3] + _GAP <= boxes[None, :, 1])
            | (boxes[None, :, 3] + _GAP <= cand[:, None, 1])
        ).all(axis=1)
        free = np.flatnonzero(separate)
        if len(free) == 0:
            continue
        poly = np.round(poly + offsets[free[0]], _DECIMALS)
        placed.append((class_id, poly))
        boxes = np.concatenate(
            [boxes, np.concatenate([poly.min(axis=0), poly.max(axis=0)])[None]], axis=0
        )
    return placed


def _paint(image: np.ndarray, poly: np.ndarray, color: np.ndarray) -> None:
    """Paint the polygon (V, 2) (image px) into ``image`` (H, W, 3) float32, in place, anti-aliased:
    each pixel is blended with ``color`` by the fraction of it the polygon covers."""
    s = _SUPERSAMPLE
    x0, y0 = np.floor(poly.min(axis=0)).astype(int)
    x1, y1 = np.ceil(poly.max(axis=0)).astype(int)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    mask = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    # In PIL, integer coordinate k is the centre of pixel k, i.e. continuous coordinate k + 0.5.
    local = (poly - [x0, y0]) * s - 0.5
    ImageDraw.Draw(mask).polygon([tuple(p) for p in local.tolist()], fill=255)
    alpha = np.asarray(mask.reduce(s), dtype=np.float32)[..., None] / 255.0
    region = image[y0:y1, x0:x1]
    region += alpha * (color.astype(np.float32) - region)


def _make_image(
    rng: np.random.Generator,
    image_size: int,
    min_size: float,
    max_size: float,
    background: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """One image: ((H, W, 3) uint8 RGB, [{"category_id", "polygon" (V, 2), "color"}, ...]).

    ``background``: the (H, W, 3) float32 image the shapes are painted on (it is painted in
    place); None for :func:`_background`'s colour field, drawn from ``rng`` first.
    """
    image = _background(rng, image_size) if background is None else background
    objects = []
    for class_id, poly in _place_objects(rng, image_size, min_size, max_size):
        x0, y0 = np.floor(poly.min(axis=0)).astype(int)
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int)
        under = image[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].reshape(-1, 3).mean(axis=0)
        # The most contrasting of up to 10 colours, stopping at the first that contrasts enough.
        best, best_contrast = None, -1.0
        for _ in range(10):
            color = _random_color(rng, (0.55, 1.0), (0.55, 1.0), _class_hues(class_id)).round()
            contrast = float(np.linalg.norm(color - under))
            if contrast > best_contrast:
                best, best_contrast = color, contrast
            if contrast >= _MIN_CONTRAST:
                break
        _paint(image, poly, best)
        objects.append(
            {"category_id": class_id + 1, "polygon": poly, "color": [int(c) for c in best]}
        )
    image += rng.standard_normal(image.shape, dtype=np.float32) * _NOISE_STD
    return np.clip(image, 0, 255).round().astype(np.uint8), objects


# ------------------------------------------------------------------------------------------------
# A split on disk
# ------------------------------------------------------------------------------------------------


def _split_params(
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
        "generator_version": _GENERATOR_VERSION,
    }


def _read_annotations(split_dir: str) -> Optional[Dict[str, Any]]:
    """The parsed annotation file of a split folder, or None if it is missing or not a JSON
    object."""
    try:
        with open(os.path.join(split_dir, _ANNOTATIONS), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _generator_info(data: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The ``info`` of annotations written by this module (or by its panoptic variant,
    :mod:`fpn_plugin.data.shapes_panoptic`), else None."""
    info = data.get("info") if data is not None else None
    return info if isinstance(info, dict) and info.get("generator") in _GENERATORS else None


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
    paths = [os.path.join(split_dir, _IMAGES, n) for n in names]
    for folder, ext in companions:
        paths += [os.path.join(split_dir, folder, os.path.splitext(n)[0] + ext) for n in names]
    return all(os.path.isfile(p) for p in paths)


def _looks_generated(split_dir: str) -> bool:
    """True if ``split_dir`` is (a damaged or outdated copy of) a folder this module wrote, so that
    it may be deleted: never delete a user's own data that happens to sit at the same path."""
    if os.path.lexists(os.path.join(split_dir, _ANNOTATIONS)):
        return _generator_info(_read_annotations(split_dir)) is not None
    # No annotation file (e.g. deleted by hand): ours only if nothing but our image files is there.
    entries = os.listdir(split_dir)
    images = os.path.join(split_dir, _IMAGES)
    if entries != [_IMAGES] or not os.path.isdir(images):
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


def _instance_annotation(obj: Dict[str, Any], ann_id: int, image_id: int) -> Dict[str, Any]:
    """The COCO instance annotation of one object of :func:`_make_image` (see the module
    docstring)."""
    poly = obj["polygon"]
    (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category_id"],
        "bbox": [round(float(v), _DECIMALS) for v in (x0, y0, x1 - x0, y1 - y0)],
        "area": round(_polygon_area(poly), _DECIMALS),
        "iscrowd": 0,
        "segmentation": [[float(v) for v in poly.reshape(-1)]],
        # COCO pixel-index convention: continuous coordinate - 0.5; v = 2 (visible).
        "keypoints": [
            v
            for x, y in _extreme_points(poly)
            for v in (round(float(x) - 0.5, 3), round(float(y) - 0.5, 3), 2)
        ],
        "num_keypoints": len(SHAPE_KEYPOINT_NAMES),
        "color": obj["color"],
    }


def _shape_categories() -> List[Dict[str, Any]]:
    """The COCO categories of :data:`SHAPE_CLASSES` (ids 1..4), with their keypoints."""
    return [
        {
            "id": i + 1,
            "name": name,
            "supercategory": "shape",
            "keypoints": list(SHAPE_KEYPOINT_NAMES),
            "skeleton": [  # 1-based, as COCO's
                [SHAPE_KEYPOINT_NAMES.index(a) + 1, SHAPE_KEYPOINT_NAMES.index(b) + 1]
                for a, b, _ in SHAPE_KEYPOINT_CONNECTION_RULES
            ],
        }
        for i, name in enumerate(SHAPE_CLASSES)
    ]


def _image_rng(params: Dict[str, Any], index: int) -> np.random.Generator:
    """The random stream of image ``index`` of a split.

    One stream per image, keyed by (seed, split, index): image i does not depend on
    num_images, and two splits generated with the same seed still differ.
    """
    split_key = zlib.crc32(params["split"].encode("utf-8"))
    return np.random.default_rng([params["seed"], split_key, index])


def _write_split(out_dir: str, params: Dict[str, Any], progress: bool) -> None:
    """Generate all images of a split into ``out_dir``/images, then its annotation file."""
    split, num_images = params["split"], params["num_images"]
    image_size, min_size, max_size = params["image_size"], params["min_size"], params["max_size"]
    os.makedirs(os.path.join(out_dir, _IMAGES))
    images, annotations = [], []
    for index in tqdm(
        range(num_images), desc=f"fpn_shapes '{split}'", unit="img", disable=not progress
    ):
        pixels, objects = _make_image(_image_rng(params, index), image_size, min_size, max_size)
        _save_image(out_dir, index, pixels, objects, images, annotations)
    info = {
        "description": "fpn_shapes: synthetic solid shapes for FPN detection (fpn_plugin)",
        "generator": _GENERATOR,
        "params": params,
    }
    _write_coco_json(
        os.path.join(out_dir, _ANNOTATIONS), info, images, annotations, _shape_categories()
    )


def _save_image(
    out_dir: str,
    index: int,
    pixels: np.ndarray,
    objects: List[Dict[str, Any]],
    images: List[Dict[str, Any]],
    annotations: List[Dict[str, Any]],
) -> int:
    """Save image ``index`` of a split, ``pixels`` (H, W, 3) uint8 RGB, as
    ``out_dir/images/<index>.jpg``; append its COCO image record to ``images`` and the instance
    annotations of its ``objects`` (of :func:`_make_image`) to ``annotations``. Returns its image
    id (``index + 1``)."""
    file_name = f"{index:06d}{_IMAGE_EXT}"
    Image.fromarray(pixels).save(
        os.path.join(out_dir, _IMAGES, file_name), quality=_JPEG_QUALITY, subsampling=0
    )
    image_id = index + 1
    height, width = pixels.shape[:2]
    images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    for obj in objects:
        annotations.append(_instance_annotation(obj, len(annotations) + 1, image_id))
    return image_id


def _write_coco_json(
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


def generate_shapes_dataset(
    root: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int = 512,
    min_size: float = 8,
    max_size: float = 400,
    progress: bool = True,
) -> str:
    """Generate one split of ``fpn_shapes`` (see the module docstring) unless it already exists.

    Writes ``root/<split>/images/000000.jpg, ...`` (RGB, ``image_size`` x ``image_size`` px) and
    ``root/<split>/annotations.json`` (COCO instances format; image ids 1..num_images, category ids
    1..4 for :data:`SHAPE_CLASSES`).

    Args:
        root: parent folder, created if needed.
        split: name of the split's folder, e.g. "train"; it also seeds the images, so two splits
            with the same ``seed`` differ.
        num_images: number of images (>= 1).
        seed: non-negative integer; the output is a deterministic function of all the arguments
            except ``root`` and ``progress`` (same JSON bytes, same image bytes).
        image_size: image width and height, pixels (>= 32).
        min_size, max_size: range of object sizes ``sqrt(box area)``, pixels, sampled
            log-uniformly; ``max_size`` is capped so that objects fit in the image.
        progress: show a ``tqdm`` progress bar.

    Returns:
        The path of ``annotations.json``.

    The split is built in a hidden temporary folder under ``root`` and renamed to ``root/<split>``
    when complete. If ``root/<split>`` already holds a complete split made with the same
    parameters, nothing is written; if it holds an incomplete or different one made by this
    function, it is replaced; anything else there raises ``FileExistsError``.
    """
    root = _checked_split_args(root, split, num_images, seed, image_size, min_size, max_size)
    params = _split_params(split, num_images, seed, image_size, min_size, max_size)
    return _generate_split(root, params, _write_split, progress)


def _checked_split_args(
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


def _generate_split(
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
    json_file = os.path.join(split_dir, _ANNOTATIONS)
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


# ------------------------------------------------------------------------------------------------
# Registration in Detectron2's catalogs
# ------------------------------------------------------------------------------------------------


def default_data_root() -> str:
    """Where generated datasets live: ``$FPN_PLUGIN_DATA`` if set, else ``~/.cache/fpn_plugin``."""
    return os.path.expanduser(
        os.environ.get("FPN_PLUGIN_DATA") or os.path.join("~", ".cache", "fpn_plugin")
    )


class _ShapesLoader:
    """Dataset loader registered for a shapes split: generates it (if needed), then loads it."""

    def __init__(self, name: str, spec: Dict[str, Any]):
        self.name, self.spec = name, spec

    def __call__(self) -> List[dict]:
        json_file = generate_shapes_dataset(**self.spec, progress=True)
        return load_coco_json(
            json_file, os.path.join(os.path.dirname(json_file), _IMAGES), self.name
        )


def register_shapes_datasets(
    root: Optional[str] = None,
    num_train: int = 1000,
    num_val: int = 100,
    seed: int = 0,
    image_size: int = 512,
) -> None:
    """Register ``fpn_shapes_train`` and ``fpn_shapes_val`` in Detectron2's catalogs.

    Nothing is generated here: a split is generated (see :func:`generate_shapes_dataset`) the first
    time ``DatasetCatalog.get`` is called for it, then loaded with ``load_coco_json``. Both splits
    live in
    ``<root>/fpn_shapes_<image_size>px_seed<seed>_train<num_train>_val<num_val>/{train,val}``, so
    datasets with different parameters are cached side by side. The validation split uses
    ``seed + 1``. The metadata has ``thing_classes`` (:data:`SHAPE_CLASSES`), ``json_file``,
    ``image_root``, ``evaluator_type="coco"`` (for ``COCOEvaluator``), and for keypoint detectors
    ``keypoint_names``, ``keypoint_flip_map``, ``keypoint_connection_rules`` and
    ``keypoint_oks_sigmas`` (see :data:`SHAPE_KEYPOINT_NAMES` and the constants after it).

    Calling it again with the same arguments does nothing; with other arguments, the new
    registration replaces the previous one.

    Args:
        root: data folder; None for :func:`default_data_root`.
        num_train, num_val: number of images in each split.
        seed: random seed of the training split (non-negative).
        image_size: image width and height, pixels.
    """
    specs = _split_specs("fpn_shapes", root, num_train, num_val, seed, image_size)
    for name, spec in zip((SHAPES_TRAIN, SHAPES_VAL), specs):
        metadata = {
            "thing_classes": list(SHAPE_CLASSES),
            "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPE_CLASSES))},
            "keypoint_names": list(SHAPE_KEYPOINT_NAMES),
            "keypoint_flip_map": [list(p) for p in SHAPE_KEYPOINT_FLIP_MAP],
            "keypoint_connection_rules": [list(r) for r in SHAPE_KEYPOINT_CONNECTION_RULES],
            "keypoint_oks_sigmas": list(SHAPE_KEYPOINT_OKS_SIGMAS),
            "fpn_shapes": dict(spec),
        }
        split_dir = os.path.join(spec["root"], spec["split"])
        register_idempotent(
            name,
            os.path.join(split_dir, _ANNOTATIONS),
            os.path.join(split_dir, _IMAGES),
            metadata,
            _ShapesLoader(name, spec),
        )


def _split_specs(
    prefix: str,
    root: Optional[str],
    num_train: int,
    num_val: int,
    seed: int,
    image_size: int,
) -> List[Dict[str, Any]]:
    """The generator's arguments of the "train" and "val" splits of a dataset cached in
    ``<root>/<prefix>_<image_size>px_seed<seed>_train<num_train>_val<num_val>`` (``root`` None:
    :func:`default_data_root`); validation uses ``seed + 1``."""
    root = os.path.abspath(
        os.path.expanduser(os.fspath(root) if root is not None else default_data_root())
    )
    name = f"{prefix}_{int(image_size)}px_seed{int(seed)}_train{int(num_train)}_val{int(num_val)}"
    return [
        {
            "root": os.path.join(root, name),
            "split": split,
            "num_images": int(num_images),
            "seed": int(split_seed),
            "image_size": int(image_size),
        }
        for split, num_images, split_seed in (
            ("train", num_train, seed),
            ("val", num_val, seed + 1),
        )
    ]


def register_shapes_datasets_from_config(cfg) -> None:
    """:func:`register_shapes_datasets` and its panoptic variant's
    (:func:`~fpn_plugin.data.register_shapes_panoptic_datasets`) with the settings of
    ``cfg.DATASETS.FPN_SHAPES``; nothing is generated until a dataset is used."""
    # Imported here: the panoptic variant builds on this module.
    from .shapes_panoptic import register_shapes_panoptic_datasets

    c = cfg.DATASETS.FPN_SHAPES
    settings = dict(root=c.ROOT or None, num_train=c.NUM_TRAIN, num_val=c.NUM_VAL, seed=c.SEED)
    settings["image_size"] = c.IMAGE_SIZE
    register_shapes_datasets(**settings)
    register_shapes_panoptic_datasets(**settings)
