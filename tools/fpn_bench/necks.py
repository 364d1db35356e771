"""The necks compared on one budget: FPN, PAFPN, the one-layer BiFPN-style neck and the full BiFPN.

Every neck goes into the same detector, by default ``configs/quickstart_retinanet.yaml`` (the
narrow BasicBlock ResNet, d = ``MODEL.FPN.OUT_CHANNELS`` = 64, Detectron2's RetinaNet head on
P3-P7): each neck's overrides (:data:`NECKS`) change ``MODEL.BACKBONE.NAME`` and the neck's own
keys only, so the bottom-up network, the head, the anchors, the input size and the training budget
are shared. Per neck:

- parameters and GFLOPs of the neck (the backbone minus its bottom-up network) and of the whole
  detector, counted by fvcore on the plain model for one ``image_size`` x ``image_size`` image
  (:func:`.analysis.analyze`);
- latency of the backbone (bottom-up + neck) and of the detector's inference on that image, run as
  the tools run it (:func:`fpn_plugin.accel.accelerate` with the config's ``MODEL.ACCEL``), median
  of ``reps`` repetitions, the necks timed alternately (:func:`.timing.time_alternately`); the
  untrained heads made to detect like trained ones
  (:func:`fpn_plugin.utils.testing.make_trained_like`);
- with ``train``: box AP on fpn_shapes' validation split after training each neck with the shared
  budget of :func:`.ablation.base_config` (iterations, batch, LR schedule, seed and data order).

The command line is ``tools/compare_necks.py``.
"""

import copy
import os
from typing import Callable, Dict, List, Sequence

import torch
from tabulate import tabulate

from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from fpn_plugin.accel import accelerate
from fpn_plugin.data import register_shapes_datasets_from_config
from fpn_plugin.engine.trainer import FPNTrainer
from fpn_plugin.utils.testing import make_trained_like

from .ablation import AP_KEYS, TrainingBudget, base_config
from .analysis import analyze, make_inputs
from .checkout import CONFIGS
from .timing import time_alternately

__all__ = [
    "NECKS",
    "DEFAULT_CONFIG",
    "parse_necks",
    "neck_config",
    "measure_costs",
    "train_and_evaluate",
    "compare_necks",
    "markdown_table",
]

#: name -> (label, config overrides). The overrides change the neck only.
NECKS: Dict[str, tuple] = {
    "fpn": ("FPN", ["MODEL.BACKBONE.NAME", "build_fpn_neck_backbone"]),
    "pafpn": (
        "PAFPN",
        ["MODEL.BACKBONE.NAME", "build_pafpn_neck_backbone", "MODEL.FPN.FUSE_TYPE", "sum"],
    ),
    "bifpn_style": (
        "BiFPN-style, 1 layer (PAFPN + weighted fusion)",
        ["MODEL.BACKBONE.NAME", "build_pafpn_neck_backbone", "MODEL.FPN.FUSE_TYPE", "weighted"],
    ),
    "bifpn": ("BiFPN, full", ["MODEL.BACKBONE.NAME", "build_bifpn_backbone"]),
}
#: The shared detector of this checkout.
DEFAULT_CONFIG = os.path.join(CONFIGS, "quickstart_retinanet.yaml")


def parse_necks(names: str) -> List[str]:
    """``"fpn,bifpn"`` -> ``["fpn", "bifpn"]`` in :data:`NECKS`' order; "all": all. ``ValueError``
    naming unknown necks and the valid names."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if wanted == ["all"]:
        return list(NECKS)
    unknown = [n for n in wanted if n not in NECKS]
    if unknown or not wanted:
        raise ValueError(
            f"--necks: unknown or no neck(s) {unknown}; choose from {list(NECKS)} (or 'all')."
        )
    return [n for n in NECKS if n in wanted]


def neck_config(base: CfgNode, name: str, output_dir: str = "") -> CfgNode:
    """``base`` with neck ``name``'s overrides (and ``OUTPUT_DIR`` ``output_dir/name``), frozen."""
    if name not in NECKS:
        raise ValueError(f"unknown neck {name!r}; choose from {list(NECKS)}.")
    cfg = copy.deepcopy(base)
    cfg.defrost()
    cfg.merge_from_list(list(NECKS[name][1]))
    if output_dir:
        cfg.OUTPUT_DIR = os.path.join(output_dir, name)
    cfg.freeze()
    return cfg


