"""fpn_plugin.utils.metrics_plot: reading Detectron2's metrics.json and choosing the plots."""

import json

import pytest

from fpn_plugin.utils.metrics_plot import (
    MetricsError,
    load_metrics,
    metrics_path,
    plot_ap,
    plot_metrics,
    plot_roi_levels,
)


def _lines(path, records, tail=""):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n" + tail)
    return str(path)


def test_load_metrics_merges_lines_keeps_later_values_and_warns(tmp_path):
    path = _lines(
        tmp_path / "metrics.json",
        [
            {"iteration": 9, "total_loss": 2.0, "lr": 0.01, "eta": "0:01:00", "flag": True},
            {"iteration": 19, "total_loss": 1.5, "lr": 0.02},
            ["not", "a", "dict"],
            {"iteration": 19, "bbox/AP": 12.5, "bbox/APm": float("nan")},  # an evaluation line
            {"iteration": 9, "total_loss": 1.9},  # a resumed run logs iteration 9 again
            {"iteration": "x", "total_loss": 0.1},
        ],
        tail='{"iteration": 29, "total_lo',  # the truncated last line of a killed run
    )
    warnings = []
    series = load_metrics(path, warn=warnings.append)
    assert series["total_loss"] == [(9, 1.9), (19, 1.5)]  # sorted by iteration; later value kept
    assert series["lr"] == [(9, 0.01), (19, 0.02)]
    assert series["bbox/AP"] == [(19, 12.5)]
    # Not numbers, or not finite: dropped.
    assert "eta" not in series and "flag" not in series and "bbox/APm" not in series
    assert warnings == [
        f"{path}:3: skipped, not a JSON object with an 'iteration'",
        f"{path}:6: skipped, not a JSON object with an 'iteration'",
        f"{path}:7: skipped, truncated last line (killed run?)",
    ]


def test_metrics_path_and_nothing_to_plot(tmp_path):
    with pytest.raises(MetricsError, match="does not exist") as error:
        metrics_path(str(tmp_path))
    assert str(tmp_path / "metrics.json") in str(error.value)
    path = _lines(tmp_path / "metrics.json", [{"iteration": 1, "data_time": 0.1}])
    assert metrics_path(str(tmp_path)) == path
    with pytest.raises(MetricsError, match="no losses, lr, AP or roi_levels to plot"):
        plot_metrics(path, str(tmp_path / "plots"))


def test_ap_and_level_plots_only_when_logged(tmp_path):
    series = {"total_loss": [(1, 1.0)], "lr": [(1, 0.1)]}
    assert plot_ap(series, str(tmp_path)) is None
    assert plot_roi_levels(series, str(tmp_path)) is None
    series.update({"segm/AP-circle": [(1, 3.0)], "roi_levels/p3": [(1, 0.4)]})
    assert plot_ap(series, str(tmp_path)) == str(tmp_path / "ap.png")
    assert plot_roi_levels(series, str(tmp_path)) == str(tmp_path / "roi_levels.png")
    assert (tmp_path / "ap.png").stat().st_size > 1000
