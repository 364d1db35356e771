"""Matching an exported model's detections to the eager model's (see :mod:`fpn_plugin.export`)."""

import math
from typing import Dict

import torch

__all__ = ["compare_detections", "compare_panoptic"]


def compare_detections(
    ref: Dict[str, torch.Tensor],
    got: Dict[str, torch.Tensor],
    tol: float = 1e-3,
    tie_tol: float = 1e-6,
    min_mask_iou: float = 0.99,
    min_panoptic_agreement: float = 0.99,
) -> Dict[str, float]:
    """Match exported detections to eager ones and measure their differences.

    Each eager detection is matched to an unmatched exported one of the same class (and level)
    whose box coordinates (pixels) and score differ by at most ``tol``, so that detections with
    near-tied scores may come in another order. Detections left unmatched are accepted only as
    ties at the ``TEST.DETECTIONS_PER_IMAGE`` cut: as many on each side, all scored within
    ``tie_tol`` of their side's lowest score (which of several equal scores is kept is arbitrary).

    Matched detections with masks (``pred_masks`` (R, 1, M, M) probabilities) must overlap with an
    IoU of at least ``min_mask_iou`` (masks thresholded at 0.5, on the M x M grid); with keypoints
    (``pred_keypoints`` (R, K, 3): x, y, score) their x, y (pixels) and scores must differ by at
    most ``tol``. Panoptic FPN's results (``panoptic_seg`` on both sides) are compared by
    :func:`compare_panoptic`, whose ``panoptic_agreement`` must be at least
    ``min_panoptic_agreement``.

    Returns ``ok`` (1.0 or 0.0), the counts (``num_eager``, ``num_exported``, ``matched``,
    ``ties_at_cut``), the largest box (pixels) and score differences of the matches, and, as
    applicable, the smallest ``min_mask_iou``, the largest ``max_keypoint_diff`` (x, y in
    pixels, and scores) and :func:`compare_panoptic`'s figures.
    """
    n_ref, n_got = len(ref["scores"]), len(got["scores"])
    rb, gb = ref["pred_boxes"].double(), got["pred_boxes"].double()
    rs, gs = ref["scores"].double(), got["scores"].double()
    same = ref["pred_classes"][:, None] == got["pred_classes"][None, :]
    if "pred_levels" in ref and "pred_levels" in got:
        same &= ref["pred_levels"][:, None] == got["pred_levels"][None, :]
    if n_ref and n_got:
        box_diff = (rb[:, None, :] - gb[None, :, :]).abs().amax(dim=2)
    else:
        box_diff = torch.zeros(n_ref, n_got, dtype=torch.float64)
    score_diff = (rs[:, None] - gs[None, :]).abs()
    candidate = same & (box_diff <= tol) & (score_diff <= tol)
    used_ref = torch.zeros(n_ref, dtype=torch.bool)
    used_got = torch.zeros(n_got, dtype=torch.bool)
    max_box, max_score = 0.0, 0.0
    pairs = []
    for i in range(n_ref):
        options = torch.nonzero(candidate[i] & ~used_got).flatten()
        if len(options) == 0:
            continue
        # The closest candidate, by box then score difference.
        j = int(options[torch.argmin(box_diff[i, options] + score_diff[i, options])])
        used_ref[i], used_got[j] = True, True
        pairs.append((i, j))
        max_box = max(max_box, float(box_diff[i, j]))
        max_score = max(max_score, float(score_diff[i, j]))
    matched = int(used_ref.sum())
    left_ref, left_got = rs[~used_ref], gs[~used_got]
    ties = (
        (
            len(left_ref) == len(left_got)
            and bool((left_ref <= rs.min() + tie_tol).all())
            and bool((left_got <= gs.min() + tie_tol).all())
        )
        if len(left_ref) or len(left_got)
        else True
    )
    extra, extra_ok = {}, True
    ri = torch.tensor([i for i, _ in pairs], dtype=torch.int64)
    gi = torch.tensor([j for _, j in pairs], dtype=torch.int64)
    if "pred_masks" in ref and "pred_masks" in got:
        a = ref["pred_masks"][ri].flatten(1) > 0.5
        b = got["pred_masks"][gi].flatten(1) > 0.5
        inter, union = (a & b).sum(1).double(), (a | b).sum(1).double()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        extra["min_mask_iou"] = float(iou.min()) if len(pairs) else math.nan
        extra_ok &= not len(pairs) or extra["min_mask_iou"] >= min_mask_iou
    if "pred_keypoints" in ref and "pred_keypoints" in got:
        diff = (ref["pred_keypoints"][ri].double() - got["pred_keypoints"][gi].double()).abs()
        extra["max_keypoint_diff"] = float(diff.max()) if diff.numel() else math.nan
        extra_ok &= not diff.numel() or extra["max_keypoint_diff"] <= tol
    if "panoptic_seg" in ref and "panoptic_seg" in got:
        panoptic = compare_panoptic(ref, got)
        extra.update(panoptic)
        extra_ok &= panoptic["panoptic_agreement"] >= min_panoptic_agreement
    return {
        "ok": float(n_ref == n_got and ties and extra_ok),
        "num_eager": n_ref,
        "num_exported": n_got,
        "matched": matched,
        "ties_at_cut": len(left_ref) if ties else 0,
        "max_box_diff": max_box if matched else math.nan,
        "max_score_diff": max_score if matched else math.nan,
        **extra,
    }


