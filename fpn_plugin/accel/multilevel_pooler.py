"""All pyramid levels pooled in one vectorised call (``MODEL.ACCEL.ROI_ALIGN``).

A level-mapping pooler calls its RoI op once per level; for ROIAlign and ROIAlignV2 this strategy
pools every RoI from its own level in one weighted embedding-bag instead
(:func:`~fpn_plugin.accel.roi_align.multilevel_roi_align`), which runs multi-threaded and
vectorised over channels on CPU. In inference the channels-last feature table it builds is kept
between calls (a workspace): allocating ~90 MB afresh per 800x1333 image costs more in page
faults than filling it. Results agree with the RoI ops to float rounding (the sums run in another
order), not bit for bit.

Detectron2's own ``ROIPooler`` is replaced by the equivalent
:class:`~fpn_plugin.modeling.pooler.LevelMappingROIPooler` first (poolers hold no parameters,
so nothing else changes).
"""
import threading
from typing import List

import torch
from torch import nn
from torchvision.ops import RoIPool

from detectron2.layers import ROIAlign, ROIAlignRotated
from detectron2.modeling.poolers import ROIPooler

from ..modeling.pooler import LevelMappingROIPooler
from .roi_align import multilevel_roi_align
from .strategy import Strategy, apply_strategy

__all__ = ["ROI_ALIGN_MODES", "MultiLevelROIAlign", "level_mapping_pooler_like", "apply_multilevel_roi_align"]

#: Values of MODEL.ACCEL.ROI_ALIGN: each level's RoI op; one call for all levels; that call on CPU only.
ROI_ALIGN_MODES = ("per_level", "embedding_bag", "auto")


class MultiLevelROIAlign(Strategy):
    """On a :class:`LevelMappingROIPooler` with ROIAlign or ROIAlignV2: ``pool`` in one call.

    Settings: ``roi_align_mode`` ("embedding_bag", or "auto" for CPU inputs only) and
    ``reuse_workspace`` (keep the feature table between inference calls; never used when
    gradients flow to the features; :meth:`release_workspace` frees it). A second thread running
    the same pooler at once gets a fresh table instead of waiting.
    """

    _transient = ("_workspace", "_workspace_lock")
    roi_align_mode: str = "auto"
    reuse_workspace: bool = True

    def pool(self, x: List[torch.Tensor], rois: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if not self.pools_in_one_call(x[0]):
            return super().pool(x, rois, levels)
        args = (list(x), rois, levels, self.scales, self.output_size, self.sampling_ratio, self.pooler_type == "ROIAlignV2")
        if not self.reuse_workspace or (torch.is_grad_enabled() and any(f.requires_grad for f in x)):
            return multilevel_roi_align(*args)
        lock = self.__dict__.setdefault("_workspace_lock", threading.Lock())
        if lock.acquire(blocking=False):
            try:
                return multilevel_roi_align(*args, workspace=self.__dict__.setdefault("_workspace", {}))
            finally:
                lock.release()
        return multilevel_roi_align(*args)

    def pools_in_one_call(self, x: torch.Tensor) -> bool:
        """Whether features like ``x`` are pooled by the vectorised call (else per level)."""
        if self.pooler_type not in ("ROIAlignV2", "ROIAlign") or torch.jit.is_tracing():
            return False
        return self.roi_align_mode == "embedding_bag" or (self.roi_align_mode == "auto" and x.device.type == "cpu")

    def release_workspace(self) -> None:
        """Free the memory kept between inference calls."""
        self.__dict__.pop("_workspace", None)


def level_mapping_pooler_like(pooler: ROIPooler) -> LevelMappingROIPooler:
    """The :class:`LevelMappingROIPooler` that computes what Detectron2's ``pooler`` computes."""
    op = pooler.level_poolers[0]
    if isinstance(op, ROIAlign):
        pooler_type, sampling_ratio = ("ROIAlignV2" if op.aligned else "ROIAlign"), op.sampling_ratio
    elif isinstance(op, ROIAlignRotated):
        pooler_type, sampling_ratio = "ROIAlignRotated", op.sampling_ratio
    elif isinstance(op, RoIPool):
        pooler_type, sampling_ratio = "ROIPool", 0
    else:
        raise ValueError(f"unknown RoI op {type(op).__name__} in Detectron2's ROIPooler")
    return LevelMappingROIPooler(
        pooler.output_size, [p.spatial_scale for p in pooler.level_poolers], sampling_ratio, pooler_type,
        pooler.canonical_box_size, pooler.canonical_level,
    )


def apply_multilevel_roi_align(model: nn.Module, mode: str, reuse_workspace: bool = True) -> int:
    """:class:`MultiLevelROIAlign` on every ROIAlign pooler of ``model`` (Detectron2's ``ROIPooler``
    replaced by its equivalent first); returns how many poolers."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is ROIPooler:
                setattr(parent, name, level_mapping_pooler_like(child))
    count = 0
    for pooler in model.modules():
        if isinstance(pooler, LevelMappingROIPooler) and pooler.pooler_type in ("ROIAlignV2", "ROIAlign"):
            apply_strategy(pooler, MultiLevelROIAlign, roi_align_mode=mode, reuse_workspace=reuse_workspace)
            count += 1
    return count
