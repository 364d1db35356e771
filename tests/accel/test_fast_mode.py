"""Opt-in inference fast mode: MODEL.ACCEL.AUTOCAST_DTYPE (mixed precision) with
MODEL.ACCEL.CHANNELS_LAST.

On CPU, bfloat16 autocast stands in for the GPU's float16: the same code path, checked for
being applied (convolutions run in the low precision in eval, not in training), float32 outputs,
and closeness to the float32 model with the same weights.
"""

import contextlib

import pytest
import torch

from detectron2.modeling import build_model

from fpn_plugin.accel import accelerate
from tests.conftest import plugin_cfg


def _tiny_pair():
    torch.manual_seed(0)
    cfg = plugin_cfg("configs/quickstart.yaml")
    ref = build_model(cfg).eval()
    cfg = plugin_cfg("configs/quickstart.yaml")
    cfg.MODEL.ACCEL.AUTOCAST_DTYPE = "bfloat16"
    cfg.MODEL.ACCEL.CHANNELS_LAST = True
    fast = accelerate(build_model(cfg).eval(), cfg)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


@contextlib.contextmanager
def stem_dtypes(model):
    """The dtypes of the stem convolution's outputs while the block runs: where autocast shows."""
    seen = []
    hook = model.backbone.bottom_up.stem.conv1.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype)
    )
    try:
        yield seen
    finally:
        hook.remove()


def assert_fast_mode_close(ref, fast, inputs, dtype, rel_tol):
    """``fast`` (``ref``'s weights with the fast mode) in eval: the convolutions run in
    ``dtype``, the features are float32 and channels-last, differ from ``ref``'s (so the mode is
    applied) by at most ``rel_tol`` of their scale, and the detections are finite. The CPU's
    bfloat16 and the GPU's float16 share this. Returns the preprocessed images."""
    with stem_dtypes(fast) as seen, torch.no_grad():
        images = ref.preprocess_image(inputs)
        f_ref = ref.backbone(images.tensor)
        f_fast = fast.backbone(images.tensor)
        out = fast(inputs)[0]["instances"]
    assert seen and set(seen) == {dtype}  # the convolutions ran in the low precision
    for k in f_ref:
        assert f_fast[k].dtype == torch.float32  # heads get float32, as without the option
        assert f_fast[k].is_contiguous(memory_format=torch.channels_last)
        scale, diff = f_ref[k].abs().max(), (f_fast[k] - f_ref[k]).abs().max()
        assert 0 < diff <= rel_tol * scale, (k, diff.item(), scale.item())
    assert (
        len(out) > 0
        and torch.isfinite(out.pred_boxes.tensor).all()
        and torch.isfinite(out.scores).all()
    )
    return images


def test_bfloat16_fast_mode_is_applied_and_close_to_float32():
    ref, fast = _tiny_pair()
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 256, 256, generator=g) * 255
    inputs = [{"image": image, "height": 256, "width": 256}]
    # bfloat16 keeps 8 significant bits (relative rounding 2**-9, ~2e-3 per op): a few layers deep
    # the features agree to a few per cent of their scale, and are not identical.
    images = assert_fast_mode_close(ref, fast, inputs, torch.bfloat16, rel_tol=0.05)

    # Training is float32 (training mixed precision is SOLVER.AMP.ENABLED, Detectron2's AMPTrainer).
    fast.train()
    with stem_dtypes(fast) as seen:
        fast.backbone(images.tensor)
    assert seen == [torch.float32]


def test_bad_autocast_dtype_names_the_key():
    cfg = plugin_cfg("configs/quickstart.yaml")
    cfg.MODEL.ACCEL.AUTOCAST_DTYPE = "float8"
    with pytest.raises(ValueError, match="MODEL.ACCEL.AUTOCAST_DTYPE"):
        accelerate(build_model(cfg), cfg)
