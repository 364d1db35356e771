"""MODEL.ACCEL.ROI_ALIGN "parallel" (and "auto", the default, in inference): the RoI ops on threads,
Detectron2's outputs bit for bit."""

import pytest
import torch

from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

import fpn_plugin.accel.multilevel_pooler as multilevel_module
import fpn_plugin.accel.parallel_pooler as parallel_module
from fpn_plugin import LevelMappingROIPooler
from fpn_plugin.accel import AccelOptions, accelerate
from fpn_plugin.accel.parallel_pooler import ParallelROIAlign
from fpn_plugin.utils.testing import random_boxes
from tests.modeling.test_pooler import DEGENERATE_BOXES, SCALES, _features, _image_boxes


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the pool has as many threads as PyTorch's intra-op pool
    yield
    torch.set_num_threads(threads)


def _parallel(*args, mode="auto", **kwargs):
    pooler = accelerate(LevelMappingROIPooler(*args, **kwargs), AccelOptions(roi_align=mode))
    assert isinstance(pooler, ParallelROIAlign)
    return pooler


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("mode", ["auto", "parallel"])
def test_equals_detectron2_bit_for_bit(pooler_type, sampling_ratio, mode, two_threads, monkeypatch):
    g = torch.Generator().manual_seed(1)
    feats = _features(generator=g)
    boxes = _image_boxes(g, (301, 97), 2.0, 320.0)
    args = dict(
        output_size=7, scales=SCALES, sampling_ratio=sampling_ratio, pooler_type=pooler_type
    )
    calls = []
    executor = parallel_module._executor
    monkeypatch.setattr(parallel_module, "_executor", lambda n: calls.append(n) or executor(n))
    with torch.no_grad():
        ours = _parallel(**args, mode=mode)(feats, boxes)
    assert calls == [2]  # the threads were used
    assert torch.equal(ours, ROIPooler(**args)(feats, boxes))


def test_degenerate_boxes_and_no_boxes(two_threads):
    feats = _features()
    pooler = _parallel(7, SCALES, 0, "ROIAlignV2")
    out = pooler(feats, [Boxes(DEGENERATE_BOXES), Boxes(DEGENERATE_BOXES[:0])])
    assert out.shape == (6, 16, 7, 7) and torch.isfinite(out).all()
    assert pooler(feats, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]).shape == (
        0,
        16,
        7,
        7,
    )


def test_with_gradients_parallel_is_detectron2_and_auto_is_the_embedding_bag(
    two_threads, monkeypatch
):
    """With gradients (training) "parallel" runs the RoI ops level by level, as Detectron2 (the same
    gradients bit for bit), and "auto" the one-call embedding bag (equal to float rounding)."""
    g = torch.Generator().manual_seed(4)
    feats = _features(generator=g)
    boxes = _image_boxes(g, (60, 40), 4.0, 300.0)
    monkeypatch.setattr(parallel_module, "_executor", lambda n: pytest.fail("threads with grad"))
    embedding_bag_calls = []
    one_call = multilevel_module.multilevel_roi_align
    monkeypatch.setattr(
        multilevel_module,
        "multilevel_roi_align",
        lambda *a, **k: embedding_bag_calls.append(1) or one_call(*a, **k),
    )
    poolers = [ROIPooler(7, SCALES, 0, "ROIAlignV2")]
    poolers += [_parallel(7, SCALES, 0, "ROIAlignV2", mode=m) for m in ("parallel", "auto")]
    outputs, grads = [], []
    for pooler in poolers:
        xs = [f.clone().requires_grad_() for f in feats]
        out = pooler(xs, boxes)
        out.backward(torch.ones_like(out) * torch.arange(out.numel()).view_as(out).remainder(7))
        outputs.append(out.detach())
        grads.append([x.grad for x in xs])
    assert len(embedding_bag_calls) == 1  # "auto" only
    assert torch.equal(outputs[1], outputs[0])
    assert all(torch.equal(b, a) for a, b in zip(grads[0], grads[1]))
    torch.testing.assert_close(outputs[2], outputs[0], rtol=1e-4, atol=1e-4)
    for a, b in zip(grads[0], grads[2]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_steps_aside_with_one_thread_and_in_a_callers_autocast(monkeypatch):
    feats = _features()
    boxes = [
        Boxes(random_boxes(30, 224, 320, torch.Generator().manual_seed(5), 4.0, 300.0))
        for _ in range(2)
    ]
    pooler = _parallel(7, SCALES, 0, "ROIAlignV2")
    monkeypatch.setattr(
        parallel_module, "_executor", lambda n: pytest.fail("the thread pool was used")
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = pooler(feats, boxes)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, ROIPooler(7, SCALES, 0, "ROIAlignV2")(feats, boxes))
    torch.set_num_threads(2)
    try:
        with torch.autocast(
            "cpu", dtype=torch.bfloat16
        ):  # autocast is per thread: the caller's only
            pooler(feats, boxes)
    finally:
        torch.set_num_threads(threads)
