"""Opt-in inference fast mode: MODEL.ACCEL.AUTOCAST_DTYPE (mixed precision) with
MODEL.ACCEL.CHANNELS_LAST.

On CPU, bfloat16 autocast stands in for the GPU's float16: the same code path, checked for
being applied (convolutions run in the low precision in eval, not in training), float32 outputs,
and closeness to the float32 model with the same weights.
"""

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


def test_bfloat16_fast_mode_is_applied_and_close_to_float32():
    ref, fast = _tiny_pair()
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 256, 256, generator=g) * 255
    inputs = [{"image": image, "height": 256, "width": 256}]
    seen = []
    hook = fast.backbone.bottom_up.stem.conv1.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype)
    )
    with torch.no_grad():
        images = ref.preprocess_image(inputs)
        f_ref = ref.backbone(images.tensor)
        f_fast = fast.backbone(images.tensor)
        out = fast(inputs)[0]["instances"]
    assert seen and all(d == torch.bfloat16 for d in seen)  # the convolutions ran in bfloat16
    for k in f_ref:
        assert f_fast[k].dtype == torch.float32  # heads get float32, as without the option
        assert f_fast[k].is_contiguous(memory_format=torch.channels_last)
        scale = f_ref[k].abs().max()
        diff = (f_fast[k] - f_ref[k]).abs().max()
        # bfloat16 keeps 8 significant bits (relative rounding 2**-9, ~2e-3 per op): a few layers
        # deep the features agree to a few per cent of their scale, and are not identical.
        assert 0 < diff <= 0.05 * scale, (k, diff.item(), scale.item())
    assert (
        len(out) > 0
        and torch.isfinite(out.pred_boxes.tensor).all()
        and torch.isfinite(out.scores).all()
    )

    # Training is float32 (training mixed precision is SOLVER.AMP.ENABLED, Detectron2's AMPTrainer).
    seen.clear()
    fast.train()
    fast.backbone(images.tensor)
    assert seen == [torch.float32]
    hook.remove()


def test_bad_autocast_dtype_names_the_key():
    cfg = plugin_cfg("configs/quickstart.yaml")
    cfg.MODEL.ACCEL.AUTOCAST_DTYPE = "float8"
    with pytest.raises(ValueError, match="MODEL.ACCEL.AUTOCAST_DTYPE"):
        accelerate(build_model(cfg), cfg)
