"""The full BiFPN (EfficientDet): shapes, the nodes of Fig. 2d / Eq. 4, repeated layers, gradients,
execution strategies, the detectors on the embedded data, clear errors."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling import build_backbone, build_model

from fpn_plugin.accel import AccelOptions, accelerate
from fpn_plugin.accel.channels_last import ChannelsLast
from fpn_plugin.accel.strategy import strategies_of
from fpn_plugin.modeling import BiFPN, BiFPNLayer, BiFPNNode, FastNormalizedFusion
from tests.conftest import REPO, plugin_cfg
from tests.engine.test_training import _cleanup_catalog, data_root  # noqa: F401  (fixtures)
from tests.modeling.test_neck import ToyBottomUp
from tests.modeling.test_path_aggregation import train_neck

IN = ["c3", "c4", "c5"]  # strides 8, 16, 32; 12, 16, 20 channels


def _bifpn(**kwargs):
    torch.manual_seed(0)
    args = dict(bottom_up=ToyBottomUp(), in_features=IN, out_channels=16, num_layers=2)
    args.update(kwargs)
    return BiFPN(**args)


def _randomize(module, seed=1):
    """Raw fusion weights in [-0.5, 2) (some negative: the ReLU matters) and BN statistics and
    affine parameters away from identity, so that the hand computations below are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, FastNormalizedFusion):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 2.5 - 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


def test_shapes_strides_names_and_channel_maps():
    neck = _bifpn().eval()
    out = neck(torch.randn(1, 3, 256, 384))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        f"p{k}": (1, 16, 256 // 2**k, 384 // 2**k) for k in range(3, 8)
    }
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    assert {k: (s.stride, s.channels) for k, s in neck.output_shape().items()} == {
        f"p{k}": (2**k, 16) for k in range(3, 8)
    }
    assert neck.size_divisibility == 128
    # 1x1 conv + BN only where C_k's channels are not d (c4 has 16): P3, P5, and P6 from C5.
    top = {n.split(".")[0] for n, _ in neck.named_parameters()}
    assert top == {"bottom_up", "input_conv3", "input_conv5", "input_conv6", "layers"}
    names = {
        n
        for n, _ in neck.named_parameters()
        if n.startswith("layers.0.") and n.endswith("fusion.weight")
    }
    assert names == {f"layers.0.p{k}_td.fusion.weight" for k in (4, 5, 6)} | {
        f"layers.0.p{k}_out.fusion.weight" for k in range(3, 8)
    }
    assert "layers.1.p4_out.conv.pointwise.norm.running_var" in neck.state_dict()
    # Inputs that are not multiples of 128 still give levels on each other's grids.
    sizes = [tuple(v.shape[-2:]) for v in neck(torch.randn(1, 3, 100, 70)).values()]
    assert sizes == [(13, 9), (7, 5), (4, 3), (2, 2), (1, 1)]


def test_fusion_weights_per_node_2_or_3_inputs_normalized():
    layer = _randomize(BiFPNLayer([3, 4, 5, 6, 7], 8))
    inputs = {n: m.fusion.weight.numel() for n, m in layer.named_children()}
    assert inputs == {
        "p6_td": 2,
        "p5_td": 2,
        "p4_td": 2,
        "p3_out": 2,
        "p4_out": 3,
        "p5_out": 3,
        "p6_out": 3,
        "p7_out": 2,
    }
    assert any((m.fusion.weight < 0).any() for m in layer.children())
    for name, node in layer.named_children():
        w = node.fusion.normalized_weights()
        assert (w >= 0).all() and abs(w.sum().item() - 1) < 1e-3, name


def test_one_node_by_hand():
    """P_k^out = swish(BN(pointwise(depthwise((w1 I1 + w2 I2 + w3 I3) / (eps + w1 + w2 + w3)))))."""
    node = _randomize(BiFPNNode(3, 8, norm="BN", eps=1e-4)).eval()
    with torch.no_grad():
        node.fusion.weight.copy_(torch.tensor([1.5, -0.3, 0.5]))
    a, b, c = (torch.randn(2, 8, 6, 5) for _ in range(3))
    fused = (1.5 * a + 0.5 * c) / (1e-4 + 2.0)
    dw, pw, bn = node.conv.depthwise, node.conv.pointwise, node.conv.pointwise.norm
    y = F.conv2d(fused, dw.weight, dw.bias, padding=1, groups=8)
    y = F.conv2d(y, pw.weight)
    y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    y = y * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(node([a, b, c]), y * torch.sigmoid(y))
    assert dw.groups == 8 and dw.weight.shape == (8, 1, 3, 3) and pw.weight.shape == (8, 8, 1, 1)


