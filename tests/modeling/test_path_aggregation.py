"""More necks on FPNNeck's interface: PAFPN (bottom-up path augmentation) and BiFPN-style weighted
fusion."""

import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling import build_backbone

from fpn_plugin import FastNormalizedFusion, FPNNeck, LastLevelSubsample, PathAggregationNeck
from fpn_plugin.engine.trainer import FPNTrainer
from tests.conftest import d2_cfg, plugin_cfg
from tests.engine.test_training import _cleanup_catalog, data_root, train_tiny  # noqa: F401  (fixtures)
from tests.modeling.test_neck import IN, ToyBottomUp, _neck, paper_pyramid


def _pa_neck(**kwargs):
    return _neck(PathAggregationNeck, **kwargs)


def _fpn_like(neck, **kwargs):
    """An FPNNeck on the same bottom-up network, with the FPN part of ``neck``'s weights."""
    fpn = FPNNeck(neck.bottom_up, IN, 16, top_block=LastLevelSubsample(), **kwargs)
    result = fpn.load_state_dict(neck.state_dict(), strict=False)
    assert not result.missing_keys
    return fpn, result.unexpected_keys


def _randomize_fusion_weights(neck):
    """Raw weights of every fusion node in [-0.5, 2): some negative, so the ReLU matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in neck.modules():
            if isinstance(m, FastNormalizedFusion):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2.5 - 0.5)


@pytest.mark.parametrize("fuse_type", ["sum", "weighted"])
def test_shapes_strides_and_p6_from_n5(fuse_type):
    neck = _pa_neck(fuse_type=fuse_type)
    out = paper_pyramid(neck)
    assert {k: (s.stride, s.channels) for k, s in neck.output_shape().items()} == {
        f"p{k}": (2**k, 16) for k in range(2, 7)
    }
    assert neck.size_divisibility == 32
    torch.testing.assert_close(out["p6"], out["p5"][:, :, ::2, ::2])  # P6 subsampled from N5
    # Inputs that are not multiples of 32 still give aligned levels.
    assert neck(torch.randn(1, 3, 100, 70))["p5"].shape[-2:] == (4, 3)


@pytest.mark.parametrize("fuse_type", ["sum", "avg"])
def test_path_off_is_bit_identical_to_fpn_neck(fuse_type):
    neck = _pa_neck(fuse_type=fuse_type, path_augmentation=False)
    fpn, unexpected = _fpn_like(neck, fuse_type=fuse_type)
    assert not unexpected and neck.state_dict().keys() == fpn.state_dict().keys()
    x = torch.randn(2, 3, 128, 96)
    a, b = fpn(x), neck(x)
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fpn_part_with_path_on_is_bit_identical_and_the_path_is_panet():
    """The top-down part gives FPNNeck's P_k exactly; then N2 = P2,
    N_{k+1} = conv3x3(conv3x3_s2(N_k) + P_{k+1})."""
    neck = _pa_neck()
    fpn, unexpected = _fpn_like(neck)
    assert {k.split(".")[0] for k in unexpected} == {
        f"pa_{c}{k}" for c in ("downsample", "output") for k in (3, 4, 5)
    }
    seen = []
    extra_path = neck._extra_path
    neck._extra_path = lambda results: seen.append(results) or extra_path(results)
    x = torch.randn(2, 3, 128, 96)
    out, p = neck(x), fpn(x)
    for i, k in enumerate(["p2", "p3", "p4", "p5"]):
        assert torch.equal(seen[0][i], p[k]), k
    n = p["p2"]
    assert torch.equal(out["p2"], n)
    for k in (3, 4, 5):
        n = getattr(neck, f"pa_output{k}")(getattr(neck, f"pa_downsample{k}")(n) + p[f"p{k}"])
        torch.testing.assert_close(out[f"p{k}"], n)
        assert not torch.allclose(out[f"p{k}"], p[f"p{k}"])  # the extra path changes the output


@pytest.mark.parametrize("fuse_type", ["sum", "weighted"])
def test_extra_path_and_fusion_weights_get_gradients(fuse_type):
    neck = _pa_neck(fuse_type=fuse_type)
    out = neck(torch.randn(2, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    new = {n: p.grad for n, p in neck.named_parameters() if n.startswith("pa_") or "_fuse" in n}
    assert len(new) == (3 * 4 + 3 + 3 if fuse_type == "weighted" else 3 * 4)
    for name, grad in new.items():
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_fast_normalized_fusion_hand_computed():
    """EfficientDet Eq. 3: O = sum_i w_i I_i / (eps + sum_j w_j), w_i = ReLU(raw_i)."""
    fusion = FastNormalizedFusion(3, eps=1e-4)
    with torch.no_grad():
        fusion.weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
    a, b, c = (torch.randn(2, 4, 5, 6) for _ in range(3))
    torch.testing.assert_close(fusion([a, b, c]), (2.0 * a + 0.5 * c) / (1e-4 + 2.5))
    torch.testing.assert_close(fusion.normalized_weights(), torch.tensor([2.0, 0.0, 0.5]) / 2.5001)
    # At initialisation, a plain average (up to eps).
    torch.testing.assert_close(FastNormalizedFusion(2)([a, b]), (a + b) / (2 + 1e-4))


def test_weighted_neck_fusions_are_non_negative_normalized_and_used():
    neck = _pa_neck(fuse_type="weighted")
    fusions = {n: m for n, m in neck.named_modules() if isinstance(m, FastNormalizedFusion)}
    assert set(fusions) == {
        "fpn_fuse2",
        "fpn_fuse3",
        "fpn_fuse4",
        "pa_fuse3",
        "pa_fuse4",
        "pa_fuse5",
    }
    _randomize_fusion_weights(neck)
    assert any((m.weight < 0).any() for m in fusions.values())
    for name, m in fusions.items():
        w = m.normalized_weights()
        assert (w >= 0).all() and abs(w.sum().item() - 1) < 1e-3, name
    # The nodes compute what they claim: top-down M4 and bottom-up N3, by hand.
    x = torch.randn(1, 3, 128, 128)
    c = neck.bottom_up(x)
    out = neck(x)

    def fuse(name, a, b):
        w = F.relu(fusions[name].weight)
        return (w[0] * a + w[1] * b) / (1e-4 + w.sum())

    m5 = neck.fpn_lateral5(c["c5"])
    m4 = fuse(
        "fpn_fuse4", neck.fpn_lateral4(c["c4"]), F.interpolate(m5, scale_factor=2.0, mode="nearest")
    )
    m3 = fuse(
        "fpn_fuse3", neck.fpn_lateral3(c["c3"]), F.interpolate(m4, scale_factor=2.0, mode="nearest")
    )
    m2 = fuse(
        "fpn_fuse2", neck.fpn_lateral2(c["c2"]), F.interpolate(m3, scale_factor=2.0, mode="nearest")
    )
    n2, p3 = neck.fpn_output2(m2), neck.fpn_output3(m3)
    torch.testing.assert_close(out["p2"], n2)
    torch.testing.assert_close(
        out["p3"], neck.pa_output3(fuse("pa_fuse3", neck.pa_downsample3(n2), p3))
    )
    # Different fusion weights give different features: the weights are really used.
    with torch.no_grad():
        fusions["pa_fuse3"].weight.copy_(torch.tensor([1.0, 0.0]))
    assert not torch.allclose(neck(x)["p3"], out["p3"])


def test_r50_configs_load_detectron2_fpn_weights_partially():
    torch.manual_seed(0)
    ref = build_backbone(d2_cfg())
    for path, new in [
        ("configs/pafpn_r50.yaml", {"pa_downsample", "pa_output"}),
        ("configs/bifpn_r50.yaml", {"pa_downsample", "pa_output", "pa_fuse", "fpn_fuse"}),
    ]:
        neck = build_backbone(plugin_cfg(path))
        assert isinstance(neck, PathAggregationNeck)
        result = neck.load_state_dict(ref.state_dict(), strict=False)
        assert not result.unexpected_keys
        assert {k.split(".")[0].rstrip("0123456789") for k in result.missing_keys} == new
        assert neck.output_shape() == ref.output_shape()


@pytest.mark.parametrize(
    "opts, words",
    [
        (["MODEL.FPN.FUSE_TYPE", "max"], ["MODEL.FPN.FUSE_TYPE", "'max'", "weighted"]),
        (
            ["MODEL.FPN.FUSE_TYPE", "weighted", "MODEL.PAFPN.FUSION_EPS", 0.0],
            ["MODEL.PAFPN.FUSION_EPS", "> 0"],
        ),
        (
            ["MODEL.FPN.FINEST_ONLY", True],
            ["MODEL.PAFPN.PATH_AUGMENTATION", "MODEL.FPN.FINEST_ONLY"],
        ),
        (
            ["MODEL.FPN.BOTTOM_UP", "build_pafpn_neck_backbone"],
            ["MODEL.FPN.BOTTOM_UP", "build_resnet_backbone"],
        ),
        (["MODEL.FPN.IN_FEATURES", ["c2", "c3", "c5"]], ["MODEL.FPN.IN_FEATURES", "do not double"]),
    ],
)
def test_bad_settings_raise_clear_errors(opts, words):
    cfg = plugin_cfg()
    cfg.merge_from_list(
        [
            "MODEL.BACKBONE.NAME",
            "build_pafpn_neck_backbone",
            "MODEL.FPN.BOTTOM_UP",
            "build_toy_bottom_up",
            "MODEL.FPN.IN_FEATURES",
            IN,
        ]
    )
    cfg.merge_from_list(opts)
    with pytest.raises(ValueError) as e:
        build_backbone(cfg)
    for w in words:
        assert w in str(e.value)


def test_weighted_fusion_is_not_silently_accepted_by_the_plain_fpn_neck():
    with pytest.raises(ValueError, match="MODEL.FPN.FUSE_TYPE"):
        FPNNeck(ToyBottomUp(), IN, 16, fuse_type="weighted")
    with pytest.raises(ValueError, match="num_inputs"):
        FastNormalizedFusion(1)


def train_neck(
    data_root, output_dir, neck_type, max_iter, *opts, config="quickstart.yaml", fusion=None
):
    """Trains the tiny detector with a ``neck_type`` backbone from scratch and evaluates it: every
    iteration's loss is finite, the fusion weights (``fusion``: a part of their names, their number)
    learned, COCO's box metrics are reported. Returns the losses, for checks of their trend."""
    cfg, trainer, initial = train_tiny(data_root, output_dir, max_iter, *opts, config=config)
    assert isinstance(trainer.model.backbone, neck_type)
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == max_iter and all(math.isfinite(v) for v in losses)
    if fusion is not None:
        part, count = fusion
        before = {n: p for n, p in initial.items() if part in n}
        after = dict(trainer.model.backbone.named_parameters())
        assert len(before) == count and any(
            not torch.equal(before[n], after[n]) for n in before
        )  # learned
    results = FPNTrainer.test(cfg, trainer.model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    return losses


@pytest.mark.parametrize("fuse_type", ["sum", "weighted"])
def test_each_neck_trains_and_evaluates_on_embedded_data(data_root, tmp_path, fuse_type):  # noqa: F811
    opts = ["MODEL.BACKBONE.NAME", "build_pafpn_neck_backbone", "MODEL.FPN.FUSE_TYPE", fuse_type]
    fusion = ("_fuse", 6) if fuse_type == "weighted" else None  # only it learns weights
    losses = train_neck(
        data_root, tmp_path, PathAggregationNeck, 8, *opts, "SOLVER.BASE_LR", 0.01, fusion=fusion
    )
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses
