"""LazyConfig detectors (configs/lazy/), their training (fpn_plugin/engine/lazy_train.py,
tools/lazyconfig_train_net.py) and the per-component counts (tools/fpn_bench/analysis.py,
tools/analyze_model.py).

Each lazy detector is the same model as its YAML twin (Faster R-CNN, quickstart) or as Detectron2's
own lazy config with the plugin's three components swapped back (Mask R-CNN, RetinaNet, Keypoint
R-CNN): the other's state_dict loads strictly, and with the same weights the eval outputs agree.
"""

import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch
from fvcore.nn import parameter_count

from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.analysis import FlopCountAnalysis

from fpn_bench.analysis import build_detector, components, make_inputs
from fpn_plugin import FPNNeck, LevelMappingROIHeads, LevelMappingROIPooler, SharedAnchorGenerator
from fpn_plugin.accel import strategies_of
from fpn_plugin.accel.channels_last import ChannelsLast
from fpn_plugin.config import detectron2_config_file
from fpn_plugin.engine import FPNTrainer
from fpn_plugin.engine.lazy_train import accel_options, build_lazy_model, load_lazy_config
from fpn_plugin.utils.testing import make_trained_like, random_boxes
from tests.conftest import REPO, load_tool, plugin_cfg

LAZY = os.path.join(REPO, "configs", "lazy")
TOL = dict(rtol=1e-4, atol=1e-4)


def lazy_model(name: str):
    return instantiate(LazyConfig.load(os.path.join(LAZY, name)).model).eval()


def small_inputs(height=256, width=384):
    g = torch.Generator().manual_seed(3)
    image = torch.rand(3, height, width, generator=g) * 255
    return [{"image": image, "height": height, "width": width}]


def assert_same_state_dict_layout(a, b):
    """Same parameter and buffer names with the same shapes (the order may differ)."""
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }


@contextlib.contextmanager
def light_inference(*models):
    """A lighter test-time workload while comparing outputs, through the same code paths: 300
    proposals per image (R-CNNs), score threshold 0 (so untrained heads still detect), at most 5
    detections per image (the mask and keypoint heads run on each; the keypoint head costs
    ~4 GFLOPs per detection)."""
    changes = []  # (object, attribute or dict key, new value)
    for m in models:
        if hasattr(m, "roi_heads"):
            changes += [(m.proposal_generator.post_nms_topk, False, 300)]
            changes += [(m.roi_heads.box_predictor, "test_score_thresh", 0.0)]
            changes += [(m.roi_heads.box_predictor, "test_topk_per_image", 5)]
        else:  # RetinaNet
            changes += [(m, "test_score_thresh", 0.0), (m, "max_detections_per_image", 5)]

    def swap(obj, key, value):
        old = obj[key] if isinstance(obj, dict) else getattr(obj, key)
        if isinstance(obj, dict):
            obj[key] = value
        else:
            setattr(obj, key, value)
        return old

    saved = [swap(obj, key, value) for obj, key, value in changes]
    try:
        yield
    finally:
        for (obj, key, _), old in zip(changes, saved):
            swap(obj, key, old)


def assert_same_instances(a, b):
    """Two detectors' ``Instances`` agree to 1e-4 (boxes, scores, classes, and masks/keypoints if
    present)."""
    assert len(a) == len(b) > 0
    assert set(a.get_fields()) == set(b.get_fields())  # e.g. both record pred_levels, or neither
    torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, **TOL)
    torch.testing.assert_close(b.scores, a.scores, **TOL)
    assert torch.equal(b.pred_classes, a.pred_classes)
    for field in ("pred_masks", "pred_keypoints"):
        assert a.has(field) == b.has(field)
        if a.has(field):
            torch.testing.assert_close(b.get(field).float(), a.get(field).float(), **TOL)


def run(model, inputs):
    """Eval forward of one image: its pyramid features, proposals (R-CNNs) and detections."""
    seen = {}
    hooks = [model.backbone.register_forward_hook(lambda m, i, out: seen.update(features=out))]
    if hasattr(model, "proposal_generator"):
        hooks.append(
            model.proposal_generator.register_forward_hook(
                lambda m, i, out: seen.update(proposals=out[0][0])
            )
        )
    try:
        with torch.no_grad():
            seen["instances"] = model(inputs)[0]["instances"]
    finally:
        for h in hooks:
            h.remove()
    return seen


