"""Shared fixtures: Detectron2's built-in R50-FPN and the plugin's, with the same weights."""
import os

import pytest
import torch

import fpn_plugin  # noqa: F401  (registers the components)
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from fpn_plugin.accel import accelerate
from fpn_plugin.benchmark.workload import make_trained_like
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


def build_parity_pair(d2_name: str = D2_R50_FPN, path: str = "configs/fpn_r50.yaml", opts=(), accelerated=True):
    """(Detectron2's built-in model ``d2_name``, the plugin's from ``path``, load_state_dict's result), eval
    mode: Detectron2's with random weights scaled by make_trained_like, the plugin's loaded from its
    state_dict with strict=True and, if ``accelerated``, run as the tools run it (``MODEL.ACCEL``'s
    defaults). ``opts`` (KEY VALUE list) are merged into both configs."""
    cfg_ref, cfg_ours = d2_cfg(d2_name), plugin_cfg(path)
    cfg_ref.merge_from_list(list(opts))
    cfg_ours.merge_from_list(list(opts))
    torch.manual_seed(0)
    ref = build_model(cfg_ref).eval()
    make_trained_like(ref)
    ours = build_model(cfg_ours).eval()
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    if accelerated:
        accelerate(ours, cfg_ours)
    return ref, ours, result


@pytest.fixture(scope="session")
def r50_pair():
    """(Detectron2's model, the plugin's model as the tools run it), eval mode, the plugin's loaded from
    Detectron2's state_dict."""
    return build_parity_pair()
