"""Realistic workloads for untrained detectors, for tests and benchmarks (no weights are
downloaded), as ``detectron2.utils.testing`` has for Detectron2's own tests.

An untrained R50-FPN does not behave like a trained one: its un-normalised (FrozenBN) ResNet
features are in the thousands, so the RPN's box deltas blow every proposal up to the whole image
and NMS leaves a handful of boxes. Timing or comparing such a model measures the wrong work.
"""

import math

import torch

__all__ = ["make_trained_like", "random_boxes"]

KEYPOINT_DAMPING = 1e-3


def make_trained_like(model: torch.nn.Module) -> None:
    """Scale the random heads of an untrained detector in place so it proposes and detects like a
    trained one.

    Two-stage (GeneralizedRCNN: Faster / Mask / Keypoint R-CNN): small RPN box deltas and spread
    objectness give ~1000 distinct proposals per image at test time; zero-mean classifier rows
    (cancelling the component all post-ReLU box features share) give detections of several
    classes; a damped keypoint predictor gives finite, peaked heatmaps (raw ones overflow to
    NaN on features in the thousands). The mask head's own init already gives varied masks.
    One-stage (RetinaNet): small box deltas, and class logits of std ~1.6 around the prior
    (-4.6), so a few hundred anchors pass the 0.05 score threshold, as with a trained model.
    Works on Detectron2's models and the plugin's.
    """
    with torch.no_grad():
        if hasattr(model, "head") and hasattr(model.head, "cls_score"):  # RetinaNet
            model.head.cls_score.weight.mul_(0.1)
            model.head.bbox_pred.weight.mul_(1e-4)
            return
        if getattr(model, "proposal_generator", None) is None:
            return  # semantic segmentation: no box heads
        rpn = model.proposal_generator.rpn_head
        rpn.anchor_deltas.weight.mul_(1e-3)
        rpn.objectness_logits.weight.mul_(0.02)
        predictor = model.roi_heads.box_predictor
        w = predictor.cls_score.weight
        w.sub_(w.mean(dim=1, keepdim=True)).mul_(0.01)
        predictor.bbox_pred.weight.mul_(1e-4)
        keypoint_head = getattr(model.roi_heads, "keypoint_head", None)
        if keypoint_head is not None and hasattr(keypoint_head, "score_lowres"):
            keypoint_head.score_lowres.weight.mul_(KEYPOINT_DAMPING)


def random_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    min_size: float = 16.0,
    max_size: float = 800.0,
) -> torch.Tensor:
    """(n, 4) XYXY boxes in pixels: sizes sqrt(wh) log-uniform in [min_size, max_size], aspect
    ratios in [1/e, e], centres uniform in the height x width image, clipped to it."""
    size = torch.exp(
        torch.empty(n).uniform_(math.log(min_size), math.log(max_size), generator=generator)
    )
    ratio = torch.exp(torch.empty(n).uniform_(-1, 1, generator=generator))
    w, h = size * ratio.sqrt(), size / ratio.sqrt()
    cx = torch.rand(n, generator=generator) * width
    cy = torch.rand(n, generator=generator) * height
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes
