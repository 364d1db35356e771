#!/usr/bin/env python
"""Speed (and peak memory) of fpn_plugin's detector against Detectron2's built-in equivalent.

Both detectors are built in the same process with the same weights (Detectron2's model is built,
its ``state_dict`` is loaded into the plugin's with ``strict=True``), and every measurement runs
the two alternately -- A, B, A, B, ... -- so that both see the same machine load; the figure
reported is the median of ``--reps`` repetitions after ``--warmup`` untimed ones.

    python tools/benchmark.py                                  # everything, R50-FPN, CPU, 2 threads
    python tools/benchmark.py --only pooler,anchors --reps 20 --json bench.json
    python tools/benchmark.py --images 'datasets/coco/val2017/*.jpg' --weights model_final_b275ba.pkl
    python tools/benchmark.py --device cuda --threads 8
    python tools/benchmark.py --config-file configs/my_fpn.yaml --opts MODEL.FPN.CHANNELS_LAST True
    # GPU fast mode (float16 autocast + channels-last, inference) against Detectron2 in float32:
    python tools/benchmark.py --device cuda --only neck,end_to_end,memory \
        --opts MODEL.FPN.AUTOCAST_DTYPE float16 MODEL.FPN.CHANNELS_LAST True

Models: the plugin's ``configs/fpn_r50.yaml`` against Detectron2's
``COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml``; with ``--config-file X`` the reference is X with
the three component names swapped back to Detectron2's (README, "Use"); if ``MODEL.FPN.BOTTOM_UP``
is not Detectron2's ResNet, the reference backbone is Detectron2's ``FPN`` over that bottom-up.
Without ``--weights`` the weights are random, with the RPN head and box predictor scaled by
``fpn_plugin.workload.make_trained_like`` so that the RPN yields ~1000 proposals per image, like a trained model;
the proposal counts actually produced are printed and stored.

Inputs: ``--images`` (a folder, a file or a glob) are read with Detectron2's ``read_image`` and
resized by the config's test-time ``ResizeShortestEdge`` (800 / 1333), as ``DefaultPredictor``
does; without it, deterministic random images of ``--size`` (default 800x1333).

Measurements (``--only`` names):

``neck``         ``model.backbone(images.tensor)`` on a batch of ``--batch`` images (bottom-up +
                 FPN); also the bottom-up network alone, and the FPN layers alone (the bottom-up
                 outputs replayed from a cache).
``anchors``      the anchor generator on the RPN's feature maps, called again and again with the
                 same feature sizes (as in inference on same-sized images).
``pooler``       the box RoI pooler on the P2-P5 features of the batch: ``--num-rois`` RoIs per
                 image in eval/no-grad, and ``--train-rois`` RoIs per image forward + backward.
                 RoIs are the model's own RPN proposals (topped up with random boxes, sizes
                 log-uniform in 16..800 px, if there are too few). The two poolers' outputs on the
                 same features and RoIs are compared (max abs difference).
``box_head``     ``box_predictor(box_head(pooled))`` on the pooled test RoIs (eval, no grad).
``end_to_end``   ``model([{"image", "height", "width"}])``, one image, eval, no grad.
``train``        one training iteration at batch ``--batch``: forward (train mode, synthetic
                 ground truth), backward, SGD step, inside an ``EventStorage``.
``memory``       peak memory of one eval forward. CPU: each model runs in a fresh subprocess,
                 one warm-up forward, then the peak RSS ("high-water mark", reset through
                 ``/proc/self/clear_refs``) minus the RSS just before the measured forward;
                 glibc's mmap threshold is fixed (``MALLOC_MMAP_THRESHOLD_``) so freed tensors go
                 back to the OS and RSS follows the live tensors. CUDA:
                 ``torch.cuda.max_memory_allocated`` minus the memory allocated before.
``torchvision``  end-to-end eval latency of the plugin's model against torchvision's
                 ``fasterrcnn_resnet50_fpn`` (random weights, nothing downloaded, RPN head scaled
                 likewise, 1000 proposals, same image size) as a second reference.

Memory allocator: CPU times depend on it (with glibc's defaults each forward page-faults its large
blocks anew). The figures are taken with the process's allocator as it is, unless
``--keep-freed-memory`` makes glibc keep freed memory for reuse as the training and demo tools do
(``fpn_plugin/accel/cpu_allocator.py``); the header says which.

Output: a header (versions, device, threads, inputs, allocator, proposal counts, checks) and a Markdown
table ``| measurement | fpn_plugin | Detectron2 | ratio |`` (ratio = fpn_plugin / reference;
< 1 means the plugin is faster or smaller), ready to paste into README.md. ``--json PATH``
writes every figure, the raw samples and the environment.
"""
import argparse
import copy
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional, Union

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fpn_plugin  # noqa: E402,F401  (registers the components)
import detectron2  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, build_model  # noqa: E402
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from fpn_plugin.config import detectron2_config_file, get_plugin_cfg  # noqa: E402
from fpn_plugin.accel.cpu_allocator import allocator_choice, keep_freed_cpu_memory  # noqa: E402
from fpn_plugin.benchmark.workload import make_trained_like, random_boxes  # noqa: E402

