"""Detectron2 FPN configs <-> the plugin's: a swap of names (fpn_plugin.convert,
tools/convert_config.py). Every FPN config shipped with Detectron2 converts and converts back
unchanged; one of each kind of model builds, loads Detectron2's state_dict strictly and gives
Detectron2's outputs (the whole list: ``tools/convert_config.py --check``)."""

import glob
import logging
import os
import pickle

import pytest
import torch
import yaml

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model

from fpn_plugin import FPNNeck, get_plugin_cfg
from fpn_plugin.config import detectron2_config_file
from fpn_plugin.convert import (
    DETECTRON2_TO_PLUGIN,
    dump_changes,
    is_fpn_config,
    load_config,
    to_detectron2,
    to_plugin,
)
from fpn_plugin.engine import FPNCheckpointer
from tests.conftest import REPO, load_tool

D2_CONFIGS = os.path.dirname(detectron2_config_file("Base-RCNN-FPN.yaml"))

tool = load_tool("convert_config.py")


def _fpn_configs():
    for path in sorted(glob.glob(os.path.join(D2_CONFIGS, "**", "*.yaml"), recursive=True)):
        cfg, _ = load_config(path, plugin=False)
        if is_fpn_config(cfg):
            yield os.path.relpath(path, D2_CONFIGS), cfg


def test_every_detectron2_fpn_config_converts_and_back(tmp_path):
    seen = set()
    count = 0
    for name, cfg in _fpn_configs():
        count += 1
        plugin = to_plugin(cfg)
        for key, names in DETECTRON2_TO_PLUGIN.items():
            value = _value(cfg, key)
            seen.add(value)
            assert _value(plugin, key) == names.get(value, value), (name, key)
        # Written out and read back by the plugin's loader, then back to Detectron2: the same.
        out = tmp_path / "plugin.yaml"
        out.write_text(dump_changes(plugin, get_plugin_cfg()))
        reloaded = get_plugin_cfg()
        reloaded.merge_from_file(str(out))
        back, _ = to_detectron2(reloaded)
        assert dump_changes(back, get_cfg()) == dump_changes(cfg, get_cfg()), name
    assert count >= 60  # Detectron2 0.6 ships 71 FPN configs among its 92 YAML files
    assert {"build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone"} <= seen


def _value(cfg, key):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


# One of each kind of model Detectron2's FPN configs build (R50; the deeper ones differ only in
# the ResNet, which is Detectron2's own in both). Faster R-CNN: tests/modeling/test_parity.py;
# Cascade R-CNN: tests/modeling/test_other_projects.py.
KINDS = [
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
    "Misc/semantic_R_50_FPN_1x.yaml",
    "COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml",  # precomputed proposals
    "COCO-Detection/rpn_R_50_FPN_1x.yaml",  # proposals only
    "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml",  # GroupNorm in the neck and the heads
]


@pytest.mark.parametrize("name", KINDS)
def test_converted_config_loads_detectron2_state_dict_and_matches(name):
    cfg, _ = load_config(detectron2_config_file(name), plugin=False)
    # 20 detections, not 100: the mask and keypoint heads' time.
    result = tool.check_conversion(cfg, to_plugin(cfg), image_size=64, detections_per_image=20)
    assert result.strict_load, result.load_error
    assert result.run_error == ""
    if cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor":  # that one outputs sem_seg only
        assert result.num_detections > 0  # detections were compared
    assert result.equal and result.accelerated_equal, (result.max_diff, result.accelerated_max_diff)


def test_check_reports_a_state_dict_that_does_not_load():
    cfg, _ = load_config(detectron2_config_file(KINDS[0]), plugin=False)
    other = to_plugin(cfg)
    other.MODEL.FPN.OUT_CHANNELS = 128  # not the same model
    result = tool.check_conversion(cfg, other)
    assert not result.strict_load and "size mismatch" in result.load_error


def test_retinanet_builder_is_detectron2s_with_the_name_swapped():
    ref_cfg, _ = load_config(detectron2_config_file(KINDS[0]), plugin=False)
    cfg = ref_cfg.clone()  # no plugin keys: their defaults
    cfg.MODEL.BACKBONE.NAME = "build_retinanet_fpn_neck_backbone"
    neck, ref = build_backbone(cfg), build_backbone(ref_cfg)
    assert isinstance(neck, FPNNeck)
    assert neck.output_shape() == ref.output_shape()
    assert list(neck.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    neck.load_state_dict(ref.state_dict(), strict=True)


def test_retinanet_builder_rejects_other_extra_levels():
    cfg = get_plugin_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "retinanet_fpn_r50.yaml"))
    cfg.MODEL.FPN.EXTRA_LEVELS = "p6p7_p5"
    with pytest.raises(ValueError, match="build_fpn_neck_backbone.*EXTRA_LEVELS"):
        build_backbone(cfg)


