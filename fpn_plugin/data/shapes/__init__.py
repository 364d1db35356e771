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
annotations, is described in :mod:`.panoptic`. The modules, each building on the ones before:
:mod:`.drawing` (the shapes and one image), :mod:`.cache` (a split on disk: deterministic, atomic,
cached), :mod:`.instances` (``fpn_shapes``' annotations and splits), :mod:`.panoptic` (the
panoptic variant's), :mod:`.registration` (Detectron2's catalogs).
"""

from .drawing import (
    SHAPE_CLASSES,
    SHAPE_KEYPOINT_CONNECTION_RULES,
    SHAPE_KEYPOINT_FLIP_MAP,
    SHAPE_KEYPOINT_NAMES,
    SHAPE_KEYPOINT_OKS_SIGMAS,
)
from .instances import generate_shapes_dataset
from .panoptic import STUFF_CLASSES, generate_shapes_panoptic_dataset, shapes_panoptic_metadata
from .registration import (
    SHAPES_PANOPTIC_TRAIN,
    SHAPES_PANOPTIC_VAL,
    SHAPES_TRAIN,
    SHAPES_VAL,
    default_data_root,
    register_shapes_datasets,
    register_shapes_datasets_from_config,
    register_shapes_panoptic_datasets,
)

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
    "STUFF_CLASSES",
    "SHAPES_PANOPTIC_TRAIN",
    "SHAPES_PANOPTIC_VAL",
    "generate_shapes_panoptic_dataset",
    "register_shapes_panoptic_datasets",
    "shapes_panoptic_metadata",
]
