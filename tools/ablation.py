#!/usr/bin/env python
"""The paper's ablation (Lin et al. 2017, Tables 1-3), reproduced on the embedded ``fpn_shapes`` data.

Trains every variant with ONE shared budget (same iterations, batch, LR schedule, seed, data
order, model width: ``configs/quickstart.yaml``'s narrow BasicBlock ResNet from scratch, d = 64),
then evaluates each trained detector on the validation split:

- its RPN's proposals (the detector's own RPN, trained jointly, not a separately trained RPN):
  AR@100 and AR@1000, overall and for small / medium / large objects (COCO areas), as in Table 1;
- its boxes: AP, AP50, AP75, APs, APm, APl, as in Tables 2 and 3.

Variants (paper row: what changes from the FPN detector):

======  ===============  ============================================================================
row     name             model
======  ===============  ============================================================================
(a)     ``c4``           single scale on C4: RPN and RoI pooling on one stride-16 map (all 15 anchors)
(b)     ``c5``           single scale on C5: the same on one stride-32 map
(c)     ``fpn``          FPN: P2-P6 for the RPN, P2-P5 for RoI pooling (the paper's detector)
(d)     ``no_top_down``  bottom-up pyramid: no top-down pathway (``MODEL.FPN.TOP_DOWN False``)
(e)     ``no_lateral``   top-down pyramid without lateral connections (``MODEL.FPN.LATERAL False``)
(f)     ``finest_only``  only the finest level: all 15 anchors and all RoIs on P2 (``MODEL.FPN.FINEST_ONLY True``)
======  ===============  ============================================================================

The single-scale baselines are built by the same neck with one input level (its 1x1 lateral and
3x3 output conv to d channels), so every variant has the same d-channel RPN and box heads and
only the pyramid differs. In every variant the per-level pre-NMS top-k of the RPN is scaled so
that all variants rank the same total number of candidates (the config's per-level value times 5
levels); at test time 1000 proposals per image are kept (the paper's setting), which the box head
also uses.

    python tools/ablation.py                                   # full budget (quickstart's: 400 iterations)
    python tools/ablation.py --device cuda --iters 5000 --batch 16 --opts SOLVER.BASE_LR 0.06
    python tools/ablation.py --iters 150 --num-train 200 --num-val 50 --image-size 256 --variants c4,fpn

Writes to ``--output-dir``: ``ablation.md`` (the table), ``ablation.json`` (every figure, the
budget and the settings), ``ablation.png`` (bar chart) and one training folder per variant.
"""
import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402
from torch import nn  # noqa: E402

import fpn_plugin  # noqa: E402,F401  (registers the components)
from detectron2.evaluation import COCOEvaluator, inference_on_dataset  # noqa: E402
from detectron2.modeling.postprocessing import detector_postprocess  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

from fpn_plugin.config import get_plugin_cfg  # noqa: E402
from fpn_plugin.accel.cpu_allocator import add_system_malloc_argument, keep_freed_memory_for_tool  # noqa: E402
from fpn_plugin.data import register_shapes_datasets_from_config  # noqa: E402
from fpn_plugin.engine.trainer import FPNTrainer  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "quickstart.yaml")

#: name -> (paper row, label). Order = the paper's rows.
VARIANTS: Dict[str, tuple] = {
    "c4": ("a", "baseline on C4 (single scale)"),
    "c5": ("b", "baseline on C5 (single scale)"),
    "fpn": ("c", "FPN (P2-P6)"),
    "no_top_down": ("d", "bottom-up pyramid (no top-down)"),
    "no_lateral": ("e", "top-down pyramid, no lateral"),
    "finest_only": ("f", "only finest level (P2)"),
}
#: Proposal metrics (Detectron2's COCOEvaluator "box_proposals" keys), percent.
AR_KEYS = ("AR@100", "ARs@100", "ARm@100", "ARl@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000")
#: Box metrics (COCOEvaluator "bbox" keys), percent.
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: Columns of the Markdown table: the paper's Table 1 (AR) and Table 3 (AP) columns.
TABLE_AR = ("AR@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000")
TABLE_AP = ("AP", "AP50", "APs", "APm", "APl")
#: Levels whose candidates the RPN ranks in the paper's detector (P2-P6): the pre-NMS budget is
#: the config's per-level top-k times this, shared out over each variant's levels.
_REFERENCE_RPN_LEVELS = 5
#: Proposals kept per image at test time (paper, Sec. 5.2: 1000 for testing).
TEST_PROPOSALS = 1000


