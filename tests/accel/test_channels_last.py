"""MODEL.ACCEL.CHANNELS_LAST: the backbone in NHWC memory layout, equal to NCHW to float
rounding."""

import torch

from detectron2.modeling import build_model

from fpn_plugin.accel import AccelOptions, accelerate
from tests.conftest import plugin_cfg
from tests.modeling.test_parity import _inputs, _matched_fraction, _run
from tests.modeling.test_path_aggregation import _pa_neck


def test_channels_last_option_same_features_to_rounding(r50_pair):
    """MODEL.ACCEL.CHANNELS_LAST (opt-in) runs the bottom-up and the neck in NHWC: same parameters,
    and features equal up to float32 rounding. NHWC convolutions sum in another order, so near-tied
    proposals can swap places in the ranking (the same boxes, another order): outputs are not
    equal element by element to 1e-4, which is why the option is off by default."""
    ref, ours, _ = r50_pair
    cfg = plugin_cfg()
    cfg.MODEL.ACCEL.CHANNELS_LAST = True
    fast = accelerate(build_model(cfg).eval(), cfg)
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


def test_channels_last_covers_the_new_convs():
    plain = _pa_neck(fuse_type="weighted")
    nhwc = accelerate(_pa_neck(fuse_type="weighted"), AccelOptions(channels_last=True))
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.pa_output3.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 128, 96)
    a, b = plain(x), nhwc(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
