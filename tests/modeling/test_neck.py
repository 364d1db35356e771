"""FPNNeck: Detectron2's FPN parameters and outputs, the paper's ablations and options, clear
errors."""

import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from fpn_plugin import FPNNeck, LastLevelP6P7, LastLevelSubsample
from tests.conftest import d2_cfg, plugin_cfg


class ToyBottomUp(Backbone):
    """Four stride-doubling stages c2..c5 (strides 4..32) of a few channels."""

    def __init__(self, channels=(8, 12, 16, 20)):
        super().__init__()
        self.stem = nn.Conv2d(3, channels[0], 3, stride=4, padding=1)
        self.stages = nn.ModuleList(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            for cin, cout in zip(channels[:-1], channels[1:])
        )
        self._channels = channels

    def forward(self, x):
        out = {"c2": self.stem(x)}
        for i, stage in enumerate(self.stages, start=3):
            out[f"c{i}"] = stage(out[f"c{i - 1}"])
        return out

    def output_shape(self):
        return {
            f"c{i}": ShapeSpec(channels=c, stride=2**i)
            for i, c in enumerate(self._channels, start=2)
        }


@BACKBONE_REGISTRY.register()
def build_toy_bottom_up(cfg, input_shape):
    return ToyBottomUp()


IN = ["c2", "c3", "c4", "c5"]


def _neck(neck_type=FPNNeck, **kwargs):
    """A ``neck_type`` (FPNNeck or a neck on its interface) on a seeded ToyBottomUp: 16 channels,
    P6 subsampled from P5 as in the paper; ``kwargs`` override these."""
    torch.manual_seed(0)
    args = dict(
        bottom_up=ToyBottomUp(), in_features=IN, out_channels=16, top_block=LastLevelSubsample()
    )
    args.update(kwargs)
    return neck_type(**args)


def test_r50_neck_matches_detectron2_fpn_names_and_outputs():
    cfg = d2_cfg()
    torch.manual_seed(0)
    ref = build_backbone(cfg).eval()
    pcfg = plugin_cfg()
    ours = build_backbone(pcfg).eval()
    assert isinstance(ref, FPN) and isinstance(ours, FPNNeck)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 320)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert list(a) == list(b) == ["p2", "p3", "p4", "p5", "p6"]
    for k in a:
        torch.testing.assert_close(b[k], a[k])
    assert ours.size_divisibility == ref.size_divisibility == 32
    assert ours.output_shape() == ref.output_shape()


@pytest.mark.parametrize("fuse_type", ["sum", "avg"])
def test_same_as_detectron2_fpn_built_by_hand(fuse_type):
    torch.manual_seed(0)
    bottom_up = ToyBottomUp()
    ref = FPN(bottom_up, IN, 16, top_block=LastLevelMaxPool(), fuse_type=fuse_type)
    ours = FPNNeck(bottom_up, IN, 16, top_block=LastLevelSubsample(), fuse_type=fuse_type)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 128, 96)
    a, b = ref(x), ours(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k])


def test_retinanet_p6p7_from_c5_matches_detectron2():
    cfg = d2_cfg("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    torch.manual_seed(0)
    ref = build_backbone(cfg).eval()
    pcfg = plugin_cfg()
    pcfg.merge_from_list(
        [
            "MODEL.RESNETS.OUT_FEATURES",
            ["res3", "res4", "res5"],
            "MODEL.FPN.IN_FEATURES",
            ["res3", "res4", "res5"],
            "MODEL.FPN.EXTRA_LEVELS",
            "p6p7_c5",
        ]
    )
    ours = build_backbone(pcfg).eval()
    assert isinstance(ours.top_block, LastLevelP6P7)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        a, b = ref(x), ours(x)
    assert list(b) == ["p3", "p4", "p5", "p6", "p7"]
    for k in a:
        torch.testing.assert_close(b[k], a[k])


def paper_pyramid(neck):
    """``neck``'s outputs for a (2, 3, 256, 192) batch, checked to be P2..P6 at strides 4..64 with
    ``_neck``'s 16 channels: the pyramid every neck on FPNNeck's interface gives."""
    out = neck(torch.randn(2, 3, 256, 192))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 16, 64, 48),
        "p3": (2, 16, 32, 24),
        "p4": (2, 16, 16, 12),
        "p5": (2, 16, 8, 6),
        "p6": (2, 16, 4, 3),
    }
    return out


def test_paper_pyramid_shapes_and_strides():
    neck = _neck()
    out = paper_pyramid(neck)
    assert {k: s.stride for k, s in neck.output_shape().items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }
    # P6 is P5 subsampled by 2 (Sec. 4.1)
    torch.testing.assert_close(out["p6"], out["p5"][:, :, ::2, ::2])


def test_top_down_merge_is_nearest_upsample_plus_lateral():
    """Fig. 3: M_k = upsample_x2(M_{k+1}) + lateral(C_k); P_k = conv3x3(M_k)."""
    neck = _neck(top_block=None)
    x = torch.randn(1, 3, 128, 128)
    c = neck.bottom_up(x)
    m5 = neck.fpn_lateral5(c["c5"])
    m4 = neck.fpn_lateral4(c["c4"]) + m5.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(neck(x)["p4"], neck.fpn_output4(m4))


def test_inputs_not_divisible_by_32_work():
    neck = _neck()
    out = neck(torch.randn(1, 3, 100, 70))
    assert out["p2"].shape[-2:] == (25, 18) and out["p5"].shape[-2:] == (4, 3)


def test_bilinear_upsampling():
    nearest, bilinear = _neck(), _neck(upsample="bilinear")
    bilinear.load_state_dict(nearest.state_dict())
    x = torch.randn(1, 3, 128, 128)
    a, b = nearest(x), bilinear(x)
    torch.testing.assert_close(a["p5"], b["p5"])  # coarsest level has no upsampling
    assert not torch.allclose(a["p2"], b["p2"])


