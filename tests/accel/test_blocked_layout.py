"""oneDNN blocked-layout CPU inference (MODEL.ACCEL.CPU_BLOCKED_LAYOUT): bit-identical to the NCHW
path."""

import pytest
import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone, build_model

import fpn_plugin.accel.blocked_layout as blocked_module
from fpn_plugin.accel import AccelOptions, accelerate
from fpn_plugin.accel.blocked_layout import (
    BlockedLayoutNeck,
    blocked_layout_matches,
    resnet_blocked_forward,
    supports_blocked_layout,
)
from fpn_plugin.utils.testing import make_trained_like
from tests.conftest import plugin_cfg

BLOCKED = AccelOptions(cpu_blocked_layout=True)


def _realistic_statistics(model: nn.Module, seed: int = 0) -> None:
    """Random norm statistics near identity (so 50 layers neither explode nor vanish), but no
    affine map is trivial: every one is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                c = m.running_mean.numel()
                m.weight.copy_(1 + 0.1 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.9 + 0.2 * torch.rand(c, generator=g))


@pytest.fixture(scope="module")
def r50_neck():
    """The R50 neck with realistic statistics, and the blocked-layout strategy applied."""
    torch.manual_seed(0)
    neck = build_backbone(plugin_cfg()).eval()
    _realistic_statistics(neck)
    accelerate(neck, BLOCKED)
    assert isinstance(neck, BlockedLayoutNeck)
    return neck


def _count_blocked_forwards(monkeypatch) -> "_Counter":
    """A counter of the ResNet's oneDNN forwards, installed after the once-per-process self-checks
    (which run that forward themselves) are done."""
    blocked_layout_matches()
    blocked_layout_matches(folded=True)
    counter = _Counter(blocked_module.resnet_blocked_forward)
    monkeypatch.setattr(blocked_module, "resnet_blocked_forward", counter)
    return counter


class _Counter:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _neck_outputs(neck, x, blocked: bool, monkeypatch):
    """``neck(x)`` without gradients (``neck`` accelerated), through the blocked path or, with that
    path turned off, the plain NCHW one; checks which path ran."""
    with monkeypatch.context() as m:
        counter = _count_blocked_forwards(m)
        if not blocked:
            m.setattr(BlockedLayoutNeck, "takes_blocked_path", lambda self, x: False)
        with torch.no_grad():
            out = neck(x)
    assert counter.calls == (1 if blocked else 0)
    return out


def test_self_check_passes_on_this_machine():
    # CI runs here: if this fails the fast path silently falls back, and the speed figures are off.
    assert blocked_layout_matches()
    assert blocked_layout_matches(folded=True)


@pytest.mark.parametrize("shape", [(1, 3, 320, 480), (2, 3, 256, 384)])
def test_r50_neck_is_bit_identical(r50_neck, shape, monkeypatch):
    x = torch.randn(*shape) * 60
    dense = _neck_outputs(r50_neck, x, False, monkeypatch)
    blocked = _neck_outputs(r50_neck, x, True, monkeypatch)
    assert list(dense) == list(blocked) == ["p2", "p3", "p4", "p5", "p6"]
    for k in dense:
        assert blocked[k].layout == torch.strided and blocked[k].is_contiguous()
        assert torch.equal(dense[k], blocked[k]), k


def test_bottom_up_bit_identical_with_one_thread_and_a_tiny_image(r50_neck):
    # With one thread, PyTorch runs small 1x1 convolutions on its native kernel, not oneDNN: those
    # must run on NCHW here too, or their sums differ.
    resnet = r50_neck.bottom_up
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(1, 3, 64, 96) * 60
        with torch.no_grad():
            dense = resnet(x)
            blocked = resnet_blocked_forward(resnet, x)
    finally:
        torch.set_num_threads(threads)
    for k in dense:
        assert torch.equal(dense[k], blocked[k].to_dense()), k


def test_cached_weights_follow_load_state_dict(monkeypatch):
    torch.manual_seed(0)
    neck = accelerate(build_backbone(plugin_cfg()).eval(), BLOCKED)
    x = torch.randn(1, 3, 128, 192) * 60
    _neck_outputs(neck, x, True, monkeypatch)  # fills the per-conv caches
    _realistic_statistics(neck, seed=1)
    state = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() and k.endswith("weight") else v
        for k, v in neck.state_dict().items()
    }
    neck.load_state_dict(state)
    dense = _neck_outputs(neck, x, False, monkeypatch)
    blocked = _neck_outputs(neck, x, True, monkeypatch)
    for k in dense:
        assert torch.equal(dense[k], blocked[k]), k


def test_full_model_uses_it_and_outputs_are_identical(monkeypatch):
    cfg = plugin_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    make_trained_like(model)
    _realistic_statistics(model)
    image = torch.rand(3, 320, 448) * 255
    inputs = [{"image": image, "height": 320, "width": 448}]
    counter = _count_blocked_forwards(monkeypatch)
    with torch.no_grad():
        ref = model(inputs)[0]["instances"]
        accelerate(model, AccelOptions(cpu_blocked_layout=True, roi_align="per_level"))
        got = model(inputs)[0]["instances"]
    assert counter.calls == 1
    assert len(ref) > 0
    assert torch.equal(ref.pred_boxes.tensor, got.pred_boxes.tensor)
    assert torch.equal(ref.scores, got.scores) and torch.equal(ref.pred_classes, got.pred_classes)


def test_not_taken_where_it_does_not_apply(r50_neck, monkeypatch):
    x = torch.randn(1, 3, 128, 192)
    counter = _count_blocked_forwards(monkeypatch)
    r50_neck(x)  # gradients enabled
    with torch.no_grad():
        r50_neck.train()
        try:
            r50_neck(x)
        finally:
            r50_neck.eval()
        assert not r50_neck.takes_blocked_path(x.double())  # float32 only
        assert r50_neck.takes_blocked_path(x)
        r50_neck.bottom_up(x)  # the bottom-up called on its own returns NCHW tensors
    assert counter.calls == 0
    cfg = plugin_cfg()
    cfg.MODEL.ACCEL.CHANNELS_LAST = True
    assert not isinstance(accelerate(build_backbone(cfg), cfg), BlockedLayoutNeck)
    cfg = plugin_cfg()
    cfg.MODEL.ACCEL.CPU_BLOCKED_LAYOUT = False
    assert not isinstance(accelerate(build_backbone(cfg), cfg), BlockedLayoutNeck)


def test_a_callers_autocast_is_respected_and_does_not_spoil_the_self_check(
    r50_neck, monkeypatch, caplog
):
    """Inside ``torch.autocast("cpu", bfloat16)`` the neck runs the module path (its convolutions in
    bfloat16, as the caller asked), not the float32 blocked path; and a self-check first run inside
    such a region still compares float32 with float32 (before, it compared bfloat16 with float32,
    failed, and turned the blocked path off for the whole process with a false warning)."""
    x = torch.randn(1, 3, 128, 192) * 60
    counter = _count_blocked_forwards(monkeypatch)
    blocked_layout_matches.cache_clear()
    try:
        with (
            torch.no_grad(),
            torch.autocast("cpu", dtype=torch.bfloat16),
            caplog.at_level("WARNING"),
        ):
            assert blocked_layout_matches() and blocked_layout_matches(folded=True)
            counter.calls = 0  # the self-checks' own forwards
            assert not r50_neck.takes_blocked_path(x)
            features = r50_neck(x)
        assert "does not reproduce" not in caplog.text
        assert counter.calls == 0 and {v.dtype for v in features.values()} == {torch.bfloat16}
        with torch.no_grad():
            assert r50_neck.takes_blocked_path(x)  # outside the region: the blocked path again
    finally:
        blocked_layout_matches.cache_clear()


def test_folded_r50_neck_is_bit_identical_to_folded_nchw(r50_neck, monkeypatch):
    # MODEL.ACCEL.FOLD_FROZEN_BN: the blocked path convolves with the module's own folded weights
    # and bias, so it equals the folded NCHW path bit for bit, runs no batch-norm pass, and stays
    # within float rounding of the unfolded (Detectron2) features.
    cfg = plugin_cfg()
    cfg.MODEL.ACCEL.FOLD_FROZEN_BN = True
    folded = build_backbone(cfg).eval()
    folded.load_state_dict(r50_neck.state_dict())
    accelerate(folded, cfg)
    assert isinstance(folded, BlockedLayoutNeck)
    x = torch.randn(1, 3, 256, 384) * 60
    with torch.no_grad():
        assert folded.takes_blocked_path(x)  # runs the once-per-process self-checks before counting
    batch_norms = _Counter(torch.batch_norm)
    monkeypatch.setattr(torch, "batch_norm", batch_norms)
    blocked = _neck_outputs(folded, x, True, monkeypatch)
    assert batch_norms.calls == 0
    dense = _neck_outputs(folded, x, False, monkeypatch)
    unfolded = _neck_outputs(r50_neck, x, False, monkeypatch)
    for k in dense:
        assert torch.equal(dense[k], blocked[k]), k
        scale = unfolded[k].abs().max()
        assert not torch.equal(unfolded[k], blocked[k]), k  # the statistics really are folded
        assert (unfolded[k] - blocked[k]).abs().max() <= 1e-5 * scale, k


def test_supported_bottom_ups():
    assert supports_blocked_layout(build_backbone(plugin_cfg()).bottom_up)
    assert supports_blocked_layout(build_backbone(plugin_cfg("configs/quickstart.yaml")).bottom_up)
    cfg = plugin_cfg()
    cfg.MODEL.RESNETS.NORM = "GN"
    assert not supports_blocked_layout(build_backbone(cfg).bottom_up)


def test_quickstart_backbone_with_trained_bn_is_bit_identical(monkeypatch):
    # The quickstart bottom-up: BasicBlocks with BatchNorm2d (eval, running statistics).
    torch.manual_seed(0)
    neck = build_backbone(plugin_cfg("configs/quickstart.yaml")).eval()
    _realistic_statistics(neck)
    accelerate(neck, BLOCKED)
    x = torch.randn(2, 3, 192, 256) * 60
    dense = _neck_outputs(neck, x, False, monkeypatch)
    blocked = _neck_outputs(neck, x, True, monkeypatch)
    for k in dense:
        assert torch.equal(dense[k], blocked[k]), k
