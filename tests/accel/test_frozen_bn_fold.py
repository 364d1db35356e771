"""MODEL.ACCEL.FOLD_FROZEN_BN: FrozenBatchNorm folded into the convolutions in eval, state_dict
untouched."""

import torch

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from fpn_plugin.accel import accelerate
from fpn_plugin.accel.frozen_bn_fold import FoldedFrozenBN
from tests.conftest import plugin_cfg


def _randomize_frozen_bn(model, seed):
    """Statistics like a trained model's (a fresh FrozenBN is the identity, which any folding
    passes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.weight.numel()
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def _tiny(fold):
    cfg = plugin_cfg("configs/quickstart.yaml")
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.ACCEL.FOLD_FROZEN_BN = fold
    cfg.MODEL.ACCEL.CPU_BLOCKED_LAYOUT = False  # the NCHW path, folded or not
    return accelerate(build_model(cfg), cfg).backbone


def test_folded_backbone_equals_unfolded_and_keeps_state_dict():
    torch.manual_seed(0)
    plain = _tiny(False).eval()
    _randomize_frozen_bn(plain, 1)
    folded = _tiny(True).eval()
    assert (
        sum(isinstance(m, FoldedFrozenBN) for m in folded.modules()) == 12
    )  # stem, 4 blocks x 2, 3 projection shortcuts
    state = plain.state_dict()
    folded.load_state_dict(state, strict=True)
    assert folded.state_dict().keys() == state.keys()
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(2)) * 50
    norms = [m for m in folded.modules() if isinstance(m, FrozenBatchNorm2d)]
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in norms]
    with torch.no_grad():
        a, b = plain(x), folded(x)
    assert not calls  # eval: no separate normalisation pass
    for k in a:
        scale = a[k].abs().max()
        assert (b[k] - a[k]).abs().max() <= 1e-5 * scale, k  # float rounding only
    for k, v in folded.state_dict().items():
        assert torch.equal(v, state[k]), k  # parameters and statistics untouched

    # New weights (load_state_dict copies in place) invalidate the folded cache.
    _randomize_frozen_bn(plain, 3)
    folded.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a, b = plain(x), folded(x)
    for k in a:
        assert (b[k] - a[k]).abs().max() <= 1e-5 * a[k].abs().max(), k

    # Training mode, and calls that need gradients, take the unfolded path.
    folded.train()
    folded(x)
    assert len(calls) == len(norms)
    folded.eval()
    calls.clear()
    y = folded(x.requires_grad_())
    assert len(calls) == len(norms)
    y["p2"].sum().backward()
    assert x.grad is not None
    for h in hooks:
        h.remove()