def test_no_top_down_is_a_bottom_up_pyramid():
    neck = _neck(top_down=False)
    x = torch.randn(1, 3, 128, 128)
    c = neck.bottom_up(x)
    out = neck(x)
    for k in (2, 3, 4, 5):  # P_k sees only C_k
        expected = getattr(neck, f"fpn_output{k}")(getattr(neck, f"fpn_lateral{k}")(c[f"c{k}"]))
        torch.testing.assert_close(out[f"p{k}"], expected)


def test_no_lateral_connections():
    neck = _neck(lateral=False)
    names = {n.split(".")[0] for n, _ in neck.named_parameters()}
    assert "fpn_lateral5" in names and not {"fpn_lateral2", "fpn_lateral3", "fpn_lateral4"} & names
    x = torch.randn(1, 3, 128, 128)
    c = neck.bottom_up(x)
    m5 = neck.fpn_lateral5(c["c5"])
    m2 = m5.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)
    torch.testing.assert_close(neck(x)["p2"], neck.fpn_output2(m2))


def test_finest_level_only():
    """Table 3(d): the same top-down pyramid, but only P2 is output."""
    neck = _neck(top_block=None, finest_only=True)
    x = torch.randn(1, 3, 128, 128)
    out = neck(x)
    assert list(out) == ["p2"] and list(neck.output_shape()) == ["p2"]
    full = _neck(top_block=None)
    missing = full.load_state_dict(neck.state_dict(), strict=False).missing_keys
    assert {k.split(".")[0] for k in missing} == {"fpn_output3", "fpn_output4", "fpn_output5"}
    torch.testing.assert_close(out["p2"], full(x)["p2"])


@pytest.mark.parametrize("norm", ["BN", "GN", "SyncBN"])
def test_norms(norm):
    neck = _neck(norm=norm, out_channels=32).eval()
    assert not any(
        n.endswith("bias") and "fpn_" in n and ".norm" not in n for n, _ in neck.named_parameters()
    )
    out = neck(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize(
    "extra, names",
    [
        ("none", ["p2", "p3", "p4", "p5"]),
        ("p6_subsample", ["p2", "p3", "p4", "p5", "p6"]),
        ("p6p7_c5", ["p2", "p3", "p4", "p5", "p6", "p7"]),
        ("p6p7_p5", ["p2", "p3", "p4", "p5", "p6", "p7"]),
    ],
)
def test_extra_levels_from_config(extra, names):
    cfg = plugin_cfg()
    cfg.merge_from_list(
        [
            "MODEL.FPN.BOTTOM_UP",
            "build_toy_bottom_up",
            "MODEL.FPN.IN_FEATURES",
            IN,
            "MODEL.FPN.EXTRA_LEVELS",
            extra,
            "MODEL.FPN.OUT_CHANNELS",
            16,
        ]
    )
    neck = build_backbone(cfg)
    out = neck(torch.randn(1, 3, 128, 128))
    assert list(out) == names
    if extra == "p6p7_c5":
        assert neck.top_block.p6.in_channels == 20
    if extra == "p6p7_p5":
        assert neck.top_block.p6.in_channels == 16


def test_any_registered_bottom_up_from_config():
    cfg = plugin_cfg()
    cfg.merge_from_list(["MODEL.FPN.BOTTOM_UP", "build_toy_bottom_up", "MODEL.FPN.IN_FEATURES", IN])
    neck = build_backbone(cfg)
    assert isinstance(neck.bottom_up, ToyBottomUp)
    assert neck(torch.randn(1, 3, 64, 64))["p2"].shape == (1, 256, 16, 16)


@pytest.mark.parametrize(
    "opts, words",
    [
        (["MODEL.FPN.IN_FEATURES", ["c2", "c3", "c5"]], ["MODEL.FPN.IN_FEATURES", "do not double"]),
        (
            ["MODEL.FPN.IN_FEATURES", ["c2", "c3", "c6"]],
            ["MODEL.FPN.IN_FEATURES", "'c6'", "does not produce"],
        ),
        (["MODEL.FPN.UPSAMPLE", "cubic"], ["MODEL.FPN.UPSAMPLE", "'cubic'", "nearest"]),
        (["MODEL.FPN.FUSE_TYPE", "max"], ["MODEL.FPN.FUSE_TYPE", "'max'", "sum"]),
        (["MODEL.FPN.EXTRA_LEVELS", "p6p7p8"], ["MODEL.FPN.EXTRA_LEVELS", "p6_subsample"]),
        (["MODEL.FPN.NORM", "WeirdNorm"], ["MODEL.FPN.NORM", "GN"]),
        (
            ["MODEL.FPN.TOP_DOWN", False, "MODEL.FPN.LATERAL", False],
            ["MODEL.FPN.TOP_DOWN", "MODEL.FPN.LATERAL"],
        ),
        (
            ["MODEL.FPN.BOTTOM_UP", "build_no_such_backbone"],
            ["MODEL.FPN.BOTTOM_UP", "build_resnet_backbone"],
        ),
        (["MODEL.FPN.IN_FEATURES", []], ["MODEL.FPN.IN_FEATURES"]),
    ],
)
def test_bad_config_fails_at_build_naming_the_key(opts, words):
    cfg = plugin_cfg()
    cfg.merge_from_list(["MODEL.FPN.BOTTOM_UP", "build_toy_bottom_up", "MODEL.FPN.IN_FEATURES", IN])
    cfg.merge_from_list(opts)
    with pytest.raises(ValueError) as e:
        build_backbone(cfg)
    for w in words:
        assert w in str(e.value)
