"""The paper's ablation (Lin et al. 2017, Tables 1-3) on one shared training budget.

Every variant is the base FPN config (``configs/quickstart.yaml`` by default) merged with its own
YAML file of overrides, ``configs/ablation/<name>.yaml``, which names its paper row. All variants
share the budget (iterations, batch, LR schedule, seed, data order, model width); each trained
detector is then evaluated on the validation split:

- its RPN's proposals (the detector's own RPN, trained jointly): AR@100 and AR@1000, overall and
  for small / medium / large objects (COCO areas), as in Table 1;
- its boxes: AP, AP50, AP75, APs, APm, APl, as in Tables 2 and 3.

The per-level pre-NMS top-k of the RPN is scaled so that every variant ranks the same total number
of candidates (the config's per-level value times the paper's 5 levels); at test time 1000
proposals per image are kept (the paper's setting), which the box head also uses.
"""

import copy
import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.utils.env import seed_all_rng

from fpn_plugin.data import register_shapes_datasets_from_config
from fpn_plugin.engine import FPNTrainer, load_plugin_config

from .ablation_report import markdown_table, write_outputs
from .checkout import CONFIGS, REPO

__all__ = [
    "VARIANTS",
    "VARIANT_DIR",
    "AR_KEYS",
    "AP_KEYS",
    "TEST_PROPOSALS",
    "TrainingBudget",
    "parse_variants",
    "variant_file",
    "base_config",
    "variant_config",
    "ProposalsInOutputs",
    "AblationTrainer",
    "count_anchors",
    "run_variant",
    "run_ablation",
]

#: name -> (paper row, label). Order = the paper's rows.
VARIANTS: Dict[str, Tuple[str, str]] = {
    "c4": ("a", "baseline on C4 (single scale)"),
    "c5": ("b", "baseline on C5 (single scale)"),
    "fpn": ("c", "FPN (P2-P6)"),
    "no_top_down": ("d", "bottom-up pyramid (no top-down)"),
    "no_lateral": ("e", "top-down pyramid, no lateral"),
    "finest_only": ("f", "only finest level (P2)"),
}
#: The variants' override files (``<name>.yaml``) of this checkout.
VARIANT_DIR = os.path.join(CONFIGS, "ablation")
#: Proposal metrics (Detectron2's COCOEvaluator "box_proposals" keys), percent.
AR_KEYS = ("AR@100", "ARs@100", "ARm@100", "ARl@100", "AR@1000", "ARs@1000", "ARm@1000", "ARl@1000")
#: Box metrics (COCOEvaluator "bbox" keys), percent.
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: Levels whose candidates the RPN ranks in the paper's detector (P2-P6): the pre-NMS budget is
#: the config's per-level top-k times this, shared out over each variant's levels.
_REFERENCE_RPN_LEVELS = 5
#: Proposals kept per image at test time (paper, Sec. 5.2: 1000 for testing).
TEST_PROPOSALS = 1000


def parse_variants(names: Union[str, Sequence[str]]) -> List[str]:
    """``"c4,fpn"`` or ``["c4", "fpn"]`` -> ``["c4", "fpn"]`` in the paper's row order; "all": all.

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
        raise ValueError(
            f"--variants: unknown variant(s) {unknown}; choose from {list(VARIANTS)} (or 'all')."
        )
    return [n for n in VARIANTS if n in wanted]


def variant_file(name: str, variant_dir: str = VARIANT_DIR) -> str:
    """Path of variant ``name``'s overrides; ``FileNotFoundError`` naming it when it is missing."""
    parse_variants([name])
    path = os.path.join(variant_dir, f"{name}.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"the overrides of ablation variant {name!r} are missing: {path}; "
            "run the ablation from a source checkout, which has configs/ablation/."
        )
    return path


def _scaled(value: int, iters: int, base_iters: int) -> int:
    return max(0, min(iters, int(round(value * iters / base_iters))))


@dataclasses.dataclass
class TrainingBudget:
    """The training every variant (or neck) shares: ``config_file`` (a plugin YAML config) with
    ``opts`` (``KEY VALUE`` list, merged last) on ``device``; ``iters``, ``batch``, ``num_train``,
    ``num_val`` and ``image_size`` (pixels: the fpn_shapes images and the train / test input size)
    replace the config's own values unless None. ``iters`` stretches the config's LR schedule
    (warm-up and steps at the same fractions of training)."""

    config_file: str
    device: str = "cpu"
    iters: Optional[int] = None
    batch: Optional[int] = None
    num_train: Optional[int] = None
    num_val: Optional[int] = None
    image_size: Optional[int] = None
    opts: Sequence[str] = ()

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> "TrainingBudget":
        """The budget among a tool's parsed flags (``vars(args)``); the other flags are ignored."""
        return cls(**{f.name: flags[f.name] for f in dataclasses.fields(cls) if f.name in flags})


