"""MODEL.ACCEL.ANCHOR_CACHE_SIZE: anchor grids kept between calls (the plugin's and Detectron2's
generators)."""

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

from fpn_plugin import SharedAnchorGenerator
from fpn_plugin.accel import AccelOptions, accelerate
from fpn_plugin.accel.anchor_cache import AnchorCache
from tests.conftest import plugin_cfg
from tests.modeling.test_anchors import STRIDES, _features


def _cached(size=16, **kwargs):
    gen = accelerate(SharedAnchorGenerator(**kwargs), AccelOptions(anchor_cache_size=size))
    assert isinstance(gen, AnchorCache) and gen.anchor_cache_size == size
    return gen


@pytest.mark.parametrize("generator", [SharedAnchorGenerator, DefaultAnchorGenerator])
def test_cached_grids_equal_detectron2s_exactly(generator):
    sizes, ratios = [[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]]
    ref = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=STRIDES, offset=0.0)
    gen = accelerate(generator(sizes=sizes, aspect_ratios=ratios, strides=STRIDES, offset=0.0))
    assert isinstance(gen, AnchorCache)
    feats = _features(803, 1217)
    first = gen(feats)
    for _ in range(2):  # computed, then cached: exact both times
        for a, b in zip(gen(feats), ref(feats)):
            assert torch.equal(a.tensor, b.tensor)
    assert all(a.tensor is b.tensor for a, b in zip(first, gen(feats)))


def test_grids_are_cached_and_cache_is_bounded():
    gen = _cached(2, sizes=[[32]], aspect_ratios=[1.0], strides=[4])
    f1 = [torch.zeros(1, 1, 10, 12)]
    a = gen(f1)[0].tensor
    assert gen(f1)[0].tensor is a  # same grid object: no recomputation
    gen([torch.zeros(1, 1, 11, 12)])
    gen([torch.zeros(1, 1, 12, 12)])
    assert len(gen._anchor_cache) == 2  # the oldest entry was evicted
    assert gen(f1)[0].tensor is not a  # recomputed after eviction...
    assert torch.equal(gen(f1)[0].tensor, a)  # ...with the same values
    for h in range(20, 60):
        gen([torch.zeros(1, 1, h, 7)])
    assert len(gen._anchor_cache) == 2


def test_cache_off_and_dtype_change():
    gen = accelerate(
        SharedAnchorGenerator(sizes=[[32]], aspect_ratios=[1.0], strides=[4]),
        AccelOptions(anchor_cache_size=0),
    )
    assert not isinstance(gen, AnchorCache)
    f = [torch.zeros(1, 1, 5, 5)]
    assert gen(f)[0].tensor is not gen(f)[0].tensor
    cached = _cached(sizes=[[32]], aspect_ratios=[1.0], strides=[4])
    first = cached(f)[0].tensor
    assert len(cached._anchor_cache) == 1
    cached.double()  # moving/casting the module drops the grids made for the old device/dtype
    assert "_anchor_cache" not in cached.__dict__ and cached.cell_anchors[0].dtype == torch.float64
    again = cached(f)[0].tensor
    assert again is not first and torch.equal(again, first.double())


def test_size_from_config_and_its_old_name():
    cfg = plugin_cfg()
    cfg.MODEL.ACCEL.ANCHOR_CACHE_SIZE = 3
    gen = accelerate(SharedAnchorGenerator(cfg, [ShapeSpec(stride=s) for s in STRIDES]), cfg)
    assert gen.anchor_cache_size == 3
    cfg = plugin_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.CACHE_SIZE = 5  # the key's name before MODEL.ACCEL
    with pytest.warns(FutureWarning, match="MODEL.ACCEL.ANCHOR_CACHE_SIZE"):
        gen = accelerate(SharedAnchorGenerator(cfg, [ShapeSpec(stride=s) for s in STRIDES]), cfg)
    assert gen.anchor_cache_size == 5
    with pytest.raises(ValueError, match="MODEL.ACCEL.ANCHOR_CACHE_SIZE"):
        AccelOptions(anchor_cache_size=-1)
