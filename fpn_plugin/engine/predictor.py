"""Detectron2's ``DefaultPredictor`` with the execution strategies of ``MODEL.ACCEL`` applied."""
from detectron2.engine import DefaultPredictor

from ..accel import accelerate

__all__ = ["FPNPredictor"]


class FPNPredictor(DefaultPredictor):
    """``DefaultPredictor(cfg)`` (model built, weights loaded, eval), then
    :func:`fpn_plugin.accel.accelerate` with ``cfg.MODEL.ACCEL``. Called the same way:
    ``predictor(bgr_image)`` -> ``{"instances": ...}``."""

    def __init__(self, cfg):
        super().__init__(cfg)
        accelerate(self.model, self.cfg)