def assert_same_outputs(ref, ours, inputs):
    """Same features, proposals and detections to 1e-4 (under :func:`light_inference`)."""
    with light_inference(ref, ours):
        a, b = run(ref, inputs), run(ours, inputs)
    assert a["features"].keys() == b["features"].keys()
    for k in a["features"]:
        torch.testing.assert_close(b["features"][k], a["features"][k], **TOL)
    if "proposals" in a:
        assert len(a["proposals"]) == len(b["proposals"]) == 300
        torch.testing.assert_close(
            b["proposals"].proposal_boxes.tensor, a["proposals"].proposal_boxes.tensor, **TOL
        )
        torch.testing.assert_close(
            b["proposals"].objectness_logits, a["proposals"].objectness_logits, **TOL
        )
    assert_same_instances(a["instances"], b["instances"])
    if hasattr(ref, "roi_heads"):
        assert_same_roi_pooling(ref, ours, a["features"])
    return a["instances"], b["instances"]


def assert_same_roi_pooling(ref, ours, features):
    """Every RoI pooler of ``ours`` pools the same features as ``ref``'s, for RoIs of 16-400 px that
    span several pyramid levels (Eqn. 1), and, when both are the plugin's, from the same levels."""
    height, width = features["p2"].shape[-2] * 4, features["p2"].shape[-1] * 4
    boxes = [
        Boxes(
            random_boxes(
                200, height, width, torch.Generator().manual_seed(5), min_size=16, max_size=400
            )
        )
    ]
    for head in ("box", "mask", "keypoint"):
        if not hasattr(ref.roi_heads, f"{head}_pooler"):
            continue
        p_ref, p_ours = (
            getattr(ref.roi_heads, f"{head}_pooler"),
            getattr(ours.roi_heads, f"{head}_pooler"),
        )
        x = [features[f] for f in getattr(ref.roi_heads, f"{head}_in_features")]
        with torch.no_grad():
            torch.testing.assert_close(p_ours(x, boxes), p_ref(x, boxes), **TOL)
        assert len(torch.unique(p_ours.last_levels)) > 1
        if hasattr(p_ref, "last_levels"):
            assert torch.equal(p_ours.last_levels, p_ref.last_levels)


def assert_poolers_built_like(ref, ours):
    """Each plugin pooler has the settings of Detectron2's ROIPooler it replaces
    (Eqn. 1: k0, s0)."""
    for name in ("box_pooler", "mask_pooler", "keypoint_pooler"):
        if hasattr(ref.roi_heads, name):
            p_ref, p_ours = getattr(ref.roi_heads, name), getattr(ours.roi_heads, name)
            assert (p_ours.min_level, p_ours.max_level) == (p_ref.min_level, p_ref.max_level)
            assert p_ours.output_size == tuple(p_ref.output_size)
            assert (p_ours.canonical_box_size, p_ours.canonical_level) == (
                p_ref.canonical_box_size,
                p_ref.canonical_level,
            )


def assert_plugin_components(model):
    assert isinstance(model.backbone, FPNNeck)
    anchors = getattr(model, "anchor_generator", None) or model.proposal_generator.anchor_generator
    assert isinstance(anchors, SharedAnchorGenerator)
    if hasattr(model, "roi_heads"):
        assert isinstance(model.roi_heads, LevelMappingROIHeads)
        for name in ("box_pooler", "mask_pooler", "keypoint_pooler"):
            if hasattr(model.roi_heads, name):
                assert isinstance(getattr(model.roi_heads, name), LevelMappingROIPooler)


# ------------------------------------------------------------------------------------------------
# Lazy detectors = YAML / Detectron2 detectors
# ------------------------------------------------------------------------------------------------


def test_lazy_faster_rcnn_equals_yaml_model(r50_pair):
    ref, yaml_model, _ = r50_pair
    ours = lazy_model("faster_rcnn_fpn_r50.py")
    ours.roi_heads.pred_levels = True  # as the r50_pair's plugin model: its levels are compared too
    assert_plugin_components(ours)
    assert_same_state_dict_layout(yaml_model, ours)
    ours.load_state_dict(yaml_model.state_dict(), strict=True)
    a, b = assert_same_outputs(yaml_model, ours, small_inputs())
    assert torch.equal(a.pred_levels, b.pred_levels)


def test_lazy_quickstart_equals_yaml_quickstart():
    torch.manual_seed(0)
    yaml_model = build_model(plugin_cfg("configs/quickstart.yaml")).eval()
    make_trained_like(yaml_model)
    ours = lazy_model("quickstart.py")
    assert_plugin_components(ours)
    assert_same_state_dict_layout(yaml_model, ours)
    ours.load_state_dict(yaml_model.state_dict(), strict=True)
    assert_same_outputs(yaml_model, ours, small_inputs(256, 320))


