"""Scripting and tracing never change the user's eager model: its modules, their strategies and
its outputs are the same afterwards (TorchScript compiles plain copies)."""

from typing import Dict

import torch
from torch import nn

import detectron2.export  # noqa: F401  (makes Detectron2's ResNet scriptable)
from detectron2.modeling import build_backbone

from fpn_plugin.accel import AccelOptions, accelerate, plain_class, strategies_of
from fpn_plugin.accel.blocked_layout import BlockedLayoutNeck
from tests.conftest import plugin_cfg


class _Holder(nn.Module):
    """A plain module holding an accelerated neck: TorchScript puts what a child's
    ``__prepare_scriptable__`` returns into its parent, here the user's module."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.backbone(x)


def _state(model):
    """(module, its class, its strategies) of every module of ``model``, by name."""
    return {n: (m, type(m), strategies_of(m)) for n, m in model.named_modules()}


def test_scripting_and_tracing_leave_the_eager_model_and_its_strategies():
    torch.manual_seed(0)
    holder = accelerate(_Holder(build_backbone(plugin_cfg("configs/quickstart.yaml"))).eval())
    assert isinstance(holder.backbone, BlockedLayoutNeck)
    before = _state(holder)
    x = torch.randn(1, 3, 128, 192) * 60
    with torch.no_grad():
        ref = holder(x)
    for scripted in (torch.jit.script(holder), torch.jit.script(holder.backbone)):
        with torch.no_grad():
            out = scripted(x)
        for k in ref:
            assert torch.equal(out[k], ref[k]), k
    with torch.no_grad():
        torch.jit.trace(holder, x, strict=False)
    assert _state(holder) == before
    # The eager model still takes its fast path, and computes what it did.
    counts = []
    neck_cls = type(holder.backbone)
    take = neck_cls.takes_blocked_path
    neck_cls.takes_blocked_path = lambda self, x: counts.append(take(self, x)) or counts[-1]
    try:
        with torch.no_grad():
            out = holder(x)
    finally:
        neck_cls.takes_blocked_path = take
    assert counts == [True]
    for k in ref:
        assert torch.equal(out[k], ref[k]), k
    assert plain_class(type(holder)) is _Holder


def test_accelerate_marks_the_modules_above_a_strategy():
    torch.manual_seed(0)
    holder = accelerate(_Holder(build_backbone(plugin_cfg("configs/quickstart.yaml"))))
    marked = {n for n, m in holder.named_modules() if strategies_of(m)}
    assert "" in marked and "backbone" in marked
    assert repr(holder).startswith("_Holder(\n  (backbone): BlockedLayoutNeckFPNNeck(")
    plain = accelerate(
        _Holder(build_backbone(plugin_cfg("configs/quickstart.yaml"))), AccelOptions(enabled=False)
    )
    assert not any(strategies_of(m) for m in plain.modules())