D2_R50_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
DEFAULT_CONFIG = "configs/fpn_r50.yaml"
#: Component names: plugin -> Detectron2 (the reference is the plugin config with these swapped back).
SWAP_BACK = {
    "MODEL.BACKBONE.NAME": ("build_fpn_neck_backbone", "build_resnet_fpn_backbone"),
    "MODEL.ANCHOR_GENERATOR.NAME": ("SharedAnchorGenerator", "DefaultAnchorGenerator"),
    "MODEL.ROI_HEADS.NAME": ("LevelMappingROIHeads", "StandardROIHeads"),
}
#: Reference backbone when MODEL.FPN.BOTTOM_UP is not Detectron2's ResNet (which is all that
#: ``build_resnet_fpn_backbone`` builds): Detectron2's FPN over the same bottom-up.
REFERENCE_FPN = "detectron2_fpn_over_bottom_up"
#: Plugin keys that change the model in ways Detectron2's components ignore.
MODEL_CHANGING_KEYS = (
    "MODEL.FPN.UPSAMPLE", "MODEL.FPN.EXTRA_LEVELS", "MODEL.FPN.TOP_DOWN",
    "MODEL.FPN.LATERAL", "MODEL.FPN.FINEST_ONLY", "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE",
    "MODEL.ROI_HEADS.CANONICAL_BOX_SIZE", "MODEL.ROI_HEADS.CANONICAL_LEVEL",
)
MEASUREMENTS = ("neck", "anchors", "pooler", "box_head", "end_to_end", "train", "memory", "torchvision")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MIB = 1024.0 * 1024.0


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------


def detectron2_fpn_over_bottom_up(cfg, input_shape):
    """Detectron2's ``FPN`` built as ``build_resnet_fpn_backbone`` builds it, over the bottom-up
    that ``MODEL.FPN.BOTTOM_UP`` names (e.g. the quickstart's narrow BasicBlock ResNet)."""
    bottom_up = BACKBONE_REGISTRY.get(cfg.MODEL.FPN.BOTTOM_UP)(cfg, input_shape)
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


if REFERENCE_FPN not in BACKBONE_REGISTRY:  # the module may be imported more than once (tests)
    BACKBONE_REGISTRY.register(detectron2_fpn_over_bottom_up)


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected HxW, e.g. 800x1333")
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"--size {text!r}: both sides must be >= 32")
    return h, w


def _only(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in MEASUREMENTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--only {text!r}: unknown {bad}; choose from {','.join(MEASUREMENTS)}")
    return names


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, help=f"plugin config to benchmark (default {DEFAULT_CONFIG}, "
                   f"against Detectron2's {D2_R50_FPN}); the reference is it with the component names swapped back")
    p.add_argument("--weights", default=None, help="a Detectron2 checkpoint (.pkl/.pth) loaded into both models; "
                   "default: random weights with scaled heads (~1000 proposals per image)")
    p.add_argument("--images", default=None, help="folder, file or glob of real images (resized like DefaultPredictor); "
                   "default: deterministic random images of --size")
    p.add_argument("--size", type=_size, default=(800, 1333), help="HxW of the random images (default 800x1333)")
    p.add_argument("--batch", type=int, default=2, help="images per batch for neck/anchors/pooler/box_head/train (default 2)")
    p.add_argument("--num-rois", type=int, default=None, help="test RoIs per image for pooler/box_head "
                   "(default MODEL.RPN.POST_NMS_TOPK_TEST, 1000)")
    p.add_argument("--train-rois", type=int, default=None, help="training RoIs per image for the pooler "
                   "(default MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE, 512)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per model; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions per model first (default 2)")
    p.add_argument("--only", type=_only, default=list(MEASUREMENTS), help=f"comma-separated subset of {','.join(MEASUREMENTS)}")
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, images and boxes (default 0)")
    p.add_argument("--keep-freed-memory", action="store_true", help="make glibc malloc keep freed memory for reuse, "
                   "as the training and demo tools do on CPU (both models gain; see fpn_plugin/accel/cpu_allocator.py)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides for both models")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)  # memory subprocess: its spec file
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.batch < 1 or args.threads < 1:
        p.error("--reps, --batch and --threads must be >= 1 and --warmup >= 0")
    # Absolute paths: the memory subprocesses run from the repository root.
    for name in ("config_file", "weights", "images"):
        if getattr(args, name):
            setattr(args, name, os.path.abspath(os.path.expanduser(getattr(args, name))))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


def build_cfgs(args):
    """(plugin cfg, Detectron2 reference cfg, description of the two)."""
    ours = get_plugin_cfg()
    ref = get_plugin_cfg()  # the plugin's extra keys are harmless to Detectron2's components
    if args.config_file is None:
        ours.merge_from_file(os.path.join(REPO, DEFAULT_CONFIG))
        ref.merge_from_file(detectron2_config_file(D2_R50_FPN))
        names = (DEFAULT_CONFIG, D2_R50_FPN)
    else:
        ours.merge_from_file(args.config_file)
        ref.merge_from_file(args.config_file)
        for key, (plugin_name, d2_name) in SWAP_BACK.items():
            node, leaf = key.rsplit(".", 1)
            target = ref
            for part in node.split("."):
                target = target[part]
            if target[leaf] == plugin_name:
                target[leaf] = d2_name
        names = (args.config_file, f"{args.config_file} with Detectron2's components")
    for cfg in (ours, ref):
        cfg.merge_from_list(list(args.opts))
        cfg.MODEL.DEVICE = args.device
        cfg.MODEL.WEIGHTS = ""
    if ref.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" and ref.MODEL.FPN.BOTTOM_UP != "build_resnet_backbone":
        ref.MODEL.BACKBONE.NAME = REFERENCE_FPN
    defaults = get_plugin_cfg()
    changed = [k for k in MODEL_CHANGING_KEYS if _get(ours, k) != _get(defaults, k)]
    if changed:
        print(f"WARNING: the plugin config sets {changed}, which Detectron2's components ignore: "
              "the two models are not the same detector.", file=sys.stderr)
    ours.freeze()
    ref.freeze()
    return ours, ref, names


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def build_models(args, cfg_ours, cfg_ref):
    """(Detectron2's model, the plugin's model) in eval mode, with the same weights."""
    torch.manual_seed(args.seed)
    ref = build_model(cfg_ref).eval()
    if args.weights:
        from detectron2.checkpoint import DetectionCheckpointer

        DetectionCheckpointer(ref).load(args.weights)
    else:
        make_trained_like(ref)
    ours = build_model(cfg_ours).eval()
    try:
        ours.load_state_dict(ref.state_dict(), strict=True)
    except RuntimeError as e:
        raise SystemExit(
            "The Detectron2 reference's state_dict does not load into the plugin's model (strict=True); "
            f"the config uses options that Detectron2's components do not have.\n{e}"
        )
    return ref, ours


