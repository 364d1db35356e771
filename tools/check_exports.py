#!/usr/bin/env python
"""Export every quickstart detector and check each artefact against eager mode on photos.

    python tools/check_exports.py --images a.jpg b.jpg                 # pt2 and onnx, all configs
    python tools/check_exports.py --images a.jpg --formats aoti --configs quickstart_mask

For each config of ``--configs`` (default :data:`CONFIGS`, the quickstart detectors), the model is
built with random weights made to detect like a trained one
(``fpn_plugin.utils.testing.build_detecting_model``; seed 0, so every run builds the same
weights) and run as the tools run it (``MODEL.ACCEL``); each format of ``--formats`` is exported
as ``tools/export_model.py`` exports it (``pt2``: the ``torch.export`` program, ``onnx``: that
program through the dynamo exporter, run in ONNX Runtime, ``aoti``: the AOTInductor package,
minutes to compile), on a random image of another size than the photos. Every photo, resized as
``DefaultPredictor`` does with the config's ``INPUT`` sizes, goes through the eager model and the
artefact loaded back, and ``fpn_plugin.export.compare_detections`` matches their detections.

Output: one Markdown table on stdout, a row per config, artefact and photo: the detection counts
(eager / exported / matched), the largest box (pixels) and score differences, the smallest mask
IoU and the largest keypoint difference where the model has them, whether the artefact agrees
(same classes, boxes within ``--box-tol`` px, scores within ``--score-tol``, mask IoU >= 0.99,
keypoints within ``--box-tol``; ties at the ``TEST.DETECTIONS_PER_IMAGE`` cut accepted) and the
export's seconds (export, conversion, writing and loading back). The artefacts and
``results.json`` (the rows) are written to ``--output``. Exit status: 0 all agree, 2 a bad
argument, 3 an artefact disagrees or could not be exported (its row says ``error``; the reason
is printed).
"""

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import Dict, List, Optional, Sequence

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)
import torch

from fpn_bench.checkout import CONFIGS as CONFIG_DIR
from fpn_plugin.accel import accelerate
from fpn_plugin.engine import load_plugin_config
from fpn_plugin.export import ExportError
from fpn_plugin.export.common import first_line
from fpn_plugin.export.to_folder import check_exported, export_to_folder, load_image
from fpn_plugin.utils.testing import build_detecting_model

#: The configs checked by default (configs/<name>.yaml): every quickstart detector.
CONFIGS = (
    "quickstart",
    "quickstart_mask",
    "quickstart_keypoint",
    "quickstart_retinanet",
    "quickstart_efficientdet",
    "quickstart_bifpn",
    "quickstart_timm",
    "quickstart_pafpn",
    "quickstart_panoptic",
)
FORMATS = ("pt2", "onnx", "aoti")
DEFAULT_FORMATS = ("pt2", "onnx")
#: The agreement asked of every artefact (docs/export.md): boxes and keypoints (pixels), scores
#: (mask IoU >= 0.99: compare_detections' own default).
BOX_TOL, SCORE_TOL = 1e-3, 1e-4

#: Table columns: (header, row key).
COLUMNS = (
    ("config", "config"),
    ("artefact", "artefact"),
    ("photo (H×W)", "photo"),
    ("eager", "num_eager"),
    ("exported", "num_exported"),
    ("matched", "matched"),
    ("max box diff (px)", "max_box_diff"),
    ("max score diff", "max_score_diff"),
    ("min mask IoU", "min_mask_iou"),
    ("max keypoint diff", "max_keypoint_diff"),
    ("panoptic pixels", "panoptic_agreement"),
    ("agrees", "agrees"),
    ("export (s)", "export_seconds"),
)

