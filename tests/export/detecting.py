"""Quickstart-sized RetinaNets that detect like trained ones, and generated images, for the export
tests.

``make_trained_like`` scales the R50 heads; the quickstart backbones' features are too small for
it (every logit within 1e-3 of the prior: no detection), and BiFPN's batch norms with their
initial statistics give constant maps. :func:`detecting_retinanet` sets the batch-norm statistics
from one image (as training would) and scales the class logits to a range of +-6 around the prior
(-4.6), so a few hundred anchors pass the 0.05 threshold and NMS keeps the
``TEST.DETECTIONS_PER_IMAGE`` best.
"""

import torch
from torch import nn

from detectron2.modeling import build_model

from fpn_plugin.utils.testing import make_trained_like
from tests.conftest import plugin_cfg

LOGIT_RANGE = 6.0  # largest logit - prior: scores up to ~0.8, none saturated


def image(height: int, width: int, seed: int) -> torch.Tensor:
    """(3, H, W) float32 BGR in [0, 255]: smooth blobs plus noise, so features vary over the
    image."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, max(1, height // 32), max(1, width // 32), generator=g)
    smooth = nn.functional.interpolate(
        coarse, size=(height, width), mode="bilinear", align_corners=False
    )[0]
    return (0.8 * smooth + 0.2 * torch.rand(3, height, width, generator=g)) * 255


def _head_logits(model, img):
    images = model.preprocess_image([{"image": img}])
    features = model.backbone(images.tensor)
    return model.head([features[f] for f in model.head_in_features])[0]


def make_detecting(model: nn.Module, img: torch.Tensor) -> nn.Module:
    """``model`` (a RetinaNet, eval mode) made to detect on images like ``img``, in place."""
    make_trained_like(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative: the statistics of this one batch
            m.train()
        _head_logits(model, img)
        for m in norms:
            m.eval()
            # A coarse level's statistics come from a few cells: a floor keeps other images'
            # features from being scaled up by a near-zero variance.
            m.running_var.clamp_(min=float(m.running_var.mean()))
        prior = model.head.cls_score.bias.mean()
        deviation = torch.cat([(x - prior).flatten() for x in _head_logits(model, img)]).abs()
        model.head.cls_score.weight.mul_(LOGIT_RANGE / deviation.max())
    return model


def detecting_retinanet(config: str, img: torch.Tensor, seed: int = 0) -> nn.Module:
    """The plugin's RetinaNet of ``configs/<config>``, eval mode, detecting on ``img``."""
    torch.manual_seed(seed)
    return make_detecting(build_model(plugin_cfg(f"configs/{config}")).eval(), img)