def build_torchvision_model(args, min_size: int, max_size: int, num_proposals: int):
    """torchvision's ``fasterrcnn_resnet50_fpn``, random weights (nothing downloaded), eval mode.

    Its random RPN head is scaled like ``make_trained_like`` so that it proposes ~``num_proposals``
    boxes per image too.
    """
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(args.seed)
    model = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None,
        rpn_pre_nms_top_n_test=num_proposals, rpn_post_nms_top_n_test=num_proposals,
        box_score_thresh=0.0, min_size=min_size, max_size=max_size,
    )
    with torch.no_grad():
        model.rpn.head.bbox_pred.weight.mul_(1e-3)
        model.rpn.head.cls_logits.weight.mul_(0.02)
    return model.to(args.device).eval()


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def _image_paths(spec: str) -> List[str]:
    if os.path.isdir(spec):
        paths = [os.path.join(spec, f) for f in sorted(os.listdir(spec))]
    else:
        paths = sorted(glob.glob(spec))
    paths = [p for p in paths if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise SystemExit(f"--images {spec!r}: no image files found")
    return paths


def load_inputs(args, cfg, count: int) -> List[Dict]:
    """``count`` model inputs ``{"image": (3, H, W) float tensor, "height", "width"}`` on the device.

    Real images (``--images``, cycled if fewer than ``count``) are read and resized as
    ``DefaultPredictor`` does, "height"/"width" being the original size; otherwise random images
    of ``--size``, already at the test size.
    """
    out = []
    if args.images:
        from detectron2.data import transforms as T
        from detectron2.data.detection_utils import read_image

        paths = _image_paths(args.images)
        aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        for i in range(count):
            original = read_image(paths[i % len(paths)], format=cfg.INPUT.FORMAT)
            image = aug.get_transform(original).apply_image(original)
            tensor = torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1)))
            out.append({"image": tensor.to(args.device), "height": original.shape[0], "width": original.shape[1],
                        "file_name": paths[i % len(paths)]})
    else:
        g = torch.Generator().manual_seed(args.seed)
        h, w = args.size
        for _ in range(count):
            image = torch.rand(3, h, w, generator=g) * 255
            out.append({"image": image.to(args.device), "height": h, "width": w})
    return out


def _strip(inputs: List[Dict]) -> List[Dict]:
    return [{k: v for k, v in x.items() if k in ("image", "height", "width")} for x in inputs]


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fn: Union[Callable[[], object], Mapping[str, Callable[[], object]]], reps: int, warmup: int, device: str,
           samples: Optional[Dict[str, List[float]]] = None):
    """Median wall-clock seconds of ``fn()`` over ``reps`` calls, after ``warmup`` untimed calls.

    ``fn`` may be a dict ``name -> callable``: then, in every warm-up and every timed repetition,
    the callables run one after the other (A, B, A, B, ...), so they share the machine's load, and
    a dict ``name -> median`` is returned. On CUDA the device is synchronized around every call.
    ``samples``, if given, receives every timed value (``name -> list``).
    """
    fns = fn if isinstance(fn, Mapping) else {"_": fn}
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for rep in range(warmup + reps):
        for name, f in fns.items():
            _sync(device)
            start = time.perf_counter()
            f()
            _sync(device)
            elapsed = time.perf_counter() - start
            if rep >= warmup:
                times[name].append(elapsed)
    if samples is not None:
        samples.update(times)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return medians if isinstance(fn, Mapping) else medians["_"]


def _entry(label: str, ours: float, reference: float, unit: str, reps: int, warmup: int, *,
           reference_name: str = "detectron2", samples=None, **details) -> Dict:
    """One measurement's record: both figures, their ratio and how they were obtained."""
    entry = {"label": label, "ours": ours, reference_name: reference, "reference": reference_name,
             "ratio": ours / reference if reference else float("nan"), "unit": unit, "reps": reps, "warmup": warmup}
    if samples is not None:
        entry["samples"] = samples
    entry.update(details)
    return entry


# ------------------------------------------------------------------------------------------------
# Shared state
# ------------------------------------------------------------------------------------------------


