"""torch.export of Panoptic FPN: the program gives Detectron2's panoptic result at the input size.

The quickstart Panoptic FPN (configs/quickstart_panoptic.yaml) with random weights made to detect
(make_trained_like, the box classifier's weights times 1000 so that a dozen detections score
above the 0.5 of MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH), exported once on a
128 x 160 sample and run on two generated images of other sizes: detections, semantic logits and
panoptic segments equal to eager mode's (Detectron2's sem_seg_postprocess, detector_postprocess and
combine_semantic_and_instance_outputs). The pieces of the combination are checked against
Detectron2's: the mask paste bit for bit, the combination's rules on a hand-made case and on
random inputs, and the conversion to Detectron2's segments_info. ONNX Runtime runs the ONNX file
of the same program through tools/export_model.py.
"""

import json
import os

import pytest
import torch

from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.panoptic_fpn import combine_semantic_and_instance_outputs
from detectron2.structures import Boxes, Instances

import fpn_plugin  # noqa: F401  (registers the components)
from fpn_plugin.export import ExportError, compare_detections, export_program
from fpn_plugin.export.panoptic import (
    PANOPTIC_OUTPUTS,
    PanopticCombination,
    panoptic_detections,
    paste_mask,
    segments_info,
)
from fpn_plugin.utils.testing import blob_image, make_trained_like, random_boxes
from tests.conftest import REPO, load_tool, plugin_cfg
from tests.export.detecting import save_png

CONFIG = "configs/quickstart_panoptic.yaml"
#: Two images of sizes neither used at export (128 x 160) nor multiples of 32.
SIZES = [(300, 410), (356, 268)]
#: Fewest thing and stuff segments the test images must give (13 + 2 and 10 + 2 measured).
MIN_THINGS, MIN_STUFF = 8, 2


def _model(opts=()):
    cfg = plugin_cfg(CONFIG)
    cfg.merge_from_list(list(opts))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    make_trained_like(model)
    with torch.no_grad():
        # Spread class scores: a dozen detections pass the combination's 0.5 threshold.
        model.roi_heads.box_predictor.cls_score.weight.mul_(1000)
    return model


@pytest.fixture(scope="module")
def panoptic():
    model = _model()
    program, info = export_program(model)
    return {"model": model, "program": program, "info": info, "module": program.module()}


@pytest.fixture(scope="module")
def images():
    return [blob_image(h, w, seed) for seed, (h, w) in enumerate(SIZES, start=7)]


def _run(panoptic, image):
    with torch.no_grad():
        return dict(zip(panoptic["info"]["output_names"], panoptic["module"](image)))


def test_program_matches_eager(panoptic, images):
    names = panoptic["info"]["output_names"]
    assert set(PANOPTIC_OUTPUTS) < set(names) and "pred_masks" in names
    for image in images:
        ref = panoptic_detections(panoptic["model"], image)
        got = _run(panoptic, image)
        instances = ref["segment_instances"]
        assert (instances >= 0).sum() >= MIN_THINGS and (instances < 0).sum() >= MIN_STUFF
        assert set(got) == set(ref)
        for name in ref:
            assert got[name].dtype == ref[name].dtype, name
            assert torch.equal(got[name], ref[name]), name
        assert got["sem_seg"].shape == (4,) + tuple(image.shape[1:])
        result = compare_detections(ref, got)
        assert result["ok"] == 1.0 and result["panoptic_agreement"] == 1.0, result
        assert result["same_segments"] == 1.0 and result["max_sem_seg_diff"] == 0.0, result


def test_segments_info_is_detectron2s_panoptic_result(panoptic, images):
    """segments_info of the program's outputs == PanopticFPN's own forward's panoptic_seg."""
    image = images[0]
    with torch.no_grad():
        d2_seg, d2_info = panoptic["model"]([{"image": image}])[0]["panoptic_seg"]
    seg, info = segments_info(_run(panoptic, image))
    assert torch.equal(seg, d2_seg)
    assert info == d2_info
    assert any(s["isthing"] for s in info) and not all(s["isthing"] for s in info)


