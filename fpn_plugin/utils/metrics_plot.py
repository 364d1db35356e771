"""Training curves of a Detectron2 run, plotted from its ``metrics.json`` (tools/plot_metrics.py).

Detectron2's ``JSONWriter`` appends one JSON object per line to ``OUTPUT_DIR/metrics.json``:
training lines (``iteration``, ``total_loss``, ``loss_*``, ``lr``, times, and fpn_plugin's
``roi_levels/p<k>``, the fraction of RoIs pooled from each level) and evaluation lines (often only
``iteration`` and ``bbox/AP``, ``bbox/AP50``, ...). :func:`plot_metrics` writes:

- ``losses.png``: ``total_loss`` and every ``loss_*`` vs iteration;
- ``lr.png``: the learning rate vs iteration;
- ``ap.png``: the COCO summary metrics (AP, AP50, AP75, APs, APm, APl) of each evaluated task
  (``bbox``, ``segm``, ``keypoints``) vs iteration, and per-class AP if logged -- only if the run
  was evaluated;
- ``roi_levels.png``: the fraction of RoIs pooled from each pyramid level vs iteration -- only if
  logged.

Lines that are not JSON objects with an ``iteration`` (such as the truncated last line of a killed
run) are skipped with a warning. A resumed run appends iterations it already logged; the later
value of a key at an iteration replaces the earlier one.
"""

import json
import logging
import math
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure  # a bare Figure: no pyplot, no global backend to choose

__all__ = [
    "AP_SUMMARY",
    "AP_TASKS",
    "MetricsError",
    "Series",
    "metrics_path",
    "load_metrics",
    "plot_losses",
    "plot_lr",
    "plot_ap",
    "plot_roi_levels",
    "plot_metrics",
]

logger = logging.getLogger(__name__)

#: COCO summary metrics, in plotting order.
AP_SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: Tasks whose metrics Detectron2's COCOEvaluator logs as "<task>/<metric>".
AP_TASKS = ("bbox", "segm", "keypoints")
_ROI_LEVEL = re.compile(r"^roi_levels/p(\d+)$")

#: key -> [(iteration, value)], sorted by iteration.
Series = Dict[str, List[Tuple[int, float]]]


class MetricsError(Exception):
    """A missing or unusable metrics file: reported as one line, without a traceback."""


