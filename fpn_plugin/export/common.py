"""What the export paths share: the error they raise, the model check, detections as tensors."""

import copy
import re
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances

from ..accel import remove_strategies

__all__ = [
    "ExportError",
    "check_model",
    "first_line",
    "fields",
    "eager_detections",
    "plain_copy",
    "normalize_and_pad",
]


class ExportError(RuntimeError):
    """An export path that cannot work. ``str()`` names the path, the reason and what to use
    instead."""

    def __init__(self, path: str, reason: str, instead: str):
        reason = reason.rstrip(". ")
        self.path, self.reason, self.instead = path, reason, instead
        super().__init__(f"{path} cannot export this model: {reason}. Use instead: {instead}.")


def first_line(e: BaseException) -> str:
    """``Type: first line`` of the innermost cause of ``e`` (exporters wrap the real reason), plain
    text."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [
        line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()
    ]
    line = lines[0] if lines else ""
    return f"{type(e).__name__}: {line[:300]}"


def check_model(model: nn.Module, path: str) -> None:
    """``ExportError`` for ``path`` unless ``model`` is a GeneralizedRCNN in eval mode."""
    if not isinstance(model, GeneralizedRCNN):
        raise ExportError(
            path,
            f"the model is a {type(model).__name__}, this tool exports GeneralizedRCNN "
            "(MODEL.META_ARCHITECTURE)",
            "Detectron2's tools/deploy/export_model.py for other meta-architectures",
        )
    if model.training:
        raise ExportError(path, "the model is in training mode", "model.eval() before exporting")


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` without the execution strategies of :mod:`fpn_plugin.accel`: what
    is exported is the paper's model, whatever the eager one runs with."""
    return remove_strategies(copy.deepcopy(model))


def fields(instances: Instances) -> Dict[str, torch.Tensor]:
    """Instances -> {field name: tensor}; Boxes become their (R, 4) tensor."""
    return {k: (v.tensor if isinstance(v, Boxes) else v) for k, v in instances.get_fields().items()}


def eager_detections(model: GeneralizedRCNN, image: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The eager model's detections of one (3, H, W) image, in the same form as the exported
    models'."""
    with torch.no_grad():
        return fields(model.inference([{"image": image}], do_postprocess=False)[0])


def normalize_and_pad(
    image: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor, divisibility: int
) -> torch.Tensor:
    """(C, H, W) image -> (1, C, H', W') network input, as ``ImageList.from_tensors`` makes it:
    normalised, then zeros at the bottom and right up to multiples of ``divisibility``. The
    padded size is written as d * ceil(size / d), so that ``torch.export`` sees it is a multiple
    of d (Detectron2's FPN adds maps whose sizes agree only then)."""
    x = (image - pixel_mean) / pixel_std
    d = max(1, int(divisibility))
    h, w = x.shape[-2:]
    return F.pad(x, (0, d * ((w + d - 1) // d) - w, 0, d * ((h + d - 1) // d) - h))[None]