def test_layer_is_equation_4_and_uses_the_same_level_input():
    """Every node gets the maps of Fig. 2d: P_k^td from (P_k^in, up(P_{k+1}^td)), P_k^out from
    (P_k^in, P_k^td, maxpool(P_{k-1}^out)), the ends with two inputs."""
    layer = _randomize(BiFPNLayer([3, 4, 5, 6, 7], 8)).eval()
    p_in = [torch.randn(1, 8, 64 // 2**i, 32 // 2**i) for i in range(5)]
    seen, made = {}, {}
    for name, node in layer.named_children():
        node.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0]))
        node.register_forward_hook(lambda m, args, out, name=name: made.__setitem__(name, out))
    with torch.no_grad():
        p_out = layer(p_in)

    def up(x):
        return F.interpolate(x, scale_factor=2.0, mode="nearest")

    def down(x):
        return F.max_pool2d(x, 3, stride=2, padding=1)

    expected = {
        "p6_td": [p_in[3], up(p_in[4])],
        "p5_td": [p_in[2], up(made["p6_td"])],
        "p4_td": [p_in[1], up(made["p5_td"])],
        "p3_out": [p_in[0], up(made["p4_td"])],
        "p4_out": [p_in[1], made["p4_td"], down(made["p3_out"])],
        "p5_out": [p_in[2], made["p5_td"], down(made["p4_out"])],
        "p6_out": [p_in[3], made["p6_td"], down(made["p5_out"])],
        "p7_out": [p_in[4], down(made["p6_out"])],
    }
    assert list(seen) == list(expected)  # the order they run: top-down, then bottom-up
    for name, maps in expected.items():
        assert len(seen[name]) == len(maps), name
        for got, want in zip(seen[name], maps):
            assert torch.equal(got, want), name
    assert seen["p4_out"][0] is p_in[1]  # the extra same-level edge: P_4^in itself
    for k, out in zip(range(3, 8), p_out):
        assert out is made[f"p{k}_out"]
    # The same-level input changes the 3-input node's output (P_k^td and the finer map fixed) ...
    node, inputs = layer.p5_out, seen["p5_out"]
    other = [torch.randn_like(p_in[2])] + inputs[1:]
    with torch.no_grad():
        node.fusion.weight.copy_(torch.tensor([1.0, 0.5, 0.5]))
        assert not torch.allclose(node(inputs), node(other))
        # ... through its fusion weight: with that weight at 0 (ReLU of a negative raw weight),
        # the input no longer matters.
        node.fusion.weight[0] = -1.0
        assert torch.equal(node(inputs), node(other))


