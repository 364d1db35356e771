#!/usr/bin/env python
"""The necks compared on one budget: FPN, PAFPN, the one-layer BiFPN-style neck and the full BiFPN.

Every neck goes into the same detector (--config-file, by default
configs/quickstart_retinanet.yaml); each neck's overrides change MODEL.BACKBONE.NAME and the neck's
own keys only. Per neck: parameters and GFLOPs of the neck and of the detector (fvcore), latency of
the backbone and of the detector's inference (median of --reps, the necks timed alternately), and
with --train the box AP on fpn_shapes after training each neck on the shared budget.

    python tools/compare_necks.py --image-size 256      # params, FLOPs, latency
    python tools/compare_necks.py --train               # + AP (trains the 4 detectors)

Writes necks.md (the table) and necks.json (every figure and the settings) to --output-dir. The
comparison is tools/fpn_bench/necks.py.
"""

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)

from fpn_bench.ablation import TrainingBudget
from fpn_bench.necks import DEFAULT_CONFIG, NECKS, compare_necks, markdown_table, parse_necks
from fpn_plugin.accel.cpu_allocator import add_system_malloc_argument, keep_freed_memory_for_tool


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config-file",
        default=DEFAULT_CONFIG,
        help="the shared detector (default: configs/quickstart_retinanet.yaml)",
    )
    p.add_argument("--necks", default="all", help=f"comma-separated, from {list(NECKS)}, or 'all'")
    p.add_argument(
        "--image-size",
        type=int,
        help="input and fpn_shapes image size, pixels (default: the config's)",
    )
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per neck")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions per neck")
    p.add_argument("--train", action="store_true", help="also train and evaluate each neck (AP)")
    p.add_argument(
        "--iters", type=int, help="training iterations (default: the config's; LR schedule scaled)"
    )
    p.add_argument("--batch", type=int, help="images per batch (default: the config's)")
    p.add_argument(
        "--num-train", type=int, help="fpn_shapes training images (default: the config's)"
    )
    p.add_argument(
        "--num-val", type=int, help="fpn_shapes validation images (default: the config's)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--output-dir", default="output/necks", help="training runs, necks.md and necks.json"
    )
    add_system_malloc_argument(p)
    p.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides, shared"
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        parse_necks(args.necks)
    except ValueError as e:
        parser.error(str(e))
    message = keep_freed_memory_for_tool(args, args.device)
    if message:
        print(message)
    records = compare_necks(
        TrainingBudget.from_flags(vars(args)),
        args.necks,
        args.output_dir,
        reps=args.reps,
        warmup=args.warmup,
        train=args.train,
    )
    table = markdown_table(records)
    print(table)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "necks.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output_dir, "necks.json"), "w") as f:
        json.dump({"settings": vars(args), "necks": records}, f, indent=2)
    return records


if __name__ == "__main__":
    main()