def measure_costs(
    cfgs: Dict[str, CfgNode], image_size: int, reps: int = 10, warmup: int = 2
) -> Dict[str, Dict[str, float]]:
    """Per neck name (``cfgs``: name -> config): ``neck_params``, ``params`` (counts),
    ``neck_gflops``, ``gflops`` (one image of ``image_size`` pixels), ``backbone_ms`` and
    ``detector_ms`` (median latency, milliseconds)."""
    results, backbone_fns, detector_fns = {}, {}, {}
    for name, cfg in cfgs.items():
        torch.manual_seed(cfg.SEED)
        model = build_model(cfg).eval()
        make_trained_like(model)
        inputs = make_inputs(image_size, image_size, cfg.MODEL.DEVICE)
        counts = analyze(model, inputs)  # the plain model: what is computed
        neck = counts["components"].get("neck", counts["components"].get("backbone"))
        results[name] = {
            "neck_params": neck["params"],
            "params": counts["total"]["params"],
            "neck_gflops": neck["flops"] / 1e9,
            "gflops": counts["total"]["flops"] / 1e9,
        }
        accelerate(model, cfg)  # then timed as the tools run it
        images = model.preprocess_image(inputs).tensor

        def run_backbone(model=model, images=images):
            with torch.no_grad():
                model.backbone(images)

        def run_detector(model=model, inputs=inputs):
            with torch.no_grad():
                model(inputs)

        backbone_fns[name], detector_fns[name] = run_backbone, run_detector
    for key, fns in (("backbone_ms", backbone_fns), ("detector_ms", detector_fns)):
        medians, _ = time_alternately(fns, reps, warmup)
        for name, seconds in medians.items():
            results[name][key] = seconds * 1e3
    return results


def train_and_evaluate(cfg: CfgNode) -> Dict[str, float]:
    """Train the detector of ``cfg`` (its datasets registered) from its seed, then its box metrics
    on ``DATASETS.TEST`` (percent, :data:`AP_KEYS`)."""
    seed_all_rng(cfg.SEED)  # every neck: the same initial RNG state, hence the same data order
    trainer = FPNTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # Detectron2's loop; its EvalHook evaluates once at the end
    results = getattr(trainer, "_last_eval_results", None)
    if not results or "bbox" not in results:
        raise RuntimeError(f"{cfg.OUTPUT_DIR}: evaluation produced no box results ({results!r}).")
    return {k: float(results["bbox"][k]) for k in AP_KEYS}


def compare_necks(
    budget: TrainingBudget,
    necks: str = "all",
    output_dir: str = "output/necks",
    reps: int = 10,
    warmup: int = 2,
    train: bool = False,
    log: Callable[[str], None] = print,
) -> List[Dict]:
    """The comparison of ``necks`` (as :func:`parse_necks` takes them) on the shared ``budget``,
    measured at ``budget.image_size`` (else the config's fpn_shapes size) with ``reps`` timed and
    ``warmup`` untimed runs: one record per neck (its name, label, the figures of
    :func:`measure_costs` and, with ``train``, ``ap`` of :func:`train_and_evaluate`, each neck's
    training run in ``output_dir/<neck>``)."""
    names = parse_necks(necks)
    base = base_config(budget)
    cfgs = {name: neck_config(base, name, output_dir) for name in names}
    image_size = budget.image_size or base.DATASETS.FPN_SHAPES.IMAGE_SIZE
    log(f"Measuring {names} at {image_size} x {image_size} px on {base.MODEL.DEVICE}")
    costs = measure_costs(cfgs, image_size, reps, warmup)
    records = [{"neck": n, "label": NECKS[n][0], **costs[n]} for n in names]
    if train:
        register_shapes_datasets_from_config(base)
        for record in records:
            log(f"Training {record['neck']} for {base.SOLVER.MAX_ITER} iterations")
            record["ap"] = train_and_evaluate(cfgs[record["neck"]])
    return records


def markdown_table(records: Sequence[Dict]) -> str:
    """The records of :func:`compare_necks` as a Markdown table."""
    trained = all("ap" in r for r in records)
    headers = [
        "neck",
        "neck params (M)",
        "params (M)",
        "neck GFLOPs",
        "GFLOPs",
        "backbone ms",
        "detector ms",
    ]
    headers += ["AP", "AP50", "APs"] if trained else []
    rows = []
    for r in records:
        row = [r["label"], r["neck_params"] / 1e6, r["params"] / 1e6, r["neck_gflops"], r["gflops"]]
        row += [r["backbone_ms"], r["detector_ms"]]
        row += [r["ap"]["AP"], r["ap"]["AP50"], r["ap"]["APs"]] if trained else []
        rows.append(row)
    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=".3g")
