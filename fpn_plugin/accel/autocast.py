"""Inference mixed precision for a backbone (``MODEL.ACCEL.AUTOCAST_DTYPE``).

In eval, the backbone runs under ``torch.autocast`` with float16 or bfloat16 and returns float32
features, so the heads (Detectron2's RPN and RoI heads) run as they would without it. Outputs
differ from float32 by the dtype's rounding (float16: ~1e-3 relative). Training mixed precision
is Detectron2's ``SOLVER.AMP.ENABLED``.
"""

from typing import Dict

import torch

from .strategy import Strategy

__all__ = ["AUTOCAST_DTYPES", "InferenceAutocast"]

#: Values of MODEL.ACCEL.AUTOCAST_DTYPE.
AUTOCAST_DTYPES = {"": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


class InferenceAutocast(Strategy):
    """On a backbone: in eval, its forward under ``torch.autocast(dtype=self.autocast_dtype)``,
    float32 features out. Set ``autocast_dtype`` (a torch dtype) when applying it."""

    autocast_dtype: torch.dtype = torch.float16

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.training:
            return super().forward(x)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            features = super().forward(x)
        return {k: v.float() for k, v in features.items()}
