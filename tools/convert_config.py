#!/usr/bin/env python
"""Turn a Detectron2 FPN config (YAML) into the plugin's, or back (``--to detectron2``).

    python tools/convert_config.py mask_rcnn_R_50_FPN_3x.yaml -o configs/my_mask_rcnn.yaml
    python tools/convert_config.py COCO-Detection/retinanet_R_50_FPN_1x.yaml -o retinanet.yaml \
        MODEL.WEIGHTS /data/model_final_5bd44e.pkl MODEL.RETINANET.NUM_CLASSES 5
    python tools/convert_config.py configs/fpn_r50.yaml --to detectron2 -o d2_fpn_r50.yaml
    python tools/convert_config.py --check $(find /path/to/detectron2/configs -name '*.yaml')

The conversion is a swap of names (``fpn_plugin.convert``): ``build_resnet_fpn_backbone`` <->
``build_fpn_neck_backbone``, ``build_retinanet_resnet_fpn_backbone`` <->
``build_retinanet_fpn_neck_backbone``, ``DefaultAnchorGenerator`` <-> ``SharedAnchorGenerator``,
``StandardROIHeads`` <-> ``LevelMappingROIHeads``; other RoI heads (Cascade R-CNN's, PointRend's,
DensePose's) keep their names. Back to Detectron2, the plugin's keys are removed and
``SCALES_PER_OCTAVE`` is written out as explicit anchor sizes; a model Detectron2 cannot build
(another neck, the paper's ablations) is an error naming the key.

``_BASE_`` chains are resolved: the input is loaded as Detectron2 loads it (a relative name that is
not a file is looked up among Detectron2's built-in configs, e.g.
``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``), and the output is one self-contained
file with the keys whose values differ from the defaults (Detectron2's, plus the plugin's keys
going to the plugin). It needs none of the files it came from, and loads as it is
(``tools/train_net.py --config-file OUT``, or ``merge_from_file`` on ``fpn_plugin.get_plugin_cfg()``
or Detectron2's ``get_cfg()``). ``--full`` writes every key instead. ``KEY VALUE`` pairs after the
files are set in the output (e.g. ``MODEL.WEIGHTS``). A project's keys (PointRend, DensePose) are
known after ``--add-config module.function`` (e.g. ``densepose.add_densepose_config``).

``--check`` verifies each conversion instead of writing it: both models are built (random weights,
seeded), the converted one loads the original's ``state_dict`` strictly, and both run on a
generated image (eval mode, score thresholds 0 so that every detection is compared); the converted
model is compared as built and after ``fpn_plugin.accelerate``. Non-FPN configs are listed as
skipped. Exit status 1 if any check fails.
"""

import argparse
import copy
import dataclasses
import os
import sys
import time
from typing import List, Optional

import tool_startup  # noqa: F401  (first: Detectron2 imported without the TorchScript warning)
import torch

from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import fpn_plugin  # noqa: F401  (registers the components)
from fpn_plugin import accelerate
from fpn_plugin.config import detectron2_config_file
from fpn_plugin.convert import (
    default_config,
    dump_changes,
    is_fpn_config,
    load_config,
    resolve_config_adder,
    to_detectron2,
    to_plugin,
)


def find_config(path: str) -> str:
    """``path`` if it is a file, else Detectron2's built-in config of that name."""
    if os.path.isfile(path):
        return path
    try:
        return detectron2_config_file(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config {path!r} is neither a file nor one of Detectron2's built-in configs (e.g. "
            "'COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml')."
        ) from None


def convert_file(path: str, to: str, adders=(), opts=(), full: bool = False):
    """(the converted config, the output's text, notes) for the YAML ``path``; ``to`` is
    "plugin" or "detectron2"."""
    cfg, _ = load_config(path, plugin=(to == "detectron2"), config_adders=adders)
    out_defaults = default_config(to == "plugin", adders)
    if to == "plugin":
        out, notes = to_plugin(cfg), []
    else:
        out, notes = to_detectron2(cfg, out_defaults)
    out.merge_from_list(list(opts))
    header = (
        f"Converted by tools/convert_config.py from {os.path.basename(path)} "
        f"({'Detectron2 -> fpn_plugin' if to == 'plugin' else 'fpn_plugin -> Detectron2'}).\n"
        + (
            "Keys at their defaults are left out; load it over "
            + ("fpn_plugin.get_plugin_cfg()." if to == "plugin" else "detectron2's get_cfg().")
            if not full
            else ""
        )
    )
    text = out.dump() if full else dump_changes(out, out_defaults, header)
    return out, text, notes


# --- --check ------------------------------------------------------------------------------------


@dataclasses.dataclass
class CheckResult:
    """One conversion's check: the strict load, and the outputs (None when they could not run)."""

    strict_load: bool
    load_error: str = ""
    equal: Optional[bool] = None  # plain converted model vs Detectron2's: bit-identical
    max_diff: float = 0.0
    accelerated_equal: Optional[bool] = None  # after fpn_plugin.accelerate: bit-identical
    accelerated_max_diff: float = 0.0
    num_detections: int = 0  # detections (or proposals) compared on the image
    run_error: str = ""


