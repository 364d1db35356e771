"""Detectron2's ``DefaultPredictor`` with the execution strategies of ``MODEL.ACCEL`` applied."""

import detectron2.data.transforms as T
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from ..accel import accelerate
from .checkpoint import FPNCheckpointer

__all__ = ["FPNPredictor"]


class FPNPredictor(DefaultPredictor):
    """``DefaultPredictor(cfg)`` (model built, weights loaded, eval), then
    :func:`fpn_plugin.accel.accelerate` with ``cfg.MODEL.ACCEL``. Called the same way:
    ``predictor(bgr_image)`` -> ``{"instances": ...}``."""

    def __init__(self, cfg):
        # DefaultPredictor.__init__ written out, with the weights loaded by an FPNCheckpointer,
        # which names a missing, empty or unreadable weights file and the fix.
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: the predictor takes RGB or BGR.")
        self.cfg = cfg.clone()  # the model may change its config
        self.model = build_model(self.cfg).eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        FPNCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        size = cfg.INPUT.MIN_SIZE_TEST
        self.aug = T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        accelerate(self.model, self.cfg)
