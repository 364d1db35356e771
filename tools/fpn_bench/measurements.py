"""The benchmark's measurements (``--only`` names); each returns ``{key: record}`` (see
:func:`.timing.entry`), times in seconds, the plugin's model against Detectron2's.

``neck``         ``model.backbone(images.tensor)`` on the batch (bottom-up + FPN); also the
                 bottom-up network alone, as the backbone runs it, and the FPN layers alone (the
                 bottom-up outputs replayed from a cache).
``anchors``      the anchor generator on the RPN's feature maps, called again and again with the
                 same feature sizes (as in inference on same-sized images).
``pooler``       the box RoI pooler on the batch's P2-P5: ``--num-rois`` RoIs per image in
                 eval/no-grad, and ``--train-rois`` RoIs per image forward + backward. RoIs are
                 the model's own RPN proposals (topped up with random boxes if too few). The two
                 poolers' outputs on the same features and RoIs are compared.
``box_head``     ``box_predictor(box_head(pooled))`` on the pooled test RoIs (eval, no grad).
``end_to_end``   ``model([{"image", "height", "width"}])``, one image, eval, no grad.
``end_to_end_batch``  ``model(batch)``: the ``--batch`` images in one call, eval, no grad; also
                 as images per second (throughput).
``train``        one training iteration at batch ``--batch``: forward (train mode, synthetic
                 ground truth), backward, SGD step, inside an ``EventStorage``.
``memory``       peak memory of one eval forward (:mod:`.memory`).
``torchvision``  end-to-end eval latency of the plugin's model against torchvision's
                 ``fasterrcnn_resnet50_fpn`` (random weights, RPN head scaled likewise, same
                 number of proposals and image size) as a second reference.
"""

import copy
from typing import Callable, Dict, List

import torch
from torch import nn

from fpn_plugin.accel.autocast import InferenceAutocast
from fpn_plugin.accel.blocked_layout import BlockedLayoutNeck, resnet_blocked_forward
from fpn_plugin.accel.channels_last import ChannelsLast

from .bench import Bench
from .inputs import cycler, model_inputs, synthetic_targets
from .memory import measure_memory
from .models import build_torchvision_model
from .timing import timed_entry

__all__ = [
    "bottom_up_input",
    "blocked_layout_active",
    "bottom_up_call",
    "measure_neck",
    "measure_anchors",
    "measure_pooler",
    "measure_box_head",
    "measure_end_to_end",
    "measure_end_to_end_batch",
    "measure_train",
    "measure_torchvision",
    "MEASURE",
]


