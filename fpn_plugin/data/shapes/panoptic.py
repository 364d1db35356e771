"""``fpn_shapes_panoptic``: the shapes of ``fpn_shapes`` ("things") in front of textured background
regions ("stuff"), with COCO-panoptic annotations, for Panoptic FPN (Kirillov et al. 2019).

Every image (``image_size`` x ``image_size`` px, RGB JPEG) is split into 2 to 5 background regions
(the Voronoi cells of random points, each pixel going to the point nearest to its centre); each
region is covered by one of :data:`STUFF_CLASSES`, in weakly saturated colours:

- "smooth": a smooth colour field (the background of ``fpn_shapes``);
- "stripes": a sinusoidal grating of two colours, period 8-16 px, at a random angle;
- "checks": the product of two such gratings at right angles (a soft checkerboard).

Regions of the same class that touch merge into one. The things are drawn on top exactly as in
``fpn_shapes`` (:data:`~fpn_plugin.data.SHAPE_CLASSES`, the same colours, polygons, keypoints and
instance annotations), with sizes log-uniform between ``min_size`` and ``max_size`` (default: half
the image, so that background stays visible); then the same pixel noise.

Category ids: things 1-4 (:data:`~fpn_plugin.data.SHAPE_CLASSES`), stuff 5-7
(:data:`STUFF_CLASSES`). A split folder holds what Detectron2 reads for COCO panoptic:

- ``images/000000.jpg``: the images;
- ``annotations.json``: COCO instances of the things (as ``fpn_shapes``: polygons, boxes, areas of
  the polygons, keypoints);
- ``panoptic.json`` and ``panoptic/000000.png``: COCO panoptic. The PNG holds a segment id per
  pixel (``R + 256 G + 256^2 B``); ``segments_info`` lists each segment's ``id``,
  ``category_id``, ``iscrowd`` (0), ``bbox`` (integer [x, y, w, h] of its pixels) and ``area``
  (its pixel count). Segment ids per image: the things 1..n in the order of their instance
  annotations, then one segment per stuff class present (the class's pixels not covered by a
  thing). Every pixel belongs to a segment: there is no void (id 0);
- ``sem_seg/000000.png``: the "separated" semantic labels of Panoptic FPN (8 bit): 0 for thing
  pixels, 1, 2, 3 for the stuff classes (255, ignored, is never used).

A thing's pixels are its polygon rasterised by pycocotools, as COCO's ``annToMask`` and
Detectron2's mask targets rasterise it; an object whose rasterised polygon is empty (none at the
default sizes) is left out of every annotation.

Generation is deterministic, atomic and cached as for ``fpn_shapes`` (the parameters, with
the panoptic format's version, are recorded in ``annotations.json``'s ``info``); the datasets are
registered as Detectron2 registers COCO panoptic
(:func:`~fpn_plugin.data.register_shapes_panoptic_datasets`).
"""

import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from .cache import (
    ANNOTATIONS_FILE,
    IMAGES_FOLDER,
    checked_split_args,
    generate_split,
    image_rng,
    save_image,
    split_params,
    write_coco_json,
)
from .drawing import SHAPE_CLASSES, make_image, random_color, smooth_background
from .instances import instance_annotation, shape_categories

__all__ = [
    "STUFF_CLASSES",
    "GENERATOR",
    "generate_shapes_panoptic_dataset",
    "split_paths",
    "shapes_panoptic_metadata",
]

#: Background ("stuff") classes; COCO category ids 5, 6, 7 in this order (things: 1-4).
STUFF_CLASSES: Tuple[str, ...] = ("smooth", "stripes", "checks")
#: The generator's name recorded in its annotations' ``info``.
GENERATOR = "fpn_plugin.data.generate_shapes_panoptic_dataset"

# Bump when this module's output changes for the same parameters (the shapes' own
# GENERATOR_VERSION is recorded too): cached datasets get rebuilt.
_PANOPTIC_VERSION = 1
_PANOPTIC_JSON = "panoptic.json"
_PANOPTIC = "panoptic"
_SEM_SEG = "sem_seg"
_PNG = ".png"
_COMPANIONS = ((_PANOPTIC, _PNG), (_SEM_SEG, _PNG))

