"""tools/plot_metrics.py: the PNGs, the printed paths, warnings and errors (as a subprocess), and
fpn_plugin.utils.metrics_plot.plot_metrics, which it calls."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fpn_plugin.utils.metrics_plot import MetricsError, plot_metrics
from tests.conftest import REPO

PLOT = os.path.join(REPO, "tools", "plot_metrics.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(args, timeout=180):
    # PYTHONPATH: the tool imports this checkout's fpn_plugin, not an installed one.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _check_ok(proc):
    assert proc.returncode == 0, (
        f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )


def _write_metrics(path):
    lines = []
    for it in range(19, 300, 20):
        record = {
            "iteration": it,
            "total_loss": 2.0 * np.exp(-it / 150),
            "loss_cls": 0.8 / (1 + it / 100),
            "loss_box_reg": 0.4,
            "loss_rpn_cls": 0.3,
            "loss_rpn_loc": 0.2,
            "lr": 0.02 * min(1.0, (it + 1) / 100),
            "data_time": 0.01,
        }
        if it >= 59:  # older lines lack some keys
            fractions = {2: 0.5, 3: 0.3, 4: 0.15, 5: 0.05}
            record.update({f"roi_levels/p{k}": v for k, v in fractions.items()})
        lines.append(json.dumps(record))
        if it in (139, 279):  # evaluation lines: only bbox/* keys
            evaluation = {
                "iteration": it,
                "bbox/AP": it / 10,
                "bbox/AP50": it / 7,
                "bbox/APs": 1.5,
                "bbox/APm": float("nan"),
                "bbox/APl": 9.0,
                "bbox/AP-circle": 3.0,
            }
            lines.append(json.dumps(evaluation))
    text = "\n".join(lines) + '\n{"iteration": 299, "total_loss": 0.4, "loss_c'  # a killed run
    path.write_text(text)


def _assert_png(path):
    assert os.path.isfile(path), path
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    assert os.path.getsize(path) > 1000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.width >= 200 and im.height >= 200
        # Not a blank canvas: curves were drawn.
        assert len(np.unique(np.asarray(im.convert("L")))) > 10


def test_plot_metrics_writes_pngs(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write_metrics(run_dir / "metrics.json")
    out = tmp_path / "plots"
    proc = _run([PLOT, str(run_dir), "--out", str(out)])
    _check_ok(proc)
    names = ["losses.png", "lr.png", "ap.png", "roi_levels.png"]
    for name in names:
        _assert_png(str(out / name))
        assert str(out / name) in proc.stdout  # the paths written are printed
    # The truncated last line is reported, not fatal.
    assert "metrics.json:" in proc.stderr and "truncated" in proc.stderr

    # Without --out, next to metrics.json; and a file without evaluation or level lines gives
    # losses and lr only.
    (run_dir / "metrics.json").write_text(
        "\n".join(
            json.dumps({"iteration": i, "total_loss": 1.0 / (i + 1), "lr": 0.01}) for i in range(5)
        )
    )
    written = plot_metrics(str(run_dir / "metrics.json"))
    assert written == [str(run_dir / "losses.png"), str(run_dir / "lr.png")]
    _assert_png(str(run_dir / "losses.png"))
    _assert_png(str(run_dir / "lr.png"))
    assert not (run_dir / "ap.png").exists() and not (run_dir / "roi_levels.png").exists()


def test_plot_metrics_missing_or_unusable_file(tmp_path):
    missing = tmp_path / "nowhere" / "metrics.json"
    proc = _run([PLOT, str(missing)])
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr

    bad = tmp_path / "metrics.json"
    bad.write_text('{"no_iteration": 1}\nnot json\n{"iteration": 3, "total_lo')
    with pytest.raises(MetricsError) as error:  # the tool's exit 1 with this one line, as above
        plot_metrics(str(tmp_path))
    assert str(bad) in str(error.value) and "no usable line" in str(error.value)
