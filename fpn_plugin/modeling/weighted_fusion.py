"""Fast normalized fusion of same-shaped feature maps (Tan et al. 2020, EfficientDet, Sec. 3.3).

    O = sum_i w_i * I_i / (eps + sum_j w_j),   w_i = ReLU(raw_i) >= 0

Each fusion node of a neck owns one such module: a learned scalar weight per input, which the
ReLU keeps non-negative and the normalisation keeps (up to eps) summing to one, so the output
stays on the scale of the inputs; the paper uses it instead of a softmax because it is cheaper
and about as accurate.
"""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FastNormalizedFusion", "WeightedTopDownMerge"]


class FastNormalizedFusion(nn.Module):
    """Learned, non-negative, normalised weighted sum of ``num_inputs`` maps of equal shape."""

    def __init__(self, num_inputs: int, eps: float = 1e-4):
        """
        Args:
            num_inputs: number of maps fused (>= 2).
            eps: the paper's epsilon (1e-4), keeps the division finite when all weights are 0
                (``MODEL.PAFPN.FUSION_EPS``).
        """
        super().__init__()
        if num_inputs < 2:
            raise ValueError(
                f"FastNormalizedFusion needs num_inputs >= 2 maps to fuse, got {num_inputs}."
            )
        if not eps > 0:
            raise ValueError(f"MODEL.PAFPN.FUSION_EPS = {eps!r} must be > 0 (the paper uses 1e-4).")
        self.eps = float(eps)
        # All ones: at initialisation every input gets weight 1 / (n + eps), a plain average.
        self.weight = nn.Parameter(torch.ones(num_inputs))

    def normalized_weights(self) -> torch.Tensor:
        """(num_inputs,) the weights actually applied: ReLU(w) / (eps + sum ReLU(w)),
        each in [0, 1)."""
        w = F.relu(self.weight)
        return w / (self.eps + w.sum())

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            inputs: ``num_inputs`` tensors of one shape, e.g. (N, D, H, W).
        Returns:
            their weighted sum, same shape.
        """
        if len(inputs) != self.weight.numel():
            raise ValueError(
                f"FastNormalizedFusion was built for {self.weight.numel()} inputs, got "
                f"{len(inputs)}."
            )
        w = self.normalized_weights()
        out = inputs[0] * w[0]
        for i in range(1, len(inputs)):
            out = out + inputs[i] * w[i]
        return out

    def extra_repr(self) -> str:
        return f"num_inputs={self.weight.numel()}, eps={self.eps}"


class WeightedTopDownMerge(FastNormalizedFusion):
    """A top-down node with fast normalized fusion: the coarser map upsampled x2, fused with the
    lateral map by two learned weights. Called like
    :class:`~fpn_plugin.modeling.neck.TopDownMerge`."""

    def __init__(self, upsample: str = "nearest", eps: float = 1e-4):
        """
        Args:
            upsample: "nearest" or "bilinear" (``MODEL.FPN.UPSAMPLE``).
            eps: the fusion's epsilon (``MODEL.PAFPN.FUSION_EPS``).
        """
        super().__init__(2, eps)
        self.upsample = upsample

    def forward(
        self, lateral: Optional[torch.Tensor], coarser: torch.Tensor, size: List[int]
    ) -> torch.Tensor:
        """(N, D, H, W) lateral map, (N, D, ~H/2, ~W/2) coarser map, [H, W] -> (N, D, H, W)."""
        assert lateral is not None, "a weighted top-down node fuses two maps"
        return super().forward([lateral, F.interpolate(coarser, size=size, mode=self.upsample)])
