"""LevelMappingROIPooler: Eqn. (1) level mapping and Detectron2's ROIPooler outputs."""

import pytest
import torch

from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.poolers import assign_boxes_to_levels as d2_assign_boxes_to_levels
from detectron2.structures import Boxes

from fpn_plugin import LevelMappingROIPooler, assign_boxes_to_levels
from fpn_plugin.utils.testing import random_boxes

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
#: Empty, inverted, zero-width, outside-the-image boxes (XYXY pixels).
DEGENERATE_BOXES = torch.tensor(
    [
        [10.0, 10, 10, 10],
        [50, 40, 20, 30],
        [30, 30, 10, 60],
        [0, 0, 0, 50],
        [-20, -20, -5, -5],
        [400, 300, 500, 400],
    ]
)


def _features(n=2, c=16, height=224, width=320, generator=None, dtype=torch.float32):
    return [
        torch.randn(n, c, height // s, width // s, generator=generator, dtype=dtype)
        for s in (4, 8, 16, 32)
    ]


def _image_boxes(generator, counts, min_size, max_size):
    """One Boxes per image of the 224 x 320 test image, ``counts[i]`` random boxes each (sides of
    ``min_size`` to ``max_size`` px), drawn in order from ``generator``."""
    return [Boxes(random_boxes(n, 224, 320, generator, min_size, max_size)) for n in counts]


def _boundary_boxes():
    """Squares and rectangles whose sqrt(area) is exactly on a level boundary (56, 112, 224, 448),
    and near it."""
    rows = []
    for side in (56.0, 112.0, 224.0, 448.0):
        rows.append([10.0, 10.0, 10.0 + side, 10.0 + side])
        rows.append([3.5, 7.25, 3.5 + side / 2, 7.25 + side * 2])  # same area, 1:4
        rows.append([0.0, 0.0, side - 0.01, side])
        rows.append([0.0, 0.0, side + 0.01, side])
    return torch.tensor(rows)


def test_level_mapping_is_eqn_1():
    boxes = [
        Boxes(
            torch.tensor(
                [
                    [0, 0, 224, 224],
                    [0, 0, 112, 112],
                    [0, 0, 111.9, 112],
                    [0, 0, 448, 448],
                    [0, 0, 10, 10],
                    [0, 0, 2000, 2000.0],
                ]
            )
        )
    ]
    levels = assign_boxes_to_levels(boxes, 2, 5, 224, 4) + 2
    # 224 -> P4 (k0), 112 -> P3, just below 112 -> P2, 448 -> P5, tiny -> clamped to P2,
    # huge -> clamped to P5
    assert levels.tolist() == [4, 3, 2, 5, 2, 5]
    levels = assign_boxes_to_levels(boxes, 2, 5, 112, 3) + 2  # s0 and k0 are configurable
    assert levels.tolist() == [4, 3, 2, 5, 2, 5]
    levels = assign_boxes_to_levels(boxes, 2, 5, 224, 5) + 2
    assert levels.tolist() == [5, 4, 3, 5, 2, 5]


def test_level_mapping_matches_detectron2_on_boundaries():
    g = torch.Generator().manual_seed(0)
    boxes = [
        Boxes(_boundary_boxes()),
        Boxes(random_boxes(500, 800, 1216, g, min_size=1.0, max_size=1200.0)),
    ]
    ours = assign_boxes_to_levels(boxes, 2, 5, 224, 4)
    ref = d2_assign_boxes_to_levels(boxes, 2, 5, 224, 4)
    assert torch.equal(ours, ref)
    assert set(ours.tolist()) == {0, 1, 2, 3}


def assert_equal(actual, expected):
    assert torch.equal(actual, expected)


def assert_close(actual, expected):
    """Float rounding: what the accelerated poolers promise (tests/accel)."""
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


# The checks below take the pooler to test as ``make_pooler(*args, **kwargs)`` (the arguments of
# LevelMappingROIPooler), so that tests/accel runs the same checks on the accelerated poolers.


def check_pooled_features_against_detectron2(make_pooler, pooler_type, sampling_ratio, compare):
    g = torch.Generator().manual_seed(1)
    feats = _features(generator=g)
    boxes = [
        Boxes(
            torch.cat(
                [_boundary_boxes().clamp(max=223), random_boxes(150, 224, 320, g, 2.0, 320.0)]
            )
        ),
        Boxes(random_boxes(120, 224, 320, g, 2.0, 320.0)),
    ]
    for output_size in (7, (14, 14)):
        args = dict(
            output_size=output_size,
            scales=SCALES,
            sampling_ratio=sampling_ratio,
            pooler_type=pooler_type,
        )
        ref = ROIPooler(**args)(feats, boxes)
        ours = make_pooler(**args)(feats, boxes)
        assert ours.shape == ref.shape
        compare(ours, ref)


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign", "ROIPool"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_pooled_features_equal_detectron2(pooler_type, sampling_ratio):
    # Each level's RoIs by that level's RoI op, as Detectron2's pooler: bit for bit the same.
    check_pooled_features_against_detectron2(
        LevelMappingROIPooler, pooler_type, sampling_ratio, assert_equal
    )


def check_real_sized_load(make_pooler):
    """2 x 1000 RoIs on 256-channel P2-P5 of an 800 x 1216 image, adaptive sampling (the benchmark's
    case)."""
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(2, 256, 800 // s, 1216 // s, generator=g) for s in (4, 8, 16, 32)]
    boxes = [Boxes(random_boxes(1000, 800, 1216, g, 8.0, 900.0)) for _ in range(2)]
    args = dict(output_size=7, scales=SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    pooler = make_pooler(**args)
    assert_close(pooler(feats, boxes), ROIPooler(**args)(feats, boxes))
    counts = torch.bincount(pooler.last_levels, minlength=6)[2:]
    assert (counts > 0).all()  # every level got RoIs


def test_real_sized_load_matches_detectron2():
    check_real_sized_load(LevelMappingROIPooler)


def check_degenerate_boxes_give_finite_outputs(make_pooler, pooler_types):
    feats = _features()
    for pooler_type in pooler_types:
        for sampling_ratio in (0, 2):
            pooler = make_pooler(7, SCALES, sampling_ratio, pooler_type)
            out = pooler(feats, [Boxes(DEGENERATE_BOXES), Boxes(DEGENERATE_BOXES[:0])])
            assert out.shape == (6, 16, 7, 7)
            assert torch.isfinite(out).all()


def test_degenerate_boxes_give_finite_outputs():
    check_degenerate_boxes_give_finite_outputs(
        LevelMappingROIPooler, ("ROIAlignV2", "ROIAlign", "ROIPool")
    )


def test_no_boxes():
    feats = _features()
    pooler = LevelMappingROIPooler(7, SCALES, 0, "ROIAlignV2")
    assert pooler(feats, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]).shape == (
        0,
        16,
        7,
        7,
    )
    one = pooler(feats, [Boxes(torch.zeros(0, 4)), Boxes(torch.tensor([[0.0, 0, 50, 50]]))])
    assert one.shape == (1, 16, 7, 7) and torch.isfinite(one).all()


def test_single_level():
    feats = _features()[:1]
    boxes = [Boxes(torch.tensor([[0.0, 0, 300, 200]])), Boxes(torch.tensor([[10.0, 10, 30, 30]]))]
    args = dict(
        output_size=7,
        scales=(1 / 4,),
        sampling_ratio=0,
        pooler_type="ROIAlignV2",
        canonical_level=2,
    )
    ref = ROIPooler(**args)(feats, boxes)
    torch.testing.assert_close(LevelMappingROIPooler(**args)(feats, boxes), ref)


def check_backward_against_detectron2(make_pooler):
    g = torch.Generator().manual_seed(4)
    feats = _features(generator=g)
    boxes = _image_boxes(g, (60, 40), 4.0, 300.0)
    grads = []
    for pooler in (ROIPooler(7, SCALES, 0, "ROIAlignV2"), make_pooler(7, SCALES, 0, "ROIAlignV2")):
        xs = [f.clone().requires_grad_() for f in feats]
        out = pooler(xs, boxes)
        out.backward(torch.ones_like(out) * torch.arange(out.numel()).view_as(out).remainder(7))
        grads.append([x.grad for x in xs])
    for a, b in zip(*grads):
        assert_close(b, a)


def test_backward_matches_detectron2():
    check_backward_against_detectron2(LevelMappingROIPooler)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(canonical_box_size=0), ["MODEL.ROI_HEADS.CANONICAL_BOX_SIZE"]),
        (dict(pooler_type="ROIMagic"), ["POOLER_TYPE", "ROIAlignV2"]),
        (dict(scales=(1 / 4, 1 / 16)), ["double", "MODEL.ROI_HEADS.IN_FEATURES"]),
        (dict(scales=(1 / 3,)), ["power of 2"]),
    ],
)
def test_bad_arguments_name_the_key(kwargs, words):
    # (A canonical level outside the pyramid is valid, as for Detectron2:
    # tests/modeling/test_drop_in.py.)
    args = dict(output_size=7, scales=SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    args.update(kwargs)
    with pytest.raises(ValueError) as e:
        LevelMappingROIPooler(**args)
    for w in words:
        assert w in str(e.value)


#: Boxes a diverged regression can produce: NaN and infinite coordinates.
NON_FINITE_BOXES = torch.tensor(
    [
        [float("nan"), 0, 10, 10],
        [0, 0, float("inf"), 10],
        [0, 0, float("inf"), float("inf")],
        [float("-inf"), 0, 10, 10],
    ]
)


def check_non_finite_boxes_pool_to_zeros(make_pooler, compare):
    """Detectron2's pooler returns zeros for a NaN box and fails inside the RoI op on some infinite
    ones; these are pooled as zeros, the other boxes as usual."""
    g = torch.Generator().manual_seed(8)
    feats = _features(generator=g)
    good = random_boxes(5, 224, 320, g, 4.0, 300.0)
    boxes = [Boxes(torch.cat([NON_FINITE_BOXES, good])), Boxes(good)]
    pooler = make_pooler(7, SCALES, 0, "ROIAlignV2")
    with torch.no_grad():
        out = pooler(feats, boxes)
    assert out.shape == (14, 16, 7, 7)
    assert torch.equal(out[:4], torch.zeros_like(out[:4]))
    ref = ROIPooler(7, SCALES, 0, "ROIAlignV2")(feats, [Boxes(good), Boxes(good)])
    compare(out[4:], ref)
    assert pooler.last_levels.tolist()[:4] == [2, 2, 2, 2]  # recorded as the finest level


def test_non_finite_boxes_pool_to_zeros():
    check_non_finite_boxes_pool_to_zeros(LevelMappingROIPooler, assert_equal)
