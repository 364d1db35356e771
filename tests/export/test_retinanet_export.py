"""torch.export of RetinaNet: the .pt2 program (saved, loaded) and its ONNX file in ONNX Runtime
give eager mode's detections on images of other sizes than the exported one.

The quickstart RetinaNet (configs/quickstart_retinanet.yaml), made to detect
(tests/export/detecting.py: 100 detections of several classes per image), is exported once on a
256 x 320 image; two generated images of 300 x 410 and 480 x 352 (not multiples of the size
divisibility: the program pads, as the eager model does) must give the eager model's detections
before the rescale: the same classes, boxes within 1e-3 px, scores within 1e-4. The same export
runs on a RetinaNet that Detectron2 builds from its own config (made small), and
tools/fpn_bench/deploy.py times and compares the artefacts.
"""

import pytest
import torch

from fpn_plugin.export import compare_detections
from fpn_plugin.export.common import ExportError
from fpn_plugin.export.onnx_dynamo import onnx_session, run_onnx_dynamo
from fpn_plugin.export.retinanet import (
    OUTPUT_NAMES,
    RetinaNetExport,
    export_retinanet,
    retinanet_detections,
    save_retinanet_onnx,
)
from tests.conftest import d2_cfg, plugin_cfg
from tests.export.detecting import detecting_retinanet, image, make_detecting, save_png

BOX_TOL, SCORE_TOL = 1e-3, 1e-4


@pytest.fixture(scope="module")
def model():
    return detecting_retinanet("quickstart_retinanet.yaml", image(256, 320, 0))


@pytest.fixture(scope="module")
def images():
    return [image(300, 410, 1), image(480, 352, 2)]


@pytest.fixture(scope="module")
def eager(model, images):
    return [retinanet_detections(model, img) for img in images]


@pytest.fixture(scope="module")
def program(model):
    return export_retinanet(model, image(256, 320, 0))


@pytest.fixture(scope="module")
def saved(program, tmp_path_factory):
    """The .pt2 file and the ONNX file of the program."""
    folder = tmp_path_factory.mktemp("retinanet")
    torch.export.save(program, str(folder / "model.pt2"))
    return str(folder / "model.pt2"), save_retinanet_onnx(program, str(folder / "model.onnx"))


@pytest.fixture(scope="module")
def loaded(saved):
    """The saved program, loaded back."""
    return torch.export.load(saved[0]).module()


def _assert_agrees(ref, outputs):
    boxes, scores, classes = outputs
    got = {"pred_boxes": boxes, "scores": scores, "pred_classes": classes}
    assert len(ref["scores"]) >= 50 and len(ref["pred_classes"].unique()) >= 2, "too few to check"
    result = compare_detections(ref, got, BOX_TOL)
    assert result["ok"] == 1.0, result
    assert result["max_box_diff"] <= BOX_TOL and result["max_score_diff"] <= SCORE_TOL, result


def test_pt2_matches_eager(loaded, images, eager):
    for img, ref in zip(images, eager):
        with torch.no_grad():
            _assert_agrees(ref, loaded(img))


def test_onnx_in_onnx_runtime_matches_eager(saved, images, eager):
    session = onnx_session(saved[1])
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    for img, ref in zip(images, eager):
        _assert_agrees(ref, run_onnx_dynamo(session, img))


def test_wrong_input_gets_a_clear_error(model, program):
    """The program checks its input's channels and size range; the wrapper, when traced, the
    image's rank and dtype."""
    with pytest.raises(Exception, match=r"size\(\)\[0\] == 3|shape\[0\] to be equal to 3"):
        program.module()(torch.zeros(4, 256, 256))
    with pytest.raises(Exception, match=r"size\(\)\[1\] >= 129|shape\[1\] to be >= 129"):
        program.module()(torch.zeros(3, 64, 256))
    with pytest.raises(ValueError, match=r"image: expected one \(3, H, W\) image"):
        RetinaNetExport(model)(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError, match="image: expected float32"):
        RetinaNetExport(model)(torch.zeros(3, 256, 256, dtype=torch.uint8))