class Bench:
    """The two models, the inputs, and what several measurements share (computed once, on demand)."""

    def __init__(self, args):
        self.args = args
        self.device = args.device
        self.allocator = _memory_allocator(args)
        self.cfg_ours, self.cfg_ref, self.config_names = build_cfgs(args)
        self.ref, self.ours = build_models(args, self.cfg_ours, self.cfg_ref)
        self.models = {"ours": self.ours, "detectron2": self.ref}
        self.batch_inputs = load_inputs(args, self.cfg_ref, args.batch)
        self.num_rois = args.num_rois or self.cfg_ref.MODEL.RPN.POST_NMS_TOPK_TEST
        self.train_rois = args.train_rois or self.cfg_ref.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
        self.proposal_counts: Dict[str, object] = {}
        self.checks: Dict[str, object] = {}
        self._cache: Dict[str, object] = {}

    @torch.no_grad()
    def batch(self, which: str):
        """(ImageList, features) of the batch through ``which``'s preprocessing and backbone."""
        key = f"batch/{which}"
        if key not in self._cache:
            model = self.models[which]
            images = model.preprocess_image(_strip(self.batch_inputs))
            self._cache[key] = (images, model.backbone(images.tensor))
        return self._cache[key]

    @torch.no_grad()
    def proposals(self) -> List[Instances]:
        """Detectron2's RPN proposals (eval) on the batch; their counts are recorded for both models."""
        if "proposals" not in self._cache:
            for which, model in self.models.items():
                images, features = self.batch(which)
                props, _ = model.proposal_generator(images, features, None)
                self.proposal_counts[f"batch_eval/{which}"] = [len(p) for p in props]
                if which == "detectron2":
                    self._cache["proposals"] = props
        return self._cache["proposals"]

    def rois(self, per_image: int, seed_offset: int):
        """(``per_image`` RoIs per batch image as ``Boxes``, number of random boxes added).

        The RoIs are Detectron2's RPN proposals on the batch -- the top ``per_image`` (``seed_offset``
        0, test RoIs) or a random subset (training RoIs) -- topped up with random boxes if too few.
        """
        g = torch.Generator().manual_seed(self.args.seed + seed_offset)
        images, _ = self.batch("detectron2")
        out, topped_up = [], 0
        for props, (h, w) in zip(self.proposals(), images.image_sizes):
            boxes = props.proposal_boxes.tensor.detach().cpu()
            if len(boxes) > per_image:
                boxes = boxes[torch.randperm(len(boxes), generator=g)[:per_image]] if seed_offset else boxes[:per_image]
            if len(boxes) < per_image:
                topped_up += per_image - len(boxes)
                boxes = torch.cat([boxes, random_boxes(per_image - len(boxes), h, w, g)])
            out.append(Boxes(boxes.to(self.device)))
        return out, topped_up

    def pooler_features(self, which: str) -> List[torch.Tensor]:
        _, features = self.batch(which)
        return [features[f] for f in self.models[which].roi_heads.box_in_features]


# ------------------------------------------------------------------------------------------------
# Measurements: each returns {key: entry}
# ------------------------------------------------------------------------------------------------


class _Replay(torch.nn.Module):
    """Stands in for a bottom-up network: returns precomputed outputs (to time the FPN layers alone)."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, x):
        return self.outputs


def _bottom_up_input(backbone, x: torch.Tensor) -> torch.Tensor:
    """The bottom-up network's input as the backbone passes it (channels-last if MODEL.FPN.CHANNELS_LAST)."""
    if getattr(backbone, "_channels_last", False):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _blocked_layout_active(backbone, x: torch.Tensor) -> bool:
    """Whether ``backbone`` (the plugin's neck; False for Detectron2's FPN) runs ``x`` in oneDNN's
    blocked layout (MODEL.FPN.CPU_BLOCKED_LAYOUT). Call under ``torch.no_grad()``."""
    return getattr(backbone, "_use_blocked_layout", None) is not None and backbone._use_blocked_layout(x)


def _bottom_up_call(backbone, x: torch.Tensor):
    """The bottom-up pass as the backbone runs it, NCHW outputs: oneDNN's blocked layout where
    MODEL.FPN.CPU_BLOCKED_LAYOUT applies (outputs converted back, as if returned), under autocast
    where MODEL.FPN.AUTOCAST_DTYPE is set (the backbone is in eval)."""
    if _blocked_layout_active(backbone, x):
        return lambda: {k: v.to_dense() for k, v in backbone._blocked_bottom_up(x).items()}
    dtype = getattr(backbone, "_autocast_dtype", None)
    if dtype is not None:
        def call():
            with torch.autocast(x.device.type, dtype=dtype):
                return backbone.bottom_up(x)
        return call
    return lambda: backbone.bottom_up(x)


def measure_neck(b: Bench) -> Dict:
    """``backbone(images.tensor)`` (bottom-up + FPN), the bottom-up alone, and the FPN layers alone."""
    a = b.args
    images = {w: b.batch(w)[0].tensor for w in b.models}
    backbones = {w: m.backbone for w, m in b.models.items()}
    res, out = {}, {}
    with torch.no_grad():
        res["bottom_up"] = {w: _bottom_up_call(bb, _bottom_up_input(bb, images[w])) for w, bb in backbones.items()}
        res["neck"] = {w: (lambda bb=bb, x=images[w]: bb(x)) for w, bb in backbones.items()}
        cached = {w: bb.bottom_up(_bottom_up_input(bb, images[w])) for w, bb in backbones.items()}
        originals = {w: bb.bottom_up for w, bb in backbones.items()}
        labels = {
            "bottom_up": "bottom-up ResNet alone (C2-C5)",
            "fpn_layers": "FPN layers alone (laterals, top-down, 3x3 outputs, P6), C2-C5 given",
            "neck": "neck: `backbone(images.tensor)` = bottom-up + FPN",
        }
        for key in ("bottom_up", "fpn_layers", "neck"):
            if key == "fpn_layers":
                for w, bb in backbones.items():
                    bb.bottom_up = _Replay(cached[w])
                try:
                    fns = {w: (lambda bb=bb, x=images[w]: bb(x)) for w, bb in backbones.items()}
                    samples = {}
                    t = timeit(fns, a.reps, a.warmup, b.device, samples)
                finally:
                    for w, bb in backbones.items():
                        bb.bottom_up = originals[w]
            else:
                samples = {}
                t = timeit(res[key], a.reps, a.warmup, b.device, samples)
            out[key] = _entry(f"{labels[key]}, batch {a.batch}", t["ours"], t["detectron2"], "s", a.reps, a.warmup,
                              samples=samples)
    return out


