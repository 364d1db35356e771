"""Where the default-on strategies run: only on the device types where they were measured.

A strategy that is on by default (``MODEL.ACCEL`` defaults) runs only on a device type for which
the figures in ``docs/performance.md`` show it faster than the plain path; elsewhere it steps aside
at run time and the model runs as its classes compute it (on CUDA: Detectron2's CUDA ``ROIAlign``
level by level, the plain top-down merge). A strategy the user turns on (``ROI_ALIGN
"embedding_bag"``, ``CHANNELS_LAST``, ``AUTOCAST_DTYPE``, ``FOLD_FROZEN_BN``, ``COMPILE``) runs on
any device: it was asked for.
"""

from typing import Dict, Tuple, Union

import torch

__all__ = ["MEASURED_DEVICE_TYPES", "runs_by_default", "roi_align_auto_path"]

#: Default-on strategy (its ``MODEL.ACCEL`` key in lower case) -> the device types where it runs.
#: CUDA has one: the anchor cache (H100: 65 µs against Detectron2's 996 µs per call). The
#: embedding-bag pooler was not faster there in training (4.0 ms against 3.9 ms), and the in-place
#: merge has no figure of its own on a GPU. The blocked layout is oneDNN's, CPU only by nature.
MEASURED_DEVICE_TYPES: Dict[str, Tuple[str, ...]] = {
    "cpu_blocked_layout": ("cpu",),
    "in_place_top_down": ("cpu",),
    "anchor_cache": ("cpu", "cuda"),
    "roi_align_auto": ("cpu",),
}


def runs_by_default(strategy: str, device: Union[torch.device, str]) -> bool:
    """Whether the default-on ``strategy`` (a key of :data:`MEASURED_DEVICE_TYPES`) runs on
    ``device``; ``False`` means it steps aside there."""
    if strategy not in MEASURED_DEVICE_TYPES:
        raise KeyError(
            f"{strategy!r} is not a default-on strategy; use one of {list(MEASURED_DEVICE_TYPES)}."
        )
    return torch.device(device).type in MEASURED_DEVICE_TYPES[strategy]


def roi_align_auto_path(device: Union[torch.device, str], gradients: bool) -> str:
    """What ``MODEL.ACCEL.ROI_ALIGN "auto"`` pools with on ``device``: ``"parallel"`` (inference,
    the RoI ops on threads), ``"embedding_bag"`` (``gradients`` flow to the features: one call for
    every level) or, where neither was measured, ``"per_level"`` (the RoI op level by level, as
    Detectron2)."""
    if not runs_by_default("roi_align_auto", device):
        return "per_level"
    return "embedding_bag" if gradients else "parallel"