def test_not_a_retinanet_is_refused():
    from detectron2.modeling import build_model

    with pytest.raises(ExportError, match="not a RetinaNet"):
        RetinaNetExport(build_model(plugin_cfg("configs/quickstart.yaml")).eval())


def test_deploy_benchmark_times_and_compares_the_artefacts(model, saved, loaded, images):
    """tools/fpn_bench/deploy.py (what tools/benchmark_deploy.py runs) on the eager model and
    the two artefacts: one row each, the artefacts agreeing with the eager reference."""
    from fpn_bench import deploy

    runners = {
        "eager": deploy.eager_runner(model),
        "pt2": deploy.pt2_runner(loaded),
        "onnx": deploy.onnx_runner(saved[1]),
    }
    rows = deploy.benchmark(runners, images[:1], "eager", reps=1, warmup=0)
    assert [r["name"] for r in rows] == ["eager", "pt2", "onnx"]
    assert rows[0]["ratio"] == 1.0 and all(r["seconds_per_image"] > 0 for r in rows)
    for r in rows[1:]:
        assert r["agree"] and r["detections"] == rows[0]["detections"] >= 50, r
        assert r["max_box_diff"] <= BOX_TOL and r["max_score_diff"] <= SCORE_TOL, r
    table = deploy.format_table(rows, "eager")
    assert table.count("\n") == 4 and "| onnx |" in table


def test_detectron2s_own_retinanet_exports(images):
    """The same export on a RetinaNet that Detectron2 builds from its own config (its ResNet, FPN
    with P6/P7, DefaultAnchorGenerator, RetinaNetHead), made small: ResNet-18, d = 64, 4 classes."""
    from detectron2.modeling import build_model

    cfg = d2_cfg("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    cfg.merge_from_list(
        ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
        + ["MODEL.FPN.OUT_CHANNELS", 64, "MODEL.RETINANET.NUM_CLASSES", 4]
    )
    torch.manual_seed(0)
    d2_model = make_detecting(build_model(cfg).eval(), image(256, 320, 0))
    exported = export_retinanet(d2_model, image(256, 320, 0)).module()
    for img in images:
        with torch.no_grad():
            _assert_agrees(retinanet_detections(d2_model, img), exported(img))


def test_tool_exports_retinanet_pt2_and_checks_it(model, program, tmp_path, monkeypatch):
    """tools/export_model.py --format pt2 --check on a RetinaNet config: the model goes through
    export_retinanet (the program exported above from the same weights stands in for a new
    export) and the saved program agrees with the tool's own eager model on two image files of
    other sizes."""
    import json
    import os

    from detectron2.checkpoint import DetectionCheckpointer

    import fpn_plugin.export.to_folder as to_folder
    from tests.conftest import REPO, load_tool

    monkeypatch.setattr(to_folder, "export_retinanet", lambda m, img: program)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("w")
    a = save_png(image(300, 410, 1), tmp_path / "a.png")
    b = save_png(image(480, 352, 2), tmp_path / "b.png")
    out = tmp_path / "out"
    config = os.path.join(REPO, "configs", "quickstart_retinanet.yaml")
    argv = ["--config-file", config, "--format", "pt2", "--output", str(out), "--check"]
    argv += ["--sample-image", a, "--check-images", b, "--tolerance", "1e-3"]
    argv += ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "w.pth")]
    argv += ["INPUT.MIN_SIZE_TEST", "0"]
    assert load_tool("export_model.py").main(argv) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["export_method"] == "torch.export" and info["file"] == "model.pt2"
    assert info["output_names"] == ["pred_boxes", "scores", "pred_classes"]
    assert [c["size"] for c in info["check"]] == [[300, 410], [480, 352]]
    for check in info["check"]:
        assert check["ok"] == 1.0 and check["num_eager"] >= 20, check
        assert check["matched"] == check["num_eager"] == check["num_exported"], check
        assert check["max_box_diff"] <= BOX_TOL and check["max_score_diff"] <= SCORE_TOL, check