# Our lazy config -> Detectron2's lazy config of the same detector.
DETECTRON2_TWINS = {
    "mask_rcnn_fpn_r50.py": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py",
    "retinanet_fpn_r50.py": "COCO-Detection/retinanet_R_50_FPN_1x.py",
    "keypoint_rcnn_fpn_r50.py": "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.py",
}


@pytest.fixture(scope="module", params=sorted(DETECTRON2_TWINS))
def twin_pair(request):
    """(Detectron2's model, ours with Detectron2's weights, load result), eval mode."""
    torch.manual_seed(0)
    ref = instantiate(
        LazyConfig.load(detectron2_config_file(DETECTRON2_TWINS[request.param])).model
    ).eval()
    make_trained_like(ref)  # Faster/Mask/Keypoint R-CNN and RetinaNet alike
    ours = lazy_model(request.param)
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours, result


def test_lazy_twin_loads_detectron2_state_dict_strictly(twin_pair):
    ref, ours, result = twin_pair
    assert_plugin_components(ours)
    assert not result.missing_keys and not result.unexpected_keys
    assert_same_state_dict_layout(ref, ours)
    if hasattr(ref, "roi_heads"):
        assert_poolers_built_like(ref, ours)


def test_lazy_twin_outputs_match_detectron2(twin_pair):
    ref, ours, _ = twin_pair
    assert_same_outputs(ref, ours, small_inputs())


def test_lazy_retinanet_has_p3_to_p7_and_nine_anchors():
    model = lazy_model("retinanet_fpn_r50.py")
    shapes = model.backbone.output_shape()
    assert list(shapes) == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]
    assert model.backbone.top_block.in_feature == "res5"  # P6/P7 from C5
    assert model.anchor_generator.num_anchors == [9] * 5  # 3 octave scales x 3 ratios


# ------------------------------------------------------------------------------------------------
# tools/lazyconfig_train_net.py
# ------------------------------------------------------------------------------------------------


def test_lazyconfig_train_net_trains_and_evaluates_quickstart(tmp_path_factory):
    data, out = tmp_path_factory.mktemp("lazy_data"), tmp_path_factory.mktemp("lazy_out")
    tiny = [
        f"datasets.root={data}",
        "datasets.num_train=8",
        "datasets.num_val=4",
        "datasets.image_size=256",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[256]",
        "dataloader.train.mapper.augmentations.0.max_size=256",
        "dataloader.test.mapper.augmentations.0.short_edge_length=256",
        "dataloader.test.mapper.augmentations.0.max_size=256",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "train.max_iter=4",
        "train.log_period=1",
        f"train.output_dir={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore", PYTHONPATH=REPO)

    def run(*flags):
        proc = subprocess.run(
            [
                sys.executable,
                os.path.join(REPO, "tools", "lazyconfig_train_net.py"),
                "--config-file",
                os.path.join(LAZY, "quickstart.py"),
                *flags,
                *tiny,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-5000:]
        return log

    def ap_line(log):
        return [line.split("copypaste: ")[1] for line in log.splitlines() if "copypaste: " in line][
            -1
        ]

    log = run()
    assert "no GPU is available: running on CPU" in log or torch.cuda.is_available()
    assert (
        "memory allocator:" in log
    )  # on CPU the tool keeps freed memory (fpn_plugin/accel/cpu_allocator.py)
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    losses = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in losses] == [0, 1, 2, 3]
    levels = [v for k, v in losses[-1].items() if k.startswith("roi_levels/")]
    assert len(levels) == 4 and abs(sum(levels) - 1) < 1e-5
    assert (out / "model_final.pth").is_file()
    assert (out / "inference" / "coco_instances_results.json").is_file()
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    # --eval-only --resume evaluates the last checkpoint of the run: the same AP as at the end of
    # training. --system-malloc leaves glibc's defaults: no allocator line.
    eval_log = run("--eval-only", "--resume", "--system-malloc")
    assert ap_line(eval_log) == ap_line(log) and "memory allocator:" not in eval_log


def _strategies(model):
    """{module name: names of the execution strategies applied to it}, for every module with one."""
    return {
        n: [s.__name__ for s in strategies_of(m)]
        for n, m in model.named_modules()
        if strategies_of(m)
    }


