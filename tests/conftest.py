"""Shared fixtures: Detectron2's built-in R50-FPN and the plugin's, with the same weights."""
import os

import pytest
import torch

import fpn_plugin  # noqa: F401  (registers the components)
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from fpn_plugin.config import detectron2_config_file, get_plugin_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D2_R50_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"

torch.set_num_threads(min(2, torch.get_num_threads()))


def d2_cfg(name: str = D2_R50_FPN):
    cfg = get_cfg()
    cfg.merge_from_file(detectron2_config_file(name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    return cfg


def plugin_cfg(path: str = "configs/fpn_r50.yaml"):
    cfg = get_plugin_cfg()
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def make_trained_like(model: torch.nn.Module) -> None:
    """Scale the random heads of an untrained R50-FPN so it behaves like a trained one.

    With random weights the (un-normalised, FrozenBN) ResNet features are in the thousands, so the
    RPN's deltas blow every proposal up to the whole image and NMS leaves one box. Scaled heads give
    small box deltas and spread objectness: ~1000 distinct proposals per image, as a trained model.
    """
    with torch.no_grad():
        rpn = model.proposal_generator.rpn_head
        rpn.anchor_deltas.weight.mul_(1e-3)
        rpn.objectness_logits.weight.mul_(0.02)
        predictor = model.roi_heads.box_predictor
        # Zero-mean rows cancel the component all (positive, post-ReLU) box features share,
        # so that different boxes get different classes.
        w = predictor.cls_score.weight
        w.sub_(w.mean(dim=1, keepdim=True)).mul_(0.01)
        predictor.bbox_pred.weight.mul_(1e-4)


@pytest.fixture(scope="session")
def r50_pair():
    """(Detectron2's model, the plugin's model), eval mode, the plugin's loaded from Detectron2's state_dict."""
    torch.manual_seed(0)
    ref = build_model(d2_cfg()).eval()
    make_trained_like(ref)
    ours = build_model(plugin_cfg()).eval()
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours, result


def random_boxes(n: int, height: int, width: int, generator: torch.Generator, min_size=8.0, max_size=800.0):
    """(n, 4) XYXY boxes with sizes log-uniform in [min_size, max_size] and aspect ratios in [1/e, e], clipped to the image."""
    size = torch.exp(torch.empty(n).uniform_(float(torch.log(torch.tensor(min_size))), float(torch.log(torch.tensor(max_size))), generator=generator))
    ratio = torch.exp(torch.empty(n).uniform_(-1, 1, generator=generator))
    w, h = size * ratio.sqrt(), size / ratio.sqrt()
    cx = torch.rand(n, generator=generator) * width
    cy = torch.rand(n, generator=generator) * height
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes
