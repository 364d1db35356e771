"""Multi-level RoIAlign as one weighted embedding-bag over all pyramid levels at once.

RoIAlign (He et al. 2017) averages, in each output bin, bilinear samples of the feature map; every
sample is a weighted sum of 4 pixels. So each output bin (one RoI, one bin, all C channels) is a
weighted sum of rows of the feature table ``(sum_l N * H_l * W_l, C)`` (channels-last, all levels
stacked) -- exactly what ``torch.nn.functional.embedding_bag(mode="sum", per_sample_weights=...)``
computes, vectorised over channels, multi-threaded, and differentiable w.r.t. the table.
One call pools every RoI from its own level, so there is no per-level loop; bilinear taps that
land on the same pixel are merged first (RoIAlign is separable along y and x), and the bags are
ordered by RoI so the pooled rows need only one transposing copy to (M, C, PH, PW).

Sampling positions, weights and border rules reproduce ``torchvision.ops.roi_align`` (which
Detectron2's ``ROIAlign`` calls), for ``aligned`` True (ROIAlignV2) and False, fixed and adaptive
sampling, so outputs agree to float rounding.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["multilevel_roi_align"]


def _axis_taps(
    start: torch.Tensor, size: torch.Tensor, grid: torch.Tensor, pooled: int, length: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per RoI and bin along one axis: the pixel window the bin's samples read, and its weights.

    RoIAlign's bilinear interpolation is separable, so a bin's 2-D taps are the outer product of
    its taps along y and along x. Along one axis, the ``grid`` samples of a bin read pixels
    ``low`` and ``low + 1`` each; the weights that land on the same pixel are summed, so a bin
    reads a window of K consecutive pixels (K <= grid + 1 for adaptive sampling) instead of
    2 * grid taps.

    Args:
        start, size: (R,) RoI start and extent on this axis, feature-map pixels.
        grid: (R,) int64 samples per bin on this axis (<= 0: the RoI has no samples).
        pooled: bins on this axis.
        length: (R,) int64 extent (H or W) of each RoI's feature map.
    Returns:
        first (R, pooled) int64 first pixel of each bin's window;
        weight (R, pooled, K) summed interpolation weights of the window's pixels (0 off the map);
        width (R,) int64 K needed by each RoI (the largest over its bins; >= 1).
    """
    dtype, device = start.dtype, start.device
    gmax = max(int(grid.max()), 1)
    i = torch.arange(gmax, device=device)
    valid = i[None, None, :] < grid[:, None, None]  # (R, 1, G)
    g = grid.clamp(min=1).to(dtype)[:, None, None]
    bin_size = (size / pooled)[:, None, None]
    p = torch.arange(pooled, dtype=dtype, device=device)[None, :, None]
    # torchvision's expression order: start + p * bin + (i + .5) * bin / grid.
    pos = start[:, None, None] + p * bin_size + (i.to(dtype) + 0.5)[None, None, :] * bin_size / g
    extent = length[:, None, None].to(dtype)
    inside = valid & (pos >= -1.0) & (pos <= extent)
    pos = pos.clamp(min=0)
    low = pos.floor()
    last = extent - 1
    at_edge = low >= last
    low = torch.where(at_edge, last, low)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low)
    low = low.long()
    high = torch.where(at_edge, low, low + 1)
    w_low, w_high = (1 - frac) * inside, frac * inside
    # Window: from the smallest to the largest pixel any valid sample reads.
    far = torch.iinfo(torch.int64).max
    first = torch.where(inside, low, far).amin(dim=2)
    first = torch.where(first == far, torch.zeros_like(first), first)
    last_px = torch.where(inside, high, -1).amax(dim=2)
    width = (last_px - first + 1).amax(dim=1).clamp(min=1)
    kmax = int(width.max())
    weight = torch.zeros(start.shape[0], pooled, kmax + 1, dtype=dtype, device=device)
    # Taps of invalid samples (weight 0) go to the spare last slot, dropped below.
    off_low = torch.where(inside, low - first[..., None], kmax)
    off_high = torch.where(inside, high - first[..., None], kmax)
    weight.scatter_add_(2, torch.cat([off_low, off_high], 2), torch.cat([w_low, w_high], 2))
    return first, weight[..., :kmax], width


def _table_memory(
    features: List[torch.Tensor], shape: Tuple[int, int], workspace: Optional[Dict[str, torch.Tensor]]
) -> torch.Tensor:
    """Uninitialised (rows, C) memory for the feature table: a view of ``workspace["table"]``
    (grown when too small) when no gradient can flow to ``features``, else a fresh tensor."""
    grad = torch.is_grad_enabled() and any(f.requires_grad for f in features)
    if workspace is None or grad:
        return features[0].new_empty(shape)
    numel = shape[0] * shape[1]
    buf = workspace.get("table")
    if buf is None or buf.numel() < numel or buf.dtype != features[0].dtype or buf.device != features[0].device:
        workspace.pop("table", None)  # free the old one before allocating the new one
        buf = features[0].new_empty((numel,))
        workspace["table"] = buf
    return buf[:numel].view(shape)