def bottom_up_input(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The bottom-up network's input as ``backbone`` passes it: ``x`` (N, 3, H, W), made
    channels-last where the backbone is :class:`ChannelsLast` (``MODEL.ACCEL.CHANNELS_LAST``)."""
    if isinstance(backbone, ChannelsLast):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def blocked_layout_active(backbone: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``backbone`` runs ``x`` (N, 3, H, W) in oneDNN's blocked layout
    (``MODEL.ACCEL.CPU_BLOCKED_LAYOUT``); False for a backbone without that strategy. Call under
    ``torch.no_grad()``, as the path is taken there only."""
    return isinstance(backbone, BlockedLayoutNeck) and backbone.takes_blocked_path(x)


def bottom_up_call(backbone: nn.Module, x: torch.Tensor) -> Callable[[], Dict[str, torch.Tensor]]:
    """A callable running ``backbone``'s bottom-up network on ``x`` as ``backbone`` runs it, giving
    ``{name: (N, C, H/s, W/s) NCHW tensor}``: in oneDNN's blocked layout where the backbone takes
    that path (outputs converted back, as if returned), under autocast where the backbone is
    :class:`InferenceAutocast` in eval, else as it is. Call it under ``torch.no_grad()``."""
    if blocked_layout_active(backbone, x):
        # What the neck's ResNet computes inside the neck's forward (BlockedLayoutResNet).
        return lambda: {
            k: v.to_dense() for k, v in resnet_blocked_forward(backbone.bottom_up, x).items()
        }
    if isinstance(backbone, InferenceAutocast) and not backbone.training:

        def call():
            with torch.autocast(x.device.type, dtype=backbone.autocast_dtype):
                return backbone.bottom_up(x)

        return call
    return lambda: backbone.bottom_up(x)


class _Replay(nn.Module):
    """Stands in for a bottom-up network, returning precomputed outputs (FPN layers timed alone)."""

    def __init__(self, outputs: Dict[str, torch.Tensor]):
        super().__init__()
        self.outputs = outputs

    def forward(self, x):
        return self.outputs


_NECK_LABELS = {
    "bottom_up": "bottom-up ResNet alone (C2-C5)",
    "fpn_layers": "FPN layers alone (laterals, top-down, 3x3 outputs, P6), C2-C5 given",
    "neck": "neck: `backbone(images.tensor)` = bottom-up + FPN",
}


def measure_neck(b: Bench) -> Dict:
    """``backbone(images.tensor)`` (bottom-up + FPN), the bottom-up alone, the FPN layers alone."""
    o = b.options
    images = {w: b.batch(w)[0].tensor for w in b.models}
    backbones = {w: m.backbone for w, m in b.models.items()}
    out = {}
    with torch.no_grad():
        fns = {
            "bottom_up": {
                w: bottom_up_call(bb, bottom_up_input(bb, images[w])) for w, bb in backbones.items()
            },
            "neck": {w: (lambda bb=bb, x=images[w]: bb(x)) for w, bb in backbones.items()},
        }
        cached = {w: bb.bottom_up(bottom_up_input(bb, images[w])) for w, bb in backbones.items()}
        originals = {w: bb.bottom_up for w, bb in backbones.items()}
        for key in ("bottom_up", "fpn_layers", "neck"):
            label = f"{_NECK_LABELS[key]}, batch {o.batch}"
            if key == "fpn_layers":
                for w, bb in backbones.items():
                    bb.bottom_up = _Replay(cached[w])
                try:
                    # fns["neck"] now runs the FPN layers on the replayed bottom-up outputs.
                    out[key] = timed_entry(label, fns["neck"], o.reps, o.warmup)
                finally:
                    for w, bb in backbones.items():
                        bb.bottom_up = originals[w]
            else:
                out[key] = timed_entry(label, fns[key], o.reps, o.warmup)
    return out


def measure_anchors(b: Bench) -> Dict:
    """The anchor generator on the RPN feature maps, called repeatedly with the same sizes."""
    o = b.options
    fns = {}
    for w, m in b.models.items():
        _, features = b.batch(w)
        feats = [features[f] for f in m.proposal_generator.in_features]
        fns[w] = lambda gen=m.proposal_generator.anchor_generator, f=feats: gen(f)
    with torch.no_grad():
        num = sum(len(x) for x in fns["ours"]())
        label = f"anchor generator, {num} anchors (same sizes every call)"
        return {"anchors": timed_entry(label, fns, o.reps, o.warmup, num_anchors=num)}


def measure_pooler(b: Bench) -> Dict:
    """Box RoI pooler: test RoIs in eval/no grad, training RoIs forward + backward; agreement."""
    o = b.options
    poolers = {w: m.roi_heads.box_pooler for w, m in b.models.items()}
    feats = {w: b.pooler_features(w) for w in b.models}
    test_boxes, test_topped = b.rois(b.num_rois, 0)
    train_boxes, train_topped = b.rois(b.train_rois, 1)
    box_head_cfg = b.cfg_ref.MODEL.ROI_BOX_HEAD
    pooler_desc = f"{box_head_cfg.POOLER_TYPE}, sampling {box_head_cfg.POOLER_SAMPLING_RATIO}"
    out = {}

    with torch.no_grad():
        # Agreement: both poolers on the very same features and RoIs.
        same = feats["detectron2"]
        pooled = {w: p(same, test_boxes) for w, p in poolers.items()}
        diff = (pooled["ours"] - pooled["detectron2"]).abs().max().item()
        scale = pooled["detectron2"].abs().max().item()
        b.cache["pooled"] = pooled
        # Random-weight R50 features reach thousands, where float32 rounding alone is ~1e-3: the
        # scale-free figure is the difference relative to the largest pooled value.
        b.checks["pooler_max_abs_diff"] = diff
        b.checks["pooler_max_rel_diff"] = diff / scale if scale > 0 else diff
        b.checks["pooler_max_abs_value"] = scale
        out["pooler_test"] = timed_entry(
            f"RoI pooler, eval: {o.batch}x{b.num_rois} RoIs ({pooler_desc})",
            {w: (lambda p=p, f=feats[w]: p(f, test_boxes)) for w, p in poolers.items()},
            o.reps,
            o.warmup,
            rois_per_image=b.num_rois,
            random_rois_added=test_topped,
            max_abs_diff=diff,
            max_abs_value=scale,
            max_rel_diff=b.checks["pooler_max_rel_diff"],
        )

    # Training: forward + backward w.r.t. the features.
    leaves = {w: [f.detach().clone().requires_grad_(True) for f in feats[w]] for w in b.models}
    g = torch.Generator().manual_seed(o.seed + 2)
    num = sum(len(x) for x in train_boxes)
    channels = feats["ours"][0].shape[1]
    grad_out = torch.randn((num, channels) + tuple(poolers["ours"].output_size), generator=g).to(
        b.device
    )

    def step(w):
        for f in leaves[w]:
            f.grad = None
        poolers[w](leaves[w], train_boxes).backward(grad_out)

    for w in b.models:
        step(w)
    grads = {w: [f.grad for f in leaves[w]] for w in b.models}
    grad_diff = max((x - y).abs().max().item() for x, y in zip(grads["ours"], grads["detectron2"]))
    b.checks["pooler_grad_max_abs_diff"] = grad_diff
    out["pooler_train"] = timed_entry(
        f"RoI pooler, train: {o.batch}x{b.train_rois} RoIs, forward + backward",
        {w: (lambda w=w: step(w)) for w in b.models},
        o.reps,
        o.warmup,
        rois_per_image=b.train_rois,
        random_rois_added=train_topped,
        grad_max_abs_diff=grad_diff,
    )
    return out


def measure_box_head(b: Bench) -> Dict:
    """``box_predictor(box_head(pooled))`` on the pooled test RoIs, eval, no grad."""
    o = b.options
    if "pooled" not in b.cache:
        test_boxes, _ = b.rois(b.num_rois, 0)
        with torch.no_grad():
            b.cache["pooled"] = {
                w: m.roi_heads.box_pooler(b.pooler_features(w), test_boxes)
                for w, m in b.models.items()
            }
    pooled = b.cache["pooled"]
    fns = {
        w: (lambda h=m.roi_heads, x=pooled[w]: h.box_predictor(h.box_head(x)))
        for w, m in b.models.items()
    }
    label = f"box head + predictor on {o.batch}x{b.num_rois} pooled RoIs"
    with torch.no_grad():
        return {"box_head": timed_entry(label, fns, o.reps, o.warmup)}


def count_proposals(module: nn.Module, counts: List[int], torchvision_rpn: bool = False):
    """Forward hook on an RPN appending to ``counts`` the number of proposals per image it returns;
    returns the hook's handle."""

    def hook(_mod, _inp, output):
        props = output[0]
        counts.extend(int(p.shape[0]) if torchvision_rpn else len(p) for p in props)

    return module.register_forward_hook(hook)


def measure_end_to_end(b: Bench) -> Dict:
    """``model([{"image", "height", "width"}])`` per image, eval, no grad; proposals counted."""
    o = b.options
    inputs = b.single_inputs()
    counts = {w: [] for w in b.models}
    hooks = [count_proposals(m.proposal_generator, counts[w]) for w, m in b.models.items()]
    try:
        with torch.no_grad():
            fns = {w: (lambda m=m, nxt=cycler(inputs): m(nxt())) for w, m in b.models.items()}
            record = timed_entry(
                "end-to-end eval latency per image",
                fns,
                o.reps,
                o.warmup,
                proposals_per_image=counts,  # filled by the hooks while timed
            )
    finally:
        for h in hooks:
            h.remove()
    for w in b.models:
        b.proposal_counts[f"end_to_end/{w}"] = counts[w]
    return {"end_to_end": record}


def measure_end_to_end_batch(b: Bench) -> Dict:
    """``model(batch)`` with the ``--batch`` images in one call, eval, no grad: the time per
    batch, and ``images_per_second`` of each model."""
    o = b.options
    inputs = model_inputs(b.batch_inputs)
    label = f"end-to-end eval, batch {o.batch} in one call"
    with torch.no_grad():
        fns = {w: (lambda m=m: m(inputs)) for w, m in b.models.items()}
        record = timed_entry(label, fns, o.reps, o.warmup, batch=o.batch)
    record["images_per_second"] = {w: o.batch / record[w] for w in b.models}
    return {"end_to_end_batch": record}


def measure_train(b: Bench) -> Dict:
    """One training iteration at batch ``--batch``: forward (train mode), backward, SGD step."""
    from detectron2.utils.events import EventStorage

    o = b.options
    inputs = synthetic_targets(b.batch_inputs, b.cfg_ref.MODEL.ROI_HEADS.NUM_CLASSES, o.seed + 3)
    # Copies: the eval models keep their weights for the measurements after this one.
    models = {w: copy.deepcopy(m).train() for w, m in b.models.items()}
    optims = {
        w: torch.optim.SGD(
            [p for p in m.parameters() if p.requires_grad], lr=1e-5, momentum=0.9, weight_decay=1e-4
        )
        for w, m in models.items()
    }
    counts = {w: [] for w in models}
    hooks = [count_proposals(m.proposal_generator, counts[w]) for w, m in models.items()]

    def step(w):
        losses = models[w](inputs)
        loss = sum(losses.values())
        optims[w].zero_grad(set_to_none=True)
        loss.backward()
        optims[w].step()

    label = f"training iteration, batch {o.batch} (forward + backward + SGD step)"
    try:
        with EventStorage(0):
            record = timed_entry(
                label, {w: (lambda w=w: step(w)) for w in models}, o.reps, o.warmup
            )
    finally:
        for h in hooks:
            h.remove()
    for w in models:
        b.proposal_counts[f"train/{w}"] = counts[w]
    return {"train": record}


def measure_torchvision(b: Bench) -> Dict:
    """End-to-end eval latency, the plugin's model vs torchvision's ``fasterrcnn_resnet50_fpn``."""
    o = b.options
    inputs = b.single_inputs()
    if o.images:
        min_size, max_size = b.cfg_ref.INPUT.MIN_SIZE_TEST, b.cfg_ref.INPUT.MAX_SIZE_TEST
    else:  # the random images are already at the test size: torchvision must keep it
        min_size, max_size = min(o.size), max(o.size)
    tv = build_torchvision_model(o, min_size, max_size, b.cfg_ref.MODEL.RPN.POST_NMS_TOPK_TEST)
    bgr = b.cfg_ref.INPUT.FORMAT == "BGR"
    # torchvision takes RGB in [0, 1].
    tv_inputs = [(x["image"].flip(0) if bgr else x["image"]) / 255.0 for x in inputs]
    state = {"i": 0}

    def tv_call():
        x = tv_inputs[state["i"] % len(tv_inputs)]
        state["i"] += 1
        return tv([x])

    counts = {"ours": [], "torchvision": []}
    hooks = [
        count_proposals(b.ours.proposal_generator, counts["ours"]),
        count_proposals(tv.rpn, counts["torchvision"], torchvision_rpn=True),
    ]
    try:
        with torch.no_grad():
            record = timed_entry(
                "end-to-end eval latency per image vs torchvision `fasterrcnn_resnet50_fpn`",
                {"ours": (lambda nxt=cycler(inputs): b.ours(nxt())), "torchvision": tv_call},
                o.reps,
                o.warmup,
                reference_name="torchvision",
                proposals_per_image=counts,  # filled by the hooks while timed
                torchvision_min_max_size=[min_size, max_size],
            )
    finally:
        for h in hooks:
            h.remove()
    b.proposal_counts["torchvision/ours"] = counts["ours"]
    b.proposal_counts["torchvision/torchvision"] = counts["torchvision"]
    return {"torchvision": record}


#: name (``--only``, see ``MEASUREMENTS`` for the order) -> measurement.
MEASURE = {
    "neck": measure_neck,
    "anchors": measure_anchors,
    "pooler": measure_pooler,
    "box_head": measure_box_head,
    "end_to_end": measure_end_to_end,
    "end_to_end_batch": measure_end_to_end_batch,
    "train": measure_train,
    "memory": measure_memory,
    "torchvision": measure_torchvision,
}