def test_paste_mask_is_detectron2s_cpu_paste():
    g = torch.Generator().manual_seed(0)
    height, width = 151, 173
    boxes = random_boxes(60, height, width, g, min_size=1, max_size=200)
    # The whole image, sub-pixel boxes, one at the bottom-right corner, one very thin.
    boxes[:4] = torch.tensor(
        [
            [0, 0, width, height],
            [0.3, 0.2, 1.1, 0.9],
            [width - 2.3, height - 1.2, width, height],
            [10.5, 10.5, 10.6, 40.0],
        ]
    )
    masks = torch.nn.functional.avg_pool2d(torch.rand(60, 1, 28, 28, generator=g), 5, 1, 2)[:, 0]
    ref = paste_masks_in_image(masks, boxes, (height, width))
    got = torch.stack([paste_mask(m, b, height, width) for m, b in zip(masks, boxes)])
    assert got.dtype == torch.bool and torch.equal(got, ref)
    assert 0.005 < ref.float().mean() < 0.5


def _combine(boxes, scores, classes, masks, semantic, overlap, stuff_area, score_thresh):
    """(ours: the tensors, ours as Detectron2's (panoptic_seg, segments_info), Detectron2's) for
    detections boxes (R, 4), scores (R,), classes (R,), masks (R, 1, M, M) and semantic labels
    (H, W)."""
    combination = PanopticCombination(int(semantic.max()) + 1, overlap, stuff_area, score_thresh)
    names = PANOPTIC_OUTPUTS[:-1]
    ours = dict(zip(names, combination(boxes, scores, classes, masks, semantic)))
    # Detectron2's detector_postprocess drops empty boxes before combining.
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    height, width = semantic.shape
    instances = Instances(
        (height, width),
        pred_boxes=Boxes(boxes[keep]),
        scores=scores[keep],
        pred_classes=classes[keep],
        pred_masks=paste_masks_in_image(masks[keep, 0], boxes[keep], (height, width)),
    )
    ref = combine_semantic_and_instance_outputs(
        instances, semantic, overlap, stuff_area, score_thresh
    )
    return ours, segments_info(dict(ours, pred_boxes=boxes, scores=scores)), ref


def test_combination_rules_on_a_hand_made_case():
    """40 x 60 image; full masks in integer boxes (a 20 x 20 box pastes 400 pixels).

    Detections (rows not in score order): A 0.9 placed first; E 0.85 has an empty mask, skipped;
    B 0.8 lies inside A (overlap 1 > 0.5), skipped; C 0.7 overlaps A by 100 of 400 pixels (0.25),
    placed on its 300 uncovered pixels; D 0.3 is below the 0.5 score threshold. Stuff (area
    threshold 440): label 1 on columns 0-29 but rows 38-39 (label 0, "things", never a segment)
    keeps 1140 - 700 = 440 uncovered pixels (kept: >=), label 2 (columns 30-49, 800 px) kept,
    label 3 (columns 50-59, 400 px) dropped.
    """
    box = {
        "C": [10, 10, 30, 30],
        "A": [0, 0, 20, 20],
        "D": [40, 0, 60, 20],
        "B": [0, 0, 20, 15],
        "E": [40, 20, 60, 40],
    }
    score = {"C": 0.7, "A": 0.9, "D": 0.3, "B": 0.8, "E": 0.85}
    rows = list(box)
    boxes = torch.tensor([box[k] for k in rows], dtype=torch.float32)
    scores = torch.tensor([score[k] for k in rows])
    classes = torch.tensor([3, 1, 4, 2, 5])
    masks = torch.ones(5, 1, 28, 28)
    masks[rows.index("E")] = 0
    semantic = torch.zeros(40, 60, dtype=torch.int64)
    semantic[:38, :30] = 1
    semantic[:, 30:50] = 2
    semantic[:, 50:] = 3
    ours, (seg, info), (ref_seg, ref_info) = _combine(
        boxes, scores, classes, masks, semantic, 0.5, 440, 0.5
    )
    assert ours["segment_instances"].tolist() == [rows.index("A"), rows.index("C"), -1, -1]
    assert ours["segment_classes"].tolist() == [1, 3, 1, 2]
    assert ours["segment_areas"].tolist() == [400, 300, 440, 800]
    assert ours["panoptic_seg"].dtype == torch.int32
    pixels = torch.bincount(ours["panoptic_seg"].flatten().long())
    assert torch.equal(pixels[1:], ours["segment_areas"])
    assert torch.equal(seg, ref_seg) and info == ref_info


