"""FLOPs, parameters and activations of a detector, per component, counted with fvcore.

Components: the bottom-up network (``backbone.bottom_up``), the neck (the rest of ``backbone``:
laterals, top-down pathway, output convs, extra levels), and each other top-level module of the
detector (the RPN and the RoI heads for R-CNNs, the head for RetinaNet); "other" is what runs
outside those modules (input normalisation, padding, postprocessing), so the rows add up to the
total.

Counts are fvcore's, with Detectron2's conventions (``detectron2.utils.analysis``): one fused
multiply-add is one FLOP; element-wise and reduction ops (add, batch_norm, max_pool2d, sigmoid,
NMS ...) are not counted. Activations are the output elements of convolutions and matrix
multiplications. FLOPs and activations depend on the input: one image in inference mode. The
counted model is the plain one (``build_model`` / ``instantiate``, no execution strategies):
the counts describe what the paper's model computes, not how it is run.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from fvcore.nn import ActivationCountAnalysis, parameter_count
from tabulate import tabulate
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.export import TracingAdapter
from detectron2.modeling import build_model
from detectron2.utils.analysis import FlopCountAnalysis

from fpn_plugin.engine.defaults import load_plugin_config
from fpn_plugin.utils.testing import make_trained_like

__all__ = [
    "COMPONENT_NAMES",
    "build_detector",
    "make_inputs",
    "components",
    "analyze",
    "format_table",
]

#: Display names of the detector's top-level modules.
COMPONENT_NAMES = {
    "proposal_generator": "RPN",
    "roi_heads": "RoI heads",
    "head": "head",
    "anchor_generator": "anchors",
}


def build_detector(config_file: str, opts: Sequence[str], device: str) -> nn.Module:
    """The plain detector of a YAML (``KEY VALUE`` opts) or LazyConfig (``key=value`` opts) file, in
    eval mode on ``device``, with its weights (``MODEL.WEIGHTS`` / ``train.init_checkpoint``).

    Untrained R-CNN heads propose few boxes after NMS, so without weights the model is first made
    to propose and detect like a trained one (:func:`make_trained_like`)."""
    if config_file.endswith(".yaml"):
        cfg = load_plugin_config(config_file, opts)
        cfg.MODEL.DEVICE = device
        model, weights = build_model(cfg), cfg.MODEL.WEIGHTS
    elif config_file.endswith(".py"):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
        model = instantiate(cfg.model).to(device)
        weights = cfg.train.init_checkpoint if "train" in cfg else ""
    else:
        raise ValueError(
            f"--config-file {config_file!r} must be a .yaml (Detectron2 CfgNode) "
            "or .py (LazyConfig) file."
        )
    model.eval()
    if weights:
        DetectionCheckpointer(model).load(weights)
    elif hasattr(model, "roi_heads") and hasattr(model.roi_heads, "box_predictor"):
        make_trained_like(model)
    return model


def make_inputs(height: int, width: int, device: str, seed: int = 0) -> List[Dict]:
    """One random image (3, ``height``, ``width``), 0..255, as Detectron2's models take it."""
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(3, height, width, generator=g) * 255).to(device)
    return [{"image": image, "height": height, "width": width}]


def components(model: nn.Module) -> List[Tuple[str, str]]:
    """(display name, module name) of each component, in execution order."""
    rows = []
    for name, _ in model.named_children():
        if name == "backbone" and hasattr(model.backbone, "bottom_up"):
            rows += [("bottom-up", "backbone.bottom_up"), ("neck", "backbone")]
        else:
            rows.append((COMPONENT_NAMES.get(name, name), name))
    return rows


def analyze(model: nn.Module, inputs: List[Dict]) -> dict:
    """Per-component and total FLOPs, parameters and activations (counts, not millions) of one
    inference of ``model`` on ``inputs``: ``{"components": {name: {...}}, "total": {...}}``."""
    flops = FlopCountAnalysis(model, inputs)
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    wrapper = TracingAdapter(model, inputs, allow_non_tensor=True)
    acts = ActivationCountAnalysis(wrapper, wrapper.flattened_inputs)
    acts.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    # Both analyses trace the model inside a TracingAdapter, so module names start with "model.".
    flop_by_module, act_by_module = flops.by_module(), acts.by_module()
    params = parameter_count(model)

    def counts(name):
        return {
            "flops": int(flop_by_module.get(f"model.{name}", 0)),
            "activations": int(act_by_module.get(f"model.{name}", 0)),
            "params": int(params.get(name, 0)),
        }

    rows = {label: counts(name) for label, name in components(model)}
    if "neck" in rows:  # the backbone minus its bottom-up network
        for key in rows["neck"]:
            rows["neck"][key] -= rows["bottom-up"][key]
    total = {
        "flops": int(flops.total()),
        "activations": int(acts.total()),
        "params": int(params[""]),
    }
    rows["other"] = {k: total[k] - sum(r[k] for r in rows.values()) for k in total}
    return {"components": rows, "total": total}


def format_table(result: dict) -> str:
    """:func:`analyze`'s result as a Markdown table: GFLOPs, millions of parameters, activations."""
    rows = [
        [name, r["flops"] / 1e9, r["params"] / 1e6, r["activations"] / 1e6]
        for name, r in list(result["components"].items()) + [("total", result["total"])]
    ]
    headers = ["component", "GFLOPs", "params (M)", "activations (M)"]
    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=".2f")
