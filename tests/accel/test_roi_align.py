"""MODEL.ACCEL.ROI_ALIGN: every level pooled in one embedding-bag call, equal to the RoI ops to
float rounding."""

import copy

import pytest
import torch

from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from fpn_plugin import LevelMappingROIPooler
from fpn_plugin.accel import AccelOptions, accelerate
from fpn_plugin.accel.multilevel_pooler import MultiLevelROIAlign
from fpn_plugin.accel.roi_align import multilevel_roi_align
from fpn_plugin.utils.testing import random_boxes
from tests.modeling.test_pooler import (
    SCALES,
    _features,
    _image_boxes,
    assert_close,
    check_backward_against_detectron2,
    check_degenerate_boxes_give_finite_outputs,
    check_non_finite_boxes_pool_to_zeros,
    check_pooled_features_against_detectron2,
    check_real_sized_load,
)


def fast_pooler(*args, reuse_workspace=True, **kwargs):
    """A LevelMappingROIPooler with the vectorised strategy, applied through the public entry
    point."""
    pooler = accelerate(
        LevelMappingROIPooler(*args, **kwargs), AccelOptions(roi_align="embedding_bag")
    )
    assert isinstance(pooler, MultiLevelROIAlign)
    pooler.reuse_workspace = reuse_workspace
    return pooler


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_pooled_features_equal_detectron2(pooler_type, sampling_ratio):
    def make_pooler(*args, **kwargs):
        pooler = fast_pooler(*args, **kwargs)
        assert pooler.pools_in_one_call(_features()[0])
        return pooler

    check_pooled_features_against_detectron2(make_pooler, pooler_type, sampling_ratio, assert_close)


def test_roipool_and_per_level_are_left_to_the_roi_ops():
    options = AccelOptions(roi_align="embedding_bag")
    assert not isinstance(
        accelerate(LevelMappingROIPooler(7, SCALES, 0, "ROIPool"), options), MultiLevelROIAlign
    )
    for mode in ("per_level", "parallel"):
        pooler = accelerate(
            LevelMappingROIPooler(7, SCALES, 0, "ROIAlignV2"), AccelOptions(roi_align=mode)
        )
        assert not isinstance(pooler, MultiLevelROIAlign), mode


def test_real_sized_load_matches_detectron2():
    check_real_sized_load(fast_pooler)