def generated_image(size: int = 64, seed: int = 0) -> torch.Tensor:
    """(3, size, size) uint8 BGR image: a few filled rectangles of random colours on a gradient."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 255, size)
    image = torch.stack(
        [
            ramp.view(1, -1).expand(size, size),
            ramp.view(-1, 1).expand(size, size),
            torch.full((size, size), 128.0),
        ]
    )
    for _ in range(4):
        x0, y0 = torch.randint(0, size * 3 // 4, (2,), generator=g).tolist()
        w, h = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
        image[:, y0 : y0 + h, x0 : x0 + w] = torch.randint(0, 256, (3, 1, 1), generator=g).float()
    return image.to(torch.uint8)


def tame_random_heads(model: torch.nn.Module) -> None:
    """Scale the random box-delta, objectness and keypoint-heatmap predictors of an untrained
    detector in place, so that on an image it gives many distinct boxes (raw random deltas send
    most boxes off the image, where clipping and NMS leave a handful) and finite heatmaps."""
    with torch.no_grad():
        for name, module in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("anchor_deltas", "bbox_pred", "score_lowres"):
                module.weight.mul_(1e-3)
            elif leaf == "objectness_logits":
                module.weight.mul_(0.02)


def _inputs(cfg: CfgNode, image: torch.Tensor):
    item = {"image": image, "height": image.shape[1], "width": image.shape[2]}
    if cfg.MODEL.PROPOSAL_GENERATOR.NAME == "PrecomputedProposals":
        g = torch.Generator().manual_seed(1)
        h, w = image.shape[1:]
        xy = torch.rand(50, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(50, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 4
        proposals = Instances((h, w))
        proposals.proposal_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        proposals.objectness_logits = torch.rand(50, generator=g)
        item["proposals"] = proposals
    return [item]


def _flatten(x, prefix="out"):
    """(name, value) of every tensor and plain value in a model's output."""
    if isinstance(x, torch.Tensor):
        yield prefix, x
    elif isinstance(x, Boxes):
        yield prefix, x.tensor
    elif isinstance(x, Instances):
        yield f"{prefix}.len", len(x)
        for k, v in sorted(x.get_fields().items()):
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(x, dict):
        for k, v in sorted(x.items()):
            yield from _flatten(v, f"{prefix}.{k}")
    elif isinstance(x, (list, tuple)):
        yield f"{prefix}.len", len(x)
        for i, v in enumerate(x):
            yield from _flatten(v, f"{prefix}[{i}]")
    elif hasattr(x, "tensor") and isinstance(x.tensor, torch.Tensor):  # other structures
        yield prefix, x.tensor
    elif dataclasses.is_dataclass(x):  # e.g. DensePose's predictor outputs
        for field in dataclasses.fields(x):
            yield from _flatten(getattr(x, field.name), f"{prefix}.{field.name}")
    else:
        yield prefix, x


def compare_outputs(ours, ref):
    """(bit-identical, the largest absolute difference of floating tensors) of two outputs;
    NaNs in the same places count as equal. ``ValueError`` if their structure differs."""
    a, b = list(_flatten(ours)), list(_flatten(ref))
    if [k for k, _ in a] != [k for k, _ in b]:
        raise ValueError(
            f"the outputs differ in structure: {[k for k, _ in a]} vs {[k for k, _ in b]}"
        )
    equal, max_diff = True, 0.0
    for (_, x), (_, y) in zip(a, b):
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False, float("inf")
            same = torch.equal(x, y) or (
                x.is_floating_point() and bool(((x == y) | (x.isnan() & y.isnan())).all())
            )
            equal = equal and same
            if x.is_floating_point() and x.numel():
                finite = torch.isfinite(x) & torch.isfinite(y)
                if finite.any():
                    max_diff = max(max_diff, (x[finite] - y[finite]).abs().max().item())
        elif x != y:
            equal = False
    return equal, max_diff


def _count_detections(out) -> int:
    """Detected instances (or proposals) over the images of a model's output."""
    return sum(
        v
        for k, v in _flatten(out)
        if k.endswith(".len") and ("instances" in k or "proposals" in k) and k.count(".") == 2
    )


