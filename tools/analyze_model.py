#!/usr/bin/env python
"""FLOPs, parameters and activations of a detector, per component, counted with fvcore.

    python tools/analyze_model.py --config-file configs/fpn_r50.yaml --size 800x1333
    python tools/analyze_model.py --config-file configs/lazy/retinanet_fpn_r50.py --size 800x1333 --json r.json
    python tools/analyze_model.py --config-file configs/quickstart.yaml --size 512x512 MODEL.WEIGHTS model_final.pth

Components: the bottom-up network (``backbone.bottom_up``), the neck (the rest of ``backbone``: laterals,
top-down pathway, output convs, extra levels), and each other top-level module of the detector (the
RPN and the RoI heads for R-CNNs, the head for RetinaNet); "other" is what runs outside those modules
(input normalisation, padding, postprocessing), so the rows add up to the total.

Counts are fvcore's, with Detectron2's conventions (``detectron2.utils.analysis``): one fused
multiply-add is one FLOP; element-wise and reduction ops (add, batch_norm, max_pool2d, sigmoid, NMS ...)
are not counted. Activations are the output elements of convolutions and matrix multiplications.
FLOPs and activations depend on the input: one random image of ``--size`` HxW (padded to the
backbone's size divisibility) in inference mode. Untrained R-CNN heads propose few boxes after NMS,
so without weights (``MODEL.WEIGHTS`` / ``train.init_checkpoint``) the model is first made to propose
and detect like a trained one (``fpn_plugin.workload.make_trained_like``).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402
from fvcore.nn import ActivationCountAnalysis, parameter_count  # noqa: E402

import fpn_plugin  # noqa: E402  (registers the components)
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.export import TracingAdapter  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.analysis import FlopCountAnalysis  # noqa: E402

from fpn_plugin.benchmark.workload import make_trained_like  # noqa: E402

# Display names of the detector's top-level modules.
COMPONENT_NAMES = {"proposal_generator": "RPN", "roi_heads": "RoI heads", "head": "head", "anchor_generator": "anchors"}


def parse_size(text: str):
    """"800x1333" -> (800, 1333): image height and width, pixels."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r} must be HEIGHTxWIDTH in pixels, e.g. 800x1333.") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"--size {text!r}: height and width must be positive.")
    return h, w


def build(config_file: str, opts, device: str):
    """The detector of a YAML (``KEY VALUE`` opts) or LazyConfig (``key=value`` opts) file, eval mode, and its weights path."""
    if config_file.endswith(".yaml"):
        cfg = fpn_plugin.get_plugin_cfg()
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = device
        model, weights = build_model(cfg), cfg.MODEL.WEIGHTS
    elif config_file.endswith(".py"):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
        model = instantiate(cfg.model).to(device)
        weights = cfg.train.init_checkpoint if "train" in cfg else ""
    else:
        raise ValueError(f"--config-file {config_file!r} must be a .yaml (Detectron2 CfgNode) or .py (LazyConfig) file.")
    model.eval()
    if weights:
        DetectionCheckpointer(model).load(weights)
    elif hasattr(model, "roi_heads") and hasattr(model.roi_heads, "box_predictor"):
        make_trained_like(model)
    return model


def make_inputs(height: int, width: int, device: str, seed: int = 0):
    """One random image (3, H, W), 0..255, in Detectron2's model input format."""
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, height, width, generator=g) * 255).to(device)
    return [{"image": image, "height": height, "width": width}]


def components(model):
    """(display name, module name) of each component, in execution order."""
    rows = []
    for name, _ in model.named_children():
        if name == "backbone" and hasattr(model.backbone, "bottom_up"):
            rows += [("bottom-up", "backbone.bottom_up"), ("neck", "backbone")]
        else:
            rows.append((COMPONENT_NAMES.get(name, name), name))
    return rows


def analyze(model, inputs):
    """Per-component and total FLOPs, parameters and activations: {"components": {name: {...}}, "total": {...}}."""
    flops = FlopCountAnalysis(model, inputs)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    wrapper = TracingAdapter(model, inputs, allow_non_tensor=True)
    acts = ActivationCountAnalysis(wrapper, wrapper.flattened_inputs)
    acts.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # Both analyses trace the model inside the TracingAdapter, so module names start with "model.".
    flop_by_module, act_by_module = flops.by_module(), acts.by_module()
    params = parameter_count(model)

    def counts(name):
        return {
            "flops": int(flop_by_module.get(f"model.{name}", 0)),
            "activations": int(act_by_module.get(f"model.{name}", 0)),
            "params": int(params.get(name, 0)),
        }

    rows = {}
    for label, name in components(model):
        rows[label] = counts(name)
    if "neck" in rows:  # the backbone minus its bottom-up network
        for key in rows["neck"]:
            rows["neck"][key] -= rows["bottom-up"][key]
    total = {"flops": int(flops.total()), "activations": int(acts.total()), "params": int(params[""])}
    rows["other"] = {k: total[k] - sum(r[k] for r in rows.values()) for k in total}
    return {"components": rows, "total": total}


def format_table(result) -> str:
    lines = [
        "| component | GFLOPs | params (M) | activations (M) |",
        "|---|---:|---:|---:|",
    ]
    for name, r in list(result["components"].items()) + [("total", result["total"])]:
        lines.append(f"| {name} | {r['flops'] / 1e9:.2f} | {r['params'] / 1e6:.2f} | {r['activations'] / 1e6:.2f} |")
    return "\n".join(lines)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a .yaml or LazyConfig .py detector config")
    parser.add_argument("--size", type=parse_size, default=(800, 1333), metavar="HxW", help="input image size, pixels (default 800x1333)")
    parser.add_argument("--device", default="cpu", help="device the model runs on for the counts (default cpu)")
    parser.add_argument("--json", metavar="PATH", help="also write the counts to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs (YAML) or key=value (LazyConfig)")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"--config-file {args.config_file!r} does not exist.")
    torch.manual_seed(0)
    model = build(args.config_file, args.opts, args.device)
    height, width = args.size
    inputs = make_inputs(height, width, args.device)
    with torch.no_grad():
        padded = model.preprocess_image(inputs).tensor.shape[-2:]
        result = analyze(model, inputs)
    result.update(config=args.config_file, size=[height, width], padded_size=list(padded))
    print(f"{args.config_file}, one {height}x{width} image (padded to {padded[0]}x{padded[1]}), inference:")
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