def metrics_path(path: str) -> str:
    """``path`` itself if it is a file, ``path/metrics.json`` if it is a folder."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    if not os.path.isfile(path):
        raise MetricsError(f"metrics file '{path}' does not exist")
    return path


def _number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def load_metrics(path: str, warn: Callable[[str], None] = logger.warning) -> Series:
    """Numeric, finite series of every key in the JSON-lines file ``path``, by iteration.

    Each skipped line is reported with ``warn`` as ``"<path>:<line>: skipped, <why>"``. Raises
    MetricsError if no line is a JSON object with an integer ``iteration``.
    """
    by_iter: Dict[int, Dict[str, float]] = {}
    skipped: List[int] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped.append(lineno)
            continue
        iteration = record.get("iteration") if isinstance(record, dict) else None
        if _number(iteration) is None:
            skipped.append(lineno)
            continue
        values = {k: _number(v) for k, v in record.items() if k != "iteration"}
        # A later line replaces an earlier one: a resumed run logs its iterations again.
        by_iter.setdefault(int(iteration), {}).update(
            (k, v) for k, v in values.items() if v is not None
        )
    last = max((i for i, line in enumerate(lines, start=1) if line.strip()), default=0)
    for lineno in skipped:
        why = (
            "truncated last line (killed run?)"
            if lineno == last
            else "not a JSON object with an 'iteration'"
        )
        warn(f"{path}:{lineno}: skipped, {why}")
    series: Series = {}
    for iteration in sorted(by_iter):
        for key, value in by_iter[iteration].items():
            series.setdefault(key, []).append((iteration, value))
    if not series:
        raise MetricsError(
            f"metrics file '{path}' has no usable line "
            "(JSON objects with an 'iteration' and metrics)"
        )
    return series


def _plot(ax, series: Series, keys: Sequence[str]) -> None:
    for key in keys:
        xs, ys = zip(*series[key])
        ax.plot(xs, ys, label=key, marker="o" if len(xs) < 20 else None, markersize=3)


def _save(fig: Figure, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _figure(rows: int = 1, width: float = 8.0, height: float = 4.5) -> Tuple[Figure, list]:
    """A figure of ``rows`` panels, each ``width`` x ``height`` inches, iteration on the x axis."""
    fig = Figure(figsize=(width, height * rows))
    axes = [fig.add_subplot(rows, 1, i + 1) for i in range(rows)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("iteration")
    return fig, axes


def plot_losses(series: Series, out_dir: str) -> Optional[str]:
    """``losses.png`` (``total_loss`` and every ``loss_*``) in ``out_dir``; None without losses."""
    keys = ["total_loss"] if "total_loss" in series else []
    keys += sorted(k for k in series if k.startswith("loss_"))
    if not keys:
        return None
    fig, (ax,) = _figure()
    _plot(ax, series, keys)
    ax.set_ylabel("loss")
    ax.set_title("training losses")
    ax.legend(fontsize="small")
    return _save(fig, out_dir, "losses.png")


def plot_lr(series: Series, out_dir: str) -> Optional[str]:
    """``lr.png`` in ``out_dir``; None without ``lr``."""
    if "lr" not in series:
        return None
    fig, (ax,) = _figure(height=3.5)
    _plot(ax, series, ["lr"])
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate")
    return _save(fig, out_dir, "lr.png")


def plot_ap(series: Series, out_dir: str) -> Optional[str]:
    """``ap.png`` (one panel per task's summary metrics, one per task's per-class AP) in
    ``out_dir``; None if the run was not evaluated."""
    panels = []  # (title, keys)
    for task in AP_TASKS:
        summary = [f"{task}/{m}" for m in AP_SUMMARY if f"{task}/{m}" in series]
        if summary:
            panels.append((f"{task}: COCO AP", summary))
        per_class = sorted(k for k in series if k.startswith(f"{task}/AP-"))
        if per_class:
            panels.append((f"{task}: AP per class", per_class))
    if not panels:
        return None
    fig, axes = _figure(rows=len(panels), height=4.0)
    for ax, (title, keys) in zip(axes, panels):
        _plot(ax, series, keys)
        ax.set_ylabel("AP (%)")
        ax.set_title(title)
        ax.legend(fontsize="small", ncol=2)
    return _save(fig, out_dir, "ap.png")


def plot_roi_levels(series: Series, out_dir: str) -> Optional[str]:
    """``roi_levels.png`` (fraction of RoIs per pyramid level) in ``out_dir``; None if unlogged."""
    levels = sorted((int(m.group(1)), k) for k in series for m in [_ROI_LEVEL.match(k)] if m)
    if not levels:
        return None
    fig, (ax,) = _figure()
    _plot(ax, series, [k for _, k in levels])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("fraction of RoIs")
    ax.set_title("RoIs pooled from each pyramid level (Eqn. 1)")
    ax.legend([f"P{lv}" for lv, _ in levels], fontsize="small")
    return _save(fig, out_dir, "roi_levels.png")


def plot_metrics(
    path: str, out_dir: Optional[str] = None, warn: Callable[[str], None] = logger.warning
) -> List[str]:
    """Write the plots of the metrics file (or run folder) ``path`` into ``out_dir`` (default: the
    file's folder); returns the paths written. ``warn`` reports the skipped lines
    (:func:`load_metrics`)."""
    path = metrics_path(path)
    series = load_metrics(path, warn=warn)
    out_dir = os.path.expanduser(out_dir) if out_dir else os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for plot in (plot_losses, plot_lr, plot_ap, plot_roi_levels):
        out = plot(series, out_dir)
        if out is not None:
            written.append(out)
    if not written:
        raise MetricsError(f"metrics file '{path}' has no losses, lr, AP or roi_levels to plot")
    return written
