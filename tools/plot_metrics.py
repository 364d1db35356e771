#!/usr/bin/env python
"""Plot the training curves of a Detectron2 run from its ``metrics.json``.

    python tools/plot_metrics.py output/quickstart                # or .../metrics.json
    python tools/plot_metrics.py output/quickstart/metrics.json --out plots/

Writes, in ``--out`` (default: the folder of metrics.json), ``losses.png``, ``lr.png``, ``ap.png``
(if the run was evaluated) and ``roi_levels.png`` (if the fraction of RoIs pooled from each
pyramid level was logged); see fpn_plugin/utils/metrics_plot.py. Lines that are not JSON objects
with an ``iteration`` (such as the truncated last line of a killed run) are skipped with a
warning. Prints the paths written.
"""

import argparse
import sys
from typing import Optional, Sequence

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)

from fpn_plugin.utils.metrics_plot import MetricsError, plot_metrics


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Plot losses, lr, AP and RoI level fractions from Detectron2's metrics.json"
    )
    parser.add_argument("metrics", help="a run's OUTPUT_DIR or its metrics.json")
    parser.add_argument("--out", help="folder for the PNGs (default: the folder of metrics.json)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    try:
        written = plot_metrics(args.metrics, args.out, warn=warn)
    except MetricsError as e:
        print(f"plot_metrics.py: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
