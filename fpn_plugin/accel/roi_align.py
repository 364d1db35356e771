"""Multi-level RoIAlign as one weighted embedding-bag over all pyramid levels at once.

RoIAlign (He et al. 2017) averages, in each output bin, bilinear samples of the feature map; every
sample is a weighted sum of 4 pixels. So each output bin (one RoI, one bin, all C channels) is a
weighted sum of rows of the feature table ``(sum_l N * H_l * W_l, C)`` (channels-last, all levels
stacked) -- exactly what ``torch.nn.functional.embedding_bag(mode="sum", per_sample_weights=...)``
computes, vectorised over channels, multi-threaded, and differentiable w.r.t. the table.
Every RoI is pooled from its own level with no per-level loop; bilinear taps that land on the
same pixel are merged first (RoIAlign is separable along y and x).

- With gradients, one call pools all RoIs, its bags in RoI order, so the pooled rows need one
  transposing copy to (M, C, PH, PW) and the backward is one ``embedding_bag`` backward.
- In inference, the table holds only the pixels the RoIs read, and RoIs are pooled a few at a
  time (groups of equal tap count, chunks that fit the L2 cache), each chunk transposed into its
  RoIs' rows of the output while still in cache.

Sampling positions, weights and border rules reproduce ``torchvision.ops.roi_align`` (which
Detectron2's ``ROIAlign`` calls), for ``aligned`` True (ROIAlignV2) and False, fixed and adaptive
sampling, so outputs agree to float rounding.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["multilevel_roi_align"]


def _int_amin(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.amin(dim)`` for int64 ``x`` > int64 min, as ``-(-x).amax(dim)``: PyTorch's CPU int64
    ``amin`` is far slower than its ``amax`` (docs/performance.md)."""
    return -(-x).amax(dim=dim)


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
    first = _int_amin(torch.where(inside, low, far), dim=2)
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
    features: List[torch.Tensor],
    shape: Tuple[int, int],
    workspace: Optional[Dict[str, torch.Tensor]],
) -> torch.Tensor:
    """Uninitialised (rows, C) memory for the feature table: a view of ``workspace["table"]``
    (grown when too small), or a fresh tensor when ``workspace`` is None."""
    if workspace is None:
        return features[0].new_empty(shape)
    numel = shape[0] * shape[1]
    buf = workspace.get("table")
    if (
        buf is None
        or buf.numel() < numel
        or buf.dtype != features[0].dtype
        or buf.device != features[0].device
    ):
        workspace.pop("table", None)  # free the old one before allocating the new one
        buf = features[0].new_empty((numel,))
        workspace["table"] = buf
    return buf[:numel].view(shape)


