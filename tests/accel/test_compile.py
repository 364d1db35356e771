"""MODEL.ACCEL.COMPILE: the backbone and heads compiled by inductor give the plain model's
detections to float rounding, and stay an ordinary module (state_dict, copy, pickle, removal)."""

import copy
import pickle

import pytest
import torch

from detectron2.modeling import build_model

from fpn_plugin.accel import accelerate, plain_class, remove_strategies, strategies_of
from fpn_plugin.accel.compile import CompiledForward, compiles
from fpn_plugin.accel.in_place_merge import InPlaceTopDown
from fpn_plugin.utils.testing import make_trained_like
from tests.conftest import plugin_cfg

COMPILED = ("backbone", "proposal_generator.rpn_head", "roi_heads.box_head")
COMPILED += ("roi_heads.box_predictor",)


def _detections(model, image):
    with torch.no_grad():
        out = model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])
    out = out[0]["instances"]
    return out.pred_boxes.tensor, out.scores, out.pred_classes


def _same_detections(ref, got):
    assert len(ref[0]) > 0 and torch.equal(ref[2], got[2])
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-4)  # pixels
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def quickstart_pair():
    """(the quickstart detector, plain; the same weights with MODEL.ACCEL.COMPILE), eval."""
    cfg = plugin_cfg("configs/quickstart.yaml")
    cfg.MODEL.ACCEL.COMPILE = True
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    make_trained_like(plain)
    return plain, accelerate(copy.deepcopy(plain), cfg)


def test_compiled_detector_matches_the_plain_model(quickstart_pair):
    plain, compiled = quickstart_pair
    modules = dict(compiled.named_modules())
    for name in COMPILED:
        assert isinstance(modules[name], CompiledForward), name
    # The compiler fuses the merge itself: the hand-written in-place merge is not applied.
    assert not any(isinstance(m, InPlaceTopDown) for m in compiled.modules())
    assert list(compiled.state_dict()) == list(plain.state_dict())

    image = torch.rand(3, 128, 192, generator=torch.Generator().manual_seed(0)) * 255
    ref = _detections(plain, image)
    _same_detections(ref, _detections(compiled, image))
    for name in COMPILED:  # each ran its compiled program
        assert "_compiled_program" in modules[name].__dict__, name

    # Weights loaded after compiling are the ones used (the program takes them as inputs).
    state = {
        k: v * 1.05 if v.is_floating_point() and k.endswith("weight") else v
        for k, v in plain.state_dict().items()
    }
    plain.load_state_dict(state)
    compiled.load_state_dict(state)
    _same_detections(_detections(plain, image), _detections(compiled, image))

    # Copies and pickles keep the strategies, not the compiled programs; removal gives the plain
    # model back, which computes as the plain one bit for bit.
    for clone in (copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled))):
        assert [strategies_of(m) for m in clone.modules()] == [
            strategies_of(m) for m in compiled.modules()
        ]
        assert not any("_compiled_program" in m.__dict__ for m in clone.modules())
    stripped = remove_strategies(copy.deepcopy(compiled))
    assert all(plain_class(type(m)) is type(m) for m in stripped.modules())
    for a, b in zip(_detections(plain, image), _detections(stripped, image)):
        assert torch.equal(a, b)


def test_compiled_only_in_inference(quickstart_pair):
    _, compiled = quickstart_pair
    backbone = compiled.backbone
    x = torch.zeros(1, 3, 64, 64)
    assert not compiles(backbone, x)  # gradients enabled
    with torch.no_grad():
        assert compiles(backbone, x) and not compiles(backbone, x[:0])
        backbone.train()
        try:
            assert not compiles(backbone, x)
        finally:
            backbone.eval()