_MIN_REGIONS, _MAX_REGIONS = 2, 5
_PERIOD = (8.0, 16.0)  # px, of the stripes and checks
_STUFF_SATURATION = (0.0, 0.4)
_THING_ID_OFFSET = 1  # thing category ids: 1..4
_STUFF_ID_OFFSET = 1 + len(SHAPE_CLASSES)  # stuff category ids: 5..7
# Colours that Detectron2's Visualizer gives each class (RGB): things at their hue band's centre
# (fpn_shapes colours each class within a band), stuff in muted tones.
_THING_COLORS = ((230, 40, 40), (150, 220, 30), (30, 210, 210), (140, 60, 230))
_STUFF_COLORS = ((200, 170, 120), (90, 140, 90), (110, 110, 170))
_THINGS_COLOR = (82, 18, 128)  # the "things" class of the semantic labels, as Detectron2's COCO


# ------------------------------------------------------------------------------------------------
# One image
# ------------------------------------------------------------------------------------------------


def _grating(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, checks: bool) -> np.ndarray:
    """(N,) float in [0, 1] at the points (``xs``, ``ys``) (N,), px: a sinusoidal grating
    (stripes) or the product of two at right angles (checks), with a random period in
    :data:`_PERIOD` px, angle and phases."""
    period = rng.uniform(*_PERIOD)
    angle = rng.uniform(0, math.pi)
    phase_u, phase_v = rng.uniform(0, 2 * math.pi, size=2)
    c, s = math.cos(angle) * 2 * math.pi / period, math.sin(angle) * 2 * math.pi / period
    wave = np.sin(xs * c + ys * s + phase_u)
    if checks:
        wave *= np.sin(ys * c - xs * s + phase_v)
    return 0.5 + 0.5 * wave


