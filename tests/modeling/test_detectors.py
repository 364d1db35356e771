"""Mask R-CNN, RetinaNet and Keypoint R-CNN on the plugin's components.

Each R50 config is Detectron2's built-in detector with the component names swapped: Detectron2's
state_dict loads strictly and the eval outputs agree to 1e-4. Each quickstart-sized variant trains
a few iterations on fpn_shapes and is evaluated with COCOEvaluator.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.poolers import ROIPooler

from fpn_plugin import FPNNeck, LevelMappingROIHeads, LevelMappingROIPooler, SharedAnchorGenerator
from fpn_plugin.data import SHAPE_KEYPOINT_NAMES
from fpn_plugin.engine.trainer import FPNTrainer
from tests.conftest import REPO, build_parity_pair
from tests.engine.test_training import (  # noqa: F401  (fixtures)
    TINY,
    TOOL_ENV,
    _cleanup_catalog,
    data_root,
    read_metrics,
    train_tiny,
)

# name -> (Detectron2's built-in config, ours)
DETECTORS = {
    "mask_rcnn": (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
        "configs/mask_rcnn_fpn_r50.yaml",
    ),
    "retinanet": ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "configs/retinanet_fpn_r50.yaml"),
    "keypoint_rcnn": (
        "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
        "configs/keypoint_rcnn_fpn_r50.yaml",
    ),
}
# Detections per image compared (not 100): keeps the CPU time of the mask and keypoint heads low
# (the keypoint head, 8 convs of 512 channels, costs ~7 GFLOPs per detection).
NUM_DETECTIONS = {"mask_rcnn": 20, "retinanet": 20, "keypoint_rcnn": 8}
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=list(DETECTORS))
def pair(request):
    d2_name, path = DETECTORS[request.param]
    ref, ours, result = build_parity_pair(
        d2_name, path, ["TEST.DETECTIONS_PER_IMAGE", NUM_DETECTIONS[request.param]]
    )
    return request.param, ref, ours, result


def _image():
    g = torch.Generator().manual_seed(1)
    im = torch.rand(3, 256, 384, generator=g) * 255
    return [{"image": im, "height": 256, "width": 384}]


def _raw_and_final(model, inputs):
    """(outputs before postprocessing, after it): for R-CNNs the first has 28x28 mask
    probabilities."""
    with torch.no_grad():
        if not isinstance(model, GeneralizedRCNN):
            final = [r["instances"] for r in model(inputs)]
            return final, final
        raw = model.inference(inputs, do_postprocess=False)
        image_sizes = model.preprocess_image(inputs).image_sizes
        # Same image size: boxes are not rescaled, masks are pasted into the image.
        final = [
            r["instances"]
            for r in GeneralizedRCNN._postprocess([x[:] for x in raw], inputs, image_sizes)
        ]
    return raw, final


def test_plugin_components_are_used(pair):
    name, ref, ours, _ = pair
    assert isinstance(ours.backbone, FPNNeck)
    strides = {k: s.stride for k, s in ours.backbone.output_shape().items()}
    assert strides == {k: s.stride for k, s in ref.backbone.output_shape().items()}
    if name == "retinanet":
        assert strides == {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}
        generator, ref_generator = ours.anchor_generator, ref.anchor_generator
        assert generator.num_anchors == [9] * 5  # 3 octave scales x 3 aspect ratios on every level
        assert ours.backbone.top_block.in_feature == "res5"  # P6 from C5
    else:
        assert strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
        generator, ref_generator = (
            ours.proposal_generator.anchor_generator,
            ref.proposal_generator.anchor_generator,
        )
        heads = ours.roi_heads
        assert isinstance(heads, LevelMappingROIHeads)
        poolers = ["box_pooler", "mask_pooler" if name == "mask_rcnn" else "keypoint_pooler"]
        for attr in poolers:
            mine, theirs = getattr(heads, attr), getattr(ref.roi_heads, attr)
            assert isinstance(mine, LevelMappingROIPooler) and isinstance(theirs, ROIPooler)
            assert (
                (mine.min_level, mine.max_level) == (theirs.min_level, theirs.max_level) == (2, 5)
            )
            assert mine.output_size == tuple(theirs.output_size)
    assert isinstance(generator, SharedAnchorGenerator) and isinstance(
        ref_generator, DefaultAnchorGenerator
    )
    assert generator.strides == ref_generator.strides
    for a, b in zip(generator.cell_anchors, ref_generator.cell_anchors):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_detectron2_state_dict_loads_strictly(pair):
    _, ref, ours, result = pair
    assert not result.missing_keys and not result.unexpected_keys
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert set(mine) == set(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)


def test_eval_outputs_match_detectron2(pair):
    name, ref, ours, _ = pair
    inputs = _image()
    raw_ref, final_ref = _raw_and_final(ref, inputs)
    raw_ours, final_ours = _raw_and_final(ours, inputs)
    n = NUM_DETECTIONS[name]
    for a, b in zip(final_ref, final_ours):
        assert len(a) == len(b) == n  # a full detection load
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, **TOL)
        torch.testing.assert_close(b.scores, a.scores, **TOL)
        assert torch.equal(b.pred_classes, a.pred_classes)
        if name != "keypoint_rcnn":  # COCO's person detector has one class
            assert len(a.pred_classes.unique()) > 1
    for a, b in zip(raw_ref, raw_ours):
        if name == "mask_rcnn":
            assert b.pred_masks.shape == a.pred_masks.shape == (n, 1, 28, 28)
            torch.testing.assert_close(b.pred_masks, a.pred_masks, **TOL)
            assert (
                0.01 < (a.pred_masks > 0.5).float().mean() < 0.99
            )  # masks are not all empty or full
        if name == "keypoint_rcnn":
            assert b.pred_keypoints.shape == a.pred_keypoints.shape == (n, 17, 3)
            torch.testing.assert_close(b.pred_keypoints, a.pred_keypoints, **TOL)
            torch.testing.assert_close(b.pred_keypoint_heatmaps, a.pred_keypoint_heatmaps, **TOL)
            assert torch.isfinite(a.pred_keypoint_heatmaps).all()
        if name != "retinanet":
            assert b.pred_levels.min() >= 2 and b.pred_levels.max() <= 5
    if name == "mask_rcnn":  # image-sized masks after pasting
        a, b = final_ref[0].pred_masks, final_ours[0].pred_masks
        assert a.shape == b.shape == (n, 256, 384)
        assert (a != b).float().mean() < 1e-4


# --- Training and evaluation on the embedded data ---------------------------------------------

# Keypoint R-CNN is trained through tools/train_net.py (the same FPNTrainer) below.
SMALL = {
    "mask_rcnn": ("quickstart_mask.yaml", {"bbox", "segm"}),
    "retinanet": ("quickstart_retinanet.yaml", {"bbox"}),
}


# Low score thresholds: after 3 iterations few scores pass the default 0.05, and COCO's AP needs
# detections; 10 per image keep mask pasting and keypoint decoding cheap.
EVAL_OPTS = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    0.001,
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    0.001,
    "TEST.DETECTIONS_PER_IMAGE",
    10,
]


@pytest.mark.parametrize("name", list(SMALL))
def test_small_detector_trains_and_evaluates(name, data_root, tmp_path):
    config, tasks = SMALL[name]
    cfg, trainer, _ = train_tiny(data_root, tmp_path, 3, *EVAL_OPTS, config=config)
    last = [m for m in read_metrics(tmp_path) if "total_loss" in m][-1]
    assert last["iteration"] == 2
    expected_losses = {
        "mask_rcnn": {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"},
        "retinanet": {"loss_cls", "loss_box_reg"},
    }[name]
    assert {k for k in last if k.startswith("loss_")} == expected_losses
    assert all(torch.isfinite(torch.tensor(last[k])) for k in expected_losses)
    results = FPNTrainer.test(cfg, trainer.model)
    assert set(results) == tasks
    for task in tasks:
        # (APs/APm/APl and per-class APs may be NaN: 4 validation images need not have every size)
        assert all(0 <= results[task][k] <= 100 for k in ("AP", "AP50", "AP75")), results[task]


def _copypaste_results(log: str):
    """{task: {metric: value}} from Detectron2's "copypaste:" lines in a log."""
    lines = [
        line.split("copypaste: ", 1)[1].strip()
        for line in log.splitlines()
        if "copypaste: " in line
    ]
    results = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: "):
            names, values = lines[i + 1].split(","), lines[i + 2].split(",")
            results[line[len("Task: ") :]] = dict(zip(names, map(float, values)))
    return results


