#!/usr/bin/env python
"""Export an fpn_plugin detector (or one Detectron2 built from its own config) to TorchScript,
ONNX, a torch.export program (.pt2) or an AOTInductor package, and check it against eager mode.

Flags follow Detectron2's tools/deploy/export_model.py:

    python tools/export_model.py --config-file configs/quickstart.yaml --export-method scripting \\
        --format torchscript --output exported/ --check \
        MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/export_model.py --config-file ... --export-method tracing --format onnx \\
        --sample-image img.jpg --output exported/ --check MODEL.WEIGHTS ...

    python tools/export_model.py --config-file configs/quickstart.yaml --format pt2 \
        --output exported/ --check --check-images a.jpg b.jpg MODEL.WEIGHTS w.pth

``--format pt2`` writes ``model.pt2`` (``torch.export``: image height and width dynamic, the
detection count data-dependent; ``torch.export.load``), ``--format aoti`` ``model_aoti.pt2``
(AOTInductor package for the CPU; ``torch._inductor.aoti_load_package``; compiling takes
minutes). Both take any image size; ``--export-method`` does not apply to them.
``--export-method scripting`` (``torch.jit.script``, any image size, TorchScript only) or
``tracing`` (``torch.jit.trace`` through Detectron2's ``TracingAdapter`` on the sample image;
image sizes stay dynamic). ``--format onnx`` goes through tracing, with the legacy
TorchScript-based exporter by default; ``--onnx-exporter dynamo`` converts the ``torch.export``
program instead (``torch.onnx.export(..., dynamo=True)``, opset 18; ``--export-method`` does not
apply), for the two-stage detectors.

The model is built as tools/train_net.py builds it (``FPNTrainer.build_model``: the execution
strategies of ``MODEL.ACCEL`` applied); the exported file holds the plain computation.
The output folder gets ``model.ts`` or ``model.onnx`` and ``export.json`` (the method, format,
input and output names, and the check's results). The exported model takes the image resized as
``DefaultPredictor`` does, (3, H, W) float32 in ``INPUT.FORMAT``, and returns the detections in
that image's pixels (see ``fpn_plugin/export/``).

``--check`` loads the written file back, runs it and the eager model on the sample image (and on
``--check-images``, e.g. of other sizes) and matches their detections (boxes, scores, classes,
pyramid levels, mask IoU >= 0.99, keypoints; Panoptic FPN's segments, pixel agreement
>= 0.99) to ``--tolerance``. Exit status: 0 success, 2 an
export path that cannot work or a bad argument (the message names the path, the reason and what
to use instead), 3 the check failed.
"""

import argparse
import json
import logging
import os
import re
import sys
import time
import traceback
import warnings

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)

from fpn_plugin.config import fall_back_to_cpu
from fpn_plugin.engine import FPNCheckpointer, FPNTrainer, load_plugin_config
from fpn_plugin.export import DEFAULT_OPSET, ExportError
from fpn_plugin.export.onnx_dynamo import DYNAMO_OPSET
from fpn_plugin.export.to_folder import (
    EXPORT_METHODS,
    FORMATS,
    PROGRAM_FORMATS,
    check_exported,
    export_to_folder,
    load_image,
)

logger = logging.getLogger("fpn_plugin.export_model")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a detector to TorchScript, ONNX, a torch.export program or an "
        "AOTInductor package. Trailing KEY VALUE pairs (e.g. MODEL.WEIGHTS w.pth) override the "
        "config, after any flag."
    )
    parser.add_argument(
        "--config-file", required=True, metavar="FILE", help="path to the config file"
    )
    parser.add_argument(
        "--export-method",
        choices=EXPORT_METHODS,
        default="tracing",
        help="for --format torchscript / onnx (pt2 and aoti go through torch.export)",
    )
    parser.add_argument("--format", choices=FORMATS, default="torchscript")
    parser.add_argument("--output", required=True, help="output folder (created if needed)")
    parser.add_argument(
        "--sample-image",
        default=None,
        help="image to trace on and to check with; "
        "default: a fixed random image of INPUT.MIN_SIZE_TEST px",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare the exported model's detections with eager mode",
    )
    parser.add_argument(
        "--check-images", nargs="*", default=[], help="more images for --check (e.g. other sizes)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest box (pixels) and score difference"
    )
    parser.add_argument("--onnx-exporter", choices=["legacy", "dynamo"], default="legacy")
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        help=f"ONNX opset (>= 16 for ROIAlignV2; default {DEFAULT_OPSET}, "
        f"{DYNAMO_OPSET} with --onnx-exporter dynamo)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show exporter warnings and full tracebacks"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides"
    )
    return parser


