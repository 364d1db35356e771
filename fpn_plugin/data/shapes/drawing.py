"""Drawing ``fpn_shapes``' images: the shapes (:data:`SHAPE_CLASSES`), their polygons, keypoints
and colours, the smooth background, and one image with its objects (:func:`make_image`). The
dataset is described in :mod:`fpn_plugin.data.shapes`."""

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "SHAPE_CLASSES",
    "SHAPE_KEYPOINT_NAMES",
    "SHAPE_KEYPOINT_FLIP_MAP",
    "SHAPE_KEYPOINT_CONNECTION_RULES",
    "SHAPE_KEYPOINT_OKS_SIGMAS",
    "DECIMALS",
    "polygon_area",
    "extreme_points",
    "random_color",
    "smooth_background",
    "make_image",
]

#: Class names of ``fpn_shapes``; COCO category ids are 1, 2, 3, 4 in this order.
SHAPE_CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "cross")
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
#: Polygon coordinates are stored (and drawn) rounded to this many decimals of a pixel.
DECIMALS = 2

_MIN_OBJECTS, _MAX_OBJECTS = 2, 8
_BORDER = 1.0  # px kept free between every box and the image border
_GAP = 2.0  # px kept free between two boxes (anti-aliased edges never share a pixel)
_SUPERSAMPLE = 4  # shapes are rasterised at 4x and box-filtered down: anti-aliased edges
_NOISE_STD = 6.0  # std of the Gaussian pixel noise, in 0..255 grey levels
_MIN_CONTRAST = 80.0  # min RGB distance between an object's colour and the background under it
_POSITION_TRIES = 64  # random positions tried per object before it is dropped


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


def polygon_area(poly: np.ndarray) -> float:
    """Area (px^2) of a simple polygon, by the shoelace formula."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def extreme_points(poly: np.ndarray) -> np.ndarray:
    """(4, 2) keypoints of a polygon (V, 2), in :data:`SHAPE_KEYPOINT_NAMES` order: its top (min y),
    right (max x), bottom (max y) and left (min x) extreme points.

    Where several vertices reach the extreme (an edge parallel to the box side), the midpoint of
    those vertices is taken: a choice that mirrors under a horizontal flip, so "left" flips to
    "right".
    """
    tol = 0.5 * 10.0**-DECIMALS
    points = []
    for axis, pick in ((1, np.min), (0, np.max), (1, np.max), (0, np.min)):
        extreme = pick(poly[:, axis])
        points.append(poly[np.abs(poly[:, axis] - extreme) <= tol].mean(axis=0))
    return np.array(points)


def random_color(
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


def smooth_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(H, W, 3) float32: a smooth field interpolating a 3x3 grid of random, weakly saturated
    colours."""
    grid = np.stack([random_color(rng, (0.0, 0.6), (0.2, 0.95)) for _ in range(9)]).reshape(3, 3, 3)
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
        poly = np.round(poly + offsets[free[0]], DECIMALS)
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


def make_image(
    rng: np.random.Generator,
    image_size: int,
    min_size: float,
    max_size: float,
    background: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """One image: ((H, W, 3) uint8 RGB, [{"category_id", "polygon" (V, 2), "color"}, ...]).

    ``background``: the (H, W, 3) float32 image the shapes are painted on (it is painted in
    place); None for :func:`smooth_background`'s colour field, drawn from ``rng`` first.
    """
    image = smooth_background(rng, image_size) if background is None else background
    objects = []
    for class_id, poly in _place_objects(rng, image_size, min_size, max_size):
        x0, y0 = np.floor(poly.min(axis=0)).astype(int)
        x1, y1 = np.ceil(poly.max(axis=0)).astype(int)
        under = image[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].reshape(-1, 3).mean(axis=0)
        # The most contrasting of up to 10 colours, stopping at the first that contrasts enough.
        best, best_contrast = None, -1.0
        for _ in range(10):
            color = random_color(rng, (0.55, 1.0), (0.55, 1.0), _class_hues(class_id)).round()
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
