"""torch.export of the two-stage detectors: the ExportedProgram (saved as .pt2 and loaded back in a
process that does not import the plugin) and the AOTInductor package give eager mode's detections.

Quickstart-sized detectors with random weights made to detect like trained ones
(make_trained_like): Faster R-CNN (configs/quickstart.yaml), Mask + Keypoint R-CNN in one model
(configs/quickstart_keypoint.yaml with configs/quickstart_mask.yaml's mask head: both heads in one
export), and Detectron2's own StandardROIHeads / ROIPooler on the quickstart backbone. Each is
exported once, on a sample image of another size than the two checked images (whose sizes are
not multiples of the size divisibility either). Agreement: same classes, boxes within 1e-3 px,
scores within 1e-4, mask IoU >= 0.99, keypoints within 1e-3 px.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from detectron2.modeling import build_model

import fpn_plugin  # noqa: F401  (registers the components)
from fpn_plugin.export import (
    ExportedDetector,
    ExportError,
    compare_detections,
    compile_aoti,
    eager_detections,
    export_program,
    save_program,
)
from fpn_plugin.export.artefacts import convolves_data_dependent_batch
from fpn_plugin.export.onnx_dynamo import export_onnx_dynamo, onnx_session, run_onnx_dynamo
from fpn_plugin.export.program import min_image_size
from fpn_plugin.utils.testing import blob_image, build_detecting_model, make_trained_like
from tests.conftest import REPO, load_tool, plugin_cfg
from tests.export.detecting import save_png

BOX_TOL, SCORE_TOL = 1e-3, 1e-4

#: Two images of sizes neither used at export (128 x 160) nor multiples of 32.
SIZES = [(300, 410), (356, 268)]


def _model(path, opts=()):
    cfg = plugin_cfg(path)
    cfg.merge_from_list(list(opts))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    make_trained_like(model)
    return model


def _exported(model):
    start = time.perf_counter()
    program, info = export_program(model)
    return {
        "model": model,
        "program": program,
        "info": info,
        "seconds": time.perf_counter() - start,
    }


@pytest.fixture(scope="module")
def faster():
    return _exported(_model("configs/quickstart.yaml"))


@pytest.fixture(scope="module")
def mask_keypoint():
    mask_head = ["MODEL.ROI_MASK_HEAD.NUM_CONV", "2", "MODEL.ROI_MASK_HEAD.CONV_DIM", "64"]
    opts = ["MODEL.MASK_ON", "True", *mask_head, "MODEL.ROI_MASK_HEAD.NORM", "BN"]
    return _exported(_model("configs/quickstart_keypoint.yaml", opts))


@pytest.fixture(scope="module")
def images():
    return [blob_image(h, w, seed) for seed, (h, w) in enumerate(SIZES, start=7)]


def _assert_agrees(ref, got, min_detections=30):
    result = compare_detections(ref, got, BOX_TOL)
    assert len(ref["scores"]) >= min_detections, "the test model should detect many objects"
    assert result["ok"] == 1.0, result
    assert result["matched"] == len(ref["scores"]), result
    assert result["max_box_diff"] <= BOX_TOL and result["max_score_diff"] <= SCORE_TOL, result
    return result


def _run(program, image):
    with torch.no_grad():
        return program.module()(image)


def test_program_matches_eager_faster(faster, images):
    names = faster["info"]["output_names"]
    assert names == ["pred_boxes", "pred_classes", "pred_levels", "scores"]
    for image in images:
        ref = eager_detections(faster["model"], image)
        _assert_agrees(ref, dict(zip(names, _run(faster["program"], image))))


def test_program_matches_eager_mask_keypoint(mask_keypoint, images):
    names = mask_keypoint["info"]["output_names"]
    assert {"pred_masks", "pred_keypoints", "pred_keypoint_heatmaps"} <= set(names)
    for image in images:
        ref = eager_detections(mask_keypoint["model"], image)
        got = dict(zip(names, _run(mask_keypoint["program"], image)))
        result = _assert_agrees(ref, got)
        assert result["min_mask_iou"] >= 0.99 and result["max_keypoint_diff"] <= BOX_TOL, result
        assert got["pred_masks"].shape[1:] == ref["pred_masks"].shape[1:]
        # Not all masks empty or full: the IoU above compares something.
        fg = (got["pred_masks"] > 0.5).float().mean()
        assert 0.05 < fg < 0.95, fg


def test_onnx_of_mask_keypoint_matches_eager_in_onnx_runtime(mask_keypoint, images, tmp_path):
    """The Mask + Keypoint R-CNN program through the dynamo exporter: ONNX Runtime gives eager
    mode's detections, masks and keypoints (the keypoints' position in the resize grid is
    divided by the grid width as a tensor: ONNX has no remainder by a data-dependent int)."""
    names = mask_keypoint["info"]["output_names"]
    path = export_onnx_dynamo(
        mask_keypoint["program"], str(tmp_path / "model.onnx"), ["image"], names
    )
    session = onnx_session(path)
    for image in images:
        ref = eager_detections(mask_keypoint["model"], image)
        result = _assert_agrees(ref, dict(zip(names, run_onnx_dynamo(session, image))))
        assert result["min_mask_iou"] >= 0.99 and result["max_keypoint_diff"] <= BOX_TOL, result


def test_program_of_detectron2s_own_roi_heads(images):
    """Detectron2's StandardROIHeads with its ROIPooler (as its own configs build them)."""
    model = _model("configs/quickstart.yaml", ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"])
    assert type(model.roi_heads.box_pooler).__name__ == "ROIPooler"
    program, info = export_program(model)
    assert info["output_names"] == ["pred_boxes", "pred_classes", "scores"]
    image = images[0]
    ref = eager_detections(model, image)
    _assert_agrees(ref, dict(zip(info["output_names"], _run(program, image))))


def test_smallest_image_keeps_the_coarsest_level_two_cells_wide(images, tmp_path):
    """The two-stage BiFPN detector (P3-P7, coarsest stride 128) exports with images from 129 px
    (128 would give P7 a single cell, which torch.export refuses as a dynamic size), agrees with
    eager mode at that size and at a larger one, and the loaded file refuses smaller images."""
    model = build_detecting_model(plugin_cfg("configs/quickstart_bifpn.yaml"), images[0])
    assert min_image_size(model.backbone) == 129
    assert min_image_size(_model("configs/quickstart.yaml").backbone) == 128  # P6: stride 64
    program, info = export_program(model)
    assert info["min_size"] == 129
    path = str(tmp_path / "model.pt2")
    save_program(program, path, info)
    detector = ExportedDetector(path)
    for image in (blob_image(129, 140, 5), images[1]):
        _assert_agrees(eager_detections(model, image), detector(image), min_detections=10)
    with pytest.raises(ValueError, match=r"^image: 128 x 140 pixels, outside the 129\.\.4096"):
        detector(blob_image(128, 140, 5))


def test_pt2_loads_without_the_plugin(faster, images, tmp_path):
    """The saved program runs in a fresh process that imports torch and torchvision only."""
    path = str(tmp_path / "model.pt2")
    save_program(faster["program"], path, faster["info"])
    torch.save(images, tmp_path / "images.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch, torchvision  # torchvision: its nms / roi_align ops
        program = torch.export.load({path!r}).module()
        images = torch.load({str(tmp_path / "images.pt")!r})
        with torch.no_grad():
            torch.save([tuple(program(image)) for image in images], {str(tmp_path / "out.pt")!r})
        assert not any(m.startswith(("fpn_plugin", "detectron2")) for m in sys.modules)
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=str(tmp_path), env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = faster["info"]["output_names"]
    for image, outputs in zip(images, torch.load(tmp_path / "out.pt")):
        ref = eager_detections(faster["model"], image)
        _assert_agrees(ref, dict(zip(names, outputs)))


def test_aoti_layout_optimisation_only_without_convolutions_over_detections(faster):
    """compile_aoti's default: the quickstart's conv box head runs on a data-dependent number of
    RoIs (channels-last layout left out); a backbone-like program has none."""
    assert convolves_data_dependent_batch(faster["program"])
    conv = torch.nn.Conv2d(3, 8, 3).eval()
    program = torch.export.export(conv, (torch.rand(2, 3, 16, 16),))
    assert not convolves_data_dependent_batch(program)


@pytest.mark.aoti
def test_aoti_package_matches_eager(faster, images, tmp_path):
    """The AOTInductor package (compiling takes minutes: pytest -m aoti) agrees with eager mode
    on both images."""
    path = compile_aoti(faster["program"], str(tmp_path / "model_aoti.pt2"), faster["info"])
    detector = ExportedDetector(path)
    assert detector.kind == "aoti"
    for image in images:
        _assert_agrees(eager_detections(faster["model"], image), detector(image))


# ------------------------------------------------------------------------------------------------
# Bad input, a detector that cannot be exported, the tool's arguments
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(faster, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pt2") / "model.pt2")
    save_program(faster["program"], path, faster["info"])
    return ExportedDetector(path)


@pytest.mark.parametrize(
    "image, match",
    [
        (
            torch.zeros(3, 200, 200, dtype=torch.uint8),
            r"^image: dtype torch.uint8.*image.float\(\)",
        ),
        (torch.zeros(1, 200, 200), r"^image: shape \(1, 200, 200\), expected \(3, H, W\)"),
        (torch.zeros(200, 200, 3), r"^image: shape \(200, 200, 3\).*transpose\(2, 0, 1\)"),
        (torch.zeros(1, 3, 200, 200), r"^image: shape \(1, 3, 200, 200\).*image\[0\]"),
        (torch.zeros(3, 0, 200), r"^image: empty \(0 x 200 pixels\)"),
        (torch.zeros(3, 64, 200), r"^image: 64 x 200 pixels, outside the 128\.\.4096.*resize"),
    ],
)
def test_bad_input_gets_a_one_line_error(loaded, image, match):
    with pytest.raises(ValueError, match=match) as info:
        loaded(image)
    assert "\n" not in str(info.value)


def test_loaded_program_on_small_and_flat_images(loaded, faster):
    """Images with few boxes (a flat one: single boxes per level or class, or none) run and agree
    with eager mode: no size assumed at export holds them back (torchvision's fake nms kernel
    declares >= 2 boxes kept; the program is exported with the exact one of
    fpn_plugin.export.fake_kernels)."""
    for image in (torch.full((3, 130, 150), 114.0), blob_image(128, 128, 3)):
        got = loaded(image)
        assert set(got) == set(faster["info"]["output_names"])
        result = compare_detections(eager_detections(faster["model"], image), got, BOX_TOL)
        assert result["ok"] == 1.0, result


def test_unexportable_detector_names_module_and_reason():
    model = _model("configs/quickstart.yaml")
    model.roi_heads = torch.nn.Identity()
    with pytest.raises(ExportError) as info:
        export_program(model)
    message = str(info.value)
    assert message.startswith("torch.export cannot export this model: roi_heads (Identity): ")
    assert "StandardROIHeads" in message and "\n" not in message


def test_tool_takes_config_overrides_after_check_images():
    tool = load_tool("export_model.py")
    args = tool.parse_args(
        ["--config-file", "c.yaml", "--output", "o", "--check-images", "a.jpg", "b.jpg"]
        + ["MODEL.WEIGHTS", "w.pth", "INPUT.MIN_SIZE_TEST", "0"]
    )
    assert args.check_images == ["a.jpg", "b.jpg"]
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "INPUT.MIN_SIZE_TEST", "0"]
    args = tool.parse_args(["--config-file", "c.yaml", "--output", "o", "MODEL.DEVICE", "cpu"])
    assert args.check_images == [] and args.opts == ["MODEL.DEVICE", "cpu"]
    args = tool.parse_args(["--config-file", "c.yaml", "--format", "pt2", "--output", "o"])
    assert args.format == "pt2" and args.opts == []


def test_tool_missing_check_image_is_a_one_line_error(tmp_path, capsys):
    tool = load_tool("export_model.py")
    config = os.path.join(REPO, "configs", "quickstart.yaml")
    argv = ["--config-file", config, "--format", "pt2", "--output", str(tmp_path), "--check"]
    argv += ["--check-images", str(tmp_path / "missing.jpg"), "MODEL.DEVICE", "cpu"]
    assert tool.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.jpg" in err[0] and "does not exist" in err[0], err
    assert "Traceback" not in "".join(err)
    assert not (tmp_path / "model.pt2").exists()


def test_tool_exports_pt2_and_checks_it(tmp_path, faster, monkeypatch):
    """tools/export_model.py --format pt2 --check, in process, on the quickstart detector's
    weights: writes model.pt2 and export.json with the check's results. The program exported
    above from the same weights stands in for a new export (which would take as long again); the
    tool's eager model is its own (built as tools/train_net.py builds it, weights loaded)."""
    from detectron2.checkpoint import DetectionCheckpointer

    import fpn_plugin.export.to_folder as to_folder

    monkeypatch.setattr(
        to_folder, "export_program", lambda model, image: (faster["program"], faster["info"])
    )
    DetectionCheckpointer(faster["model"], save_dir=str(tmp_path)).save("w")
    tool = load_tool("export_model.py")
    out = tmp_path / "out"
    config = os.path.join(REPO, "configs", "quickstart.yaml")
    argv = ["--config-file", config, "--format", "pt2", "--output", str(out), "--check"]
    argv += ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "w.pth")]
    argv += ["INPUT.MIN_SIZE_TEST", "200", "INPUT.MAX_SIZE_TEST", "333"]
    assert tool.main(argv) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "pt2" and info["export_method"] == "torch.export"
    assert info["file"] == "model.pt2" and (out / "model.pt2").stat().st_size > 100_000
    (check,) = info["check"]
    assert check["ok"] == 1.0 and check["num_eager"] >= 20, check