def _feature_table(
    features: List[torch.Tensor],
    levels: torch.Tensor,
    images: torch.Tensor,
    y_windows: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    x_windows: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    workspace: Optional[Dict[str, torch.Tensor]],
    grad: bool,
) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """The pixels the RoIs read, channels last, as one (rows, C) table.

    In inference, for each (level, image) pair the table holds the smallest box of pixels that
    contains every window its RoIs read -- nothing for a pair without RoIs -- so a level that few
    RoIs use costs little to copy. When gradients flow to ``features`` it holds every pixel, so
    that every level gets a gradient (zero where no RoI reads), as with Detectron2's pooler, and
    is a fresh tensor (never the workspace).
    Row of pixel (y, x) of a pair = base + (y - top) * box_width + (x - left).

    Args:
        features: L maps (N, C, H_l, W_l).
        levels, images: (R,) int64 level and image of each RoI.
        y_windows, x_windows: per axis, (first (R, P) first pixel of each bin's window,
            width (R,) window length, extent (R,) H or W of the RoI's level), from
            :func:`_axis_taps`.
        workspace: see :func:`multilevel_roi_align`.
        grad: whether gradients flow to ``features``.
    Returns:
        the table, and (top, left, box_width, base): (R,) int64 each, for each RoI's pair.
    """
    num_images, num_channels = features[0].shape[:2]
    device = levels.device
    if grad:
        # Every pixel, one copy (one autograd node) per level:
        # row = level base + (n * H + y) * W + x.
        rows_per_level = [f.shape[0] * f.shape[2] * f.shape[3] for f in features]
        table = features[0].new_empty((sum(rows_per_level), num_channels))
        begin = 0
        for f, rows in zip(features, rows_per_level):
            table[begin : begin + rows].view(
                f.shape[0], f.shape[2], f.shape[3], num_channels
            ).copy_(f.permute(0, 2, 3, 1))
            begin += rows
        level_base = torch.tensor([0] + rows_per_level[:-1], device=device).cumsum(0)
        height, width = y_windows[2], x_windows[2]
        zero = torch.zeros_like(levels)
        return table, (zero, zero, width, level_base[levels] + images * height * width)
    group = levels * num_images + images  # (R,) index of the RoI's (level, image) pair
    num_groups = len(features) * num_images
    bounds = []
    for first, width, extent in (y_windows, x_windows):
        # A bin's window reads first .. first + width - 1, clamped to the map (see the taps).
        start = torch.full((num_groups,), torch.iinfo(torch.int64).max, device=device)
        start.scatter_reduce_(0, group, _int_amin(first, dim=1), "amin")
        end = torch.zeros(num_groups, dtype=torch.int64, device=device)
        end.scatter_reduce_(0, group, torch.minimum(first.amax(dim=1) + width, extent), "amax")
        bounds += [start, end]
    top, bottom, left, right = bounds
    used = bottom > 0
    top, left = torch.where(used, top, 0), torch.where(used, left, 0)
    box_width = right - left
    rows = (bottom - top) * box_width
    base = torch.cumsum(rows, 0) - rows
    table = _table_memory(features, (int(rows.sum()), num_channels), workspace)
    for g, (y0, y1, x0, x1, first_row) in enumerate(
        torch.stack([top, bottom, left, right, base], 1).tolist()
    ):
        if y1 > y0:
            f = features[g // num_images][g % num_images]
            box = table[first_row : first_row + (y1 - y0) * (x1 - x0)].view(
                y1 - y0, x1 - x0, num_channels
            )
            box.copy_(f[:, y0:y1, x0:x1].permute(1, 2, 0))
    return table, (top[group], left[group], box_width[group], base[group])


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
            so that repeated inference reuses its memory instead of faulting in a fresh one (up
            to N * sum_l H_l * W_l * C floats per call), whose page faults cost more than the copy
            itself. Only used when no gradient flows to ``features``; None allocates a fresh table.
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

    sizes = torch.tensor([[f.shape[2], f.shape[3]] for f in features], device=device)

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
    # RoIs with no sample (zero or negative size with adaptive sampling) pool to 0, as in
    # torchvision.
    has_samples = (grid_h > 0) & (grid_w > 0)
    grid_h = torch.where(has_samples, grid_h, 0)
    grid_w = torch.where(has_samples, grid_w, 0)
    count = (grid_h * grid_w).clamp(min=1).to(cdtype)
    height, width = sizes[levels, 0], sizes[levels, 1]
    first_y, wy, ky = _axis_taps(y0, h, grid_h, ph, height)
    first_x, wx, kx = _axis_taps(x0, w, grid_w, pw, width)
    wy = wy / count[:, None, None]
    grad = torch.is_grad_enabled() and any(f.requires_grad for f in features)
    table, (top, left, box_width, base) = _feature_table(
        features,
        levels,
        rois[:, 0].long(),
        (first_y, ky, height),
        (first_x, kx, width),
        workspace,
        grad,
    )
    row_base = base - top * box_width - left  # row of pixel (y, x) = row_base + y * box_width + x

    # Every RoI's 2-D taps are the outer product of its y and x windows: ky * kx per bin. RoIs
    # with the same (ky, kx) are computed together as dense tensors.
    key = ky * 4096 + kx
    order = torch.argsort(key, stable=True)
    keys, counts = torch.unique_consecutive(key[order], return_counts=True)
    groups = []
    begin = 0
    for k, n in zip(keys.tolist(), counts.tolist()):
        sel = order[begin : begin + n]  # ascending RoI indices (stable sort)
        begin += n
        gy, gx = divmod(k, 4096)
        ys = (first_y[sel, :, None] + torch.arange(gy, device=device)).clamp(
            max=height[sel, None, None] - 1
        )
        xs = (first_x[sel, :, None] + torch.arange(gx, device=device)).clamp(
            max=width[sel, None, None] - 1
        )
        rows = row_base[sel, None, None] + ys * box_width[sel, None, None]  # (n, PH, gy)
        # (n * PH * PW bags, gy * gx taps): one bag per output bin, RoI-major.
        indices = (rows[:, :, None, :, None] + xs[:, None, :, None, :]).reshape(
            n * ph * pw, gy * gx
        )
        weights = (wy[sel, :, None, :gy, None] * wx[sel, None, :, None, :gx]).reshape(
            n * ph * pw, gy * gx
        )
        groups.append((sel, indices, weights.to(table.dtype)))
    if grad:
        return _pool_in_one_call(table, groups, num_rois, (ph, pw))
    return _pool_in_chunks(table, groups, num_rois, (ph, pw))


def _pool_in_one_call(
    table: torch.Tensor,
    groups: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    num_rois: int,
    output_size: Tuple[int, int],
) -> torch.Tensor:
    """With gradients: one embedding_bag call (its backward makes a table-sized gradient per
    call), the bags put in RoI order first -- moving the 8-byte tap indices is cheaper than moving
    the pooled C-float rows afterwards.

    Args:
        table: (rows, C) channels-last pixels (see :func:`_feature_table`).
        groups: (RoI indices (n,), tap rows (n * PH * PW, K), tap weights (n * PH * PW, K)) per
            group of RoIs with the same K taps per bin.
    Returns:
        (M, C, PH, PW) pooled features.
    """
    ph, pw = output_size
    bins = ph * pw
    device = table.device
    order = torch.cat([sel for sel, _, _ in groups])
    indices = torch.cat([idx.reshape(-1) for _, idx, _ in groups])
    weights = torch.cat([w.reshape(-1) for _, _, w in groups])
    bag_sizes = torch.cat(
        [
            torch.full((idx.shape[0],), idx.shape[1], dtype=torch.long, device=device)
            for _, idx, _ in groups
        ]
    )
    starts = torch.cumsum(bag_sizes, 0) - bag_sizes  # first tap of each bag, group order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_rois, device=device)
    bags = (rank[:, None] * bins + torch.arange(bins, device=device)).reshape(-1)  # RoI order
    sizes = bag_sizes[bags]
    offsets = torch.cumsum(sizes, 0) - sizes
    taps = torch.repeat_interleave(starts[bags] - offsets, sizes, output_size=indices.numel())
    taps += torch.arange(indices.numel(), device=device)
    pooled = F.embedding_bag(
        indices[taps], table, offsets, mode="sum", per_sample_weights=weights[taps]
    )
    # (M * PH * PW, C) -> (M, C, PH, PW), one transposing copy.
    return pooled.view(num_rois, ph, pw, table.shape[1]).permute(0, 3, 1, 2).contiguous()


# Pooled rows per chunk in inference: small enough to stay in the cores' L2 caches between
# embedding_bag writing them and the transposing copy reading them, and to be reused heap memory
# (a single M * PH * PW * C result would be freshly mapped and page-faulted on every call). The
# size was chosen by measurement (docs/performance.md).
_CHUNK_BYTES = 4 << 20


def _pool_in_chunks(
    table: torch.Tensor,
    groups: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    num_rois: int,
    output_size: Tuple[int, int],
) -> torch.Tensor:
    """Inference: the weighted embedding-bag a few RoIs at a time, group by group, each chunk
    transposed into its RoIs' rows of the (M, C, PH, PW) output while still in cache. Same sums,
    same results as :func:`_pool_in_one_call` (arguments as there)."""
    ph, pw = output_size
    num_channels = table.shape[1]
    bins = ph * pw
    output = table.new_empty((num_rois, num_channels, ph, pw))
    step = max(1, _CHUNK_BYTES // (bins * num_channels * table.element_size()))
    for sel, indices, weights in groups:
        for r0 in range(0, sel.numel(), step):
            r1 = min(sel.numel(), r0 + step)
            # Fixed-size bags: a 2-D input needs no offsets.
            pooled = F.embedding_bag(
                indices[r0 * bins : r1 * bins],
                table,
                mode="sum",
                per_sample_weights=weights[r0 * bins : r1 * bins],
            )
            output.index_copy_(
                0, sel[r0:r1], pooled.view(r1 - r0, ph, pw, num_channels).permute(0, 3, 1, 2)
            )
    return output