def compare_panoptic(
    ref: Dict[str, torch.Tensor], got: Dict[str, torch.Tensor]
) -> Dict[str, float]:
    """Panoptic segmentations compared pixel by pixel, after matching their segments (ids may
    differ where near-tied scores change the instances' order).

    ``ref`` and ``got`` hold ``panoptic_seg`` (H, W) segment ids (0: none), ``segment_classes``
    (S,) and ``segment_instances`` (S,) (>= 0 for things), as the program returns them
    (:mod:`fpn_plugin.export.panoptic`). Segments of the same class and kind (thing or stuff) are
    matched one to one, the pairs sharing the most pixels first.

    Returns ``panoptic_agreement``: the fraction of pixels whose segments are matched (or that
    are in no segment on both sides); ``num_segments_eager``, ``num_segments_exported``,
    ``matched_segments``; ``same_segments`` (1.0 if both have the same number of segments and
    all are matched, else 0.0); ``max_sem_seg_diff``: the largest difference of the semantic
    logits (``sem_seg`` (C, H, W), where both have it).
    """
    a, b = ref["panoptic_seg"].long(), got["panoptic_seg"].long()
    n_ref, n_got = len(ref["segment_classes"]), len(got["segment_classes"])
    result = {"num_segments_eager": n_ref, "num_segments_exported": n_got}
    if "sem_seg" in ref and "sem_seg" in got:
        same_shape = ref["sem_seg"].shape == got["sem_seg"].shape
        diff = (ref["sem_seg"].double() - got["sem_seg"].double()).abs() if same_shape else None
        result["max_sem_seg_diff"] = float(diff.max()) if same_shape and diff.numel() else math.nan
    if a.shape != b.shape:
        return dict(result, matched_segments=0, same_segments=0.0, panoptic_agreement=0.0)
    # Ids beyond the segment lists (a malformed result) count as unmatched segments.
    rows = max(n_ref, int(a.max()) if a.numel() else 0) + 1
    cols = max(n_got, int(b.max()) if b.numel() else 0) + 1
    joint = torch.bincount((a * cols + b).flatten(), minlength=rows * cols).view(rows, cols)

    def kinds(side, n, size):
        classes = torch.full((size,), -1, dtype=torch.int64)
        things = torch.zeros(size, dtype=torch.bool)
        classes[1 : n + 1] = side["segment_classes"].long()
        things[1 : n + 1] = side["segment_instances"] >= 0
        return classes, things

    ref_classes, ref_things = kinds(ref, n_ref, rows)
    got_classes, got_things = kinds(got, n_got, cols)
    compatible = (ref_classes[:, None] == got_classes[None, :]) & (
        ref_things[:, None] == got_things[None, :]
    )
    compatible &= (ref_classes[:, None] >= 0) & (got_classes[None, :] >= 0)
    overlap = torch.where(compatible, joint, torch.zeros_like(joint))
    pairs = torch.nonzero(overlap)
    order = torch.sort(overlap[pairs[:, 0], pairs[:, 1]], descending=True, stable=True)[1]
    used_ref, used_got, agreeing, matched = set(), set(), int(joint[0, 0]), 0
    for i, j in pairs[order].tolist():
        if i in used_ref or j in used_got:
            continue
        used_ref.add(i)
        used_got.add(j)
        agreeing += int(joint[i, j])
        matched += 1
    return dict(
        result,
        matched_segments=matched,
        same_segments=float(n_ref == n_got == matched),
        panoptic_agreement=agreeing / max(1, a.numel()),
    )
