"""tools/fpn_apps/gpu_check.py: a crashing tool is diagnosed, the time limit holds, the
options are checked and the tools' outputs read (the whole check runs in tests/tools/)."""

import json
import os
import textwrap

import pytest
import torch

from fpn_apps.gpu_check import (
    CRASH_VARIANTS,
    STEPS,
    GpuCheck,
    GpuCheckOptions,
    read_junit,
    read_training,
)
from tests.conftest import REPO


def test_a_crashing_training_run_is_diagnosed(tmp_path, monkeypatch):
    """The train step's tool dies of SIGSEGV: it is run again with faulthandler and with each
    suspect removed, and the summary names the crash, its stack and whose code it lies in."""
    script = tmp_path / "crashing_tool.py"
    script.write_text(
        textwrap.dedent("""
        import ctypes, sys

        def native_call():
            ctypes.string_at(0)

        print("arguments:", sys.argv[1:])
        if "MODEL.ACCEL.ENABLED" not in sys.argv:  # a crash in the plugin's strategies, say
            native_call()
    """)
    )
    monkeypatch.setattr(GpuCheck, "_train_args", lambda self, folder, extra=(): [str(script)])
    options = GpuCheckOptions(
        repo=REPO, output_dir=str(tmp_path / "out"), device="cpu", steps=("train",)
    )
    summary = GpuCheck(options).run()
    train = summary["steps"]["train"]
    assert summary["ok"] is False and train["status"] == "crashed"
    assert train["summary"].startswith("died of SIGSEGV")
    reruns = train["crash"]["reruns"]
    assert [r["label"] for r in reruns] == ["the same run"] + [label for label, _ in CRASH_VARIANTS]
    assert [r["crashed"] for r in reruns] == ["SIGSEGV", None, "SIGSEGV"]
    assert reruns[1]["returncode"] == 0 and reruns[1]["location"] is None
    assert (
        "'MODEL.ACCEL.ENABLED', 'False'" in open(reruns[1]["log"]).read()
    )  # the variant's options
    assert [f["function"] for f in reruns[0]["stack"][1:]] == ["native_call", "<module>"]
    assert reruns[0]["location"]["innermost"]["function"] == "string_at"
    verdict = train["crash"]["verdict"]
    assert "no plugin frame" in verdict and verdict in train["summary"]
    assert verdict.endswith("; no crash with " + CRASH_VARIANTS[0][0])
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["steps"]["train"]["crash"]["verdict"] == train["crash"]["verdict"]
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert (
        "## Crash in `train`" in markdown and "in native_call" in markdown and "CRASHED" in markdown
    )


def test_steps_past_the_time_limit_are_not_run(tmp_path):
    options = GpuCheckOptions(repo=REPO, output_dir=str(tmp_path), device="cpu", time_limit=1)
    summary = GpuCheck(options).run()
    assert list(summary["steps"]) == list(STEPS)
    assert all(s["status"] == "out_of_time" for s in summary["steps"].values())
    assert summary["ok"] is False
    assert "NOT RUN" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(steps=("env", "bogus")), "--steps"),
        (dict(train_opts=["SOLVER.MAX_ITER"]), "--train-opts"),
        (dict(train_opts=["MODEL.DEVICE", "cpu"]), "--train-opts"),
        (dict(bench_args=["--json", "x.json"]), "--bench-args"),
        (dict(bench_args=["--opts", "A", "B"]), "--bench-args"),
        (dict(launch_iters=0), "--launch-iters"),
        (dict(image="/no/such/photo.jpg"), "--image"),
        (dict(device="tpu"), "--device"),
        (dict(repo="/"), "tools/train_net.py"),
    ],
)
def test_bad_options_are_named(kwargs, named, tmp_path):
    with pytest.raises(ValueError, match=named.replace("-", r"\-")):
        GpuCheckOptions(**{"repo": REPO, "output_dir": str(tmp_path), "device": "cpu", **kwargs})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cuda_without_a_gpu_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available.*--device cpu"):
        GpuCheckOptions(repo=REPO, output_dir=str(tmp_path))


def test_training_and_pytest_outputs_are_read(tmp_path):
    lines = [
        {"iteration": 18, "time": 0.2, "total_loss": 1.5},
        {"iteration": 19, "time": 0.4, "total_loss": 1.25},
        {
            "bbox/AP": 61.5,
            "bbox/AP50": 90.0,
            "bbox/AP75": 70.25,
            "bbox/AP-circle": 1.0,
            "iteration": 19,
        },
    ]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    got = read_training(str(tmp_path))
    assert got == {
        "iterations": 20, "seconds_per_iteration": 0.3, "total_loss": 1.25,
        "bbox": {"AP": 61.5, "AP50": 90.0, "AP75": 70.25}, "weights": None,
    }  # fmt: skip
    (tmp_path / "model_final.pth").write_bytes(b"x")
    assert read_training(str(tmp_path))["weights"] == os.path.join(str(tmp_path), "model_final.pth")
    assert read_training(str(tmp_path / "missing"))["iterations"] == 0

    xml = tmp_path / "report.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="6">'
        '<testcase classname="tests.test_cuda" name="test_a"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_cuda" name="test_b"><error message="y"/></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c"/>'
        "</testsuite></testsuites>"
    )
    assert read_junit(str(xml)) == {
        "tests": 6, "passed": 2, "failed": 2, "skipped": 2,
        "failing": ["tests.test_cuda::test_a", "tests.test_cuda::test_b"],
    }  # fmt: skip
