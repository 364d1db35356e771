"""The plugin's R50-FPN is Detectron2's faster_rcnn_R_50_FPN_1x: same parameters, same outputs."""

import copy

import torch

from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.poolers import ROIPooler

from fpn_plugin import FPNNeck, LevelMappingROIHeads, LevelMappingROIPooler, SharedAnchorGenerator
from fpn_plugin.accel import accelerate
from fpn_plugin.accel.blocked_layout import BlockedLayoutNeck
from tests.conftest import build_parity_pair, plugin_cfg


def _inputs():
    g = torch.Generator().manual_seed(1)
    images = [
        torch.rand(3, 800, 1216, generator=g) * 255,
        torch.rand(3, 768, 1088, generator=g) * 255,
    ]
    return [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]


def _run(model, inputs):
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        detections, _ = model.roi_heads(images, features, proposals, None)
    return features, proposals, detections


def test_plugin_model_uses_plugin_components(r50_pair):
    _, ours, _ = r50_pair
    assert isinstance(ours.backbone, FPNNeck)
    assert isinstance(ours.proposal_generator.anchor_generator, SharedAnchorGenerator)
    assert isinstance(ours.roi_heads, LevelMappingROIHeads)
    assert isinstance(ours.roi_heads.box_pooler, LevelMappingROIPooler)
    # 15 anchor shapes: 3 ratios on each of P2..P6, one RPN head shared by all levels.
    assert ours.proposal_generator.anchor_generator.num_anchors == [3] * 5
    assert ours.backbone.output_shape().keys() == {"p2", "p3", "p4", "p5", "p6"}
    assert [s.stride for s in ours.backbone.output_shape().values()] == [4, 8, 16, 32, 64]


def test_detectron2_state_dict_loads_strictly(r50_pair):
    ref, ours, result = r50_pair
    assert not result.missing_keys and not result.unexpected_keys
    assert set(ref.state_dict()) == set(ours.state_dict())
    for (k1, v1), (k2, v2) in zip(ref.state_dict().items(), ours.state_dict().items()):
        assert k1 == k2 and v1.shape == v2.shape


def test_end_to_end_outputs_match_detectron2(r50_pair):
    ref, ours, _ = r50_pair
    inputs = _inputs()
    f1, p1, d1 = _run(ref, inputs)
    f2, p2, d2 = _run(ours, inputs)
    assert f1.keys() == f2.keys()
    for k in f1:  # the default execution strategies keep features and proposals bit-identical
        assert torch.equal(f2[k], f1[k]), k
    for a, b in zip(p1, p2):
        assert len(a) == len(b) == 1000  # a realistic proposal load
        assert torch.equal(b.proposal_boxes.tensor, a.proposal_boxes.tensor)
        assert torch.equal(b.objectness_logits, a.objectness_logits)
    for a, b in zip(d1, d2):  # and, with the RoI ops on several threads, detections too
        assert len(a) == len(b) > 0
        assert torch.equal(b.pred_boxes.tensor, a.pred_boxes.tensor)
        assert torch.equal(b.scores, a.scores)
        assert torch.equal(b.pred_classes, a.pred_classes)
        assert b.pred_levels.min() >= 2 and b.pred_levels.max() <= 5


def test_plain_model_equals_detectron2_bit_for_bit():
    """Without execution strategies (MODEL.ACCEL.ENABLED False) the plugin's model computes exactly
    what Detectron2's does: every feature, proposal and detection equal bit for bit."""
    ref, plain, _ = build_parity_pair(accelerated=False)
    inputs = _inputs()[:1]
    f1, p1, d1 = _run(ref, inputs)
    f2, p2, d2 = _run(plain, inputs)
    for k in f1:
        assert torch.equal(f2[k], f1[k]), k
    assert torch.equal(p2[0].proposal_boxes.tensor, p1[0].proposal_boxes.tensor)
    assert len(d1[0]) > 0
    for field in ("pred_boxes", "scores", "pred_classes"):
        a, b = d1[0].get(field), d2[0].get(field)
        assert torch.equal(getattr(b, "tensor", b), getattr(a, "tensor", a)), field