def base_config(budget: TrainingBudget) -> CfgNode:
    """The shared config: ``budget.config_file`` + the shared budget + ``budget.opts`` (not
    frozen). ``ValueError`` naming the flag for a budget below 1 or a missing GPU."""
    cfg = load_plugin_config(budget.config_file)
    shared = {"MODEL.DEVICE": budget.device}
    base_iters = cfg.SOLVER.MAX_ITER
    iters = budget.iters
    if iters is not None:
        if iters < 1:
            raise ValueError(f"--iters = {iters} must be >= 1.")
        steps = (_scaled(s, iters, base_iters) for s in cfg.SOLVER.STEPS)
        shared["SOLVER.MAX_ITER"] = iters
        shared["SOLVER.STEPS"] = tuple(s for s in steps if 0 < s < iters)
        shared["SOLVER.WARMUP_ITERS"] = _scaled(cfg.SOLVER.WARMUP_ITERS, iters, base_iters)
    if budget.batch is not None:
        if budget.batch < 1:
            raise ValueError(f"--batch = {budget.batch} must be >= 1.")
        shared["SOLVER.IMS_PER_BATCH"] = budget.batch
    if budget.num_train is not None:
        shared["DATASETS.FPN_SHAPES.NUM_TRAIN"] = budget.num_train
    if budget.num_val is not None:
        shared["DATASETS.FPN_SHAPES.NUM_VAL"] = budget.num_val
    if budget.image_size is not None:
        s = budget.image_size
        shared.update({"DATASETS.FPN_SHAPES.IMAGE_SIZE": s, "INPUT.MIN_SIZE_TRAIN": (s,)})
        shared.update(
            {"INPUT.MAX_SIZE_TRAIN": s, "INPUT.MIN_SIZE_TEST": s, "INPUT.MAX_SIZE_TEST": s}
        )
    # One checkpoint (the final one) per variant, evaluated once after training, unless opts say
    # otherwise.
    shared.update({"SOLVER.CHECKPOINT_PERIOD": 10**9, "TEST.EVAL_PERIOD": 0})
    # Python values: yacs checks their types against the defaults.
    cfg.merge_from_list([item for key_value in shared.items() for item in key_value])
    cfg.merge_from_list(list(budget.opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"--device {cfg.MODEL.DEVICE}: no CUDA GPU is available here; use --device cpu."
        )
    return cfg


def variant_config(
    base: CfgNode, name: str, output_dir: str, variant_dir: str = VARIANT_DIR
) -> CfgNode:
    """The frozen config of variant ``name``: ``base`` + ``<variant_dir>/<name>.yaml``, the shared
    RPN candidate budget, output in ``output_dir/name``."""
    cfg = copy.deepcopy(base)
    cfg.defrost()
    cfg.merge_from_file(variant_file(name, variant_dir))
    num_levels = len(cfg.MODEL.RPN.IN_FEATURES)
    rpn = base.MODEL.RPN
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = math.ceil(
        rpn.PRE_NMS_TOPK_TRAIN * _REFERENCE_RPN_LEVELS / num_levels
    )
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = math.ceil(
        max(rpn.PRE_NMS_TOPK_TEST, TEST_PROPOSALS) * _REFERENCE_RPN_LEVELS / num_levels
    )
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = TEST_PROPOSALS
    cfg.OUTPUT_DIR = os.path.join(output_dir, name)
    cfg.freeze()
    return cfg


class ProposalsInOutputs(nn.Module):
    """Wraps a ``GeneralizedRCNN`` so that each output also holds the RPN's ``"proposals"``
    (``Instances`` with ``proposal_boxes`` (R, 4) XYXY in original-image pixels and
    ``objectness_logits`` (R,)), which ``COCOEvaluator`` turns into AR@100 / AR@1000."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batched_inputs):
        detector = getattr(self.model, "module", self.model)  # DDP-wrapped or not
        captured = []
        handle = detector.proposal_generator.register_forward_hook(
            lambda mod, inp, out: captured.append(out[0])
        )
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
            # The loader generates the data, which the evaluator's COCO JSON is read from.
            loader = cls.build_test_loader(cfg, name)
            output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", name)
            evaluator = COCOEvaluator(name, tasks=("bbox",), output_dir=output_dir)
            results[name] = inference_on_dataset(ProposalsInOutputs(model), loader, evaluator)
        return results[cfg.DATASETS.TEST[0]] if len(results) == 1 else results


def count_anchors(model: nn.Module, image_size: int) -> int:
    """Anchors the RPN places on one ``image_size`` x ``image_size`` pixel image, after padding to
    the backbone's size divisibility (the paper's "# anchors")."""
    detector = getattr(model, "module", model)
    backbone, rpn = detector.backbone, detector.proposal_generator
    div = max(1, backbone.size_divisibility)
    padded = math.ceil(image_size / div) * div
    shapes = backbone.output_shape()
    per_location = rpn.anchor_generator.num_anchors
    return sum(
        math.ceil(padded / shapes[f].stride) ** 2 * a for f, a in zip(rpn.in_features, per_location)
    )


def run_variant(
    base: CfgNode,
    name: str,
    output_dir: str,
    variant_dir: str = VARIANT_DIR,
    log: Callable[[str], None] = print,
) -> dict:
    """Train and evaluate one variant; returns its record (settings, seconds, AR and AP in %)."""
    cfg = variant_config(base, name, output_dir, variant_dir)
    row, label = VARIANTS[name]
    seed_all_rng(cfg.SEED)  # every variant: same initial RNG state, hence the same data order
    trainer = AblationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    num_params = sum(p.numel() for p in model.parameters())
    anchors = count_anchors(model, cfg.DATASETS.FPN_SHAPES.IMAGE_SIZE)
    log(
        f"  {name} ({row}): RPN on {list(cfg.MODEL.RPN.IN_FEATURES)}, RoIs pooled from "
        f"{list(cfg.MODEL.ROI_HEADS.IN_FEATURES)}, {anchors} anchors / image, "
        f"{num_params / 1e6:.2f} M parameters; training {cfg.SOLVER.MAX_ITER} iterations"
    )
    start = time.perf_counter()
    trainer.train()  # Detectron2's loop; its EvalHook runs AblationTrainer.test once at the end
    total = time.perf_counter() - start
    results = getattr(trainer, "_last_eval_results", None)
    if not results or "bbox" not in results or "box_proposals" not in results:
        raise RuntimeError(
            f"variant {name}: evaluation produced no results ({results!r}); check DATASETS.TEST."
        )
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
        f"  {name} done in {total:.0f} s: AR@100 {record['ar']['AR@100']:.1f}, "
        f"AR@1000 {record['ar']['AR@1000']:.1f}, AP {record['ap']['AP']:.1f}, "
        f"AP50 {record['ap']['AP50']:.1f}"
    )
    del trainer, model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record


def _budget(base: CfgNode, budget: TrainingBudget) -> dict:
    """The settings every variant shares, as recorded in ablation.json."""
    config_file = budget.config_file
    if os.path.abspath(config_file).startswith(REPO + os.sep):
        config_file = os.path.relpath(os.path.abspath(config_file), REPO)
    return {
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
        "config_file": config_file,
        "opts": list(budget.opts),
    }


def run_ablation(
    budget: TrainingBudget,
    variants: Union[str, Sequence[str]],
    output_dir: str,
    variant_dir: str = VARIANT_DIR,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs ``variants`` (names as :func:`parse_variants` takes them; their overrides in
    ``variant_dir``) on the shared ``budget`` (:func:`base_config`); writes ``ablation.md``,
    ``ablation.json`` and ``ablation.png`` to ``output_dir`` after each variant (a stopped run
    keeps what it finished). Returns the JSON content."""
    names = parse_variants(variants)
    base = base_config(budget)
    for name in names:  # a missing file fails now, not after hours of training
        variant_file(name, variant_dir)
    os.makedirs(output_dir, exist_ok=True)
    register_shapes_datasets_from_config(base)
    shared = _budget(base, budget)
    log(f"Ablation of {len(names)} variant(s) {names}, shared budget: {json.dumps(shared)}")
    records = []
    paths = {k: os.path.join(output_dir, f"ablation.{k}") for k in ("md", "json", "png")}
    for i, name in enumerate(names, start=1):
        log(f"[{i}/{len(names)}] {name}: {VARIANTS[name][1]}")
        records.append(run_variant(base, name, output_dir, variant_dir, log=log))
        result = {
            "budget": shared,
            "variants": list(records),
            "metrics": {"ar": list(AR_KEYS), "ap": list(AP_KEYS)},
        }
        write_outputs(result, paths)
    log("\n" + markdown_table(records))
    log("Wrote " + ", ".join(paths.values()))
    return result