def measure_anchors(b: Bench) -> Dict:
    """The anchor generator on the RPN feature maps, called repeatedly with the same sizes."""
    a = b.args
    fns = {}
    for w, m in b.models.items():
        _, features = b.batch(w)
        feats = [features[f] for f in m.proposal_generator.in_features]
        fns[w] = (lambda gen=m.proposal_generator.anchor_generator, f=feats: gen(f))
    with torch.no_grad():
        samples = {}
        t = timeit(fns, a.reps, a.warmup, b.device, samples)
        num = sum(len(x) for x in fns["ours"]())
    return {"anchors": _entry(f"anchor generator, {num} anchors (same sizes every call)", t["ours"], t["detectron2"],
                              "s", a.reps, a.warmup, samples=samples, num_anchors=num)}


def measure_pooler(b: Bench) -> Dict:
    """Box RoI pooler: test RoIs in eval/no grad, training RoIs forward + backward; and agreement."""
    a = b.args
    poolers = {w: m.roi_heads.box_pooler for w, m in b.models.items()}
    feats = {w: b.pooler_features(w) for w in b.models}
    test_boxes, test_topped = b.rois(b.num_rois, 0)
    train_boxes, train_topped = b.rois(b.train_rois, 1)
    pooler_desc = f"{b.cfg_ref.MODEL.ROI_BOX_HEAD.POOLER_TYPE}, sampling {b.cfg_ref.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO}"
    out = {}

    with torch.no_grad():
        # Agreement: both poolers on the very same features and RoIs.
        same = feats["detectron2"]
        pooled = {w: p(same, test_boxes) for w, p in poolers.items()}
        diff = (pooled["ours"] - pooled["detectron2"]).abs().max().item()
        scale = pooled["detectron2"].abs().max().item()
        b._cache["pooled"] = pooled
        fns = {w: (lambda p=p, f=feats[w]: p(f, test_boxes)) for w, p in poolers.items()}
        samples = {}
        t = timeit(fns, a.reps, a.warmup, b.device, samples)
    b.checks["pooler_max_abs_diff"] = diff
    # Random-weight R50 features reach thousands, where float32 rounding alone is ~1e-3: the
    # scale-free figure is the difference relative to the largest pooled value.
    b.checks["pooler_max_rel_diff"] = diff / scale if scale > 0 else diff
    b.checks["pooler_max_abs_value"] = scale
    out["pooler_test"] = _entry(
        f"RoI pooler, eval: {a.batch}x{b.num_rois} RoIs ({pooler_desc})", t["ours"], t["detectron2"], "s",
        a.reps, a.warmup, samples=samples, rois_per_image=b.num_rois, random_rois_added=test_topped,
        max_abs_diff=diff, max_abs_value=scale, max_rel_diff=b.checks["pooler_max_rel_diff"],
    )

    # Training: forward + backward w.r.t. the features.
    leaves = {w: [f.detach().clone().requires_grad_(True) for f in feats[w]] for w in b.models}
    g = torch.Generator().manual_seed(a.seed + 2)
    num = sum(len(x) for x in train_boxes)
    channels = feats["ours"][0].shape[1]
    grad_out = torch.randn((num, channels) + tuple(poolers["ours"].output_size), generator=g).to(b.device)

    def step(w):
        for f in leaves[w]:
            f.grad = None
        poolers[w](leaves[w], train_boxes).backward(grad_out)

    for w in b.models:
        step(w)
    grads = {w: [f.grad for f in leaves[w]] for w in b.models}
    grad_diff = max((x - y).abs().max().item() for x, y in zip(grads["ours"], grads["detectron2"]))
    b.checks["pooler_grad_max_abs_diff"] = grad_diff
    samples = {}
    t = timeit({w: (lambda w=w: step(w)) for w in b.models}, a.reps, a.warmup, b.device, samples)
    out["pooler_train"] = _entry(
        f"RoI pooler, train: {a.batch}x{b.train_rois} RoIs, forward + backward", t["ours"], t["detectron2"], "s",
        a.reps, a.warmup, samples=samples, rois_per_image=b.train_rois, random_rois_added=train_topped,
        grad_max_abs_diff=grad_diff,
    )
    return out


def measure_box_head(b: Bench) -> Dict:
    """``box_predictor(box_head(pooled))`` on the pooled test RoIs, eval, no grad."""
    a = b.args
    if "pooled" not in b._cache:
        test_boxes, _ = b.rois(b.num_rois, 0)
        with torch.no_grad():
            b._cache["pooled"] = {w: m.roi_heads.box_pooler(b.pooler_features(w), test_boxes) for w, m in b.models.items()}
    pooled = b._cache["pooled"]
    fns = {w: (lambda h=m.roi_heads, x=pooled[w]: h.box_predictor(h.box_head(x))) for w, m in b.models.items()}
    with torch.no_grad():
        samples = {}
        t = timeit(fns, a.reps, a.warmup, b.device, samples)
    return {"box_head": _entry(f"box head + predictor on {a.batch}x{b.num_rois} pooled RoIs", t["ours"], t["detectron2"],
                               "s", a.reps, a.warmup, samples=samples)}


