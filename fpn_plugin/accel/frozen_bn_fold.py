"""Inference-time folding of FrozenBatchNorm into the convolution before it
(``MODEL.ACCEL.FOLD_FROZEN_BN``).

Detectron2's ResNet (``MODEL.RESNETS.NORM: "FrozenBN"``) follows each convolution with a frozen
affine map, y = conv(x) * s + b with per-channel s = gamma / sqrt(var + eps) and
b = beta - mean * s: a second full pass over every feature map. Since the map is frozen it folds
into the convolution: y = conv_{W * s}(x) + b, one pass. The folded weights are computed on first
use and recomputed whenever a parameter or statistic changes (``load_state_dict``, ``.to()``);
the module's parameters, buffers and ``state_dict`` are not touched. Training, and any call where
gradients flow, takes the unfolded path. Outputs equal the unfolded ones to float rounding
(the products are rounded in another order).

s and b are computed with the expressions of ``FrozenBatchNorm2d`` itself; PyTorch's
``torch.nn.utils.fusion.fuse_conv_bn_weights`` orders the bias's products differently, which
would change the folded bias in its last bit.
"""

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d

from .strategy import Strategy, apply_strategy, plain_class

__all__ = ["FoldedFrozenBN", "fold_frozen_batchnorm"]


class FoldedFrozenBN(Strategy):
    """On a Detectron2 ``Conv2d`` whose norm is ``FrozenBatchNorm2d``: in eval without gradients,
    one convolution with the folded weights and bias (see the module doc)."""

    _transient = ("_fold_cache",)

    def folded_weight_and_bias(self):
        """(weight (C_out, C_in/g, kh, kw) * s, bias (C_out,)): cached, keyed by the tensors'
        versions."""
        norm = self.norm
        tensors = [self.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var]
        if self.bias is not None:
            tensors.append(self.bias)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        cache = self.__dict__.get("_fold_cache")
        if cache is None or cache[0] != key:
            with torch.no_grad():
                scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
                bias = norm.bias - norm.running_mean * scale
                if self.bias is not None:
                    bias = bias + self.bias * scale
                # Keeps the weight's memory format (channels-last under MODEL.ACCEL.CHANNELS_LAST).
                weight = self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype)
            cache = (key, weight, bias.to(self.weight.dtype))
            self.__dict__["_fold_cache"] = cache
        return cache[1], cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if (
            self.training
            or grad
            or torch.jit.is_tracing()
            or not isinstance(self.norm, FrozenBatchNorm2d)
        ):
            return super().forward(x)
        weight, bias = self.folded_weight_and_bias()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Apply :class:`FoldedFrozenBN` to every Detectron2 ``Conv2d`` in ``module`` whose norm is
    ``FrozenBatchNorm2d`` (in place; same objects, same ``state_dict``). Returns how many."""
    count = 0
    for m in module.modules():
        if plain_class(type(m)) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            apply_strategy(m, FoldedFrozenBN)
            count += 1
    return count
