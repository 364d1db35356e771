"""Inference-time folding of FrozenBatchNorm into the convolution before it.

Detectron2's ResNet (``MODEL.RESNETS.NORM: "FrozenBN"``) follows each convolution with a frozen
affine map, y = conv(x) * s + b with per-channel s = gamma / sqrt(var + eps) and
b = beta - mean * s: a second full pass over every feature map. Since the map is frozen it folds
into the convolution: y = conv_{W * s}(x) + b, one pass. The folded weights are computed on first
use and recomputed whenever a parameter or statistic changes (``load_state_dict``, ``.to()``);
the module's parameters, buffers and ``state_dict`` are not touched. Training, and any call where
gradients flow, takes the unfolded path. Outputs equal the unfolded ones to float rounding
(the products are rounded in another order).
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, FrozenBatchNorm2d

__all__ = ["FoldedFrozenBNConv2d", "fold_frozen_batchnorm"]


class FoldedFrozenBNConv2d(Conv2d):
    """Detectron2's ``Conv2d`` with a ``FrozenBatchNorm2d`` norm, folded in eval (see the module doc).

    Same attributes and ``state_dict`` as ``Conv2d``; made by :func:`fold_frozen_batchnorm`.
    """

    def _folded(self):
        """(weight (C_out, C_in/g, kh, kw) * s, bias (C_out,)): cached, keyed by the tensors' versions."""
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
                # Keeps the weight's memory format (channels-last under MODEL.FPN.CHANNELS_LAST).
                weight = self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype)
            cache = (key, weight, bias.to(self.weight.dtype))
            self.__dict__["_fold_cache"] = cache
        return cache[1], cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if self.training or grad or torch.jit.is_scripting() or torch.jit.is_tracing() or not isinstance(self.norm, FrozenBatchNorm2d):
            return super().forward(x)
        weight, bias = self._folded()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def __getstate__(self):  # deepcopy / pickle: the cache is rebuilt on first use
        state = self.__dict__.copy()
        state.pop("_fold_cache", None)
        return state


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Turn every Detectron2 ``Conv2d`` in ``module`` whose norm is ``FrozenBatchNorm2d`` into a
    :class:`FoldedFrozenBNConv2d` in place (same object, same ``state_dict``). Returns how many."""
    count = 0
    for m in module.modules():
        if type(m) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            m.__class__ = FoldedFrozenBNConv2d
            count += 1
    return count