def test_lazy_model_runs_with_the_execution_strategies():
    quickstart = os.path.join(LAZY, "quickstart.py")
    cfg = load_lazy_config(quickstart, ["train.device=cpu"])
    assert dict(cfg.accel) == {}  # configs/lazy/common/accel.py: AccelOptions()'s defaults
    torch.manual_seed(0)
    lazy = build_lazy_model(cfg)
    # The same strategies on the same modules as the YAML tools' model (FPNTrainer.build_model).
    expected = _strategies(FPNTrainer.build_model(plugin_cfg("configs/quickstart.yaml")))
    assert expected and _strategies(lazy) == expected
    # The config's accel entries reach accelerate: an opt-in strategy, and none at all.
    channels_last = build_lazy_model(
        load_lazy_config(quickstart, ["train.device=cpu", "accel.channels_last=True"])
    )
    assert isinstance(channels_last.backbone, ChannelsLast) and not isinstance(
        lazy.backbone, ChannelsLast
    )
    plain = build_lazy_model(
        load_lazy_config(quickstart, ["train.device=cpu", "accel.enabled=False"])
    )
    assert _strategies(plain) == {}
    # A config without accel gets the defaults.
    del cfg.accel
    assert accel_options(cfg) == accel_options(load_lazy_config(quickstart))


def test_lazy_accel_unknown_key_is_a_clear_error():
    cfg = load_lazy_config(os.path.join(LAZY, "quickstart.py"), ["accel.channel_last=True"])
    with pytest.raises(
        ValueError, match=r"accel: unknown key\(s\) \['channel_last'\].*'channels_last'"
    ):
        accel_options(cfg)
    with pytest.raises(ValueError, match="not a LazyConfig"):
        load_lazy_config(os.path.join(REPO, "configs", "quickstart.yaml"))


# ------------------------------------------------------------------------------------------------
# tools/analyze_model.py
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analyze_model():
    return load_tool("analyze_model.py")


def test_analyze_model_per_component_counts(analyze_model, tmp_path, capsys):
    path = tmp_path / "counts.json"
    config = os.path.join(REPO, "configs", "quickstart.yaml")
    analyze_model.main(
        ["--config-file", config, "--size", "256x320", "--json", str(path), "MODEL.DEVICE", "cpu"]
    )
    printed = capsys.readouterr().out
    with open(path) as f:
        result = json.load(f)
    rows, total = result["components"], result["total"]
    assert list(rows) == ["bottom-up", "neck", "RPN", "RoI heads", "other"]
    assert all(name in printed for name in list(rows) + ["total"])
    torch.manual_seed(0)
    model = build_detector(config, ["MODEL.DEVICE", "cpu"], "cpu")
    # Parameters: the components add up to the model's total.
    assert (
        sum(r["params"] for r in rows.values())
        == total["params"]
        == sum(p.numel() for p in model.parameters())
    )
    assert rows["other"]["params"] == 0
    assert rows["bottom-up"]["params"] == sum(
        p.numel() for p in model.backbone.bottom_up.parameters()
    )
    # FLOPs: the bottom-up row equals fvcore on the bottom-up network alone (256x320 needs no
    # padding).
    image = make_inputs(256, 320, "cpu")[0]["image"]
    with torch.no_grad():
        x = (image[None] - model.pixel_mean) / model.pixel_std
        alone = FlopCountAnalysis(model.backbone.bottom_up, (x,))
        alone.unsupported_ops_warnings(False)
        assert rows["bottom-up"]["flops"] == alone.total() > 0
    for name in ("neck", "RPN", "RoI heads"):
        assert rows[name]["flops"] > 0 and rows[name]["activations"] > 0
    assert sum(r["flops"] for r in rows.values()) == total["flops"]


def test_analyze_model_lazy_config_same_parameters_as_yaml():
    yaml_model = build_detector(
        os.path.join(REPO, "configs", "quickstart.yaml"), ["MODEL.DEVICE", "cpu"], "cpu"
    )
    lazy = build_detector(os.path.join(LAZY, "quickstart.py"), [], "cpu")
    assert [c for c, _ in components(lazy)] == ["bottom-up", "neck", "RPN", "RoI heads"]
    assert parameter_count(lazy) == parameter_count(yaml_model)


def test_analyze_model_bad_size(analyze_model):
    with pytest.raises(SystemExit):
        analyze_model.main(
            ["--config-file", os.path.join(LAZY, "quickstart.py"), "--size", "800by1333"]
        )