def multilevel_roi_align(
    features: List[torch.Tensor],
    rois: torch.Tensor,
    levels: torch.Tensor,
    scales: List[float],
    output_size: Tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    workspace: Optional[Dict[str, torch.Tensor]] = None,
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
        workspace: a dict that keeps the channels-last feature table between calls (key "table"),
            so that repeated inference reuses its memory instead of faulting in a fresh
            ~90 MB per 800x1333 image (page faults cost several times the copy itself). Only
            used when no gradient flows to ``features``; None allocates a fresh table.
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
    # One copy per level (none of the permute's own).
    rows_per_level = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
    table = _table_memory(features, (sum(rows_per_level), num_channels), workspace)
    begin = 0
    for f, rows in zip(features, rows_per_level):
        table[begin : begin + rows].view(f.shape[0], f.shape[2], f.shape[3], num_channels).copy_(f.permute(0, 2, 3, 1))
        begin += rows
    sizes = torch.tensor([[f.shape[2], f.shape[3]] for f in features], device=device)
    bases = torch.tensor([0] + rows_per_level[:-1], device=device).cumsum(0)

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
    # RoIs with no sample (zero or negative size with adaptive sampling) pool to 0, as in torchvision.
    has_samples = (grid_h > 0) & (grid_w > 0)
    grid_h = torch.where(has_samples, grid_h, 0)
    grid_w = torch.where(has_samples, grid_w, 0)
    count = (grid_h * grid_w).clamp(min=1).to(cdtype)
    height, width = sizes[levels, 0], sizes[levels, 1]
    first_y, wy, ky = _axis_taps(y0, h, grid_h, ph, height)
    first_x, wx, kx = _axis_taps(x0, w, grid_w, pw, width)
    wy = wy / count[:, None, None]
    row_base = bases[levels] + rois[:, 0].long() * height * width

    # Every RoI's 2-D taps are the outer product of its y and x windows: ky * kx per bin. RoIs
    # with the same (ky, kx) are computed together as dense tensors, in that (sorted) order.
    key = ky * 4096 + kx
    order = torch.argsort(key, stable=True)
    keys, counts = torch.unique_consecutive(key[order], return_counts=True)
    indices, weights, bag_sizes = [], [], []
    begin = 0
    for k, n in zip(keys.tolist(), counts.tolist()):
        sel = order[begin : begin + n]
        begin += n
        gy, gx = divmod(k, 4096)
        ys = (first_y[sel, :, None] + torch.arange(gy, device=device)).clamp(max=height[sel, None, None] - 1)
        xs = (first_x[sel, :, None] + torch.arange(gx, device=device)).clamp(max=width[sel, None, None] - 1)
        rows = row_base[sel, None, None] + ys * width[sel, None, None]  # (n, PH, gy)
        indices.append((rows[:, :, None, :, None] + xs[:, None, :, None, :]).reshape(-1))  # (n, PH, PW, gy, gx)
        weights.append((wy[sel, :, None, :gy, None] * wx[sel, None, :, None, :gx]).reshape(-1))
        bag_sizes.append(torch.full((n * ph * pw,), gy * gx, dtype=torch.long, device=device))
    # Taps are built group by group; the bags go to embedding_bag in RoI order (moving the 8-byte
    # tap indices is cheaper than moving the pooled C-float rows back afterwards).
    indices, weights, bag_sizes = torch.cat(indices), torch.cat(weights), torch.cat(bag_sizes)
    starts = torch.cumsum(bag_sizes, 0) - bag_sizes  # first tap of each bag, group order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_rois, device=device)
    bags = (rank[:, None] * (ph * pw) + torch.arange(ph * pw, device=device)).reshape(-1)  # RoI order
    sizes = bag_sizes[bags]
    offsets = torch.cumsum(sizes, 0) - sizes
    taps = torch.repeat_interleave(starts[bags] - offsets, sizes, output_size=indices.numel())
    taps += torch.arange(indices.numel(), device=device)
    pooled = F.embedding_bag(
        indices[taps], table, offsets, mode="sum", per_sample_weights=weights[taps].to(table.dtype),
    )
    # (M * PH * PW, C) -> (M, C, PH, PW), one transposing copy.
    return pooled.view(num_rois, ph, pw, num_channels).permute(0, 3, 1, 2).contiguous()