def _count_proposals(module: torch.nn.Module, counts: List[int], torchvision_rpn: bool = False):
    """Forward hook recording the number of proposals per image the RPN returns."""

    def hook(_mod, _inp, output):
        props = output[0]
        counts.extend(int(p.shape[0]) if torchvision_rpn else len(p) for p in props)

    return module.register_forward_hook(hook)


def _single_inputs(b: Bench) -> List[Dict]:
    """Images for the one-image measurements: the batch's random images, or up to warmup + reps real ones."""
    if "single" not in b._cache:
        if b.args.images:
            count = max(1, min(len(_image_paths(b.args.images)), b.args.warmup + b.args.reps))
            b._cache["single"] = load_inputs(b.args, b.cfg_ref, count)
        else:
            b._cache["single"] = b.batch_inputs
    return b._cache["single"]


def _cycler(inputs: List[Dict]):
    """A callable giving the next input (as a one-image batch) each call, cycling; one per model so both see the same order."""
    state = {"i": 0}

    def nxt():
        x = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return [{"image": x["image"], "height": x["height"], "width": x["width"]}]

    return nxt


def measure_end_to_end(b: Bench) -> Dict:
    """``model([{"image", "height", "width"}])`` per image, eval, no grad; proposals counted by a hook."""
    a = b.args
    inputs = _single_inputs(b)
    counts = {w: [] for w in b.models}
    hooks = [_count_proposals(m.proposal_generator, counts[w]) for w, m in b.models.items()]
    try:
        with torch.no_grad():
            fns = {w: (lambda m=m, nxt=_cycler(inputs): m(nxt())) for w, m in b.models.items()}
            samples = {}
            t = timeit(fns, a.reps, a.warmup, b.device, samples)
    finally:
        for h in hooks:
            h.remove()
    for w in b.models:
        b.proposal_counts[f"end_to_end/{w}"] = counts[w]
    return {"end_to_end": _entry("end-to-end eval latency per image", t["ours"], t["detectron2"], "s", a.reps, a.warmup,
                                 samples=samples, proposals_per_image={w: counts[w] for w in b.models})}


