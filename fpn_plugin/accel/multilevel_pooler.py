"""All pyramid levels pooled in one vectorised call (``MODEL.ACCEL.ROI_ALIGN: "embedding_bag"``).

A level-mapping pooler calls its RoI op once per level; for ROIAlign and ROIAlignV2 this strategy
pools every RoI from its own level in one weighted embedding-bag instead
(:func:`~fpn_plugin.accel.roi_align.multilevel_roi_align`), which runs multi-threaded and
vectorised over channels on CPU. In inference the channels-last feature table it builds is kept
between calls (a workspace): allocating the (N * sum_l H_l * W_l, C) table afresh costs more in page
faults than filling it. Results agree with the RoI ops to float rounding (the sums run in another
order), not bit for bit.
"""

import threading
from typing import List

import torch

from .devices import roi_align_auto_path
from .roi_align import multilevel_roi_align
from .strategy import Strategy

__all__ = ["MultiLevelROIAlign"]


class MultiLevelROIAlign(Strategy):
    """On a :class:`~fpn_plugin.modeling.pooler.LevelMappingROIPooler` with ROIAlign or ROIAlignV2:
    ``pool`` in one call, on any device.

    Settings: ``reuse_workspace``: keep the feature table between inference calls (never used when
    gradients flow to the features; :meth:`release_workspace` frees it). A second thread running
    the same pooler at once gets a fresh table instead of waiting. ``by_default``: applied by
    ``ROI_ALIGN "auto"``, so it steps aside on devices where that choice was not measured
    (:func:`~fpn_plugin.accel.devices.roi_align_auto_path`).
    """

    _transient = ("_workspace", "_workspace_lock")
    reuse_workspace: bool = True
    by_default: bool = False

    def pool(self, x: List[torch.Tensor], rois: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if not self.pools_in_one_call(x[0]):
            return super().pool(x, rois, levels)
        pooled = levels >= 0
        if not bool(pooled.all()):  # RoIs the pooler leaves at zero (non-finite boxes)
            output = x[0].new_zeros((rois.shape[0], x[0].shape[1]) + self.output_size)
            output[pooled] = self.pool(x, rois[pooled], levels[pooled])
            return output
        args = (
            list(x),
            rois,
            levels,
            self.scales,
            self.output_size,
            self.sampling_ratio,
            self.pooler_type == "ROIAlignV2",
        )
        if not self.reuse_workspace or (
            torch.is_grad_enabled() and any(f.requires_grad for f in x)
        ):
            return multilevel_roi_align(*args)
        lock = self.__dict__.setdefault("_workspace_lock", threading.Lock())
        if lock.acquire(blocking=False):
            try:
                return multilevel_roi_align(
                    *args, workspace=self.__dict__.setdefault("_workspace", {})
                )
            finally:
                lock.release()
        return multilevel_roi_align(*args)

    def pools_in_one_call(self, x: torch.Tensor) -> bool:
        """Whether features like ``x`` are pooled by the vectorised call (else per level)."""
        if self.by_default and roi_align_auto_path(x.device, gradients=True) != "embedding_bag":
            return False
        return self.pooler_type in ("ROIAlignV2", "ROIAlign") and not torch.jit.is_tracing()

    def release_workspace(self) -> None:
        """Free the memory kept between inference calls."""
        self.__dict__.pop("_workspace", None)
