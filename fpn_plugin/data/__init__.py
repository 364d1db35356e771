"""Data: the embedded ``fpn_shapes`` dataset (and its panoptic variant), COCO-format folders, and a
checking dataset mapper."""

from . import shapes as _shapes
from .coco import register_coco_folder, register_idempotent
from .mapper import CheckedDatasetMapper
from .shapes import *  # noqa: F403 (shapes.__all__: fpn_shapes and its panoptic variant)

__all__ = [
    "CheckedDatasetMapper",
    "register_coco_folder",
    "register_idempotent",
    *_shapes.__all__,
]