def _two_tones(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Two weakly saturated RGB colours (3,) in [0, 255] whose values differ by 0.3 to 0.45."""
    dark = rng.uniform(0.15, 0.5)
    light = dark + rng.uniform(0.3, 0.45)
    first = random_color(rng, _STUFF_SATURATION, (dark, dark))
    second = random_color(rng, _STUFF_SATURATION, (light, light))
    return first, second


def _paint_stuff(
    rng: np.random.Generator, image: np.ndarray, inside: np.ndarray, stuff_id: int
) -> None:
    """Cover the pixels ``inside`` ((H, W) bool) of ``image`` ((H, W, 3) float32, in place) with
    the texture of stuff class ``stuff_id`` (index into STUFF_CLASSES)."""
    if STUFF_CLASSES[stuff_id] == "smooth":
        image[inside] = smooth_background(rng, image.shape[0])[inside]
        return
    first, second = _two_tones(rng)
    ys, xs = np.nonzero(inside)  # the texture is sampled at the pixel centres
    t = _grating(rng, xs + 0.5, ys + 0.5, checks=STUFF_CLASSES[stuff_id] == "checks")
    image[ys, xs] = first + t[:, None] * (second - first)


def _stuff_background(rng: np.random.Generator, image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """The background: ((H, W, 3) float32 image, (H, W) int64 stuff class per pixel)."""
    count = int(rng.integers(_MIN_REGIONS, _MAX_REGIONS + 1))
    points = rng.uniform(0, image_size, size=(count, 2))
    classes = rng.integers(len(STUFF_CLASSES), size=count)
    centres = np.arange(image_size, dtype=np.float64) + 0.5
    nearest = np.full((image_size, image_size), np.inf)
    region = np.zeros((image_size, image_size), dtype=np.int64)  # index of the nearest point
    for index, (x, y) in enumerate(points):
        distance = (centres[None, :] - x) ** 2 + (centres[:, None] - y) ** 2
        closer = distance < nearest
        nearest[closer], region[closer] = distance[closer], index
    image = np.zeros((image_size, image_size, 3), dtype=np.float32)
    for index, stuff_id in enumerate(classes.tolist()):
        _paint_stuff(rng, image, region == index, stuff_id)
    return image, classes[region]


def _thing_mask(polygon: np.ndarray, image_size: int) -> np.ndarray:
    """(H, W) bool: the pixels of ``polygon`` (V, 2), rasterised by pycocotools."""
    rles = mask_utils.frPyObjects([polygon.reshape(-1).tolist()], image_size, image_size)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _mask_box(mask: np.ndarray) -> List[int]:
    """Integer [x, y, w, h] of the pixels of a non-empty (H, W) bool mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def _id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 COCO-panoptic colours of the (H, W) segment ids: R + 256 G + 256^2 B."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)


def _make_panoptic_image(
    rng: np.random.Generator, image_size: int, min_size: float, max_size: float
) -> Tuple[np.ndarray, List[Dict[str, Any]], np.ndarray, np.ndarray, List[Dict[str, Any]]]:
    """One image: ((H, W, 3) uint8 RGB, the kept objects of :func:`make_image`, (H, W) int64
    panoptic segment ids, (H, W) uint8 semantic labels, segments_info without bbox and area)."""
    background, stuff = _stuff_background(rng, image_size)
    pixels, objects = make_image(rng, image_size, min_size, max_size, background=background)
    ids = np.zeros((image_size, image_size), dtype=np.int64)
    semantic = (stuff + 1).astype(np.uint8)
    kept, segments = [], []
    for obj in objects:
        mask = _thing_mask(obj["polygon"], image_size)
        if not mask.any():
            continue
        kept.append(obj)
        ids[mask] = len(kept)
        semantic[mask] = 0
        segments.append({"id": len(kept), "category_id": obj["category_id"]})
    for stuff_id in range(len(STUFF_CLASSES)):
        mask = semantic == stuff_id + 1
        if mask.any():
            ids[mask] = len(segments) + 1
            segments.append({"id": len(segments) + 1, "category_id": _STUFF_ID_OFFSET + stuff_id})
    return pixels, kept, ids, semantic, segments


# ------------------------------------------------------------------------------------------------
# A split on disk
# ------------------------------------------------------------------------------------------------


def _panoptic_categories() -> List[Dict[str, Any]]:
    """COCO-panoptic categories: the things (ids 1..4, isthing 1), then the stuff (5..7)."""
    groups = (
        (SHAPE_CLASSES, _THING_ID_OFFSET, "shape", 1, _THING_COLORS),
        (STUFF_CLASSES, _STUFF_ID_OFFSET, "background", 0, _STUFF_COLORS),
    )
    return [
        {
            "id": first_id + i,
            "name": name,
            "supercategory": supercategory,
            "isthing": isthing,
            "color": list(colors[i]),
        }
        for names, first_id, supercategory, isthing, colors in groups
        for i, name in enumerate(names)
    ]


def _write_panoptic_split(out_dir: str, params: Dict[str, Any], progress: bool) -> None:
    """Generate all files of a panoptic split into ``out_dir``; ``annotations.json`` last."""
    split, num_images = params["split"], params["num_images"]
    image_size, min_size, max_size = params["image_size"], params["min_size"], params["max_size"]
    for folder in (IMAGES_FOLDER, _PANOPTIC, _SEM_SEG):
        os.makedirs(os.path.join(out_dir, folder))
    info = {
        "description": "fpn_shapes_panoptic: synthetic shapes on textured background (fpn_plugin)",
        "generator": GENERATOR,
        "params": params,
    }
    images, annotations, panoptic = [], [], []
    desc = f"fpn_shapes_panoptic '{split}'"
    for index in tqdm(range(num_images), desc=desc, unit="img", disable=not progress):
        rng = image_rng(params, index)
        pixels, objects, ids, semantic, segments = _make_panoptic_image(
            rng, image_size, min_size, max_size
        )
        image_id = save_image(out_dir, index, pixels, images)
        for obj in objects:
            annotations.append(instance_annotation(obj, len(annotations) + 1, image_id))
        stem = f"{index:06d}"
        Image.fromarray(_id_to_rgb(ids)).save(os.path.join(out_dir, _PANOPTIC, stem + _PNG))
        Image.fromarray(semantic, mode="L").save(os.path.join(out_dir, _SEM_SEG, stem + _PNG))
        for segment in segments:
            mask = ids == segment["id"]
            segment.update(iscrowd=0, bbox=_mask_box(mask), area=int(mask.sum()))
        panoptic.append({"image_id": image_id, "file_name": stem + _PNG, "segments_info": segments})
    categories = _panoptic_categories()
    write_coco_json(os.path.join(out_dir, _PANOPTIC_JSON), info, images, panoptic, categories)
    categories = shape_categories()
    write_coco_json(os.path.join(out_dir, ANNOTATIONS_FILE), info, images, annotations, categories)


def _panoptic_params(
    split: str, num_images: int, seed: int, image_size: int, min_size: float, max_size: float
) -> Dict[str, Any]:
    params = split_params(split, num_images, seed, image_size, min_size, max_size)
    params["panoptic_version"] = _PANOPTIC_VERSION
    params["stuff_classes"] = list(STUFF_CLASSES)
    return params


def split_paths(split_dir: str) -> Dict[str, str]:
    """The paths of a split folder that Detectron2's COCO-panoptic registration takes."""
    return {
        "image_root": os.path.join(split_dir, IMAGES_FOLDER),
        "instances_json": os.path.join(split_dir, ANNOTATIONS_FILE),
        "panoptic_json": os.path.join(split_dir, _PANOPTIC_JSON),
        "panoptic_root": os.path.join(split_dir, _PANOPTIC),
        "sem_seg_root": os.path.join(split_dir, _SEM_SEG),
    }


def generate_shapes_panoptic_dataset(
    root: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int = 512,
    min_size: float = 8,
    max_size: Optional[float] = None,
    progress: bool = True,
) -> Dict[str, str]:
    """Generate one split of ``fpn_shapes_panoptic`` (see the module docstring) unless it exists.

    Args:
        root: parent folder, created if needed; the split goes to ``root/<split>``.
        split: name of the split's folder, e.g. "train"; it also seeds the images.
        num_images: number of images (>= 1).
        seed: non-negative integer; the output is a deterministic function of all the arguments
            except ``root`` and ``progress`` (same JSON bytes, same image and PNG bytes).
        image_size: image width and height, pixels (>= 32).
        min_size, max_size: range of thing sizes ``sqrt(box area)``, pixels, sampled
            log-uniformly; ``max_size`` None for half of ``image_size``.
        progress: show a ``tqdm`` progress bar.

    Returns:
        The paths Detectron2's COCO-panoptic registration takes: ``image_root``,
        ``instances_json``, ``panoptic_json``, ``panoptic_root`` and ``sem_seg_root``.

    Raises ``ValueError`` naming a bad argument; the cache and the errors about the folder are
    those of :func:`~fpn_plugin.data.generate_shapes_dataset`.
    """
    max_size = int(image_size) / 2 if max_size is None else max_size
    root = checked_split_args(root, split, num_images, seed, image_size, min_size, max_size)
    params = _panoptic_params(split, num_images, seed, image_size, min_size, max_size)
    generate_split(root, params, _write_panoptic_split, progress, companions=_COMPANIONS)
    return split_paths(os.path.join(root, split))


def shapes_panoptic_metadata(separated: bool) -> Dict[str, Any]:
    """Detectron2 metadata of the classes, as ``builtin_meta`` gives COCO panoptic's.

    ``separated`` (Panoptic FPN, semantic segmentation): ``thing_classes`` (contiguous ids 0-3
    for category ids 1-4) and ``stuff_classes`` ``["things", "smooth", "stripes", "checks"]``
    (contiguous ids 0-3 for category ids 0, 5, 6, 7; 0 is every thing pixel). Else (standard):
    one list of all seven classes, contiguous ids 0-6, under both names.
    """
    thing_ids = [_THING_ID_OFFSET + i for i in range(len(SHAPE_CLASSES))]
    stuff_ids = [_STUFF_ID_OFFSET + i for i in range(len(STUFF_CLASSES))]
    if separated:
        return {
            "thing_classes": list(SHAPE_CLASSES),
            "thing_colors": [list(c) for c in _THING_COLORS],
            "thing_dataset_id_to_contiguous_id": {k: i for i, k in enumerate(thing_ids)},
            "stuff_classes": ["things", *STUFF_CLASSES],
            "stuff_colors": [list(_THINGS_COLOR)] + [list(c) for c in _STUFF_COLORS],
            "stuff_dataset_id_to_contiguous_id": {
                0: 0,
                **{k: i + 1 for i, k in enumerate(stuff_ids)},
            },
        }
    names = [*SHAPE_CLASSES, *STUFF_CLASSES]
    colors = [list(c) for c in (*_THING_COLORS, *_STUFF_COLORS)]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {k: i for i, k in enumerate(thing_ids)},
        "stuff_dataset_id_to_contiguous_id": {
            k: len(thing_ids) + i for i, k in enumerate(stuff_ids)
        },
    }
