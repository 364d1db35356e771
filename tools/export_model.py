#!/usr/bin/env python
"""Export a detector built from fpn_plugin's components to TorchScript or ONNX, and check it against eager mode.

Flags follow Detectron2's tools/deploy/export_model.py:

    python tools/export_model.py --config-file configs/quickstart.yaml --export-method scripting \\
        --format torchscript --output exported/ --check MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/export_model.py --config-file ... --export-method tracing --format onnx \\
        --sample-image img.jpg --output exported/ --check MODEL.WEIGHTS ...

``--export-method scripting`` (``torch.jit.script``, any image size, TorchScript only) or
``tracing`` (``torch.jit.trace`` through Detectron2's ``TracingAdapter`` on the sample image;
image sizes stay dynamic). ``--format onnx`` goes through tracing, with the legacy
TorchScript-based exporter by default (``--onnx-exporter dynamo`` tries ``torch.export``).

The output folder gets ``model.ts`` or ``model.onnx`` and ``export.json`` (the method, format,
input and output names, and the check's results). The exported model takes the image resized as
``DefaultPredictor`` does, (3, H, W) float32 in ``INPUT.FORMAT``, and returns the detections in
that image's pixels (see ``fpn_plugin/export/``).

``--check`` loads the written file back, runs it and the eager model on the sample image (and on
``--check-images``, e.g. of other sizes) and matches their detections (boxes, scores, classes,
pyramid levels) to ``--tolerance``. Exit status: 0 success, 2 an export path that cannot work
(the message names the path, the reason and what to use instead), 3 the check failed.
"""
import argparse
import json
import logging
import os
import sys
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
if "--verbose" not in sys.argv:
    warnings.filterwarnings("ignore")  # TracerWarnings and the deprecation notices of torch.jit / torch.onnx

import torch  # noqa: E402

import fpn_plugin  # noqa: E402,F401  (registers the components)
import detectron2.data.transforms as T  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from fpn_plugin.config import fall_back_to_cpu, get_plugin_cfg  # noqa: E402
from fpn_plugin.export import (  # noqa: E402
    DEFAULT_OPSET,
    ExportError,
    compare_detections,
    eager_detections,
    export_onnx,
    export_scripting,
    export_tracing,
    run_onnx,
    run_scripted,
    run_traced,
)

logger = logging.getLogger("fpn_plugin.export_model")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export an fpn_plugin detector to TorchScript or ONNX.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    parser.add_argument("--export-method", choices=["scripting", "tracing"], default="tracing")
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    parser.add_argument("--output", required=True, help="output folder (created if needed)")
    parser.add_argument(
        "--sample-image", default=None,
        help="image to trace on and to check with; default: a fixed random image of INPUT.MIN_SIZE_TEST px",
    )
    parser.add_argument("--check", action="store_true", help="compare the exported model's detections with eager mode")
    parser.add_argument("--check-images", nargs="*", default=[], help="more images for --check (e.g. other sizes)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest box (pixels) and score difference")
    parser.add_argument("--onnx-exporter", choices=["legacy", "dynamo"], default="legacy")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 16 for ROIAlignV2)")
    parser.add_argument("--verbose", action="store_true", help="show exporter warnings and full tracebacks")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def setup_cfg(args):
    cfg = get_plugin_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    message = fall_back_to_cpu(cfg)
    if message:
        print(message, file=sys.stderr)
    cfg.freeze()
    return cfg


def load_image(cfg, path=None) -> torch.Tensor:
    """(3, H, W) float32 in INPUT.FORMAT, resized as DefaultPredictor does; a fixed random image if path is None."""
    if path is None:
        size = cfg.INPUT.MIN_SIZE_TEST
        return torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    image = read_image(path, format=cfg.INPUT.FORMAT)
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = aug.get_transform(image).apply_image(image)
    return torch.as_tensor(image.astype("float32").transpose(2, 0, 1))


def export(args, cfg, model, image):
    """Exports, writes the file; returns (file path, a function image -> detections of the file loaded back, info)."""
    os.makedirs(args.output, exist_ok=True)
    if args.format == "onnx":
        if args.export_method == "scripting":
            raise ExportError(
                "ONNX export by scripting", "the ONNX exporters take traced or torch.export programs, not scripted ones",
                "--export-method tracing --format onnx, or --export-method scripting --format torchscript",
            )
        path = os.path.join(args.output, "model.onnx")
        names = export_onnx(model, image, path, opset=args.opset, exporter=args.onnx_exporter)
        info = {"input_names": ["image"], "output_names": names, "opset": args.opset, "onnx_exporter": args.onnx_exporter}
        return path, lambda img: run_onnx(path, img), info
    path = os.path.join(args.output, "model.ts")
    if args.export_method == "scripting":
        ts = export_scripting(model)
        torch.jit.save(ts, path)
        loaded = torch.jit.load(path)
        info = {"input": "Tuple[Dict[str, Tensor]]: ({'image': (3, H, W) float32},)", "output": "List[Dict[str, Tensor]]"}
        return path, lambda img: run_scripted(loaded, img), info
    traced, names = export_tracing(model, image)
    torch.jit.save(traced, path)
    loaded = torch.jit.load(path)
    info = {"input_names": ["image"], "output_names": names}
    return path, lambda img: run_traced(loaded, img, names), info


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[export_model] %(message)s")
    what = f"{args.export_method} -> {args.format}"
    try:
        cfg = setup_cfg(args)
        model = build_model(cfg).eval()
        if cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        else:
            logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights.")
        image = load_image(cfg, args.sample_image)
        start = time.perf_counter()
        path, run_exported, info = export(args, cfg, model, image)
        logger.info(f"{what}: wrote {path} in {time.perf_counter() - start:.1f} s")
    except ExportError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"export_model.py: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError) as e:  # bad config keys/values, missing files
        if args.verbose:
            traceback.print_exc()
        print(f"export_model.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    info.update({"export_method": args.export_method, "format": args.format, "file": os.path.basename(path)})
    status = 0
    if args.check:
        checks = []
        for name, img in [(args.sample_image or "random image", image)] + [
            (p, load_image(cfg, p)) for p in args.check_images
        ]:
            try:
                result = compare_detections(eager_detections(model, img), run_exported(img), args.tolerance)
            except ExportError as e:
                print(f"export_model.py: error: {e}", file=sys.stderr)
                return 2
            result.update({"image": name, "size": list(img.shape[1:])})
            checks.append(result)
            verdict = "agrees" if result["ok"] else "DISAGREES"
            logger.info(
                f"check on {name} ({img.shape[1]}x{img.shape[2]}): exported model {verdict} with eager mode: "
                f"{result['matched']}/{result['num_eager']} detections matched (exported: {result['num_exported']}, "
                f"ties at the cut: {result['ties_at_cut']}), max box diff {result['max_box_diff']:.2e} px, "
                f"max score diff {result['max_score_diff']:.2e} (tolerance {args.tolerance:g})"
            )
            if not result["ok"]:
                status = 3
        info["check"] = checks
    with open(os.path.join(args.output, "export.json"), "w") as f:
        json.dump(info, f, indent=2)
    if status:
        print(f"export_model.py: error: the {what} model's detections differ from eager mode (see above)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