def test_combination_keeps_equal_scores_in_detection_order():
    """30 detections of one score and one box: the stable sort puts row 0 first, which covers
    the box; every other overlaps it entirely and is skipped."""
    boxes = torch.tensor([[5.0, 5.0, 25.0, 25.0]]).repeat(30, 1)
    scores, classes = torch.full((30,), 0.75), torch.arange(30)
    semantic = torch.zeros(30, 30, dtype=torch.int64)
    ours, _, _ = _combine(boxes, scores, classes, torch.ones(30, 1, 28, 28), semantic, 0.5, 1, 0.5)
    assert ours["segment_instances"].tolist() == [0]
    assert ours["segment_areas"].tolist() == [400]


def test_combination_matches_detectron2_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    height, width, num, num_labels = 150, 170, 30, 5
    segments = 0
    for overlap, stuff_area, score_thresh in [(0.5, 500, 0.4), (0.2, 100, 0.0), (0.9, 2000, 0.7)]:
        boxes = random_boxes(num, height, width, g, min_size=8, max_size=150)
        boxes[0, 2] = boxes[0, 0]  # an empty box: Detectron2 drops it before combining
        scores = torch.rand(num, generator=g)  # distinct: Detectron2's argsort is not stable
        classes = torch.randint(0, 7, (num,), generator=g)
        masks = torch.nn.functional.avg_pool2d(torch.rand(num, 1, 28, 28, generator=g), 5, 1, 2)
        coarse = torch.randn(1, num_labels, 6, 7, generator=g)
        semantic = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
        semantic = semantic[0].argmax(0)
        ours, (seg, info), (ref_seg, ref_info) = _combine(
            boxes, scores, classes, masks, semantic, overlap, stuff_area, score_thresh
        )
        assert torch.equal(seg, ref_seg) and info == ref_info
        assert 0 not in ours["segment_instances"].tolist()
        segments += len(info)
    assert segments >= 30


def test_panoptic_fpn_without_masks_is_refused():
    model = _model(["MODEL.MASK_ON", "False"])
    with pytest.raises(ExportError) as info:
        export_program(model)
    message = str(info.value)
    assert "the panoptic combination needs MODEL.MASK_ON" in message and "\n" not in message


def test_tool_exports_onnx_dynamo_and_checks_it_in_onnx_runtime(tmp_path, panoptic, monkeypatch):
    """tools/export_model.py --format onnx --onnx-exporter dynamo --check on Panoptic FPN: the
    program converted to ONNX (a Loop for the instances) agrees with the tool's eager model in
    ONNX Runtime on two images of other sizes. The program exported above from the same weights
    stands in for a new export; the ONNX conversion and the check are the tool's own."""
    from detectron2.checkpoint import DetectionCheckpointer

    import fpn_plugin.export.to_folder as to_folder

    monkeypatch.setattr(
        to_folder,
        "export_program",
        lambda model, image: (panoptic["program"], panoptic["info"]),
    )
    DetectionCheckpointer(panoptic["model"], save_dir=str(tmp_path)).save("w")
    photos = [
        save_png(blob_image(h, w, seed), tmp_path / f"photo{seed}.png")
        for seed, (h, w) in enumerate(SIZES, start=7)
    ]
    tool = load_tool("export_model.py")
    out = tmp_path / "out"
    config = os.path.join(REPO, CONFIG)
    argv = ["--config-file", config, "--format", "onnx", "--onnx-exporter", "dynamo"]
    argv += ["--output", str(out), "--check", "--sample-image", photos[0]]
    argv += ["--check-images", photos[1], "MODEL.DEVICE", "cpu"]
    argv += ["MODEL.WEIGHTS", str(tmp_path / "w.pth"), "INPUT.MAX_SIZE_TEST", "600"]
    argv += ["INPUT.MIN_SIZE_TEST", "0"]  # the images as they are
    assert tool.main(argv) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["onnx_exporter"] == "dynamo" and "panoptic_seg" in info["output_names"]
    assert [c["size"] for c in info["check"]] == [list(s) for s in SIZES]
    for check in info["check"]:
        assert check["ok"] == 1.0 and check["panoptic_agreement"] >= 0.999, check
        assert check["num_segments_eager"] >= MIN_THINGS + MIN_STUFF, check
        assert check["matched"] == check["num_eager"] == check["num_exported"], check