def test_full_forward_matches_detectron2(r50_pair):
    """GeneralizedRCNN.forward (with postprocessing to the original image size) agrees too."""
    ref, ours, _ = r50_pair
    inputs = _inputs()[:1]
    inputs[0]["height"], inputs[0]["width"] = 480, 730  # rescaled output, as in evaluation
    with torch.no_grad():
        a = ref(inputs)[0]["instances"]
        b = ours(inputs)[0]["instances"]
    assert len(a) == len(b)
    assert torch.equal(b.pred_boxes.tensor, a.pred_boxes.tensor)
    assert torch.equal(b.scores, a.scores)
    assert torch.equal(b.pred_classes, a.pred_classes)


def test_components_are_built_like_detectron2s(r50_pair):
    """The plugin's anchor generator and pooler were built with the same settings as
    Detectron2's."""
    ref, ours, _ = r50_pair
    a_ref, a_ours = (
        ref.proposal_generator.anchor_generator,
        ours.proposal_generator.anchor_generator,
    )
    assert isinstance(a_ref, DefaultAnchorGenerator)
    assert a_ours.strides == a_ref.strides and a_ours.offset == a_ref.offset
    for x, y in zip(a_ours.cell_anchors, a_ref.cell_anchors):
        assert torch.equal(x, y)
    p_ref, p_ours = ref.roi_heads.box_pooler, ours.roi_heads.box_pooler
    assert isinstance(p_ref, ROIPooler)
    assert (p_ours.min_level, p_ours.max_level) == (p_ref.min_level, p_ref.max_level)
    assert p_ours.output_size == tuple(p_ref.output_size)
    assert (p_ours.canonical_box_size, p_ours.canonical_level) == (
        p_ref.canonical_box_size,
        p_ref.canonical_level,
    )


def _matched_fraction(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-3) -> float:
    """Fraction of the rows of ``a`` (boxes) that some row of ``b`` equals to ``tol``."""
    if len(a) == 0:
        return 1.0
    return (
        ((a[:, None, :] - b[None, :, :]).abs().amax(dim=2) <= tol).any(dim=1).float().mean().item()
    )


def test_inside_a_callers_cpu_autocast_region_features_equal_detectron2s():
    """A user who wraps inference in ``torch.autocast("cpu", dtype=torch.bfloat16)`` gets what
    Detectron2's FPN gives there: bfloat16 convolutions (the float32 CPU fast path steps aside),
    features equal bit for bit, and finite detections from the whole model. The property does not
    depend on the network's size, so it is checked on the quickstart's narrow bottom-up (CPUs
    without bfloat16 instructions emulate them, slowly)."""
    cfg = plugin_cfg("configs/quickstart.yaml")
    torch.manual_seed(0)
    ours = accelerate(build_model(cfg).eval(), cfg)
    neck = ours.backbone
    ref = FPN(
        copy.deepcopy(neck.bottom_up),
        list(neck.in_features),
        cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
    ).eval()
    ref.load_state_dict(neck.state_dict())
    g = torch.Generator().manual_seed(2)
    inputs = [{"image": torch.rand(3, 256, 320, generator=g) * 255, "height": 256, "width": 320}]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        images = ours.preprocess_image(inputs)
        f_ref, f_ours = ref(images.tensor), neck(images.tensor)
        out = ours(inputs)[0]["instances"]
    assert isinstance(neck, BlockedLayoutNeck)  # the fast path is there, and stepped aside
    for k in f_ref:
        assert f_ours[k].dtype == f_ref[k].dtype == torch.bfloat16, k
        assert torch.equal(f_ours[k], f_ref[k]), k
    assert torch.isfinite(out.pred_boxes.tensor).all() and torch.isfinite(out.scores.float()).all()