def _synthetic_targets(inputs: List[Dict], num_classes: int, seed: int, per_image: int = 5) -> List[Dict]:
    """Training inputs: the images with ``per_image`` random ground-truth boxes and classes each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in inputs:
        h, w = x["image"].shape[-2:]
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(random_boxes(per_image, h, w, g, min_size=32.0, max_size=min(400.0, h, w)).to(x["image"].device))
        inst.gt_classes = torch.randint(num_classes, (per_image,), generator=g).to(x["image"].device)
        out.append({"image": x["image"], "height": h, "width": w, "instances": inst})
    return out


def measure_train(b: Bench) -> Dict:
    """One training iteration at batch ``--batch``: forward (train mode), backward, SGD step."""
    from detectron2.utils.events import EventStorage

    a = b.args
    inputs = _synthetic_targets(b.batch_inputs, b.cfg_ref.MODEL.ROI_HEADS.NUM_CLASSES, a.seed + 3)
    models = {w: copy.deepcopy(m).train() for w, m in b.models.items()}  # the eval models keep their weights
    optims = {w: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-5, momentum=0.9, weight_decay=1e-4)
              for w, m in models.items()}
    counts = {w: [] for w in models}
    hooks = [_count_proposals(m.proposal_generator, counts[w]) for w, m in models.items()]

    def step(w):
        losses = models[w](inputs)
        loss = sum(losses.values())
        optims[w].zero_grad(set_to_none=True)
        loss.backward()
        optims[w].step()

    try:
        with EventStorage(0):
            samples = {}
            t = timeit({w: (lambda w=w: step(w)) for w in models}, a.reps, a.warmup, b.device, samples)
    finally:
        for h in hooks:
            h.remove()
    for w in models:
        b.proposal_counts[f"train/{w}"] = counts[w]
    del models, optims
    return {"train": _entry(f"training iteration, batch {a.batch} (forward + backward + SGD step)", t["ours"],
                            t["detectron2"], "s", a.reps, a.warmup, samples=samples)}


# --- peak memory ---------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_worker(spec_path: str) -> None:
    """Subprocess body: build one model, one warm-up forward, then the peak RSS increase of one forward.

    Prints one JSON line ``{"peak_increase_bytes", "rss_before_bytes", "method"}``.
    """
    import resource

    with open(spec_path) as f:
        spec = json.load(f)
    args = argparse.Namespace(**spec["args"])
    torch.set_num_threads(args.threads)
    cfg_ours, cfg_ref, _ = build_cfgs(args)
    model = build_model(cfg_ours if spec["which"] == "ours" else cfg_ref).eval()
    model.load_state_dict(torch.load(spec["state_dict"], map_location=args.device), strict=True)
    inputs = _strip(load_inputs(args, cfg_ref, 1))
    with torch.no_grad():
        model(inputs)  # warm-up: lazy initialisations (thread pools, kernels' caches) are not counted
        before = _proc_status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark to the current RSS (Linux >= 4.0)
            method = "VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before"
            model(inputs)
            peak = _proc_status_kib("VmHWM")
        except OSError:
            method = "ru_maxrss (lifetime peak, an upper bound) minus VmRSS before"
            model(inputs)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_increase_bytes": (peak - before) * 1024, "rss_before_bytes": before * 1024, "method": method}))


def _memory_cpu(b: Bench, reps: int) -> Dict[str, List[Dict]]:
    """Runs the memory worker alternately for both models, ``reps`` times each."""
    results = {w: [] for w in b.models}
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "weights.pth")
        torch.save(b.ref.state_dict(), state)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(b.args.threads))
        for _ in range(reps):
            for w in b.models:
                spec = os.path.join(tmp, f"{w}.json")
                worker_args = {k: v for k, v in vars(b.args).items() if k not in ("json", "_worker")}
                with open(spec, "w") as f:
                    json.dump({"which": w, "state_dict": state, "args": worker_args}, f)
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_worker", spec],
                                      capture_output=True, text=True, env=env, cwd=REPO)
                if proc.returncode != 0:
                    raise RuntimeError(f"memory worker ({w}) failed:\n{proc.stderr[-4000:]}")
                results[w].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def measure_memory(b: Bench) -> Dict:
    """Peak memory increase of one end-to-end eval forward (CPU: RSS in a fresh subprocess; CUDA: allocator)."""
    a = b.args
    inputs = _strip(_single_inputs(b)[:1])
    if b.device.startswith("cuda"):
        values = {w: [] for w in b.models}
        with torch.no_grad():
            for w, m in b.models.items():
                m(inputs)  # warm-up
            for _ in range(a.reps):
                for w, m in b.models.items():
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                    m(inputs)
                    torch.cuda.synchronize()
                    values[w].append(torch.cuda.max_memory_allocated() - before)
        method = "torch.cuda.max_memory_allocated() minus memory_allocated() before, after one warm-up forward"
        reps, rss = a.reps, None
    else:
        reps = max(1, min(a.reps, 3))  # deterministic up to allocator noise: a few runs suffice
        runs = _memory_cpu(b, reps)
        values = {w: [r["peak_increase_bytes"] for r in runs[w]] for w in b.models}
        rss = {w: statistics.median(r["rss_before_bytes"] for r in runs[w]) / MIB for w in b.models}
        method = (runs["ours"][0]["method"] + "; one fresh subprocess per model and repetition, one warm-up forward, "
                  "MALLOC_MMAP_THRESHOLD_=131072")
    med = {w: statistics.median(v) / MIB for w, v in values.items()}
    samples = {w: [x / MIB for x in v] for w, v in values.items()}
    return {"memory": _entry("peak memory increase of one eval forward (1 image)", med["ours"], med["detectron2"], "MiB",
                             reps, 1, samples=samples, method=method, rss_before_mib=rss)}


def measure_torchvision(b: Bench) -> Dict:
    """End-to-end eval latency of the plugin's model against torchvision's ``fasterrcnn_resnet50_fpn``."""
    a = b.args
    inputs = _single_inputs(b)
    if a.images:
        min_size, max_size = b.cfg_ref.INPUT.MIN_SIZE_TEST, b.cfg_ref.INPUT.MAX_SIZE_TEST
    else:  # the random images are already at the test size: torchvision must keep it
        min_size, max_size = min(a.size), max(a.size)
    num_props = b.cfg_ref.MODEL.RPN.POST_NMS_TOPK_TEST
    tv = build_torchvision_model(a, min_size, max_size, num_props)
    bgr = b.cfg_ref.INPUT.FORMAT == "BGR"
    tv_inputs = [(x["image"].flip(0) if bgr else x["image"]) / 255.0 for x in inputs]  # torchvision: RGB in [0, 1]
    state = {"i": 0}

    def tv_call():
        x = tv_inputs[state["i"] % len(tv_inputs)]
        state["i"] += 1
        return tv([x])

    counts = {"ours": [], "torchvision": []}
    hooks = [_count_proposals(b.ours.proposal_generator, counts["ours"]),
             _count_proposals(tv.rpn, counts["torchvision"], torchvision_rpn=True)]
    try:
        with torch.no_grad():
            fns = {"ours": (lambda nxt=_cycler(inputs): b.ours(nxt())), "torchvision": tv_call}
            samples = {}
            t = timeit(fns, a.reps, a.warmup, b.device, samples)
    finally:
        for h in hooks:
            h.remove()
    b.proposal_counts["torchvision/ours"] = counts["ours"]
    b.proposal_counts["torchvision/torchvision"] = counts["torchvision"]
    del tv
    return {"torchvision": _entry("end-to-end eval latency per image vs torchvision `fasterrcnn_resnet50_fpn`",
                                  t["ours"], t["torchvision"], "s", a.reps, a.warmup, reference_name="torchvision",
                                  samples=samples, proposals_per_image=counts,
                                  torchvision_min_max_size=[min_size, max_size])}


MEASURE = {
    "neck": measure_neck, "anchors": measure_anchors, "pooler": measure_pooler, "box_head": measure_box_head,
    "end_to_end": measure_end_to_end, "train": measure_train, "memory": measure_memory, "torchvision": measure_torchvision,
}


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _memory_allocator(args) -> str:
    """Applies ``--keep-freed-memory``; says which memory allocator settings the figures were taken with
    (CPU times depend on them: with glibc's defaults every forward page-faults its large blocks anew)."""
    if args.keep_freed_memory:
        return keep_freed_cpu_memory()
    choice = allocator_choice()
    return f"memory allocator: as set in the environment ({choice})" if choice else "memory allocator: the C library's defaults"


def environment(b: Bench) -> Dict:
    """Versions, device, threads, inputs."""
    import torchvision

    device_name = torch.cuda.get_device_name(0) if b.device.startswith("cuda") else (platform.processor() or platform.machine())
    if not b.device.startswith("cuda"):
        try:
            with open("/proc/cpuinfo") as f:
                device_name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    images, _ = b.batch("detectron2")
    with torch.no_grad():
        blocked = _blocked_layout_active(b.ours.backbone, images.tensor)
    return {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__, "fpn_plugin": fpn_plugin.__version__,
        "device": b.device, "device_name": device_name, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "config": b.config_names[0], "reference_config": b.config_names[1],
        "weights": b.args.weights or "random, RPN head and box predictor scaled (make_trained_like)",
        "images": b.args.images or f"random {b.args.size[0]}x{b.args.size[1]}",
        "image_sizes": [list(s) for s in images.image_sizes], "padded_batch_size": list(images.tensor.shape[-2:]),
        "batch": b.args.batch, "reps": b.args.reps, "warmup": b.args.warmup, "seed": b.args.seed,
        "opts": list(b.args.opts),
        "cpu_blocked_layout_active": blocked,
        "cpu_low_precision_isa": None if b.device.startswith("cuda") else _cpu_low_precision_isa(),
        "memory_allocator": b.allocator,
    }


def _cpu_low_precision_isa() -> Dict[str, bool]:
    """Which CPU instructions for bfloat16/float16 arithmetic PyTorch detects here: with them oneDNN
    runs MODEL.FPN.AUTOCAST_DTYPE convolutions natively; without them it emulates them.
    Empty where this PyTorch has no such probe."""
    probes = {"AVX512-BF16": "_is_avx512_bf16_supported", "AMX tiles": "_is_amx_tile_supported",
              "AMX-FP16": "_is_amx_fp16_supported"}
    return {name: bool(getattr(torch.cpu, fn)()) for name, fn in probes.items() if hasattr(torch.cpu, fn)}


def _fmt(value: float, unit: str) -> str:
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if value >= 1.0:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def format_report(env: Dict, results: Dict, checks: Dict, counts: Dict, notes: List[str] = ()) -> str:
    """The header and the Markdown table."""
    lines = [
        "# fpn_plugin vs Detectron2",
        "",
        f"- fpn_plugin {env['fpn_plugin']} ({env['config']}) vs Detectron2 {env['detectron2']} ({env['reference_config']}); "
        f"torch {env['torch']}, torchvision {env['torchvision']}, Python {env['python']}",
        f"- device: {env['device']} ({env['device_name']}), threads: {env['threads']} (of {env['cpu_count']} CPUs)",
        f"- images: {env['images']}, sizes {env['image_sizes']} (padded {env['padded_batch_size']}); weights: {env['weights']}",
        f"- median of {env['reps']} repetitions after {env['warmup']} warm-up ones, the two models alternated (A, B, A, B, ...)",
    ]
    lines.append(f"- oneDNN blocked-layout inference (MODEL.FPN.CPU_BLOCKED_LAYOUT) active: {env.get('cpu_blocked_layout_active')}")
    lines.append(f"- {env['memory_allocator']}")
    if env.get("cpu_low_precision_isa"):
        isa = ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in env["cpu_low_precision_isa"].items())
        lines.append(f"- CPU instructions for MODEL.FPN.AUTOCAST_DTYPE (bfloat16/float16 convolutions): {isa}")
    if env.get("opts"):
        # Plugin-only keys (MODEL.FPN.AUTOCAST_DTYPE, CHANNELS_LAST) leave Detectron2's model in float32, NCHW.
        lines.append(f"- config overrides (both models; Detectron2's components ignore the plugin's keys): {' '.join(map(str, env['opts']))}")
    for key, value in counts.items():
        lines.append(f"- RPN proposals per image, {key}: {_summarise(value)}")
    for key, value in checks.items():
        lines.append(f"- check: {key} = {value:.3g}")
    lines += [f"- {note}" for note in notes]
    lines += ["", "| measurement | fpn_plugin | Detectron2 | ratio |", "|---|---:|---:|---:|"]
    for entry in results.values():
        ref = entry[entry["reference"]]
        ref_text = _fmt(ref, entry["unit"]) + (" (torchvision)" if entry["reference"] == "torchvision" else "")
        ratio = entry["ratio"]
        ratio_text = f"{ratio:.2f}" if not math.isfinite(ratio) or ratio >= 0.1 else f"{ratio:.2g}"
        lines.append(f"| {entry['label']} | {_fmt(entry['ours'], entry['unit'])} | {ref_text} | {ratio_text} |")
    lines += ["", "ratio = fpn_plugin / reference (< 1: fpn_plugin is faster or smaller)."]
    return "\n".join(lines)


