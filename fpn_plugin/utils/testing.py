"""Realistic workloads for untrained detectors, for tests and benchmarks (no weights are
downloaded), as ``detectron2.utils.testing`` has for Detectron2's own tests.

An untrained R50-FPN does not behave like a trained one: its un-normalised (FrozenBN) ResNet
features are in the thousands, so the RPN's box deltas blow every proposal up to the whole image
and NMS leaves a handful of boxes. Timing or comparing such a model measures the wrong work.
"""

import math

import torch
from torch import nn

__all__ = [
    "LOGIT_RANGE",
    "blob_image",
    "build_detecting_model",
    "make_detecting",
    "make_trained_like",
    "random_boxes",
]

KEYPOINT_DAMPING = 1e-3
#: Largest class logit's distance from its reference after :func:`make_detecting` (RetinaNet: the
#: prior, -4.6, giving scores up to ~0.8, none saturated; two-stage: the mean of the RoI's logits,
#: giving the quickstart detectors' 100 detections scores from ~0.15 to ~1).
LOGIT_RANGE = 6.0


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


def blob_image(height: int, width: int, seed: int) -> torch.Tensor:
    """(3, height, width) float32 in [0, 255] (BGR or RGB alike): smooth blobs plus noise, so that
    features vary over the image."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(1, height // 32), max(1, width // 32), generator=g)
    smooth = nn.functional.interpolate(
        coarse, size=(height, width), mode="bilinear", align_corners=False
    )[0]
    return (0.8 * smooth + 0.2 * torch.rand(3, height, width, generator=g)) * 255


def _calibrate_batch_norms(model: nn.Module, run) -> None:
    """Set the running statistics of every BatchNorm in ``model`` to those of its inputs during
    one call of ``run()`` (as training would), then back to eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: the statistics of this one batch
        m.train()
    run()
    for m in norms:
        m.eval()
        # A coarse level's statistics come from a few cells: a floor keeps other images'
        # features from being scaled up by a near-zero variance.
        m.running_var.clamp_(min=float(m.running_var.mean()))


def _retinanet_logits(model: nn.Module, image: torch.Tensor):
    """The RetinaNet head's class logits, one (1, A*K, Hi, Wi) tensor per level, on ``image``."""
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    return model.head([features[f] for f in model.head_in_features])[0]


def _box_logits(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """A two-stage detector's class logits (P, C + 1) of its proposals on ``image``."""
    captured = []
    hook = model.roi_heads.box_predictor.cls_score.register_forward_hook(
        lambda module, inputs, output: captured.append(output)
    )
    try:
        model.inference([{"image": image}], do_postprocess=False)
    finally:
        hook.remove()
    return captured[0]


def make_detecting(model: nn.Module, image: torch.Tensor) -> nn.Module:
    """``model`` (eval mode) made to detect on images like ``image`` ((3, H, W) float32, 0..255),
    in place: :func:`make_trained_like`, then the BatchNorm statistics set from ``image`` (as
    training would) and the class logits scaled to a range of :data:`LOGIT_RANGE`. Returns
    ``model``.

    ``make_trained_like`` alone is not enough for the small quickstart networks: their features
    are too small for its scales (RetinaNet: every logit within 1e-3 of the prior, no detection;
    two-stage: every score within 3e-4 of 0.2, so that overlapping boxes one float32 step apart
    decide NMS), and BiFPN's batch norms with their initial statistics give near-constant maps.
    With this, a RetinaNet passes a few hundred anchors over the 0.05 threshold, and a two-stage
    detector's detections of several classes have scores spread over (0.1, 1); NMS keeps the
    ``TEST.DETECTIONS_PER_IMAGE`` best. Masks and keypoints come from the heads' own (calibrated)
    weights.
    """
    make_trained_like(model)
    retinanet = hasattr(model, "head") and hasattr(model.head, "cls_score")
    if not retinanet and getattr(model, "proposal_generator", None) is None:
        return model  # semantic segmentation: no box heads
    with torch.no_grad():
        if retinanet:
            _calibrate_batch_norms(model, lambda: _retinanet_logits(model, image))
            prior = model.head.cls_score.bias.mean()
            logits = _retinanet_logits(model, image)
            deviation = torch.cat([(x - prior).flatten() for x in logits]).abs()
            model.head.cls_score.weight.mul_(LOGIT_RANGE / deviation.max())
        else:
            _calibrate_batch_norms(
                model, lambda: model.inference([{"image": image}], do_postprocess=False)
            )
            logits = _box_logits(model, image)
            deviation = (logits - logits.mean(dim=1, keepdim=True)).abs().max()
            model.roi_heads.box_predictor.cls_score.weight.mul_(LOGIT_RANGE / deviation)
    return model


def build_detecting_model(cfg, image: torch.Tensor = None, seed: int = 0) -> nn.Module:
    """The detector of ``cfg`` (Detectron2's ``build_model``, eval mode, random weights drawn
    after ``torch.manual_seed(seed)``) made to detect by :func:`make_detecting` on ``image``
    (default: a :func:`blob_image` of ``INPUT.MIN_SIZE_TEST`` x 4/3 of it, at most
    ``INPUT.MAX_SIZE_TEST``, pixels)."""
    from detectron2.modeling import build_model

    if image is None:
        height = cfg.INPUT.MIN_SIZE_TEST or 512
        width = min(height * 4 // 3, cfg.INPUT.MAX_SIZE_TEST or height * 4 // 3)
        image = blob_image(height, width, seed)
    torch.manual_seed(seed)
    return make_detecting(build_model(cfg).eval(), image)
