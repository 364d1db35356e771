"""The plugin's R50-FPN is Detectron2's faster_rcnn_R_50_FPN_1x: same parameters, same outputs."""
import torch

from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.poolers import ROIPooler

from fpn_plugin import FPNNeck, LevelMappingROIHeads, LevelMappingROIPooler, SharedAnchorGenerator


def _inputs():
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 800, 1216, generator=g) * 255, torch.rand(3, 768, 1088, generator=g) * 255]
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
    for k in f1:
        torch.testing.assert_close(f2[k], f1[k], rtol=1e-4, atol=1e-4)
    for a, b in zip(p1, p2):
        assert len(a) == len(b) == 1000  # a realistic proposal load
        torch.testing.assert_close(b.proposal_boxes.tensor, a.proposal_boxes.tensor, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.objectness_logits, a.objectness_logits, rtol=1e-4, atol=1e-4)
    for a, b in zip(d1, d2):
        assert len(a) == len(b) > 0
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-4)
        assert torch.equal(b.pred_classes, a.pred_classes)
        assert b.pred_levels.min() >= 2 and b.pred_levels.max() <= 5


def test_full_forward_matches_detectron2(r50_pair):
    """GeneralizedRCNN.forward (with postprocessing to the original image size) agrees too."""
    ref, ours, _ = r50_pair
    inputs = _inputs()[:1]
    inputs[0]["height"], inputs[0]["width"] = 480, 730  # rescaled output, as in evaluation
    with torch.no_grad():
        a = ref(inputs)[0]["instances"]
        b = ours(inputs)[0]["instances"]
    assert len(a) == len(b)
    torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.scores, a.scores, rtol=1e-4, atol=1e-4)
    assert torch.equal(b.pred_classes, a.pred_classes)


def test_components_are_built_like_detectron2s(r50_pair):
    """The plugin's anchor generator and pooler were built with the same settings as Detectron2's."""
    ref, ours, _ = r50_pair
    a_ref, a_ours = ref.proposal_generator.anchor_generator, ours.proposal_generator.anchor_generator
    assert isinstance(a_ref, DefaultAnchorGenerator)
    assert a_ours.strides == a_ref.strides and a_ours.offset == a_ref.offset
    for x, y in zip(a_ours.cell_anchors, a_ref.cell_anchors):
        assert torch.equal(x, y)
    p_ref, p_ours = ref.roi_heads.box_pooler, ours.roi_heads.box_pooler
    assert isinstance(p_ref, ROIPooler)
    assert (p_ours.min_level, p_ours.max_level) == (p_ref.min_level, p_ref.max_level)
    assert p_ours.output_size == tuple(p_ref.output_size)
    assert (p_ours.canonical_box_size, p_ours.canonical_level) == (p_ref.canonical_box_size, p_ref.canonical_level)


def _matched_fraction(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-3) -> float:
    """Fraction of the rows of ``a`` (boxes) that some row of ``b`` equals to ``tol``."""
    if len(a) == 0:
        return 1.0
    return ((a[:, None, :] - b[None, :, :]).abs().amax(dim=2) <= tol).any(dim=1).float().mean().item()


def test_channels_last_option_same_features_to_rounding(r50_pair):
    """MODEL.FPN.CHANNELS_LAST (opt-in) runs the bottom-up and the neck in NHWC: same parameters, and
    features equal up to float32 rounding. NHWC convolutions sum in another order, so near-tied
    proposals can swap places in the ranking (the same boxes, another order): outputs are not
    equal element by element to 1e-4, which is why the option is off by default."""
    from detectron2.modeling import build_model

    from tests.conftest import plugin_cfg

    ref, ours, _ = r50_pair
    cfg = plugin_cfg()
    cfg.MODEL.FPN.CHANNELS_LAST = True
    fast = build_model(cfg).eval()
    fast.load_state_dict(ref.state_dict(), strict=True)
    assert fast.backbone.fpn_output2.weight.is_contiguous(memory_format=torch.channels_last)
    inputs = _inputs()[:1]
    f1, p1, d1 = _run(ours, inputs)
    f2, p2, d2 = _run(fast, inputs)
    assert f2["p2"].is_contiguous(memory_format=torch.channels_last)
    for k in f1:
        # Rounding is relative to the features' scale (thousands, for un-normalised random weights).
        assert (f2[k] - f1[k]).abs().max() <= 1e-5 * f1[k].abs().max(), k
    proposals = _matched_fraction(p1[0].proposal_boxes.tensor, p2[0].proposal_boxes.tensor)
    detections = _matched_fraction(d1[0].pred_boxes.tensor, d2[0].pred_boxes.tensor)
    assert proposals >= 0.99 and detections >= 0.99, (proposals, detections)


def test_inside_a_callers_cpu_autocast_region_features_equal_detectron2s(r50_pair):
    """A user who wraps inference in ``torch.autocast("cpu", dtype=torch.bfloat16)`` gets what
    Detectron2's model gives there: bfloat16 convolutions (the float32 CPU fast path steps aside),
    features equal bit for bit, and finite detections from the whole model."""
    ref, ours, _ = r50_pair
    g = torch.Generator().manual_seed(2)
    inputs = [{"image": torch.rand(3, 480, 640, generator=g) * 255, "height": 480, "width": 640}]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        images = ref.preprocess_image(inputs)
        f_ref, f_ours = ref.backbone(images.tensor), ours.backbone(images.tensor)
        out = ours(inputs)[0]["instances"]
    for k in f_ref:
        assert f_ours[k].dtype == f_ref[k].dtype == torch.bfloat16, k
        assert torch.equal(f_ours[k], f_ref[k]), k
    assert len(out) > 0 and torch.isfinite(out.pred_boxes.tensor).all() and torch.isfinite(out.scores.float()).all()