def parse_variants(names) -> List[str]:
    """``"c4,fpn"`` or ``["c4", "fpn"]`` -> ``["c4", "fpn"]`` in the paper's row order; "all" for all.

    Raises ValueError naming unknown variants and the valid names.
    """
    if isinstance(names, str):
        names = [names]
    wanted = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    if not wanted:
        raise ValueError(f"--variants is empty; choose from {list(VARIANTS)} (or 'all').")
    if "all" in wanted:
        return list(VARIANTS)
    unknown = [n for n in wanted if n not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown variant(s) {unknown}; choose from {list(VARIANTS)} (or 'all').")
    return [n for n in VARIANTS if n in wanted]


def _single_level_opts(stage: int, cfg) -> list:
    """A single-scale baseline on C<stage>: the neck on that one map, all anchors and RoIs on it."""
    all_sizes = [float(s) for group in cfg.MODEL.ANCHOR_GENERATOR.SIZES for s in group]
    return [
        # The bottom-up network ends at the stage used (no unused, untrained stages).
        "MODEL.RESNETS.OUT_FEATURES", [f"res{stage}"],
        "MODEL.FPN.IN_FEATURES", [f"res{stage}"],
        "MODEL.FPN.EXTRA_LEVELS", "none",
        "MODEL.RPN.IN_FEATURES", [f"p{stage}"],
        "MODEL.ANCHOR_GENERATOR.SIZES", [all_sizes],
        "MODEL.ROI_HEADS.IN_FEATURES", [f"p{stage}"],
        "MODEL.ROI_HEADS.CANONICAL_LEVEL", stage,  # Eqn. (1) is moot with one level; it must lie in the pyramid
    ]


def variant_opts(name: str, cfg) -> list:
    """Config overrides (``KEY, VALUE, ...``) that turn the base FPN config ``cfg`` into variant ``name``."""
    parse_variants([name])
    if name == "c4":
        return _single_level_opts(4, cfg)
    if name == "c5":
        return _single_level_opts(5, cfg)
    if name == "fpn":
        return []
    if name == "no_top_down":
        return ["MODEL.FPN.TOP_DOWN", False]
    if name == "no_lateral":
        return ["MODEL.FPN.LATERAL", False]
    # finest_only
    all_sizes = [float(s) for group in cfg.MODEL.ANCHOR_GENERATOR.SIZES for s in group]
    return [
        "MODEL.FPN.FINEST_ONLY", True,
        "MODEL.FPN.EXTRA_LEVELS", "none",
        "MODEL.RPN.IN_FEATURES", ["p2"],
        "MODEL.ANCHOR_GENERATOR.SIZES", [all_sizes],
        "MODEL.ROI_HEADS.IN_FEATURES", ["p2"],
        "MODEL.ROI_HEADS.CANONICAL_LEVEL", 2,
    ]


def _scaled(value: int, iters: int, base_iters: int) -> int:
    return max(0, min(iters, int(round(value * iters / base_iters))))


def base_config(args):
    """The shared config: ``--config-file`` + the shared budget from the flags + ``--opts``."""
    cfg = get_plugin_cfg()
    cfg.merge_from_file(args.config_file)
    opts = ["MODEL.DEVICE", args.device]
    base_iters = cfg.SOLVER.MAX_ITER
    if args.iters is not None:
        if args.iters < 1:
            raise ValueError(f"--iters = {args.iters} must be >= 1.")
        # The config's LR schedule, stretched to --iters: warm-up and steps at the same fractions.
        steps = tuple(_scaled(s, args.iters, base_iters) for s in cfg.SOLVER.STEPS)
        opts += [
            "SOLVER.MAX_ITER", args.iters,
            "SOLVER.STEPS", tuple(s for s in steps if 0 < s < args.iters),
            "SOLVER.WARMUP_ITERS", _scaled(cfg.SOLVER.WARMUP_ITERS, args.iters, base_iters),
        ]
    if args.batch is not None:
        if args.batch < 1:
            raise ValueError(f"--batch = {args.batch} must be >= 1.")
        opts += ["SOLVER.IMS_PER_BATCH", args.batch]
    if args.num_train is not None:
        opts += ["DATASETS.FPN_SHAPES.NUM_TRAIN", args.num_train]
    if args.num_val is not None:
        opts += ["DATASETS.FPN_SHAPES.NUM_VAL", args.num_val]
    if args.image_size is not None:
        s = args.image_size
        opts += [
            "DATASETS.FPN_SHAPES.IMAGE_SIZE", s,
            "INPUT.MIN_SIZE_TRAIN", (s,), "INPUT.MAX_SIZE_TRAIN", s,
            "INPUT.MIN_SIZE_TEST", s, "INPUT.MAX_SIZE_TEST", s,
        ]
    # One checkpoint (the final one) per variant, evaluated once after training unless --opts asks otherwise.
    opts += ["SOLVER.CHECKPOINT_PERIOD", 10**9, "TEST.EVAL_PERIOD", 0]
    cfg.merge_from_list(opts)  # Python values: yacs checks their types against the defaults
    cfg.merge_from_list(list(args.opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.MODEL.DEVICE}: no CUDA GPU is available here; use --device cpu.")
    return cfg


def variant_config(base, name: str, output_dir: str):
    """The config of variant ``name``: ``base`` + its overrides, output in ``output_dir/name``."""
    cfg = copy.deepcopy(base)
    cfg.defrost()
    cfg.merge_from_list(variant_opts(name, cfg))
    # Same total number of RPN candidates ranked for every variant (see module docstring).
    num_levels = len(cfg.MODEL.RPN.IN_FEATURES)
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = int(math.ceil(base.MODEL.RPN.PRE_NMS_TOPK_TRAIN * _REFERENCE_RPN_LEVELS / num_levels))
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = int(
        math.ceil(max(base.MODEL.RPN.PRE_NMS_TOPK_TEST, TEST_PROPOSALS) * _REFERENCE_RPN_LEVELS / num_levels)
    )
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = TEST_PROPOSALS
    cfg.OUTPUT_DIR = os.path.join(output_dir, name)
    cfg.freeze()
    return cfg


class ProposalsInOutputs(nn.Module):
    """Wraps a ``GeneralizedRCNN`` so that each output also holds the RPN's ``"proposals"``
    (``Instances`` with ``proposal_boxes`` in original-image pixels and ``objectness_logits``),
    which ``COCOEvaluator`` turns into AR@100/AR@1000 (all, small, medium, large)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batched_inputs):
        detector = getattr(self.model, "module", self.model)  # DDP-wrapped or not
        captured = []
        handle = detector.proposal_generator.register_forward_hook(lambda mod, inp, out: captured.append(out[0]))
        try:
            outputs = self.model(batched_inputs)
        finally:
            handle.remove()
        for output, proposals, inputs in zip(outputs, captured[-1], batched_inputs):
            height = inputs.get("height", proposals.image_size[0])
            width = inputs.get("width", proposals.image_size[1])
            output["proposals"] = detector_postprocess(proposals, height, width)
        return outputs


class AblationTrainer(FPNTrainer):
    """``FPNTrainer`` whose evaluation also measures the RPN's proposal recall."""

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = {}
        for name in cfg.DATASETS.TEST:
            loader = cls.build_test_loader(cfg, name)  # builds (generates) the data before the evaluator reads its JSON
            evaluator = COCOEvaluator(name, tasks=("bbox",), output_dir=os.path.join(cfg.OUTPUT_DIR, "inference", name))
            results[name] = inference_on_dataset(ProposalsInOutputs(model), loader, evaluator)
        return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results


def count_anchors(model: nn.Module, image_size: int) -> int:
    """Anchors the RPN places on one ``image_size`` x ``image_size`` image (the paper's "# anchors")."""
    detector = getattr(model, "module", model)
    backbone, rpn = detector.backbone, detector.proposal_generator
    div = max(1, backbone.size_divisibility)
    padded = int(math.ceil(image_size / div) * div)
    shapes = backbone.output_shape()
    per_loc = rpn.anchor_generator.num_anchors
    return sum(int(math.ceil(padded / shapes[f].stride)) ** 2 * a for f, a in zip(rpn.in_features, per_loc))


def run_variant(base, name: str, output_dir: str, log=print) -> dict:
    """Train and evaluate one variant; returns its record (settings, timings, AR and AP figures)."""
    cfg = variant_config(base, name, output_dir)
    row, label = VARIANTS[name]
    seed_all_rng(cfg.SEED)  # every variant: same initial RNG state, hence the same data order
    trainer = AblationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    num_params = sum(p.numel() for p in model.parameters())
    anchors = count_anchors(model, cfg.DATASETS.FPN_SHAPES.IMAGE_SIZE)
    log(
        f"  {name} ({row}): RPN on {list(cfg.MODEL.RPN.IN_FEATURES)}, RoIs pooled from {list(cfg.MODEL.ROI_HEADS.IN_FEATURES)}, "
        f"{anchors} anchors / image, {num_params / 1e6:.2f} M parameters; training {cfg.SOLVER.MAX_ITER} iterations"
    )
    start = time.perf_counter()
    trainer.train()  # Detectron2's loop; its EvalHook runs AblationTrainer.test once at the end
    total = time.perf_counter() - start
    results = getattr(trainer, "_last_eval_results", None)
    if not results or "bbox" not in results or "box_proposals" not in results:
        raise RuntimeError(f"variant {name}: evaluation produced no results ({results!r}); check DATASETS.TEST.")
    record = {
        "variant": name,
        "row": row,
        "label": label,
        "rpn_features": list(cfg.MODEL.RPN.IN_FEATURES),
        "roi_features": list(cfg.MODEL.ROI_HEADS.IN_FEATURES),
        "anchors_per_image": anchors,
        "parameters": num_params,
        "seconds": round(total, 1),
        "ar": {k: float(results["box_proposals"][k]) for k in AR_KEYS},
        "ap": {k: float(results["bbox"][k]) for k in AP_KEYS},
        "output_dir": cfg.OUTPUT_DIR,
    }
    log(
        f"  {name} done in {total:.0f} s: AR@100 {record['ar']['AR@100']:.1f}, AR@1000 {record['ar']['AR@1000']:.1f}, "
        f"AP {record['ap']['AP']:.1f}, AP50 {record['ap']['AP50']:.1f}"
    )
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.1f}"


def markdown_table(records: Sequence[dict]) -> str:
    """The results as a Markdown table: one row per variant, the paper's Table 1 and Table 3 columns."""
    head = ["row", "variant", "RPN features", "RoI features", "anchors / image", *TABLE_AR, *[f"box {k}" for k in TABLE_AP]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":-:", "---", "---", "---"] + ["--:"] * (len(head) - 4)) + "|"]
    for r in records:
        cells = [
            f"({r['row']})", f"{r['label']} `{r['variant']}`",
            ", ".join(r["rpn_features"]), ", ".join(r["roi_features"]), str(r["anchors_per_image"]),
            *[_fmt(r["ar"][k]) for k in TABLE_AR], *[_fmt(r["ap"][k]) for k in TABLE_AP],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(records: Sequence[dict], path: str, title: str = "") -> None:
    """Grouped bars: proposal AR (left) and box AP (right), one colour per variant."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.8), constrained_layout=True)
    axes = fig.subplots(1, 2)
    width = 0.8 / max(1, len(records))
    for ax, keys, group, ylabel in ((axes[0], TABLE_AR, "ar", "RPN proposal recall (%)"), (axes[1], TABLE_AP, "ap", "box AP (%)")):
        for i, r in enumerate(records):
            xs = [j + (i - (len(records) - 1) / 2) * width for j in range(len(keys))]
            ax.bar(xs, [r[group][k] for k in keys], width, label=f"({r['row']}) {r['variant']}", color=f"C{'abcdef'.index(r['row'])}")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", loc="upper left")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, help="base FPN config (default: configs/quickstart.yaml)")
    p.add_argument("--variants", default="all", help=f"comma-separated, from {list(VARIANTS)}, or 'all' (default)")
    p.add_argument("--iters", type=int, help="training iterations of every variant (default: the config's SOLVER.MAX_ITER); the LR schedule is scaled to it")
    p.add_argument("--batch", type=int, help="images per batch (default: the config's SOLVER.IMS_PER_BATCH)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--num-train", type=int, help="fpn_shapes training images (default: the config's, 1000)")
    p.add_argument("--num-val", type=int, help="fpn_shapes validation images (default: the config's, 100)")
    p.add_argument("--image-size", type=int, help="fpn_shapes image size in pixels, also the train/test input size (default: the config's, 512)")
    p.add_argument("--output-dir", default="output/ablation", help="where the table, JSON, chart and runs go")
    add_system_malloc_argument(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides shared by all variants")
    return p


def write_outputs(records: Sequence[dict], budget: dict, paths: Dict[str, str]) -> dict:
    """Writes the table (``paths["md"]``), every figure (``paths["json"]``) and the chart (``paths["png"]``)."""
    result = {"budget": budget, "variants": list(records), "metrics": {"ar": list(AR_KEYS), "ap": list(AP_KEYS)}}
    with open(paths["md"], "w") as f:
        f.write(markdown_table(records))
    with open(paths["json"], "w") as f:
        json.dump(result, f, indent=2)
    title = (
        f"fpn_shapes {budget['image_size']} px, {budget['num_train']} train / {budget['num_val']} val images, "
        f"{budget['iterations']} iterations x batch {budget['batch']}, d = {budget['fpn_channels']}"
    )
    bar_chart(records, paths["png"], title)
    return result


def run_ablation(args, log=print) -> dict:
    """Runs the ablation for parsed ``args``; writes ablation.md/.json/.png; returns the JSON content."""
    names = parse_variants(args.variants)
    base = base_config(args)
    os.makedirs(args.output_dir, exist_ok=True)
    register_shapes_datasets_from_config(base)
    budget = {
        "iterations": base.SOLVER.MAX_ITER,
        "batch": base.SOLVER.IMS_PER_BATCH,
        "base_lr": base.SOLVER.BASE_LR,
        "lr_steps": list(base.SOLVER.STEPS),
        "warmup_iters": base.SOLVER.WARMUP_ITERS,
        "seed": base.SEED,
        "device": base.MODEL.DEVICE,
        "num_train": base.DATASETS.FPN_SHAPES.NUM_TRAIN,
        "num_val": base.DATASETS.FPN_SHAPES.NUM_VAL,
        "image_size": base.DATASETS.FPN_SHAPES.IMAGE_SIZE,
        "fpn_channels": base.MODEL.FPN.OUT_CHANNELS,
        "test_proposals": TEST_PROPOSALS,
        "config_file": os.path.relpath(args.config_file, REPO) if args.config_file.startswith(REPO) else args.config_file,
        "opts": list(args.opts),
    }
    log(f"Ablation of {len(names)} variant(s) {names}, shared budget: {json.dumps(budget)}")
    records = []
    paths = {k: os.path.join(args.output_dir, f"ablation.{k}") for k in ("md", "json", "png")}
    for i, name in enumerate(names, start=1):
        log(f"[{i}/{len(names)}] {name}: {VARIANTS[name][1]}")
        records.append(run_variant(base, name, args.output_dir, log=log))
        # Written after every variant, so a long run that is stopped keeps what it finished.
        result = write_outputs(records, budget, paths)
    log("\n" + markdown_table(records))
    log("Wrote " + ", ".join(paths.values()))
    return result


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
    run_ablation(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
