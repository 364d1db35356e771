"""Detectron2's ``DefaultPredictor`` with the execution strategies of ``MODEL.ACCEL`` applied."""

from unittest import mock

import detectron2.engine.defaults
from detectron2.engine import DefaultPredictor

from ..accel import accelerate
from .checkpoint import FPNCheckpointer

__all__ = ["FPNPredictor"]


class FPNPredictor(DefaultPredictor):
    """``DefaultPredictor(cfg)`` (model built, weights loaded, eval), then
    :func:`fpn_plugin.accel.accelerate` with ``cfg.MODEL.ACCEL``. Called the same way:
    ``predictor(bgr_image)`` -> ``{"instances": ...}``."""

    def __init__(self, cfg):
        # Detectron2's __init__ loads MODEL.WEIGHTS with a DetectionCheckpointer: the one that
        # names a missing, empty or unreadable weights file and the fix is swapped in for that call.
        with mock.patch.object(
            detectron2.engine.defaults, "DetectionCheckpointer", FPNCheckpointer
        ):
            super().__init__(cfg)
        accelerate(self.model, self.cfg)
