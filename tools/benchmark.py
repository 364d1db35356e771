#!/usr/bin/env python
"""Speed (and peak memory) of fpn_plugin's detector against Detectron2's built-in equivalent.

Both detectors are built in the same process with the same weights (Detectron2's model is built,
its ``state_dict`` is loaded into the plugin's with ``strict=True``), and every measurement runs
the two alternately -- A, B, A, B, ... -- so that both see the same machine load; the figure
reported is the median of ``--reps`` repetitions after ``--warmup`` untimed ones.

    python tools/benchmark.py                                  # everything, R50-FPN, CPU, 2 threads
    python tools/benchmark.py --only pooler,anchors --reps 20 --json bench.json
    python tools/benchmark.py --images 'datasets/coco/val2017/*.jpg' --weights model_final.pkl
    python tools/benchmark.py --device cuda --threads 8
    python tools/benchmark.py --config-file configs/my.yaml --opts MODEL.ACCEL.CHANNELS_LAST True
    # GPU fast mode (float16 autocast + channels-last, inference) against Detectron2 in float32:
    python tools/benchmark.py --device cuda --only neck,end_to_end,memory \\
        --opts MODEL.ACCEL.AUTOCAST_DTYPE float16 MODEL.ACCEL.CHANNELS_LAST True
    # The same strategies applied to Detectron2's own model too:
    python tools/benchmark.py --accelerate-reference

The plugin's model is run as the tools run it (``fpn_plugin.accel.accelerate`` with its
``MODEL.ACCEL``); Detectron2's is plain unless ``--accelerate-reference``. The models, the
measurements (``--only``) and the report are described in ``tools/fpn_bench/`` (models.py,
measurements.py, memory.py, report.py). Output: a header (versions, device, threads, inputs,
allocator, proposal counts, checks) and a Markdown table
``| measurement | fpn_plugin | Detectron2 | ratio |`` (ratio = fpn_plugin / reference; < 1 means
the plugin is faster or smaller); ``--json PATH`` writes every figure, the raw samples and the
environment.
"""

import argparse
import sys

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)

from fpn_bench.models import D2_R50_FPN, DEFAULT_CONFIG
from fpn_bench.options import MEASUREMENTS, BenchmarkOptions
from fpn_bench.report import format_report, write_json
from fpn_bench.run import run_benchmark

D = BenchmarkOptions  # the defaults


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected HxW, e.g. 800x1333")
    return h, w


def _names(text: str):
    return tuple(n.strip() for n in text.split(",") if n.strip())


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config-file",
        default=None,
        help=f"plugin config to benchmark (default {DEFAULT_CONFIG}, against Detectron2's "
        f"{D2_R50_FPN}); the reference is it with the component names swapped back",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="a Detectron2 checkpoint (.pkl/.pth) loaded into both models; default: random "
        "weights with scaled heads (~1000 proposals per image)",
    )
    p.add_argument(
        "--images",
        default=None,
        help="folder, file or glob of real images (resized like DefaultPredictor); "
        "default: deterministic random images of --size",
    )
    p.add_argument(
        "--size", type=_size, default=D.size, help="HxW of the random images (default 800x1333)"
    )
    p.add_argument(
        "--batch",
        type=int,
        default=D.batch,
        help="images per batch for neck/anchors/pooler/box_head/end_to_end_batch/train (default 2)",
    )
    p.add_argument(
        "--num-rois",
        type=int,
        default=None,
        help="test RoIs per image for pooler/box_head (default MODEL.RPN.POST_NMS_TOPK_TEST)",
    )
    p.add_argument(
        "--train-rois",
        type=int,
        default=None,
        help="training RoIs per image for the pooler "
        "(default MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE)",
    )
    p.add_argument("--device", default=D.device, help="cpu (default) or cuda")
    p.add_argument(
        "--threads", type=int, default=D.threads, help="torch.set_num_threads (default 2)"
    )
    p.add_argument(
        "--reps",
        type=int,
        default=D.reps,
        help="timed repetitions per model; the median is reported (default 5)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=D.warmup,
        help="untimed repetitions per model first (default 2)",
    )
    p.add_argument(
        "--only",
        type=_names,
        default=MEASUREMENTS,
        help=f"comma-separated subset of {','.join(MEASUREMENTS)}",
    )
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    p.add_argument(
        "--seed",
        type=int,
        default=D.seed,
        help="seed of the random weights, images and boxes (default 0)",
    )
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="make glibc malloc keep freed memory for reuse, as the training and demo tools "
        "do on CPU (both models gain; see fpn_plugin/accel/cpu_allocator.py)",
    )
    p.add_argument(
        "--accelerate-reference",
        action="store_true",
        help="also apply fpn_plugin.accel.accelerate (the plugin config's MODEL.ACCEL) to "
        "Detectron2's model; default: Detectron2's model as it is",
    )
    p.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE config overrides for both models",
    )
    return p


def parse_args(argv=None) -> BenchmarkOptions:
    """The command line as :class:`BenchmarkOptions` (a bad value exits with its message)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        return BenchmarkOptions(**vars(args))
    except ValueError as e:
        parser.error(str(e))


def main(argv=None) -> dict:
    options = parse_args(argv)
    out = run_benchmark(
        options, progress=lambda name: print(f"... {name}", file=sys.stderr, flush=True)
    )
    print(
        format_report(
            out["environment"],
            out["measurements"],
            out["checks"],
            out["proposal_counts"],
            out["notes"],
        )
    )
    if options.json:
        write_json(options.json, out)
    return out


if __name__ == "__main__":
    main()
