"""Matching an exported model's detections to the eager model's (see :mod:`fpn_plugin.export`)."""

import math
from typing import Dict

import torch

__all__ = ["compare_detections"]


def compare_detections(
    ref: Dict[str, torch.Tensor],
    got: Dict[str, torch.Tensor],
    tol: float = 1e-3,
    tie_tol: float = 1e-6,
    min_mask_iou: float = 0.99,
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
    most ``tol``.

    Returns ``ok`` (1.0 or 0.0), the counts (``num_eager``, ``num_exported``, ``matched``,
    ``ties_at_cut``), the largest box (pixels) and score differences of the matches, and, as
    applicable, the smallest ``min_mask_iou`` and the largest ``max_keypoint_diff`` (x, y in
    pixels, and scores).
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