def test_tool_exports_onnx_dynamo_and_checks_it_in_onnx_runtime(tmp_path, faster, monkeypatch):
    """tools/export_model.py --format onnx --onnx-exporter dynamo --check: the torch.export
    program converted to ONNX (opset 18) and run in ONNX Runtime agrees with the tool's eager
    model on its sample image and on an image file of another size (boxes 1e-3 px, scores 1e-4,
    same classes). The program exported above from the same weights stands in for a new export;
    the ONNX conversion is the tool's own."""
    from detectron2.checkpoint import DetectionCheckpointer

    import fpn_plugin.export.to_folder as to_folder

    monkeypatch.setattr(
        to_folder, "export_program", lambda model, image: (faster["program"], faster["info"])
    )
    DetectionCheckpointer(faster["model"], save_dir=str(tmp_path)).save("w")
    photo = save_png(blob_image(300, 410, 9), tmp_path / "photo.png")
    tool = load_tool("export_model.py")
    out = tmp_path / "out"
    config = os.path.join(REPO, "configs", "quickstart.yaml")
    argv = ["--config-file", config, "--format", "onnx", "--onnx-exporter", "dynamo"]
    argv += ["--output", str(out), "--check", "--check-images", photo, "--tolerance", "1e-3"]
    argv += ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "w.pth")]
    argv += ["INPUT.MIN_SIZE_TEST", "200", "INPUT.MAX_SIZE_TEST", "333"]
    assert tool.main(argv) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "onnx" and info["export_method"] == "torch.export"
    assert info["onnx_exporter"] == "dynamo" and info["opset"] == 18
    assert info["file"] == "model.onnx" and (out / "model.onnx").stat().st_size > 100_000
    assert [c["size"] for c in info["check"]] == [[200, 200], [200, 273]]
    for check in info["check"]:
        assert check["ok"] == 1.0 and check["num_eager"] >= 20, check
        assert check["matched"] == check["num_eager"] == check["num_exported"], check
        assert check["max_box_diff"] <= BOX_TOL and check["max_score_diff"] <= SCORE_TOL, check