def check_conversion(
    d2_cfg: CfgNode,
    plugin_cfg: CfgNode,
    image_size: int = 64,
    seed: int = 0,
    detections_per_image: Optional[int] = None,
) -> CheckResult:
    """Build Detectron2's model from ``d2_cfg`` (random weights from ``seed``) and the plugin's
    from ``plugin_cfg``, load the first's ``state_dict`` into the second strictly, and compare
    their outputs on :func:`generated_image` (eval mode, CPU, score thresholds 0;
    ``detections_per_image`` in place of the configs' ``TEST.DETECTIONS_PER_IMAGE`` if given)."""
    cfgs = []
    for c in (d2_cfg, plugin_cfg):
        c = copy.deepcopy(c)
        c.defrost()
        c.MODEL.DEVICE = "cpu"
        c.MODEL.WEIGHTS = ""
        c.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
        c.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
        if detections_per_image is not None:
            c.TEST.DETECTIONS_PER_IMAGE = detections_per_image
        cfgs.append(c)
    torch.manual_seed(seed)
    ref = build_model(cfgs[0]).eval()
    tame_random_heads(ref)
    ours = build_model(cfgs[1]).eval()
    try:
        ours.load_state_dict(ref.state_dict(), strict=True)
    except RuntimeError as e:
        # The first two of PyTorch's lines: the model, then the first missing or mismatched key.
        return CheckResult(strict_load=False, load_error=" ".join(str(e).split("\n")[:2])[:300])
    result = CheckResult(strict_load=True)
    inputs = _inputs(cfgs[0], generated_image(image_size, seed))
    try:
        with torch.no_grad():
            expected = ref(copy.deepcopy(inputs))
            result.equal, result.max_diff = compare_outputs(ours(copy.deepcopy(inputs)), expected)
            accelerate(ours, cfgs[1])
            result.accelerated_equal, result.accelerated_max_diff = compare_outputs(
                ours(copy.deepcopy(inputs)), expected
            )
    except (NotImplementedError, AssertionError, RuntimeError) as e:
        # e.g. Detectron2's deformable convolution has no CPU kernel.
        result.run_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return result
    result.num_detections = _count_detections(expected)
    return result


def run_checks(paths: List[str], adders=(), image_size: int = 64) -> int:
    """Check the conversion of each Detectron2 config in ``paths``; print one line each and the
    counts. Returns the number of failed checks."""
    counts = dict(configs=0, skipped=0, strict=0, equal=0, accelerated_equal=0, not_run=0)
    failed = 0
    for path in paths:
        start = time.perf_counter()
        d2_cfg, _ = load_config(find_config(path), plugin=False, config_adders=adders)
        if not is_fpn_config(d2_cfg):
            counts["skipped"] += 1
            print(f"skip  {path}: MODEL.BACKBONE.NAME {d2_cfg.MODEL.BACKBONE.NAME} is not FPN")
            continue
        counts["configs"] += 1
        res = check_conversion(d2_cfg, to_plugin(d2_cfg), image_size)
        counts["strict"] += res.strict_load
        counts["equal"] += bool(res.equal)
        counts["accelerated_equal"] += bool(res.accelerated_equal)
        counts["not_run"] += res.strict_load and res.equal is None
        ok = res.strict_load and (res.equal is None or (res.equal and res.accelerated_equal))
        failed += not ok
        if not res.strict_load:
            what = f"state_dict does not load strictly: {res.load_error}"
        elif res.equal is None:
            what = f"loads strictly; outputs not compared ({res.run_error})"
        else:
            plain = "bit-identical" if res.equal else f"differ (max {res.max_diff:.3g})"
            fast = (
                "bit-identical"
                if res.accelerated_equal
                else f"max diff {res.accelerated_max_diff:.3g}"
            )
            what = (
                f"loads strictly; {res.num_detections} detections, outputs {plain}, "
                f"accelerated {fast}"
            )
        print(f"{'ok  ' if ok else 'FAIL'}  {path}: {what} ({time.perf_counter() - start:.1f} s)")
    print(
        f"{counts['configs']} FPN configs ({counts['skipped']} others skipped): "
        f"{counts['strict']} load strictly, {counts['equal']} give bit-identical outputs "
        f"({counts['accelerated_equal']} also accelerated), {counts['not_run']} not run here"
    )
    return failed


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML file(s) to convert")
    parser.add_argument(
        "--to", choices=("plugin", "detectron2"), default="plugin", help="the output's components"
    )
    parser.add_argument("-o", "--output", help="output YAML (default: standard output)")
    parser.add_argument("--full", action="store_true", help="write every key, not only changes")
    parser.add_argument(
        "--add-config",
        action="append",
        default=[],
        metavar="MODULE.FUNCTION",
        help="a project's config keys, e.g. densepose.add_densepose_config (repeatable)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="build, load strictly and compare each Detectron2 config's conversion; write nothing",
    )
    parser.add_argument("--image-size", type=int, default=64, help="--check's image size (px)")
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_intermixed_args(argv)
    # KEY VALUE pairs come after the configs (keys are upper-case and dotted).
    configs, opts = [], []
    for i, item in enumerate(args.configs):
        if "." in item and item.split(".")[0].isupper():
            opts = args.configs[i:] + opts
            break
        configs.append(item)
    if len(opts) % 2:
        parser.error(f"KEY VALUE pairs expected after the configs, got {opts}")
    try:
        adders = [resolve_config_adder(name) for name in args.add_config]
        if args.check:
            if args.to != "plugin":
                parser.error("--check checks Detectron2 configs (--to plugin)")
            return 1 if run_checks(configs, adders, args.image_size) else 0
        if len(configs) != 1:
            parser.error("give one config to convert (several only with --check)")
        _, text, notes = convert_file(find_config(configs[0]), args.to, adders, opts, args.full)
    except (ValueError, FileNotFoundError, KeyError) as e:
        parser.exit(1, f"convert_config.py: error: {e}\n")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