def test_train_net_trains_and_evaluates_keypoint_rcnn(data_root, tmp_path):
    """tools/train_net.py trains the small Keypoint R-CNN and evaluates it (OKS sigmas from the
    dataset)."""
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "train_net.py"),
        "--config-file",
        os.path.join(REPO, "configs", "quickstart_keypoint.yaml"),
    ]
    cmd += TINY + [
        "DATASETS.FPN_SHAPES.ROOT",
        data_root,
        "OUTPUT_DIR",
        str(tmp_path),
        "SOLVER.MAX_ITER",
        "3",
    ]
    cmd += [str(o) for o in EVAL_OPTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=TOOL_ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "memory allocator:" in proc.stdout
    )  # on CPU the tool keeps freed memory (fpn_plugin/accel/cpu_allocator.py)
    last = [m for m in read_metrics(tmp_path) if "total_loss" in m][-1]
    assert last["iteration"] == 2
    losses = {k for k in last if k.startswith("loss_")}
    assert losses == {"loss_cls", "loss_box_reg", "loss_keypoint", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(torch.tensor(last[k])) for k in losses)
    with open(os.path.join(tmp_path, "log.txt")) as f:
        results = _copypaste_results(f.read())
    assert set(results) == {"bbox", "keypoints"}
    for task in results:
        assert all(0 <= results[task][k] <= 100 for k in ("AP", "AP50", "AP75")), results[task]
    with open(os.path.join(tmp_path, "inference", "coco_instances_results.json")) as f:
        predictions = json.load(f)
    assert predictions and all(
        len(p["keypoints"]) == 3 * len(SHAPE_KEYPOINT_NAMES) for p in predictions
    )
