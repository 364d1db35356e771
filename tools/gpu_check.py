#!/usr/bin/env python
"""The README's jobs on a GPU, in one command, with a summary (``make gpu-check`` runs it).

    python tools/gpu_check.py                                # everything, on the GPU
    python tools/gpu_check.py --steps env,pytest,train --time-limit 400
    python tools/gpu_check.py --device cpu --train-opts SOLVER.MAX_ITER 3 ...   # a rehearsal

Steps (``--steps``, in this order): ``env`` (versions, the card, nvidia-smi), ``pytest``
(``pytest -m cuda tests``: parity with Detectron2, training with and without AMP, export, the
execution strategies on the GPU), ``train`` (``tools/train_net.py --config-file
configs/quickstart.yaml``: training and COCO evaluation), ``launch`` (the same through
``--num-gpus 1``, shorter), ``demo`` (``tools/demo.py`` on a real photo with the trained weights),
``benchmark`` (``tools/benchmark.py`` in float32, in the fast mode float16 + channels-last, and
at batch 8). A tool that crashes (e.g. a segmentation fault) is run again with faulthandler for
the Python stack of the crash, and the summary says whether it lies in the plugin or elsewhere.

Output in ``--output-dir``: ``summary.md`` and ``summary.json`` (rewritten after each step), a
log per run, the training folders, the demo's image, the benchmark's JSON and Markdown files.
Exit status 0 when every step passed (or skipped as expected), else 1. See docs/gpu.md.
"""

import argparse
import os
import shlex
import sys

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)

from fpn_apps.gpu_check import STEPS, GpuCheckOptions, run_gpu_check

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = GpuCheckOptions


def _names(text: str):
    return tuple(n.strip() for n in text.split(",") if n.strip())


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output-dir", default=D.output_dir, help="where everything is written")
    p.add_argument(
        "--device", default=D.device, help="cuda (default), or cpu to rehearse the steps"
    )
    p.add_argument(
        "--steps", type=_names, default=STEPS, help=f"comma-separated subset of {','.join(STEPS)}"
    )
    p.add_argument("--tests", default=D.tests, help="what pytest -m cuda runs (default tests)")
    p.add_argument(
        "--train-opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides for both training runs, e.g. SOLVER.MAX_ITER 100 (default: the "
        "quickstart as it is)",
    )
    p.add_argument(
        "--launch-iters",
        type=int,
        default=D.launch_iters,
        help=f"iterations of the --num-gpus 1 run (default {D.launch_iters})",
    )
    p.add_argument(
        "--image",
        default=None,
        help="the demo's photo (default: scikit-image's astronaut, shipped with the package)",
    )
    p.add_argument(
        "--threads", type=int, default=D.threads, help="the benchmark's --threads (default 16)"
    )
    p.add_argument(
        "--bench-args",
        type=shlex.split,
        default=[],
        help="flags added last to every benchmark run, quoted: '--reps 3 --warmup 1' (one flag "
        "alone: --bench-args=--keep-freed-memory)",
    )
    p.add_argument(
        "--throughput-batch",
        type=int,
        default=D.throughput_batch,
        help="batch of the throughput run (default 8; 0 leaves it out)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=D.time_limit,
        help="seconds for the whole check; steps left when it is reached are not run "
        "(default 0: no limit, each step has its own budget)",
    )
    return p


def _progress(name: str, result: dict) -> None:
    seconds = f" ({result['seconds']:.0f} s)" if "seconds" in result else ""
    print(
        f"[gpu_check] {name}: {result['status']}{seconds}: {result.get('summary', '')}",
        file=sys.stderr,
        flush=True,
    )


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    command = " ".join(shlex.quote(a) for a in ["tools/gpu_check.py", *(argv or sys.argv[1:])])
    try:
        options = GpuCheckOptions(repo=REPO, command=command, **vars(args))
    except ValueError as e:
        parser.error(str(e))
    summary = run_gpu_check(options, progress=_progress)
    with open(os.path.join(options.output_dir, "summary.md")) as f:
        print(f.read())
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
