"""The top-down merge computed in place in inference (``MODEL.ACCEL.IN_PLACE_TOP_DOWN``).

The paper's merge, lateral + nearest_x2(coarser), computed as
``lateral[..., 2i + a, 2j + b] += coarser[..., i, j]``: the same float additions, so the same
result bit for bit, without materialising the upsampled map and the sum (two full-size tensors
at P2, the largest level).
"""

from typing import List, Optional

import torch

from .devices import runs_by_default
from .strategy import Strategy

__all__ = ["InPlaceTopDown"]


class InPlaceTopDown(Strategy):
    """On a :class:`~fpn_plugin.modeling.neck.TopDownMerge` with "sum" and "nearest": without
    gradients, on the devices where it was measured (CPU), adds the coarser map into the lateral
    map in place (the lateral map is the lateral conv's fresh output, read by nothing else) and
    returns it."""

    def forward(
        self, lateral: Optional[torch.Tensor], coarser: torch.Tensor, size: List[int]
    ) -> torch.Tensor:
        if (
            lateral is None
            or torch.is_grad_enabled()
            or torch.jit.is_tracing()
            or not lateral.is_contiguous()
            or not runs_by_default("in_place_top_down", lateral.device)
        ):
            return super().forward(lateral, coarser, size)
        n, ch, h, w = coarser.shape
        if tuple(lateral.shape) != (n, ch, 2 * h, 2 * w) or tuple(size) != (2 * h, 2 * w):
            return super().forward(lateral, coarser, size)
        lateral.view(n, ch, h, 2, w, 2).add_(coarser[:, :, :, None, :, None])
        return lateral
