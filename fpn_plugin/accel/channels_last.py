"""Channels-last (NHWC) memory layout for a backbone (``MODEL.ACCEL.CHANNELS_LAST``).

CPU (oneDNN) and GPU (cuDNN) convolutions run faster on NHWC tensors. Parameters keep their names
and values; their memory is reordered once, so that convolutions do not reorder them at every
call (``load_state_dict`` copies into these tensors and keeps their layout). NHWC convolutions
sum in another order, so features equal the NCHW ones to float rounding, not bit for bit.
"""

from typing import Dict

import torch
from torch import nn

from .strategy import Strategy, apply_strategy

__all__ = ["ChannelsLast", "apply_channels_last"]


class ChannelsLast(Strategy):
    """On a backbone: its input made channels-last, so every layer runs NHWC; outputs are NHWC."""

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return super().forward(x.contiguous(memory_format=torch.channels_last))


def apply_channels_last(backbone: nn.Module) -> nn.Module:
    """:class:`ChannelsLast` on ``backbone``, its weights reordered to NHWC (in place)."""
    backbone.to(memory_format=torch.channels_last)
    return apply_strategy(backbone, ChannelsLast)
