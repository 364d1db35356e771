#!/usr/bin/env python
"""FLOPs, parameters and activations of a detector, per component, counted with fvcore.

    python tools/analyze_model.py --config-file configs/fpn_r50.yaml --size 800x1333
    python tools/analyze_model.py --config-file configs/lazy/retinanet_fpn_r50.py --size 800x1333 \
        --json r.json
    python tools/analyze_model.py --config-file configs/quickstart.yaml --size 512x512 \
        MODEL.WEIGHTS model_final.pth

One random image of --size HxW (padded to the backbone's size divisibility), inference mode. The
components, the counting conventions and how untrained heads are handled are described in
tools/fpn_bench/analysis.py.
"""

import argparse
import json
import os
from typing import Tuple

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)
import torch

from fpn_bench.analysis import analyze, build_detector, format_table, make_inputs


def parse_size(text: str) -> Tuple[int, int]:
    """ "800x1333" -> (800, 1333): image height and width, pixels."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--size {text!r} must be HEIGHTxWIDTH in pixels, e.g. 800x1333."
        ) from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"--size {text!r}: height and width must be positive.")
    return h, w


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config-file",
        required=True,
        metavar="FILE",
        help="a .yaml or LazyConfig .py detector config",
    )
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(800, 1333),
        metavar="HxW",
        help="input image size, pixels (default 800x1333)",
    )
    parser.add_argument(
        "--device", default="cpu", help="device the model runs on for the counts (default cpu)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the counts to this JSON file")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides: KEY VALUE pairs (YAML) or key=value (LazyConfig)",
    )
    return parser


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"--config-file {args.config_file!r} does not exist.")
    torch.manual_seed(0)
    model = build_detector(args.config_file, args.opts, args.device)
    height, width = args.size
    inputs = make_inputs(height, width, args.device)
    with torch.no_grad():
        padded = model.preprocess_image(inputs).tensor.shape[-2:]
        result = analyze(model, inputs)
    result.update(config=args.config_file, size=[height, width], padded_size=list(padded))
    print(
        f"{args.config_file}, one {height}x{width} image "
        f"(padded to {padded[0]}x{padded[1]}), inference:"
    )
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
