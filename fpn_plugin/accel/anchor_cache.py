"""Anchor grids kept between calls (``MODEL.ACCEL.ANCHOR_CACHE_SIZE``).

An anchor generator's output depends only on the feature-map sizes (and device and dtype), which
repeat from image to image at test time; rebuilding the grids every call costs more than the
RPN head's small convs on the coarse levels. The grids are kept in a bounded least-recently-used
cache, for the plugin's ``SharedAnchorGenerator`` and Detectron2's ``DefaultAnchorGenerator`` alike.
"""

import collections
from typing import List

import torch

from detectron2.structures import Boxes

from .devices import runs_by_default
from .strategy import Strategy

__all__ = ["AnchorCache"]


class AnchorCache(Strategy):
    """On an anchor generator: grids cached per (feature sizes, device, dtype), at most
    ``anchor_cache_size`` sets (set it when applying), on the devices where it was measured (CPU,
    CUDA). The cached tensors are shared between calls: treat them as read-only."""

    _transient = ("_anchor_cache",)
    anchor_cache_size: int = 16

    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        if (
            torch.jit.is_tracing()
            or self.anchor_cache_size <= 0
            or not runs_by_default("anchor_cache", features[0].device)
        ):
            return super().forward(features)
        dtype = next(self.buffers()).dtype
        key = (
            tuple((int(f.shape[-2]), int(f.shape[-1])) for f in features),
            str(features[0].device),
            dtype,
        )
        cache = self.__dict__.setdefault("_anchor_cache", collections.OrderedDict())
        grids = cache.get(key)
        if grids is None:
            grids = [boxes.tensor for boxes in super().forward(features)]
            cache[key] = grids
            while len(cache) > self.anchor_cache_size:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return [Boxes(g) for g in grids]

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() move the cell anchors; grids of the old device/dtype are dropped.
        self.__dict__.pop("_anchor_cache", None)
        return super()._apply(fn, *args, **kwargs)
