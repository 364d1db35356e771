"""Pyramid levels above the coarsest bottom-up input (``MODEL.FPN.EXTRA_LEVELS``).

The paper's P6 is a stride-2 subsampling of P5 (Sec. 4.1), used by the RPN only; RetinaNet's P6
and P7 are stride-2 3x3 convs (Lin et al. 2017b). Both are Detectron2's own modules
(``LastLevelMaxPool``, ``LastLevelP6P7``), with the input level made a parameter.
"""

import math
from typing import List, Optional

from torch import nn

from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from ._checks import check_choice

__all__ = ["EXTRA_LEVEL_TYPES", "LastLevelSubsample", "LastLevelP6P7", "build_extra_levels"]

#: Values of ``MODEL.FPN.EXTRA_LEVELS``.
EXTRA_LEVEL_TYPES = ("none", "p6_subsample", "p6p7_c5", "p6p7_p5")


class LastLevelSubsample(LastLevelMaxPool):
    """P_{k+1} from P_k by stride-2 subsampling (paper, Sec. 4.1):
    (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2)).

    Detectron2's ``LastLevelMaxPool`` (a 1x1 max-pool with stride 2 keeps every other pixel),
    reading ``in_feature`` instead of always "p5", so that a pyramid ending at P4 gets P5.
    """

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.in_feature = in_feature


def build_extra_levels(
    kind: str, bottom_up: Backbone, in_features: List[str], out_channels: int
) -> Optional[nn.Module]:
    """The ``top_block`` module for ``MODEL.FPN.EXTRA_LEVELS`` ``kind``, or None for "none".

    Args:
        kind: one of :data:`EXTRA_LEVEL_TYPES`.
        bottom_up: the bottom-up network (its output shapes give C_k's channels and stride).
        in_features: the neck's inputs, finest first; the extra levels start above the last one.
        out_channels: d, the pyramid's channels.
    """
    check_choice(kind, EXTRA_LEVEL_TYPES, "MODEL.FPN.EXTRA_LEVELS")
    if kind == "none":
        return None
    shapes = bottom_up.output_shape()
    last = in_features[-1]
    last_p = f"p{int(math.log2(shapes[last].stride))}" if last in shapes else "p5"
    if kind == "p6_subsample":
        return LastLevelSubsample(in_feature=last_p)
    if kind == "p6p7_c5":
        in_channels = shapes[last].channels if last in shapes else out_channels
        return LastLevelP6P7(in_channels, out_channels, in_feature=last)
    return LastLevelP6P7(out_channels, out_channels, in_feature=last_p)