def test_extra_levels_come_from_c5_by_conv_and_max_pooling():
    neck = _randomize(_bifpn(num_layers=1)).eval()
    seen = []
    neck.layers[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        neck(x)
        c = neck.bottom_up(x)
    p_in = seen[0]
    torch.testing.assert_close(p_in[0], neck.input_conv3(c["c3"]))
    assert torch.equal(p_in[1], c["c4"])  # 16 channels already: no conv
    torch.testing.assert_close(p_in[2], neck.input_conv5(c["c5"]))
    p6 = F.max_pool2d(neck.input_conv6(c["c5"]), 3, stride=2, padding=1)
    torch.testing.assert_close(p_in[3], p6)
    torch.testing.assert_close(p_in[4], F.max_pool2d(p6, 3, stride=2, padding=1))
    assert not torch.allclose(p_in[2], F.interpolate(p_in[3], scale_factor=2.0))  # not P5's conv


def test_num_layers_repeats_and_each_layer_feeds_the_next():
    counts = {}
    for n in (1, 2, 3):
        neck = _bifpn(num_layers=n)
        counts[n] = sum(
            p.numel() for name, p in neck.named_parameters() if not name.startswith("bottom_up")
        )
        assert len(neck.layers) == n
    per_layer = sum(p.numel() for p in _bifpn(num_layers=1).layers.parameters())
    assert per_layer > 0 and counts[2] - counts[1] == counts[3] - counts[2] == per_layer
    neck = _randomize(_bifpn(num_layers=3)).eval()
    ins, outs = [], []
    for layer in neck.layers:
        layer.register_forward_pre_hook(lambda m, args: ins.append(args[0]))
        layer.register_forward_hook(lambda m, args, out: outs.append(out))
    with torch.no_grad():
        result = neck(torch.randn(1, 3, 128, 128))
    assert len(ins) == len(outs) == 3
    for k in (1, 2):
        assert all(a is b for a, b in zip(ins[k], outs[k - 1])), k
    assert all(a is b for a, b in zip(result.values(), outs[-1]))
    # The layers have their own weights: the third one changes what the second made.
    assert not any(torch.allclose(a, b) for a, b in zip(outs[1], outs[2]))


def test_gradients_reach_every_fusion_weight_and_conv():
    neck = _bifpn(num_layers=2).train()  # fusion weights at their initial 1: every one active
    out = neck(torch.randn(2, 3, 128, 128))
    sum(v.square().mean() for v in out.values()).backward()
    fusion = [n for n, _ in neck.named_parameters() if n.endswith("fusion.weight")]
    assert len(fusion) == 2 * 8
    for name, p in neck.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith("fusion.weight"):
            assert (p.grad != 0).all(), name  # each input's weight, not only the node's
        else:
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("norm", ["", "GN"])
def test_other_norms_build_and_run(norm):
    neck = _bifpn(out_channels=32, norm=norm, num_layers=1)
    norms = [
        m for n, m in neck.named_modules() if n.endswith(".norm") and not n.startswith("bottom_up")
    ]
    if norm == "":
        assert not norms and neck.layers[0].p4_out.conv.pointwise.bias is not None
    else:
        assert len(norms) == 8 + 4 and all(
            isinstance(m, torch.nn.GroupNorm) for m in norms
        )  # 4 input convs
    out = neck(torch.randn(1, 3, 256, 256))  # P7 2x2: GN with 1 channel per group needs > 1 pixel
    assert all(torch.isfinite(v).all() for v in out.values())


def test_accelerate_steps_aside_or_keeps_outputs_to_rounding():
    plain = _randomize(_bifpn()).eval()
    x = torch.randn(1, 3, 256, 128)
    with torch.no_grad():
        ref = plain(x)
        # The defaults (FPN-specific strategies) do not apply: the outputs stay bit-identical.
        default = accelerate(copy.deepcopy(plain), AccelOptions())(x)
        fast = accelerate(copy.deepcopy(plain), AccelOptions(channels_last=True))
        nhwc = fast(x)
        half = accelerate(copy.deepcopy(plain), AccelOptions(autocast_dtype="bfloat16"))(x)
    assert ChannelsLast in strategies_of(fast)
    assert fast.layers[0].p4_out.conv.pointwise.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    assert nhwc["p3"].is_contiguous(memory_format=torch.channels_last)
    assert fast.state_dict().keys() == plain.state_dict().keys()
    for k in ref:
        assert torch.equal(default[k], ref[k]), k
        torch.testing.assert_close(nhwc[k], ref[k], rtol=1e-4, atol=1e-5)
        assert half[k].dtype == torch.float32
        assert (half[k] - ref[k]).abs().max() <= 0.1 * ref[k].abs().max(), k


def test_configs_build_the_detectors_they_describe():
    cfg = plugin_cfg("configs/bifpn_full_r50.yaml")
    model = build_model(cfg)
    assert isinstance(model.backbone, BiFPN) and len(model.backbone.layers) == 3
    assert list(model.backbone.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    assert model.backbone.output_shape()["p3"].channels == 256
    assert model.proposal_generator.in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert model.roi_heads.in_features == ["p3", "p4", "p5", "p6"]
    assert type(model.backbone.layers[0].p4_out.conv.pointwise.norm).__name__ == "SyncBatchNorm"
    for name, meta in [
        ("quickstart_bifpn.yaml", "GeneralizedRCNN"),
        ("quickstart_efficientdet.yaml", "RetinaNet"),
    ]:
        model = build_model(plugin_cfg(os.path.join("configs", name)))
        assert type(model).__name__ == meta and isinstance(model.backbone, BiFPN), name
        assert model.backbone.output_shape()["p7"].stride == 128 and len(model.backbone.layers) == 3


def test_efficientdet_d0_like_is_efficientnet_b0_and_the_full_bifpn():
    pytest.importorskip("timm")
    cfg = plugin_cfg("configs/efficientdet_d0_like.yaml")
    model = build_model(cfg).eval()
    neck = model.backbone
    assert isinstance(neck, BiFPN) and len(neck.layers) == 3
    assert (
        type(neck.bottom_up).__name__ == "TimmBottomUp"
        and neck.bottom_up.model_name == "efficientnet_b0"
    )
    assert {k: (s.stride, s.channels) for k, s in neck.output_shape().items()} == {
        f"p{k}": (2**k, 64) for k in range(3, 8)
    }
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert len(model.head.cls_subnet) == 3 * 3  # 3 x (conv, per-level BN, ReLU)
    # The timm bottom-up and the BiFPN in channels-last: the same features to float rounding.
    x = torch.rand(1, 3, 128, 128) * 255
    fast = accelerate(copy.deepcopy(neck), AccelOptions(channels_last=True))
    with torch.no_grad():
        a, b = neck(x), fast(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config", ["quickstart_bifpn.yaml", "quickstart_efficientdet.yaml"])
def test_quickstart_detectors_train_and_evaluate(data_root, tmp_path, config):  # noqa: F811
    train_neck(data_root, tmp_path, BiFPN, 3, config=config, fusion=("fusion", 3 * 8))


def _bifpn_cfg(*opts):
    cfg = plugin_cfg()
    cfg.merge_from_list(
        [
            "MODEL.BACKBONE.NAME",
            "build_bifpn_backbone",
            "MODEL.FPN.BOTTOM_UP",
            "build_toy_bottom_up",
            "MODEL.FPN.IN_FEATURES",
            IN,
            "MODEL.FPN.OUT_CHANNELS",
            16,
        ]
    )
    cfg.merge_from_list(list(opts))
    return cfg


def test_the_config_builds_what_the_keys_say():
    neck = build_backbone(
        _bifpn_cfg("MODEL.BIFPN.NUM_LAYERS", 2, "MODEL.BIFPN.NUM_EXTRA_LEVELS", 1)
    )
    assert isinstance(neck, BiFPN) and len(neck.layers) == 2
    assert list(neck.output_shape()) == ["p3", "p4", "p5", "p6"] and neck.size_divisibility == 64
    assert neck.layers[0].p4_out.fusion.eps == 1e-4
    assert isinstance(neck.layers[0].p4_out.conv.pointwise.norm, torch.nn.BatchNorm2d)
    # Each new key is documented next to its default.
    lines = open(os.path.join(REPO, "fpn_plugin", "config.py")).read().splitlines()
    for key in ("NUM_LAYERS", "NORM", "NUM_EXTRA_LEVELS", "FUSION_EPS"):
        i = next(i for i, line in enumerate(lines) if f'_set(_C.MODEL.BIFPN, "{key}"' in line)
        assert lines[i - 1].strip().startswith("#"), key


@pytest.mark.parametrize(
    "opts, words",
    [
        (["MODEL.BIFPN.NUM_LAYERS", 0], ["MODEL.BIFPN.NUM_LAYERS", ">= 1"]),
        (["MODEL.BIFPN.NORM", "XN"], ["MODEL.BIFPN.NORM", "'XN'", "'BN'"]),
        (["MODEL.BIFPN.NORM", "GN"], ["MODEL.BIFPN.NORM", "multiple of 32"]),
        (["MODEL.BIFPN.NUM_EXTRA_LEVELS", -1], ["MODEL.BIFPN.NUM_EXTRA_LEVELS", ">= 0"]),
        (["MODEL.BIFPN.FUSION_EPS", 0.0], ["MODEL.BIFPN.FUSION_EPS", "> 0"]),
        (["MODEL.FPN.UPSAMPLE", "trilinear"], ["MODEL.FPN.UPSAMPLE", "nearest"]),
        (["MODEL.FPN.OUT_CHANNELS", 0], ["MODEL.FPN.OUT_CHANNELS", "positive"]),
        (
            ["MODEL.FPN.BOTTOM_UP", "build_bifpn_backbone"],
            ["MODEL.FPN.BOTTOM_UP", "build_resnet_backbone"],
        ),
        (["MODEL.FPN.BOTTOM_UP", "no_such_net"], ["MODEL.FPN.BOTTOM_UP", "registered"]),
        (["MODEL.FPN.IN_FEATURES", ["c3", "c5"]], ["MODEL.FPN.IN_FEATURES", "do not double"]),
        (["MODEL.FPN.IN_FEATURES", ["c3", "c9"]], ["MODEL.FPN.IN_FEATURES", "does not produce"]),
        (["MODEL.FPN.IN_FEATURES", []], ["MODEL.FPN.IN_FEATURES", "empty"]),
        (
            ["MODEL.FPN.IN_FEATURES", ["c5"], "MODEL.BIFPN.NUM_EXTRA_LEVELS", 0],
            ["MODEL.FPN.IN_FEATURES", "MODEL.BIFPN.NUM_EXTRA_LEVELS", "at least 2"],
        ),
    ],
)
def test_bad_settings_raise_clear_errors(opts, words):
    with pytest.raises(ValueError) as e:
        build_backbone(_bifpn_cfg(*opts))
    for w in words:
        assert w in str(e.value), (w, str(e.value))
