"""Evaluation: which of Detectron2's evaluators a dataset gets, and panoptic quality without
panopticapi."""

from .dataset_evaluators import build_dataset_evaluator
from .panoptic import PANOPTIC_RESULT_KEYS, PanopticQualityEvaluator, build_panoptic_evaluator

__all__ = [
    "build_dataset_evaluator",
    "PanopticQualityEvaluator",
    "build_panoptic_evaluator",
    "PANOPTIC_RESULT_KEYS",
]