#: A config key: upper-case words joined by dots (MODEL.WEIGHTS, INPUT.MIN_SIZE_TEST).
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+$")


def parse_args(argv=None) -> argparse.Namespace:
    """The tool's arguments; everything from the first config KEY on is a KEY VALUE override,
    whichever flag comes before it (``--check-images a.jpg MODEL.WEIGHTS w.pth`` gives one check
    image and one override)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = next((i for i, a in enumerate(argv) if _CONFIG_KEY.match(a)), len(argv))
    args = get_parser().parse_args(argv[:split])
    args.opts = list(args.opts) + argv[split:]
    return args


def _error(args, e: Exception, prefix: str = "") -> int:
    if args.verbose:
        traceback.print_exc()
    print(f"export_model.py: error: {prefix}{e}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        # TracerWarnings and the deprecation notices of torch.jit / torch.onnx.
        warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="[export_model] %(message)s")
    dynamo = args.format == "onnx" and args.onnx_exporter == "dynamo"
    method = "torch.export" if args.format in PROGRAM_FORMATS or dynamo else args.export_method
    what = f"{method} -> {args.format}"
    try:
        for p in ([args.sample_image] if args.sample_image else []) + list(args.check_images):
            if not os.path.isfile(p):
                raise FileNotFoundError(
                    f"image {p!r} does not exist (--sample-image / --check-images); give "
                    "existing image files, and config overrides as KEY VALUE pairs "
                    "(e.g. MODEL.WEIGHTS w.pth)"
                )
        cfg = load_plugin_config(args.config_file, args.opts)
        message = fall_back_to_cpu(cfg)
        if message:
            print(message, file=sys.stderr)
        cfg.freeze()
        model = FPNTrainer.build_model(cfg).eval()  # as tools/train_net.py runs it
        if cfg.MODEL.WEIGHTS:
            FPNCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights.")
        image = load_image(cfg, args.sample_image)
        check_images = [(p, load_image(cfg, p)) for p in args.check_images]
        start = time.perf_counter()
        path, run_exported, info = export_to_folder(
            model,
            image,
            args.output,
            args.export_method,
            args.format,
            args.opset,
            args.onnx_exporter,
        )
        logger.info(f"{what}: wrote {path} in {time.perf_counter() - start:.1f} s")
    except ExportError as e:
        return _error(args, e)
    except (ValueError, FileNotFoundError, KeyError) as e:  # bad config keys/values, missing files
        return _error(args, e, f"{type(e).__name__}: ")

    info.update({"export_method": method, "format": args.format, "file": os.path.basename(path)})
    status = 0
    if args.check:
        images = [(args.sample_image or "random image", image)] + check_images
        try:
            info["check"] = check_exported(model, run_exported, images, args.tolerance)
        except ExportError as e:
            return _error(args, e)
        for result in info["check"]:
            verdict = "agrees" if result["ok"] else "DISAGREES"
            logger.info(
                f"check on {result['image']} ({result['size'][0]}x{result['size'][1]}): "
                f"exported model {verdict} "
                f"with eager mode: {result['matched']}/{result['num_eager']} detections matched "
                f"(exported: {result['num_exported']}, ties at the cut: {result['ties_at_cut']}), "
                f"max box diff {result['max_box_diff']:.2e} px, "
                f"max score diff {result['max_score_diff']:.2e}"
                + "".join(
                    f", {k.replace('_', ' ')} {result[k]:.4g}"
                    for k in (
                        "min_mask_iou",
                        "max_keypoint_diff",
                        "panoptic_agreement",
                        "max_sem_seg_diff",
                    )
                    if k in result
                )
                + (
                    f", segments matched {result['matched_segments']}/"
                    f"{result['num_segments_eager']} (exported: {result['num_segments_exported']})"
                    if "matched_segments" in result
                    else ""
                )
                + f" (tolerance {args.tolerance:g})"
            )
            status = status or (0 if result["ok"] else 3)
    with open(os.path.join(args.output, "export.json"), "w") as f:
        json.dump(info, f, indent=2)
    if status:
        print(
            f"export_model.py: error: the {what} model's detections differ from eager mode "
            "(see above)",
            file=sys.stderr,
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
