"""The recipes of docs/other_projects.md: Cascade R-CNN, PointRend and DensePose keep their RoI
heads and take the plugin's neck and anchors (and, where their heads are Detectron2's
StandardROIHeads, the level-mapping RoI heads).

Each builds the recipe's config (configs/cascade_mask_rcnn_fpn_r50.yaml, configs/projects/*.yaml),
and Detectron2's model from the same config with Detectron2's names (random weights, seeded); the
recipe's model loads Detectron2's state_dict strictly and gives Detectron2's outputs on a generated
image, as built and after ``fpn_plugin.accelerate`` (which leaves no Detectron2 ROIPooler).
"""

import copy
import importlib.util
import os

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler

from fpn_plugin import FPNNeck, LevelMappingROIPooler, SharedAnchorGenerator, accelerate
from fpn_plugin.config import get_plugin_cfg
from tests.conftest import REPO, load_tool

tool = load_tool("convert_config.py")

# The plugin's name -> Detectron2's, for the reference model.
DETECTRON2_NAMES = {
    "build_fpn_neck_backbone": "build_resnet_fpn_backbone",
    "SharedAnchorGenerator": "DefaultAnchorGenerator",
    "LevelMappingROIHeads": "StandardROIHeads",
}


def _needs(module: str, install: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed; install it with: {install}")


def _point_rend():
    _needs(
        "detectron2.projects.point_rend",
        "python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/"
        "detectron2.git' (Detectron2 installs its PointRend project as detectron2.projects)",
    )
    from detectron2.projects.point_rend import add_pointrend_config

    return add_pointrend_config


def _densepose():
    _needs(
        "densepose",
        "python -m pip install --no-build-isolation 'git+https://github.com/facebookresearch/"
        "detectron2.git#subdirectory=projects/DensePose'",
    )
    from densepose import add_densepose_config

    return add_densepose_config


def _load(path: str, add_project_config=None):
    cfg = get_plugin_cfg()
    if add_project_config is not None:
        add_project_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", path))
    cfg.MODEL.DEVICE = "cpu"
    # Detections compared whatever a random model scores them; few, for the heads' time.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    return cfg


def _detectron2_config(cfg):
    ref = cfg.clone()
    for key in ("BACKBONE", "ANCHOR_GENERATOR", "ROI_HEADS"):
        name = ref.MODEL[key].NAME
        ref.MODEL[key].NAME = DETECTRON2_NAMES.get(name, name)
    return ref


def _check_recipe(cfg, roi_heads: str, extra_pooler_names=()):
    ref_cfg = _detectron2_config(cfg)
    torch.manual_seed(0)
    ref = build_model(ref_cfg).eval()
    tool.tame_random_heads(ref)
    model = build_model(cfg).eval()
    assert isinstance(model.backbone, FPNNeck)
    assert isinstance(model.proposal_generator.anchor_generator, SharedAnchorGenerator)
    assert type(model.roi_heads).__name__ == roi_heads
    model.load_state_dict(ref.state_dict(), strict=True)

    inputs = [{"image": tool.generated_image(64), "height": 64, "width": 64}]
    with torch.no_grad():
        expected = ref(copy.deepcopy(inputs))
        outputs = model(copy.deepcopy(inputs))
        accelerate(model, cfg)
        accelerated = model(copy.deepcopy(inputs))
    assert len(expected[0]["instances"]) > 0
    assert tool.compare_outputs(outputs, expected)[0]
    assert tool.compare_outputs(accelerated, expected)[0]
    # accelerate leaves no Detectron2 ROIPooler: each is the plugin's pooler.
    assert not any(type(m) is ROIPooler for m in model.modules())
    poolers = {n for n, m in model.named_modules() if isinstance(m, LevelMappingROIPooler)}
    for name in extra_pooler_names:
        assert f"roi_heads.{name}" in poolers, poolers
    return expected


def test_cascade_rcnn_keeps_its_roi_heads():
    cfg = _load("cascade_mask_rcnn_fpn_r50.yaml")
    expected = _check_recipe(cfg, "CascadeROIHeads", ["box_pooler", "mask_pooler"])
    assert expected[0]["instances"].has("pred_masks")


def test_pointrend_takes_the_level_mapping_roi_heads():
    cfg = _load("projects/pointrend_rcnn_fpn_r50.yaml", _point_rend())
    expected = _check_recipe(cfg, "LevelMappingROIHeads", ["box_pooler"])
    assert expected[0]["instances"].has("pred_masks")


def test_densepose_keeps_its_roi_heads():
    cfg = _load("projects/densepose_rcnn_fpn_r50.yaml", _densepose())
    expected = _check_recipe(cfg, "DensePoseROIHeads", ["box_pooler", "densepose_pooler"])
    assert expected[0]["instances"].has("pred_densepose")
