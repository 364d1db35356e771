"""Configs: Detectron2's keys keep their meaning, bad settings fail at build time, no surprises on
install."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from fpn_plugin import add_fpn_plugin_config
from tests.conftest import D2_R50_FPN, REPO, d2_cfg, plugin_cfg

NAMES = {
    "MODEL.BACKBONE.NAME": ("build_resnet_fpn_backbone", "build_fpn_neck_backbone"),
    "MODEL.ANCHOR_GENERATOR.NAME": ("DefaultAnchorGenerator", "SharedAnchorGenerator"),
    "MODEL.ROI_HEADS.NAME": ("StandardROIHeads", "LevelMappingROIHeads"),
}


def _flatten(node, prefix=""):
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def assert_detectron2s_with_the_plugin_names(d2_name=D2_R50_FPN, path="configs/fpn_r50.yaml"):
    """The plugin config at ``path`` is Detectron2's built-in ``d2_name`` (plus the plugin's keys at
    their defaults) with NAMES swapped and nothing else changed: the drop-in promise, shared by
    every config the plugin ships as a copy of a Detectron2 one."""
    a = _flatten(add_fpn_plugin_config(d2_cfg(d2_name)))
    b = _flatten(plugin_cfg(path))
    assert a.keys() == b.keys()
    differences = {k for k in a if a[k] != b[k]}
    assert differences == set(NAMES), differences
    for key, (d2, ours) in NAMES.items():
        assert (a[key], b[key]) == (d2, ours)


def test_fpn_r50_is_detectron2_r50_fpn_1x_with_three_names_swapped():
    assert_detectron2s_with_the_plugin_names()


def test_a_detectron2_config_becomes_a_plugin_config_by_the_names_and_back():
    cfg = d2_cfg()
    add_fpn_plugin_config(cfg)
    for key, (_, ours) in NAMES.items():
        cfg.merge_from_list([key, ours])
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == "LevelMappingROIHeads"
    for key, (d2, _) in NAMES.items():
        cfg.merge_from_list([key, d2])
    assert type(build_model(cfg).roi_heads).__name__ == "StandardROIHeads"


def test_configs_need_no_file_outside_the_repository():
    configs = os.path.join(REPO, "configs")
    for name in os.listdir(configs):
        if not name.endswith(".yaml"):
            continue
        path = os.path.join(configs, name)
        while True:
            with open(path) as f:
                base = (yaml.safe_load(f) or {}).get("_BASE_")
            if not base:
                break
            path = os.path.normpath(os.path.join(os.path.dirname(path), base))
            assert path.startswith(configs + os.sep) and os.path.isfile(path), (name, base)
        with open(os.path.join(configs, name)) as f:
            text = f.read()
        assert "://" not in text.split("#")[0] or "WEIGHTS" not in text, name


def test_new_keys_have_defaults_that_reproduce_detectron2():
    cfg = add_fpn_plugin_config(d2_cfg())
    assert cfg.MODEL.FPN.UPSAMPLE == "nearest" and cfg.MODEL.FPN.EXTRA_LEVELS == "p6_subsample"
    assert cfg.MODEL.FPN.TOP_DOWN and cfg.MODEL.FPN.LATERAL and not cfg.MODEL.FPN.FINEST_ONLY
    assert (
        cfg.MODEL.ROI_HEADS.CANONICAL_BOX_SIZE == 224 and cfg.MODEL.ROI_HEADS.CANONICAL_LEVEL == 4
    )
    assert cfg.MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE == 1
    cfg.MODEL.FPN.UPSAMPLE = "bilinear"
    add_fpn_plugin_config(cfg)  # idempotent: keeps values
    assert cfg.MODEL.FPN.UPSAMPLE == "bilinear"
    # Each new key is documented next to its default.
    with open(os.path.join(REPO, "fpn_plugin", "config.py")) as f:
        source = f.read()
    keys = (
        "BOTTOM_UP",
        "UPSAMPLE",
        "EXTRA_LEVELS",
        "TOP_DOWN",
        "LATERAL",
        "FINEST_ONLY",
        "SCALES_PER_OCTAVE",
        "CANONICAL_BOX_SIZE",
        "CANONICAL_LEVEL",
        "PATH_AUGMENTATION",
        "FUSION_EPS",
        "ENABLED",
        "CPU_BLOCKED_LAYOUT",
        "IN_PLACE_TOP_DOWN",
        "ANCHOR_CACHE_SIZE",
        "ROI_ALIGN",
        "CHANNELS_LAST",
        "AUTOCAST_DTYPE",
        "FOLD_FROZEN_BN",
    )
    for key in keys:
        line = next(i for i, line in enumerate(source.splitlines()) if f'"{key}"' in line)
        assert source.splitlines()[line - 1].strip().startswith("#"), key


@pytest.mark.parametrize(
    "opts, words",
    [
        (
            ["MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64], [128], [256]]],
            ["MODEL.ANCHOR_GENERATOR.SIZES", "4 groups", "5 feature levels"],
        ),
        (
            ["MODEL.FPN.IN_FEATURES", ["res2", "res3", "res5"]],
            ["MODEL.FPN.IN_FEATURES", "do not double"],
        ),
        (
            ["MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res6"]],
            ["MODEL.FPN.IN_FEATURES", "does not produce"],
        ),
        (["MODEL.FPN.UPSAMPLE", "trilinear"], ["MODEL.FPN.UPSAMPLE"]),
        (["MODEL.FPN.FUSE_TYPE", "concat"], ["MODEL.FPN.FUSE_TYPE"]),
        (["MODEL.FPN.EXTRA_LEVELS", "p9"], ["MODEL.FPN.EXTRA_LEVELS"]),
        (
            ["MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p9"]],
            ["MODEL.ROI_HEADS.IN_FEATURES", "p9"],
        ),
        (["MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p4"]], ["MODEL.ROI_HEADS.IN_FEATURES", "double"]),
    ],
)
def test_bad_model_config_fails_at_build(opts, words):
    cfg = plugin_cfg()
    cfg.merge_from_list(opts)
    with pytest.raises(ValueError) as e:
        build_model(cfg)
    for w in words:
        assert w in str(e.value)


@pytest.fixture(scope="module")
def small_model():
    cfg = plugin_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    torch.manual_seed(0)
    return build_model(cfg)


def _inputs(boxes_per_image):
    out = []
    for boxes in boxes_per_image:
        inst = Instances((128, 160))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.gt_classes = torch.zeros(len(inst.gt_boxes), dtype=torch.int64)
        out.append(
            {"image": torch.rand(3, 128, 160) * 255, "instances": inst, "height": 128, "width": 160}
        )
    return out


@pytest.mark.parametrize(
    "boxes",
    [
        [[], []],  # a batch with no boxes at all
        [[[10, 10, 60, 50]], []],  # one image without boxes
    ],
)
def test_training_losses_are_finite(small_model, boxes):
    small_model.train()
    with EventStorage(0) as storage:
        losses = small_model(_inputs(boxes))
    # The fraction of RoIs pooled from each level is logged, and the fractions add up to 1.
    fractions = {k: v[0] for k, v in storage.latest().items() if k.startswith("roi_levels/")}
    assert set(fractions) == {"roi_levels/p2", "roi_levels/p3", "roi_levels/p4", "roi_levels/p5"}
    assert abs(sum(fractions.values()) - 1) < 1e-6
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in small_model.parameters())


def test_roi_heads_with_zero_area_and_inverted_boxes(small_model):
    """Degenerate RoIs and ground truth reach the level-mapping pooler: losses and detections stay
    finite.

    (Degenerate ground truth never reaches the RPN in training: the data mapper drops it, see
    fpn_plugin.data.)
    """
    bad = [[10, 10, 10, 10], [40, 40, 20, 30], [30, 30, 30, 80], [5, 5, 90, 100]]
    inputs = _inputs([bad, bad[:2]])
    images = small_model.preprocess_image(inputs)
    targets = [x["instances"] for x in inputs]
    proposals = []
    for t in targets:
        p = Instances(t.image_size)
        p.proposal_boxes = Boxes(t.gt_boxes.tensor.clone())
        p.objectness_logits = torch.zeros(len(t))
        proposals.append(p)
    small_model.train()
    with EventStorage(0):
        features = small_model.backbone(images.tensor)
        _, losses = small_model.roi_heads(images, features, proposals, targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    small_model.eval()
    with torch.no_grad():
        results, _ = small_model.roi_heads(images, small_model.backbone(images.tensor), proposals)
    for r in results:
        assert torch.isfinite(r.pred_boxes.tensor).all() and torch.isfinite(r.scores).all()


def test_inference_with_no_proposals(small_model):
    small_model.eval()
    images = small_model.preprocess_image(_inputs([[], []]))
    features = small_model.backbone(images.tensor)
    empty = Instances((128, 160))
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    empty.objectness_logits = torch.zeros(0)
    with torch.no_grad():
        results, _ = small_model.roi_heads(images, features, [empty, empty])
    assert [len(r) for r in results] == [0, 0]


def _run_python(code):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_works_without_pkg_resources():
    """setuptools >= 81 has no pkg_resources (imported by detectron2.model_zoo): the plugin must not
    need it."""
    proc = _run_python(
        """
        import sys
        sys.modules["pkg_resources"] = None  # any 'import pkg_resources' now fails
        import fpn_plugin
        from fpn_plugin.config import get_plugin_cfg, detectron2_config_file
        from detectron2.modeling import build_model
        cfg = get_plugin_cfg()
        cfg.merge_from_file("configs/fpn_r50.yaml")
        cfg.MODEL.DEVICE = "cpu"
        build_model(cfg)
        detectron2_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
        print("OK")
        """
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


def test_missing_detectron2_says_how_to_install():
    proc = _run_python(
        """
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "detectron2" or name.startswith("detectron2."):
                    raise ModuleNotFoundError("No module named 'detectron2'")
        sys.meta_path.insert(0, Block())
        import fpn_plugin
        """
    )
    assert proc.returncode != 0
    assert "pip install" in proc.stderr and "detectron2" in proc.stderr and "README" in proc.stderr


def test_fall_back_to_cpu_only_without_a_gpu(monkeypatch):
    from fpn_plugin.config import fall_back_to_cpu, get_plugin_cfg

    cfg = get_plugin_cfg()
    cfg.MODEL.DEVICE = "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fall_back_to_cpu(cfg) is None and cfg.MODEL.DEVICE == "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = fall_back_to_cpu(cfg)
    assert cfg.MODEL.DEVICE == "cpu" and "'cuda:0'" in message and "running on CPU" in message