logger = logging.getLogger("fpn_plugin.check_exports")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", nargs="+", required=True, help="photos, resized as DefaultPredictor does"
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        default=list(DEFAULT_FORMATS),
        help="artefacts to export and check (aoti compiles for minutes per config)",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGS),
        metavar="NAME",
        help="configs/<NAME>.yaml to check (default: every quickstart detector)",
    )
    parser.add_argument(
        "--output", default=None, help="folder for the artefacts and results.json (default: temp)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    parser.add_argument("--box-tol", type=float, default=BOX_TOL, help="boxes, keypoints (px)")
    parser.add_argument("--score-tol", type=float, default=SCORE_TOL, help="scores")
    parser.add_argument("--verbose", action="store_true", help="exporter warnings, tracebacks")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """``ValueError`` (one line) for a photo that does not exist or is no image, or a config that
    does not exist."""
    from PIL import Image

    for path in args.images:
        if not os.path.isfile(path):
            raise ValueError(f"image {path!r} does not exist (--images); give existing photos")
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as e:
            raise ValueError(f"image {path!r} cannot be read ({type(e).__name__})") from None
    for name in args.configs:
        if not os.path.isfile(config_path(name)):
            raise ValueError(
                f"config {name!r}: no {config_path(name)} (--configs takes names of configs/, "
                f"e.g. {CONFIGS[0]})"
            )


def config_path(name: str) -> str:
    """configs/<name>.yaml (``name`` may end in .yaml)."""
    return os.path.join(CONFIG_DIR, name if name.endswith(".yaml") else f"{name}.yaml")


def _cell(key: str, row: Dict) -> str:
    """One table cell: counts as they are, differences in 2 significant digits ("0" when exact),
    ``-`` for what the model does not output (NaN or missing)."""
    value = row.get(key)
    if key == "agrees":
        return "error" if row.get("error") else ("yes" if value else "no")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key == "export_seconds":
        return f"{value:.1f}"
    if key == "min_mask_iou":
        return f"{value:.4f}"
    if key == "panoptic_agreement":  # one pixel in 10^5 shows
        return f"{value:.5f}"
    if key == "matched" and row.get("ties_at_cut"):
        return f"{value} (+{row['ties_at_cut']} tied at the cut)"
    if isinstance(value, float):
        return "0" if value == 0 else f"{value:.1e}"
    return str(value)


def format_table(rows: Sequence[Dict]) -> str:
    """The rows (dicts with the keys of :data:`COLUMNS`; ``error`` for a failed export) as one
    Markdown table."""
    lines = [
        "| " + " | ".join(header for header, _ in COLUMNS) + " |",
        "|" + "".join("---|" if i < 3 else "---:|" for i in range(len(COLUMNS))),
    ]
    lines += ["| " + " | ".join(_cell(key, row) for _, key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def agrees(result: Dict, score_tol: float) -> bool:
    """Whether a ``compare_detections`` result is a match that also meets ``score_tol``:
    ``compare_detections`` takes one tolerance for boxes and scores."""
    score = result.get("max_score_diff", math.nan)
    return bool(result["ok"]) and (math.isnan(score) or score <= score_tol)


def check_config(
    name: str, photos: Sequence[str], formats: Sequence[str], output: str, args
) -> List[Dict]:
    """The table's rows of one config: each format exported and checked on each photo (by
    ``fpn_plugin.export.to_folder.check_exported``, as ``tools/export_model.py --check``)."""
    cfg = load_plugin_config(config_path(name), ["MODEL.DEVICE", "cpu"])
    cfg.freeze()
    model = accelerate(build_detecting_model(cfg), cfg)  # as tools/train_net.py runs it
    images = [(p, load_image(cfg, p)) for p in photos]
    sample = load_image(cfg)  # a random square image: a size the photos do not have
    rows = []
    for fmt in formats:
        base = {"config": name, "artefact": fmt}
        start = time.perf_counter()
        try:
            _, run, _ = export_to_folder(
                model, sample, os.path.join(output, name, fmt), fmt=fmt, onnx_exporter="dynamo"
            )
            seconds = time.perf_counter() - start
            logger.info(f"{name}: {fmt} exported in {seconds:.1f} s")
            results = check_exported(model, run, images, args.box_tol)
        except Exception as e:  # ExportError, or the artefact failing to load or to run
            error = _report(name, fmt, e, args)
            rows += [dict(base, photo=_photo(p, image), error=error) for p, image in images]
            continue
        for (path, image), result in zip(images, results):
            logger.info(f"{name}: {fmt} on {os.path.basename(path)}: {result}")
            ok = agrees(result, args.score_tol)
            rows.append(
                dict(base, photo=_photo(path, image), export_seconds=seconds, agrees=ok, **result)
            )
    return rows


def _report(name: str, fmt: str, e: Exception, args) -> str:
    """Print, in one line (a traceback with ``--verbose``), why ``fmt`` of ``name`` failed; return
    that line."""
    if args.verbose:
        traceback.print_exc()
    line = str(e) if isinstance(e, ExportError) else first_line(e)
    print(f"check_exports.py: {name} {fmt}: {line}", file=sys.stderr)
    return line


def _photo(path: str, image: torch.Tensor) -> str:
    return f"{os.path.basename(path)} ({image.shape[1]}×{image.shape[2]})"


def _quiet() -> None:
    """Leave out the exporters' warnings: TracerWarnings, onnx_ir's notes on empty attributes,
    ONNX Runtime's on constant folding."""
    warnings.filterwarnings("ignore")
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)
    logging.getLogger("onnxscript").setLevel(logging.ERROR)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    try:
        check_arguments(args)
    except ValueError as e:
        print(f"check_exports.py: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[check_exports] %(message)s")
    if not args.verbose:
        _quiet()
    torch.set_num_threads(args.threads)
    output = args.output or tempfile.mkdtemp(prefix="check_exports_")
    os.makedirs(output, exist_ok=True)
    logger.info(f"artefacts and results.json in {output}")
    rows = []
    for name in args.configs:
        rows += check_config(name, args.images, args.formats, output, args)
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(rows, f, indent=2, default=float)
    print(format_table(rows))
    return 0 if all(r.get("agrees") and not r.get("error") for r in rows) else 3


if __name__ == "__main__":
    sys.exit(main())