# The project's configs that claim to be a Detectron2 model with the names swapped.
SAME_MODEL = [
    ("fpn_r50.yaml", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
    ("retinanet_fpn_r50.yaml", "COCO-Detection/retinanet_R_50_FPN_1x.yaml"),
    ("mask_rcnn_fpn_r50.yaml", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"),
    ("keypoint_rcnn_fpn_r50.yaml", "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml"),
    ("panoptic_fpn_r50.yaml", "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"),
    ("semantic_fpn_r50.yaml", "Misc/semantic_R_50_FPN_1x.yaml"),
]


@pytest.mark.parametrize("ours,theirs", SAME_MODEL)
def test_project_configs_convert_to_detectron2s_model(ours, theirs):
    cfg, _ = load_config(os.path.join(REPO, "configs", ours), plugin=True)
    back, _ = to_detectron2(cfg)
    ref, _ = load_config(detectron2_config_file(theirs), plugin=False)
    back.MODEL.WEIGHTS = ref.MODEL.WEIGHTS  # ours download nothing
    if theirs.startswith("Misc/semantic"):  # unused by a SemanticSegmentor
        back.MODEL.ROI_HEADS.NAME = ref.MODEL.ROI_HEADS.NAME
        back.MODEL.ANCHOR_GENERATOR.NAME = ref.MODEL.ANCHOR_GENERATOR.NAME
    assert dump_changes(back.MODEL, get_cfg().MODEL) == dump_changes(ref.MODEL, get_cfg().MODEL)


@pytest.mark.parametrize(
    "config,opts,message",
    [
        ("pafpn_r50.yaml", [], "MODEL.BACKBONE.NAME = 'build_pafpn_neck_backbone'"),
        ("fpn_r50.yaml", ["MODEL.FPN.EXTRA_LEVELS", "none"], "MODEL.FPN.EXTRA_LEVELS = 'none'"),
        ("fpn_r50.yaml", ["MODEL.FPN.TOP_DOWN", "False"], "MODEL.FPN.TOP_DOWN = False"),
        ("quickstart.yaml", [], "MODEL.FPN.BOTTOM_UP = 'build_basic_resnet_backbone'"),
        (
            "fpn_r50.yaml",
            ["MODEL.ROI_HEADS.CANONICAL_LEVEL", "3"],
            "MODEL.ROI_HEADS.CANONICAL_LEVEL = 3",
        ),
    ],
)
def test_models_detectron2_cannot_build_are_named(config, opts, message):
    cfg, _ = load_config(os.path.join(REPO, "configs", config), plugin=True)
    cfg.merge_from_list(opts)
    with pytest.raises(ValueError) as e:
        to_detectron2(cfg)
    assert message in str(e.value)


def test_non_fpn_config_is_an_error_naming_the_key(capsys):
    with pytest.raises(SystemExit) as e:
        tool.main(["COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "MODEL.BACKBONE.NAME = 'build_resnet_backbone'" in err and "FPN" in err


def test_tool_writes_a_self_contained_config_with_opts(tmp_path):
    out = tmp_path / "retinanet.yaml"
    argv = [
        "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
        "-o",
        str(out),
        "MODEL.WEIGHTS",
        "/data/model_final.pkl",
        "MODEL.RETINANET.NUM_CLASSES",
        "5",
    ]
    assert tool.main(argv) == 0
    text = out.read_text()
    assert "_BASE_" not in text and text.startswith("# Converted by tools/convert_config.py")
    cfg = get_plugin_cfg()
    cfg.merge_from_file(str(out))
    assert cfg.MODEL.BACKBONE.NAME == "build_retinanet_fpn_neck_backbone"
    assert cfg.MODEL.ANCHOR_GENERATOR.NAME == "SharedAnchorGenerator"
    assert cfg.MODEL.WEIGHTS == "/data/model_final.pkl" and cfg.MODEL.RETINANET.NUM_CLASSES == 5
    ref, _ = load_config(detectron2_config_file("COCO-Detection/retinanet_R_50_FPN_3x.yaml"), False)
    assert cfg.SOLVER.STEPS == ref.SOLVER.STEPS  # from the _BASE_ chain's last file


def test_tool_back_to_detectron2_loads_in_detectron2(tmp_path):
    out = tmp_path / "d2.yaml"
    assert (
        tool.main(
            [
                os.path.join(REPO, "configs", "retinanet_fpn_r50.yaml"),
                "--to",
                "detectron2",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    data = yaml.safe_load(out.read_text())
    assert data["MODEL"]["BACKBONE"]["NAME"] == "build_retinanet_resnet_fpn_backbone"
    assert "ACCEL" not in data["MODEL"] and "SCALES_PER_OCTAVE" not in str(data)
    cfg = get_cfg()
    cfg.merge_from_file(str(out))
    assert len(cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]) == 3  # the octave scales, written out


# docs/model_zoo.md: a Detectron2 model-zoo .pkl into the converted config's model.
SMALL = [
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "64",
    "MODEL.FPN.OUT_CHANNELS",
    "32",
]


def _model_zoo_pkl(tmp_path):
    """A file in the model zoo's format (numpy arrays under "model", "__author__") from a small
    Detectron2 Faster R-CNN (80 classes), and that model's config."""
    cfg, _ = load_config(
        detectron2_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"), False
    )
    cfg.merge_from_list(SMALL + ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        data = {k: v.numpy() for k, v in state.items()}
        pickle.dump({"model": data, "__author__": "Detectron2 Model Zoo"}, f)
    return cfg, state, str(path)


def test_model_zoo_checkpoint_loads_into_the_converted_model(tmp_path):
    cfg, state, path = _model_zoo_pkl(tmp_path)
    model = build_model(to_plugin(cfg))
    FPNCheckpointer(model).load(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_model_zoo_checkpoint_with_new_num_classes_keeps_all_but_the_class_layers(tmp_path, caplog):
    cfg, state, path = _model_zoo_pkl(tmp_path)
    ours = to_plugin(cfg)
    ours.MODEL.ROI_HEADS.NUM_CLASSES = 5
    torch.manual_seed(1)
    model = build_model(ours)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        FPNCheckpointer(model).load(path)
    skipped = {k for k, v in model.state_dict().items() if not torch.equal(v, state[k])}
    predictor = "roi_heads.box_predictor."
    assert skipped == {
        predictor + n
        for n in ("cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias")
    }
    for k in skipped:  # left at the new model's initialisation
        assert torch.equal(model.state_dict()[k], initial[k])
    assert "Skip loading parameter 'roi_heads.box_predictor.cls_score.weight'" in caplog.text
