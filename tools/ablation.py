#!/usr/bin/env python
"""The paper's ablation (Lin et al. 2017, Tables 1-3), reproduced on the embedded fpn_shapes data.

Trains every variant on ONE shared budget (iterations, batch, LR schedule, seed, data order, model
width of --config-file, by default configs/quickstart.yaml), then evaluates each trained detector:
its RPN's proposal recall (AR@100, AR@1000, Table 1) and its box AP (Tables 2 and 3). Each variant
is the base config plus its overrides in configs/ablation/<name>.yaml:

    (a) c4            single scale on C4: RPN and RoI pooling on one stride-16 map (all 15 anchors)
    (b) c5            single scale on C5: the same on one stride-32 map
    (c) fpn           FPN: P2-P6 for the RPN, P2-P5 for RoI pooling (the paper's detector)
    (d) no_top_down   bottom-up pyramid: no top-down pathway
    (e) no_lateral    top-down pyramid without lateral connections
    (f) finest_only   only the finest level: all 15 anchors and all RoIs on P2

    python tools/ablation.py                                   # the config's budget
    python tools/ablation.py --device cuda --iters 5000 --batch 16 --opts SOLVER.BASE_LR 0.06
    python tools/ablation.py --iters 150 --num-train 200 --num-val 50 --image-size 256 \
        --variants c4,fpn

Writes to --output-dir: ablation.md (the table), ablation.json (every figure, the budget and the
settings), ablation.png (bar chart) and one training folder per variant. The runner is
tools/fpn_bench/ablation.py.
"""

import argparse
import os
import sys
from typing import List, Optional

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)

from fpn_bench.ablation import VARIANT_DIR, VARIANTS, TrainingBudget, parse_variants, run_ablation
from fpn_bench.checkout import CONFIGS
from fpn_plugin.accel.cpu_allocator import add_system_malloc_argument, keep_freed_memory_for_tool

DEFAULT_CONFIG = os.path.join(CONFIGS, "quickstart.yaml")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config-file",
        default=DEFAULT_CONFIG,
        help="base FPN config (default: configs/quickstart.yaml)",
    )
    p.add_argument(
        "--variants",
        default="all",
        help=f"comma-separated, from {list(VARIANTS)}, or 'all' (default)",
    )
    p.add_argument(
        "--iters",
        type=int,
        help="training iterations of every variant (default: the config's SOLVER.MAX_ITER); "
        "the LR schedule is scaled to it",
    )
    p.add_argument(
        "--batch", type=int, help="images per batch (default: the config's SOLVER.IMS_PER_BATCH)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--num-train", type=int, help="fpn_shapes training images (default: the config's, 1000)"
    )
    p.add_argument(
        "--num-val", type=int, help="fpn_shapes validation images (default: the config's, 100)"
    )
    p.add_argument(
        "--image-size",
        type=int,
        help="fpn_shapes image size in pixels, also the train/test input size "
        "(default: the config's, 512)",
    )
    p.add_argument(
        "--output-dir", default="output/ablation", help="where the table, JSON, chart and runs go"
    )
    p.add_argument(
        "--variant-dir",
        default=VARIANT_DIR,
        help="folder of the variants' overrides, <name>.yaml (default: configs/ablation)",
    )
    add_system_malloc_argument(p)
    p.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE config overrides shared by all variants",
    )
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        parse_variants(args.variants)
    except ValueError as e:
        parser.error(str(e))
    message = keep_freed_memory_for_tool(args, args.device)
    if message:
        print(message)
    budget = TrainingBudget.from_flags(vars(args))
    run_ablation(budget, args.variants, args.output_dir, args.variant_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
