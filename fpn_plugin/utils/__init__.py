"""Utilities: drawing detections by pyramid level, plotting a run's metrics, and (in
:mod:`.testing`, imported on its own) untrained detectors that propose and detect like trained
ones, for tests and benchmarks."""

from .metrics_plot import MetricsError, load_metrics, plot_metrics
from .visualizer import LEVEL_COLORS, LevelVisualizer, legend_layout, level_color

__all__ = [
    "LEVEL_COLORS",
    "LevelVisualizer",
    "legend_layout",
    "level_color",
    "MetricsError",
    "load_metrics",
    "plot_metrics",
]
