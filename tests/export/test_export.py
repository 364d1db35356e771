"""Export: TorchScript scripting and tracing and ONNX of the plugin detector give eager mode's
detections.

The quickstart-sized detector (configs/quickstart.yaml) with random weights made to detect like a
trained model (fpn_plugin.utils.testing.make_trained_like: 100 detections per image) is exported,
saved, loaded back and run on real-sized images, one of them of another size than the traced one;
its detections must match eager mode's to 1e-3 (boxes in pixels, scores; classes and pyramid
levels equal). R50-FPN (configs/fpn_r50.yaml) is checked by scripting. tools/export_model.py runs
as a subprocess, end to end and on a path that cannot work.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

import fpn_plugin  # noqa: F401  (registers the components)
from fpn_plugin.accel import strategies_of
from fpn_plugin.engine import FPNTrainer
from fpn_plugin.export import (
    ExportError,
    compare_detections,
    eager_detections,
    export_onnx,
    export_scripting,
    export_tracing,
    run_onnx,
    run_scripted,
    run_traced,
)
from fpn_plugin.export.to_folder import export_to_folder
from fpn_plugin.utils.testing import blob_image, make_trained_like
from tests.conftest import REPO, load_tool, plugin_cfg
from tests.export.detecting import save_png

TOOL = os.path.join(REPO, "tools", "export_model.py")
TOL = 1e-3


@pytest.fixture(scope="module")
def quick_model():
    torch.manual_seed(0)
    model = build_model(plugin_cfg("configs/quickstart.yaml")).eval()
    make_trained_like(model)
    return model


@pytest.fixture(scope="module")
def images():
    """The sample image (512 x 640) and one of another size (608 x 800)."""
    return [blob_image(512, 640, 1), blob_image(608, 800, 2)]


@pytest.fixture(scope="module")
def eager(quick_model, images):
    return [eager_detections(quick_model, img) for img in images]


def _assert_agrees(ref, got):
    result = compare_detections(ref, got, TOL)
    assert len(ref["scores"]) >= 50, "the test model should detect many objects"
    assert result["ok"] == 1.0, result
    assert result["max_box_diff"] <= TOL and result["max_score_diff"] <= TOL, result
    # Almost every detection must match, not only tie at the cut.
    assert result["matched"] >= len(ref["scores"]) - 2, result


def test_scripting_matches_eager(quick_model, images, eager, tmp_path):
    path = str(tmp_path / "model.ts")
    torch.jit.save(export_scripting(quick_model), path)
    loaded = torch.jit.load(path)
    for img, ref in zip(images, eager):
        got = run_scripted(loaded, img)
        assert set(got) >= {"pred_boxes", "scores", "pred_classes", "pred_levels"}
        _assert_agrees(ref, got)


def test_tracing_matches_eager_on_other_image_sizes(quick_model, images, eager, tmp_path):
    traced, names = export_tracing(quick_model, images[0])
    assert names == ["pred_boxes", "pred_classes", "pred_levels", "scores", "image_size"]
    path = str(tmp_path / "model.ts")
    torch.jit.save(traced, path)
    loaded = torch.jit.load(path)
    for img, ref in zip(images, eager):  # the second image has another size than the traced one
        _assert_agrees(ref, run_traced(loaded, img, names))
    # Tracing ran the model with the export paths of its components; eager mode is unchanged.
    again = eager_detections(quick_model, images[0])
    for key in eager[0]:
        assert torch.equal(again[key], eager[0][key]), key


def test_onnx_matches_eager_on_other_image_sizes(quick_model, images, eager, tmp_path):
    path = str(tmp_path / "model.onnx")
    names = export_onnx(quick_model, images[0], path)
    assert names[-1] == "image_size"
    assert not quick_model.training, "exporting must leave the model in eval mode"
    for img, ref in zip(images, eager):
        _assert_agrees(ref, run_onnx(path, img))


def test_onnx_opset_without_half_pixel_roialign_is_refused(quick_model, images, tmp_path):
    with pytest.raises(ExportError, match=r"opset 11 .*ROIAlignV2.*Use instead: --opset"):
        export_onnx(quick_model, images[0], str(tmp_path / "m.onnx"), opset=11)


def test_compare_detections_can_fail(eager):
    ref = eager[0]
    assert compare_detections(ref, ref)["ok"] == 1.0
    moved = dict(ref, pred_boxes=ref["pred_boxes"].clone())
    moved["pred_boxes"][0, 0] += 0.01
    assert compare_detections(ref, moved)["ok"] == 0.0
    relabeled = dict(ref, pred_classes=ref["pred_classes"].clone())
    relabeled["pred_classes"][0] = (relabeled["pred_classes"][0] + 1) % 4
    assert compare_detections(ref, relabeled)["ok"] == 0.0
    fewer = {k: v[:-1] for k, v in ref.items()}
    assert compare_detections(ref, fewer)["ok"] == 0.0


def test_r50_scripting_matches_eager(r50_pair):
    _, ours, _ = r50_pair
    img = blob_image(320, 480, 3)
    ref = eager_detections(ours, img)
    _assert_agrees(ref, run_scripted(export_scripting(ours), img))


# ------------------------------------------------------------------------------------------------
# tools/export_model.py
# ------------------------------------------------------------------------------------------------


def _run_tool(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, TOOL, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tool_args(method, output, *flags, opts=()):
    """tools/export_model.py's arguments for the quickstart detector on the CPU: ``flags`` (the
    tool's own), then ``opts`` (config KEY VALUE pairs). The config path is absolute, so the same
    arguments serve in process and as a subprocess."""
    config = os.path.join(REPO, "configs", "quickstart.yaml")
    head = ["--config-file", config, "--export-method", method, *flags, "--output", str(output)]
    return [*head, "MODEL.DEVICE", "cpu", *opts]


@pytest.fixture(scope="module")
def weights(quick_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_weights")
    DetectionCheckpointer(quick_model, save_dir=str(folder)).save("model")
    return str(folder / "model.pth")


def test_tool_exports_onnx_and_checks_it(weights, tmp_path):
    # Small images: the agreement on real-sized ones is tested above, in process.
    sample, other = str(tmp_path / "sample.png"), str(tmp_path / "other.png")
    save_png(blob_image(384, 448, 4), sample)
    save_png(blob_image(320, 512, 5), other)
    out = tmp_path / "out"
    flags = ["--format", "onnx", "--sample-image", sample, "--check", "--check-images", other]
    # MIN_SIZE_TEST 0: images are not resized, so the check runs on two sizes.
    opts = ["MODEL.WEIGHTS", weights, "INPUT.MIN_SIZE_TEST", "0"]
    proc = _run_tool(_tool_args("tracing", out, *flags, opts=opts))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert (out / "model.onnx").stat().st_size > 100_000
    info = json.loads((out / "export.json").read_text())
    assert info["export_method"] == "tracing" and info["format"] == "onnx"
    assert [c["size"] for c in info["check"]] == [[384, 448], [320, 512]]
    for check in info["check"]:
        assert check["ok"] == 1.0 and check["num_eager"] >= 20, check
        assert check["max_box_diff"] <= TOL and check["max_score_diff"] <= TOL, check
    assert "agrees with eager mode" in proc.stderr + proc.stdout


def test_tool_says_clearly_when_a_path_cannot_work(tmp_path):
    # The no-lateral ablation (Tables 1-2, row e) has no lateral convs below the top: it cannot be
    # scripted.
    proc = _run_tool(_tool_args("scripting", tmp_path, opts=["MODEL.FPN.LATERAL", "False"]))
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert "TorchScript scripting cannot export this model" in message
    assert "MODEL.FPN.LATERAL" in message and "tracing" in message
    assert "Traceback" not in proc.stderr


def test_tool_refuses_onnx_by_scripting(tmp_path):
    """In process (no model is exported): the combination is refused with what to use instead."""
    tool = load_tool("export_model.py")
    code = tool.main(_tool_args("scripting", tmp_path, "--format", "onnx"))
    assert code == 2
    assert not (tmp_path / "model.onnx").exists()


def test_scripting_leaves_the_eager_model_unchanged(r50_pair):
    # Scripting registers Detectron2's ResNet stages under new names; done on the user's model it
    # would change the keys of every checkpoint saved from it afterwards.
    _, ours, _ = r50_pair
    keys = list(ours.state_dict())
    export_scripting(ours)
    assert list(ours.state_dict()) == keys


def _strategies(model):
    """{module name: names of the execution strategies applied to it}, for every module with one."""
    return {
        n: [s.__name__ for s in strategies_of(m)]
        for n, m in model.named_modules()
        if strategies_of(m)
    }


def test_tool_exports_the_model_as_train_net_runs_it(weights, tmp_path, monkeypatch):
    """In process: the tool's eager model has the execution strategies of tools/train_net.py's
    (FPNTrainer.build_model), the scripted file has none, and the check passes between them."""
    tool = load_tool("export_model.py")
    seen = []

    def spy(model, *args, **kwargs):
        seen.append(model)
        return export_to_folder(model, *args, **kwargs)

    monkeypatch.setattr(tool, "export_to_folder", spy)
    out = tmp_path / "out"
    opts = ["MODEL.WEIGHTS", weights, "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "320"]
    code = tool.main(_tool_args("scripting", out, "--check", opts=opts))
    assert code == 0
    expected = _strategies(FPNTrainer.build_model(plugin_cfg("configs/quickstart.yaml")))
    assert expected and _strategies(seen[0]) == expected and not seen[0].training
    scripted = torch.jit.load(str(out / "model.ts"))
    applied = {name for names in expected.values() for name in names}  # e.g. "BlockedLayoutNeck"
    assert not any(name in m.original_name for m in scripted.modules() for name in applied)
    assert "FPNNeck" in {m.original_name for m in scripted.modules()}
    (check,) = json.loads((out / "export.json").read_text())["check"]
    assert check["ok"] == 1.0 and check["num_eager"] >= 20 and check["size"] == [256, 256], check
