"""tools/gpu_check.py rehearsed on the CPU: every step with tiny settings, as a subprocess, and
the summary it writes; its flags' errors. (On a GPU machine it runs the same steps for real.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fpn_apps.gpu_check import STEPS
from tests.conftest import REPO, load_tool
from tests.engine.test_training import TINY

TOOL = os.path.join(REPO, "tools", "gpu_check.py")
#: The quickstart at test size: TINY's keys without the device (the check sets it), few iterations.
TRAIN_OPTS = TINY[2:] + ["SOLVER.MAX_ITER", "3", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.001"]
BENCH_ARGS = "--config-file configs/quickstart.yaml --size 128x160 --reps 1 --warmup 0 --only neck"


def test_the_whole_check_runs_on_the_cpu_with_tiny_settings(tmp_path):
    photo = tmp_path / "photo.jpg"
    pixels = np.random.default_rng(0).random((120, 160, 3)) * 255
    Image.fromarray(pixels.astype("uint8")).save(photo)
    out = tmp_path / "check"
    cmd = [sys.executable, TOOL, "--device", "cpu", "--output-dir", str(out), "--threads", "1"]
    cmd += ["--tests", os.path.join("tests", "test_cuda.py"), "--image", str(photo)]
    cmd += ["--launch-iters", "2", "--throughput-batch", "2", "--bench-args", BENCH_ARGS]
    cmd += ["--train-opts", *TRAIN_OPTS, "DATASETS.FPN_SHAPES.ROOT", str(tmp_path / "data")]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert summary["ok"] is True and list(steps) == list(STEPS)
    assert {n: s["status"] for n, s in steps.items()} == {
        "env": "ok",
        "pytest": "skipped",
        "train": "ok",
        "launch": "ok",
        "demo": "ok",
        "benchmark": "ok",
    }
    assert all(s["seconds"] <= s["budget_seconds"] for s in steps.values())

    env_info = summary["environment"]
    assert env_info["torch"] == torch.__version__ and "nvidia_smi" in env_info
    assert (out / "environment.txt").read_text().strip()
    # Without a GPU every CUDA test is collected and skips (on a GPU, a skip fails the step).
    assert (
        steps["pytest"]["tests"] == steps["pytest"]["skipped"] > 5
        and steps["pytest"]["passed"] == 0
    )
    assert (out / "pytest_cuda.xml").is_file() and (out / "pytest.log").is_file()

    train, launch = steps["train"], steps["launch"]
    assert train["iterations"] == 3 and launch["iterations"] == 2
    for result in (train, launch):
        assert set(result["bbox"]) >= {"AP", "AP50", "AP75"} and os.path.isfile(result["weights"])
        assert result["run"]["returncode"] == 0 and result["run"]["crash"] is None
    assert (
        "--num-gpus 1" in launch["run"]["command"]
        and "MODEL.DEVICE cpu" in launch["run"]["command"]
    )

    demo = steps["demo"]
    assert demo["weights"] == train["weights"]  # the trained weights
    assert os.path.isfile(demo["output"]) and demo["num_instances"] >= 0
    record = json.loads(open(demo["output"] + ".json").read())
    assert record["input"] == str(photo) and record["num_instances"] == demo["num_instances"]

    runs = steps["benchmark"]["runs"]
    assert set(runs) == {"float32", "fast", "batch2"}
    for label, run in runs.items():
        data = json.loads(open(run["json"]).read())
        assert data["environment"]["device"] == "cpu" and data["environment"]["threads"] == 1
        assert "| measurement | fpn_plugin | Detectron2 | ratio |" in open(run["markdown"]).read()
        assert run["figures"]["neck"]["ratio"] > 0
    fast = json.loads(open(runs["fast"]["json"]).read())["environment"]["opts"]
    assert fast == ["MODEL.ACCEL.AUTOCAST_DTYPE", "bfloat16", "MODEL.ACCEL.CHANNELS_LAST", "True"]
    assert json.loads(open(runs["batch2"]["json"]).read())["environment"]["batch"] == 2

    markdown = (out / "summary.md").read_text()
    assert markdown == proc.stdout.rstrip("\n") + "\n"  # the tool prints the summary
    assert "every step passed" in markdown and "tools/gpu_check.py --device cpu" in markdown
    for name in STEPS:
        assert f"| {name} " in markdown
    assert "## Benchmark: fast" in markdown


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--steps", "env,nope"], "--steps"),
        (["--train-opts", "OUTPUT_DIR", "x"], "--train-opts"),
        (["--bench-args", "--threads 4"], "--bench-args"),
        (["--throughput-batch", "-1"], "--throughput-batch"),
        (["--image", "missing.jpg"], "--image"),
    ],
)
def test_bad_flags_are_named(argv, named, capsys):
    with pytest.raises(SystemExit) as e:
        load_tool("gpu_check.py").main(["--device", "cpu", *argv])
    assert e.value.code == 2
    assert named in capsys.readouterr().err