def test_degenerate_boxes_give_finite_outputs():
    check_degenerate_boxes_give_finite_outputs(fast_pooler, ("ROIAlignV2", "ROIAlign"))


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_backward_gradcheck(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(3)
    feats = [
        f.requires_grad_()
        for f in _features(n=1, c=2, height=32, width=32, generator=g, dtype=torch.float64)[:2]
    ]
    rois = torch.tensor(
        [[0, 1.3, 2.2, 13.7, 9.1], [0, 4.0, 4.0, 30.0, 28.0], [0, 0.5, 0.5, 3.0, 2.0]],
        dtype=torch.float64,
    )
    levels = torch.tensor([0, 1, 0])

    def fn(a, b):
        return multilevel_roi_align(
            [a, b], rois, levels, [0.25, 0.125], (3, 3), sampling_ratio, aligned
        )

    assert torch.autograd.gradcheck(fn, feats, eps=1e-6, atol=1e-5)


def test_backward_matches_detectron2():
    check_backward_against_detectron2(fast_pooler)


def test_inference_in_chunks_matches_one_call_and_detectron2(monkeypatch):
    import fpn_plugin.accel.roi_align as roi_align

    g = torch.Generator().manual_seed(6)
    feats = _features(generator=g)
    boxes = _image_boxes(g, (101, 50), 2.0, 320.0)
    pooler = fast_pooler(7, SCALES, 0, "ROIAlignV2")
    with torch.no_grad():
        one_chunk = pooler(feats, boxes)  # 151 RoIs of 16 x 49 floats: one chunk per group
        per_roi_bytes = 16 * 49 * 4
        monkeypatch.setattr(
            roi_align, "_CHUNK_BYTES", 8 * per_roi_bytes
        )  # 8 RoIs per chunk, some partial
        chunked = pooler(feats, boxes)
        ref = ROIPooler(7, SCALES, 0, "ROIAlignV2")(feats, boxes)
    assert torch.equal(chunked, one_chunk)  # the same sums, RoI by RoI
    with_grad = pooler(
        [f.clone().requires_grad_() for f in feats], boxes
    )  # the training path: one call
    assert torch.equal(chunked, with_grad.detach())
    torch.testing.assert_close(chunked, ref, rtol=1e-4, atol=1e-4)


def test_table_holds_only_what_the_rois_read():
    # All RoIs small and in one corner: they all map to P2 and read a small box of it, so the
    # table copies that box only, not all 4 levels.
    g = torch.Generator().manual_seed(7)
    feats = _features(generator=g)
    corner = random_boxes(40, 60, 80, g, 2.0, 50.0)  # within 60 x 80 px: 15 x 20 pixels of P2
    boxes = [Boxes(corner), Boxes(corner[:10] + 100.0)]
    pooler = fast_pooler(7, SCALES, 0, "ROIAlignV2")
    with torch.no_grad():
        out = pooler(feats, boxes)
        ref = ROIPooler(7, SCALES, 0, "ROIAlignV2")(feats, boxes)
    assert set(pooler.last_levels.tolist()) == {2}
    rows = pooler._workspace["table"].numel() // 16
    assert rows <= 2 * 17 * 22 < feats[0][0, 0].numel()  # two boxes of at most 17 x 22 pixels
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_reused_workspace_gives_the_same_outputs_and_is_never_used_with_grad():
    """The inference workspace (the channels-last table kept between calls) changes no number,
    follows changing feature sizes, and is bypassed when gradients flow to the features."""
    g = torch.Generator().manual_seed(5)
    fresh = fast_pooler(7, SCALES, 0, "ROIAlignV2", reuse_workspace=False)
    reused = fast_pooler(7, SCALES, 0, "ROIAlignV2")
    with torch.no_grad():
        for height, width in (
            (224, 320),
            (160, 192),
            (256, 352),
        ):  # smaller then larger than the kept table
            feats = _features(generator=g, height=height, width=width)
            boxes = [Boxes(random_boxes(80, height, width, g, 4.0, 300.0)) for _ in range(2)]
            a = reused(feats, boxes)
            table = reused._workspace["table"]
            assert 0 < table.numel()
            assert torch.equal(a, fresh(feats, boxes))
            assert torch.equal(reused(feats, boxes), a)  # a second call reads the refilled table
            assert reused._workspace["table"] is table
    assert not fresh.__dict__.get("_workspace")
    clone = copy.deepcopy(reused)  # the lock and the cache are not copied
    assert "_workspace" not in clone.__dict__ and isinstance(clone, MultiLevelROIAlign)
    assert torch.equal(clone(feats, boxes), a)
    reused.release_workspace()
    assert "_workspace" not in reused.__dict__
    leaves = [f.clone().requires_grad_() for f in feats]
    out = reused(leaves, boxes)
    assert out.requires_grad and "_workspace" not in reused.__dict__
    out.sum().backward()
    assert all(f.grad is not None for f in leaves)


def test_detectron2s_pooler_is_replaced_by_its_equivalent():
    """On Detectron2's own model (built without the plugin's names), its ROIPoolers become
    level-mapping poolers with the strategy, giving the same pooled features to float rounding."""
    from torch import nn

    holder = nn.Module()
    holder.box_pooler = ROIPooler(7, SCALES, 0, "ROIAlignV2")
    holder.mask_pooler = ROIPooler(14, SCALES, 2, "ROIAlign")
    g = torch.Generator().manual_seed(8)
    feats = _features(generator=g)
    boxes = [Boxes(random_boxes(30, 224, 320, g, 4.0, 300.0)) for _ in range(2)]
    ref = {name: p(feats, boxes) for name, p in holder.named_children()}
    accelerate(holder, AccelOptions(roi_align="embedding_bag"))
    for name, pooler in holder.named_children():
        assert isinstance(pooler, LevelMappingROIPooler) and isinstance(
            pooler, MultiLevelROIAlign
        ), name
        torch.testing.assert_close(pooler(feats, boxes), ref[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["parallel", "embedding_bag"])
def test_non_finite_boxes_pool_to_zeros(mode):
    def make_pooler(*args):
        return accelerate(LevelMappingROIPooler(*args), AccelOptions(roi_align=mode))

    check_non_finite_boxes_pool_to_zeros(make_pooler, assert_close)
