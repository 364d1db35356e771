"""Utilities of the tools: drawing detections by pyramid level, plotting a run's metrics."""

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
