"""Multi-level RoIAlign as one weighted embedding-bag over all pyramid levels at once.

RoIAlign (He et al. 2017) averages, in each output bin, bilinear samples of the feature map; every
sample is a weighted sum of 4 pixels. So each output bin (one RoI, one bin, all C channels) is a
weighted sum of rows of the feature table ``(sum_l N * H_l * W_l, C)`` (channels-last, all levels
stacked) -- exactly what ``torch.nn.functional.embedding_bag(mode="sum", per_sample_weights=...)``
computes, vectorised over channels, multi-threaded, and differentiable w.r.t. the table.
One call pools every RoI from its own level, so there is no per-level loop and no scatter.

Sampling positions, weights and border rules reproduce ``torchvision.ops.roi_align`` (which
Detectron2's ``ROIAlign`` calls), for ``aligned`` True (ROIAlignV2) and False, fixed and adaptive
sampling, so outputs agree to float rounding.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F

__all__ = ["multilevel_roi_align"]


def _axis_samples(
    start: torch.Tensor, size: torch.Tensor, grid: int, pooled: int, length: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis for RoIs that share the same number of samples per bin.

    Args:
        start, size: (R,) RoI start and extent on this axis, in feature-map pixels.
        grid: samples per bin on this axis.
        pooled: bins on this axis.
        length: (R,) feature-map extent (H or W) of each RoI's level.
    Returns:
        index (R, pooled, grid, 2) int64 pixel indices (low, high) and
        weight (R, pooled, grid, 2) their interpolation weights (0 for samples off the map).
    """
    dtype = start.dtype
    bin_size = (size / pooled)[:, None, None]
    p = torch.arange(pooled, dtype=dtype, device=start.device)[None, :, None]
    g = torch.arange(grid, dtype=dtype, device=start.device)[None, None, :]
    # Same expression order as torchvision's kernel: start + p * bin + (g + .5) * bin / grid.
    pos = start[:, None, None] + p * bin_size + (g + 0.5) * bin_size / grid
    length = length[:, None, None].to(dtype)
    inside = (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.floor()
    last = length - 1
    at_edge = low >= last
    low = torch.where(at_edge, last, low)
    high = torch.where(at_edge, last, low + 1)
    pos = torch.where(at_edge, last, pos)
    frac = pos - low
    weight = torch.stack((1 - frac, frac), dim=-1) * inside[..., None]
    index = torch.stack((low, high), dim=-1).long()
    return index, weight


def multilevel_roi_align(
    features: List[torch.Tensor],
    rois: torch.Tensor,
    levels: torch.Tensor,
    scales: List[float],
    output_size: Tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """RoIAlign of each RoI from its own pyramid level.

    Args:
        features: L maps, (N, C, H_l, W_l) each (any memory format).
        rois: (M, 5) rows of (batch index, x0, y0, x1, y1) in input-image pixels.
        levels: (M,) int64 level index in [0, L) of each RoI.
        scales: L spatial scales (1 / stride).
        output_size: (PH, PW) bins.
        sampling_ratio: samples per bin and axis; <= 0 for adaptive ceil(roi_size / bins).
        aligned: shift by -0.5 pixel (ROIAlignV2, Detectron2's default) or not (legacy ROIAlign).
    Returns:
        (M, C, PH, PW) pooled features, dtype of ``features``.
    """
    ph, pw = output_size
    num_channels = features[0].shape[1]
    dtype = features[0].dtype
    device = features[0].device
    num_rois = rois.shape[0]
    if num_rois == 0:
        return features[0].new_zeros((0, num_channels, ph, pw))

    # Table of all pixels of all levels, channels last: row = level_base + (n * H + y) * W + x.
    table = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, num_channels) for f in features])
    sizes = torch.tensor([[f.shape[2], f.shape[3]] for f in features], device=device)
    bases = torch.tensor([0] + [f.shape[0] * f.shape[2] * f.shape[3] for f in features], device=device).cumsum(0)

    # Coordinates in the feature dtype, as torchvision does (float32 for half inputs).
    cdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    rois = rois.to(cdtype)
    scale = torch.tensor(scales, dtype=cdtype, device=device)[levels]
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * scale - offset
    y0 = rois[:, 2] * scale - offset
    w = rois[:, 3] * scale - offset - x0
    h = rois[:, 4] * scale - offset - y0
    if not aligned:  # legacy ROIAlign forces RoIs to be at least 1x1
        w = w.clamp(min=1.0)
        h = h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full_like(levels, sampling_ratio)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(h / ph).long()
        grid_w = torch.ceil(w / pw).long()
    height, width = sizes[levels, 0], sizes[levels, 1]
    row_base = bases[levels] + rois[:, 0].long() * height * width

    # Group RoIs by their (grid_h, grid_w) so each group is a dense, regular computation.
    # RoIs with no sample (zero or negative size with adaptive sampling) pool to 0, as in torchvision.
    has_samples = (grid_h > 0) & (grid_w > 0)
    key = torch.where(has_samples, grid_h * 4096 + grid_w, -1)
    order = torch.argsort(key, stable=True)
    uniq, counts = torch.unique_consecutive(key[order], return_counts=True)
    indices, weights, bag_sizes, pooled_rois = [], [], [], []
    start = 0
    for k, n in zip(uniq.tolist(), counts.tolist()):
        sel = order[start : start + n]
        start += n
        if k < 0:
            continue
        gh, gw = divmod(k, 4096)
        iy, wy = _axis_samples(y0[sel], h[sel], gh, ph, height[sel])  # (n, PH, gh, 2)
        ix, wx = _axis_samples(x0[sel], w[sel], gw, pw, width[sel])  # (n, PW, gw, 2)
        # Every (y tap, x tap) pair of a bin: (n, PH, PW, gh*2 * gw*2).
        rows = row_base[sel].view(n, 1, 1, 1) + iy.reshape(n, ph, 1, -1) * width[sel].view(n, 1, 1, 1)
        idx = rows[..., :, None] + ix.reshape(n, 1, pw, 1, -1)
        wgt = wy.reshape(n, ph, 1, -1, 1) * wx.reshape(n, 1, pw, 1, -1) / (gh * gw)
        indices.append(idx.reshape(-1))
        weights.append(wgt.reshape(-1))
        bag_sizes.append(torch.full((n * ph * pw,), 4 * gh * gw, dtype=torch.long, device=device))
        pooled_rois.append(sel)
    if not pooled_rois:
        return features[0].new_zeros((num_rois, num_channels, ph, pw))
    bag_sizes = torch.cat(bag_sizes)
    offsets = torch.cumsum(bag_sizes, 0) - bag_sizes
    pooled = F.embedding_bag(
        torch.cat(indices), table, offsets, mode="sum", per_sample_weights=torch.cat(weights).to(table.dtype)
    ).view(-1, ph, pw, num_channels)
    if len(pooled_rois) == 1 and pooled.shape[0] == num_rois:
        out = pooled  # one group holding every RoI: already in the input order (stable argsort)
    else:
        out = pooled.new_zeros((num_rois, ph, pw, num_channels)).index_copy(0, torch.cat(pooled_rois), pooled)
    # (M, PH, PW, C) -> (M, C, PH, PW): a channels-last view, no copy.
    return out.permute(0, 3, 1, 2)