def _summarise(values) -> str:
    if not values:
        return "-"
    if len(set(values)) == 1:
        return f"{values[0]} (x{len(values)})"
    return f"median {statistics.median(values):g}, min {min(values)}, max {max(values)}"


def _finite(obj):
    """JSON-safe copy (NaN/inf -> None)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args._worker:
        memory_worker(args._worker)
        return {}
    torch.set_num_threads(args.threads)
    b = Bench(args)
    results: Dict[str, Dict] = {}
    for name in MEASUREMENTS:
        if name in args.only:
            print(f"... {name}", file=sys.stderr, flush=True)
            results.update(MEASURE[name](b))
    b.proposals()  # the batch's RPN proposal counts are always reported
    env = environment(b)
    target = b.cfg_ref.MODEL.RPN.POST_NMS_TOPK_TEST
    fewest = min((min(v) for v in b.proposal_counts.values() if v), default=target)
    notes = []
    if fewest < target // 2:
        notes.append(f"WARNING: the RPN yields as few as {fewest} proposals per image (test-time target {target}); "
                     "the RoI-head part of the times is not representative of a trained detector.")
    report = format_report(env, results, b.checks, b.proposal_counts, notes)
    print(report)
    out = {"environment": env, "measurements": results, "checks": b.checks, "proposal_counts": b.proposal_counts,
           "notes": notes}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(_finite(out), f, indent=2)
    return out


if __name__ == "__main__":
    main()
