"""Data: the embedded ``fpn_shapes`` dataset (and its panoptic variant), COCO-format folders, and a
checking dataset mapper."""

from .coco import register_coco_folder, register_idempotent
from .mapper import CheckedDatasetMapper
from .shapes import (
    SHAPE_CLASSES,
    SHAPE_KEYPOINT_CONNECTION_RULES,
    SHAPE_KEYPOINT_FLIP_MAP,
    SHAPE_KEYPOINT_NAMES,
    SHAPE_KEYPOINT_OKS_SIGMAS,
    SHAPES_TRAIN,
    SHAPES_VAL,
    default_data_root,
    generate_shapes_dataset,
    register_shapes_datasets,
    register_shapes_datasets_from_config,
)
from .shapes_panoptic import (
    SHAPES_PANOPTIC_TRAIN,
    SHAPES_PANOPTIC_VAL,
    STUFF_CLASSES,
    generate_shapes_panoptic_dataset,
    register_shapes_panoptic_datasets,
    shapes_panoptic_metadata,
)

__all__ = [
    "CheckedDatasetMapper",
    "register_coco_folder",
    "register_idempotent",
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
