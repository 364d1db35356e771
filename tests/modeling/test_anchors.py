"""SharedAnchorGenerator: Detectron2's anchors exactly, with clear errors."""

import pytest
import torch

from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

from fpn_plugin import SharedAnchorGenerator
from tests.conftest import plugin_cfg

STRIDES = [4, 8, 16, 32, 64]


def _features(height=800, width=1216, strides=STRIDES):
    return [torch.zeros(1, 1, -(-height // s), -(-width // s)) for s in strides]


@pytest.mark.parametrize(
    "sizes, ratios, offset",
    [
        (
            [[32], [64], [128], [256], [512]],
            [[0.5, 1.0, 2.0]],
            0.0,
        ),  # the paper / Detectron2's FPN config
        ([[32], [64], [128], [256], [512]], [[0.5, 1.0, 2.0]], 0.5),
        ([[16, 24], [32, 48], [64, 96], [128, 192], [256, 384]], [[0.25, 1.0, 3.0]], 0.25),
        ([[20, 40, 80]], [0.5, 1.0], 0.0),  # one group broadcast to every level
    ],
)
def test_anchors_equal_default_anchor_generator_exactly(sizes, ratios, offset):
    ours = SharedAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=STRIDES, offset=offset)
    ref = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=STRIDES, offset=offset)
    assert ours.num_anchors == ref.num_anchors
    feats = _features(803, 1217)
    for a, b in zip(ours(feats), ref(feats)):
        assert torch.equal(a.tensor, b.tensor)


def test_paper_anchor_shapes():
    gen = SharedAnchorGenerator(
        sizes=[[32], [64], [128], [256], [512]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=STRIDES
    )
    assert gen.num_anchors == [3] * 5  # 15 anchor shapes over the pyramid
    for size, cell in zip([32, 64, 128, 256, 512], gen.cell_anchors):
        w = cell[:, 2] - cell[:, 0]
        h = cell[:, 3] - cell[:, 1]
        torch.testing.assert_close(w * h, torch.full((3,), float(size) ** 2))
        torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]))


def test_octave_scales_match_explicit_sizes():
    """SCALES_PER_OCTAVE=3 gives RetinaNet's sizes s * 2**(i/3)."""
    base = [32, 64, 128, 256, 512]
    ours = SharedAnchorGenerator(
        sizes=[[s] for s in base],
        aspect_ratios=[0.5, 1, 2],
        strides=[8, 16, 32, 64, 128],
        scales_per_octave=3,
    )
    explicit = [[s * 2 ** (i / 3) for i in range(3)] for s in base]
    ref = DefaultAnchorGenerator(
        sizes=explicit, aspect_ratios=[0.5, 1, 2], strides=[8, 16, 32, 64, 128]
    )
    assert ours.num_anchors == [9] * 5
    feats = _features(512, 640, [8, 16, 32, 64, 128])
    for a, b in zip(ours(feats), ref(feats)):
        assert torch.equal(a.tensor, b.tensor)


def test_built_from_config():
    cfg = plugin_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE = 2
    from detectron2.layers import ShapeSpec

    gen = SharedAnchorGenerator(cfg, [ShapeSpec(stride=s) for s in STRIDES])
    assert gen.num_anchors == [6] * 5 and gen.offset == cfg.MODEL.ANCHOR_GENERATOR.OFFSET


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (
            dict(sizes=[[32], [64], [128], [256]], aspect_ratios=[[1.0]], strides=STRIDES),
            ["MODEL.ANCHOR_GENERATOR.SIZES", "4 groups", "5 feature levels"],
        ),
        (
            dict(sizes=[[32]], aspect_ratios=[[1.0], [2.0]], strides=STRIDES),
            ["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "2 groups"],
        ),
        (
            dict(sizes=[[32]], aspect_ratios=[[1.0]], strides=STRIDES, offset=1.0),
            ["MODEL.ANCHOR_GENERATOR.OFFSET", "[0, 1)"],
        ),
        (
            dict(sizes=[[32]], aspect_ratios=[[1.0]], strides=STRIDES, scales_per_octave=0),
            ["SCALES_PER_OCTAVE"],
        ),
        (
            dict(sizes=[], aspect_ratios=[[1.0]], strides=STRIDES),
            ["MODEL.ANCHOR_GENERATOR.SIZES", "non-empty"],
        ),
    ],
)
def test_bad_arguments_name_the_key(kwargs, words):
    with pytest.raises(ValueError) as e:
        SharedAnchorGenerator(**kwargs)
    for w in words:
        assert w in str(e.value)


def test_wrong_number_of_feature_maps():
    gen = SharedAnchorGenerator(sizes=[[32]], aspect_ratios=[1.0], strides=[4, 8])
    with pytest.raises(ValueError, match="MODEL.RPN.IN_FEATURES"):
        gen([torch.zeros(1, 1, 4, 4)])
