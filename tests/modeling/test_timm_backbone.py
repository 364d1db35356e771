"""timm networks as the FPN's bottom-up pathway (MODEL.FPN.BOTTOM_UP: build_timm_backbone).

A timm ResNet-18 matches Detectron2's ResNet-18 in output channels, strides, map sizes and what
FREEZE_AT freezes. An EfficientNet, a ConvNeXt and a MobileNetV3 (the smallest variants, random
weights, configs/quickstart_timm.yaml) each build the plugin's detector, train a few iterations on
the embedded shapes, are evaluated with COCO AP and exported by tracing (run on another image size,
equal to eager mode). Norm freezing keeps timm's fused BatchNorm + activation layers' outputs.
Nothing is downloaded: PRETRAINED True is checked with the download stack replaced by one that
fails as without network, and WEIGHTS with a local file written here.
"""

import copy
import logging
import os
import sys

import pytest
import timm
import torch

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.modeling.backbone import BACKBONE_REGISTRY, build_resnet_backbone

from fpn_plugin.config import get_plugin_cfg
from fpn_plugin.engine import FPNTrainer
from fpn_plugin.export import compare_detections, eager_detections, export_tracing, run_traced
from fpn_plugin.modeling import timm_backbone
from fpn_plugin.modeling.timm_backbone import TimmBottomUp, freeze_batchnorm
from fpn_plugin.utils.testing import make_trained_like
from tests.conftest import REPO
from tests.engine.test_training import _cleanup_catalog, data_root, tiny_cfg  # noqa: F401

CONFIG = "quickstart_timm.yaml"
#: Smaller images than tests/engine/test_training.py's TINY (which these opts override).
SMALL = [
    "DATASETS.FPN_SHAPES.IMAGE_SIZE",
    128,
    "INPUT.MIN_SIZE_TRAIN",
    "(128,)",
    "INPUT.MAX_SIZE_TRAIN",
    128,
    "INPUT.MIN_SIZE_TEST",
    128,
    "INPUT.MAX_SIZE_TEST",
    128,
    "SOLVER.MAX_ITER",
    2,
    "SOLVER.CHECKPOINT_PERIOD",
    100,
]
#: One of each family, the smallest variant: (name, OUT_INDICES of strides 4..32).
FAMILIES = [
    ("efficientnet_b0", [1, 2, 3, 4]),
    ("convnext_atto", [0, 1, 2, 3]),
    ("mobilenetv3_small_050", [1, 2, 3, 4]),
]


def timm_cfg(name="resnet18", out_indices=(1, 2, 3, 4), *opts):
    cfg = get_plugin_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(
        [
            "MODEL.TIMM.NAME",
            name,
            "MODEL.TIMM.OUT_INDICES",
            list(out_indices),
            "MODEL.FPN.IN_FEATURES",
            [f"stage{i}" for i in out_indices],
        ]
        + list(opts)
    )
    return cfg


def _param_shapes(module, trainable):
    return sorted(tuple(p.shape) for p in module.parameters() if p.requires_grad == trainable)


def test_timm_resnet_matches_detectron2_resnet():
    """timm's resnet18 and Detectron2's R18: same channels, strides, map sizes (also for sizes that
    are not multiples of 32), divisibility, and FREEZE_AT 2 freezes the same convolutions."""
    cfg = timm_cfg("resnet18", (1, 2, 3, 4), "MODEL.TIMM.FREEZE_AT", 2)
    ours = BACKBONE_REGISTRY.get("build_timm_backbone")(cfg, ShapeSpec(channels=3))
    d2_cfg = get_plugin_cfg()
    d2_cfg.merge_from_list(
        [
            "MODEL.RESNETS.DEPTH",
            18,
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            64,
            "MODEL.RESNETS.NORM",
            "BN",
            "MODEL.RESNETS.OUT_FEATURES",
            ["res2", "res3", "res4", "res5"],
            "MODEL.BACKBONE.FREEZE_AT",
            2,
        ]
    )
    ref = build_resnet_backbone(d2_cfg, ShapeSpec(channels=3))
    pairs = list(zip(["stage1", "stage2", "stage3", "stage4"], ["res2", "res3", "res4", "res5"]))
    assert list(ours.output_shape()) == [a for a, _ in pairs]
    for a, b in pairs:
        assert ours.output_shape()[a] == ref.output_shape()[b], (a, b)
    assert [ours.output_shape()[a].stride for a, _ in pairs] == [4, 8, 16, 32]
    assert ours.size_divisibility == 32
    for size in ((96, 160), (100, 131)):
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            got, want = ours(x), ref(x)
        for a, b in pairs:
            assert got[a].shape == want[b].shape, (size, a, got[a].shape, want[b].shape)
    # FREEZE_AT 2 = stem + res2, as Detectron2: the same convolutions frozen, BatchNorms frozen.
    assert _param_shapes(ours, False) == _param_shapes(ref, False) and _param_shapes(ours, False)
    assert _param_shapes(ours, True) == _param_shapes(ref, True)

    def frozen_norms(net):
        return len([m for m in net.modules() if isinstance(m, FrozenBatchNorm2d)])

    assert frozen_norms(ours) == frozen_norms(ref) == 5


@pytest.fixture(scope="module")
def sample_images():
    """(3, H, W) float32 RGB in [0, 255]: the traced size, and another one."""
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 128, 128, generator=g) * 255, torch.rand(3, 96, 160, generator=g) * 255]


@pytest.mark.parametrize("name, out_indices", FAMILIES)
def test_family_trains_evaluates_and_exports(name, out_indices, data_root, tmp_path, sample_images):
    opts = [
        "MODEL.TIMM.NAME",
        name,
        "MODEL.TIMM.OUT_INDICES",
        out_indices,
        "MODEL.FPN.IN_FEATURES",
        [f"stage{i}" for i in out_indices],
    ]
    cfg = tiny_cfg(data_root, tmp_path, *SMALL, *opts, config=CONFIG)
    torch.manual_seed(0)
    trainer = FPNTrainer(cfg)
    bottom_up = trainer.model.backbone.bottom_up
    assert isinstance(bottom_up, TimmBottomUp)
    assert [s.stride for s in bottom_up.output_shape().values()] == [4, 8, 16, 32]
    before = {k: v.clone() for k, v in bottom_up.state_dict().items()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    # The bottom-up was trained (it has gradients through the pyramid).
    after = bottom_up.state_dict()
    floats = [k for k in before if before[k].is_floating_point()]
    assert any(not torch.equal(before[k], after[k]) for k in floats)
    results = FPNTrainer.test(cfg, trainer.model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}

    model = trainer.model.eval()
    make_trained_like(model)  # detect many objects, so that the comparison checks many
    traced, names = export_tracing(model, sample_images[0])
    for image in sample_images:  # the second one has another size than the traced one
        ref = eager_detections(model, image)
        got = run_traced(traced, image, names)
        assert len(ref["scores"]) >= 20, name
        result = compare_detections(ref, got, 1e-3)
        assert result["ok"] == 1.0 and result["matched"] >= len(ref["scores"]) - 2, result


def test_norm_freezing_keeps_timm_fused_norm_activation():
    """NORM FrozenBN: every BatchNorm frozen (timm's BatchNorm+activation layers keep their
    activation: same outputs in eval mode), and nothing left to train in them."""
    torch.manual_seed(0)
    plain = TimmBottomUp("mobilenetv3_small_050", [1, 2, 3, 4]).eval()
    with torch.no_grad():
        for m in plain.modules():  # statistics and affine other than the initial 0/1
            if isinstance(m, torch.nn.BatchNorm2d):
                for t in (m.running_mean, m.bias):
                    t.uniform_(-0.1, 0.1)
                for t in (m.running_var, m.weight):
                    t.uniform_(0.5, 2)
    frozen = copy.deepcopy(plain)
    freeze_batchnorm(frozen.model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    kinds = {type(m).__name__ for m in frozen.modules()}
    assert {"FrozenBatchNormAct2d", "FrozenBatchNorm2d"} <= kinds, kinds
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        want, got = plain(x), frozen(x)
    for k in want:
        # Equal to float rounding (the frozen norms fold statistics and affine in another order).
        scale = float(want[k].abs().max())
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-4 * scale)
    # Through the config: the BatchNorms' affine parameters are buffers now, the convs still train.
    cfg = timm_cfg("mobilenetv3_small_050", (1, 2, 3, 4), "MODEL.TIMM.NORM", "FrozenBN")
    bottom_up = build_backbone(cfg).bottom_up
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in bottom_up.modules())
    assert all(p.requires_grad for p in bottom_up.parameters())


def test_freeze_at_freezes_the_stem_and_stages_up_to_its_stride():
    # EfficientNet: level 0 (blocks.0) has stride 2, level 1 (blocks.1) stride 4.
    net = TimmBottomUp("efficientnet_b0", [1, 2, 3, 4], freeze_at=2)
    frozen = {
        n.split(".")[1] + ("." + n.split(".")[2] if n.startswith("model.blocks") else "")
        for n, p in net.named_parameters()
        if not p.requires_grad
    }
    assert frozen == {"conv_stem", "blocks.0", "blocks.1"}, frozen
    assert isinstance(net.model.bn1, timm.layers.FrozenBatchNormAct2d)
    assert isinstance(net.model.blocks[2][0].bn1, torch.nn.BatchNorm2d)  # trained: unchanged
    # In training mode the frozen norms keep their statistics, the others update theirs.
    frozen_mean = net.model.blocks[1][0].bn1.running_mean.clone()
    trained_mean = net.model.blocks[2][0].bn1.running_mean.clone()
    net.train()(torch.rand(2, 3, 64, 64))
    assert torch.equal(net.model.blocks[1][0].bn1.running_mean, frozen_mean)
    assert not torch.equal(net.model.blocks[2][0].bn1.running_mean, trained_mean)
    # ConvNeXt: its first level has stride 4, so FREEZE_AT 1 freezes the stem only.
    net = TimmBottomUp("convnext_atto", [0, 1, 2, 3], freeze_at=1)
    frozen = {n.split(".")[1] for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"stem_0", "stem_1"}
    # A FREEZE_AT past the last output freezes everything built.
    net = TimmBottomUp("mobilenetv3_small_050", [1, 2], freeze_at=5)
    assert not any(p.requires_grad for p in net.parameters())


def test_negative_out_indices_count_from_the_last_level():
    net = TimmBottomUp("mobilenetv3_small_050", [-3, -2, -1])
    assert list(net.output_shape()) == ["stage2", "stage3", "stage4"]
    assert [s.stride for s in net.output_shape().values()] == [8, 16, 32]


@pytest.mark.parametrize(
    "opts, words",
    [
        (["MODEL.TIMM.NAME", "no_such_net"], ["MODEL.TIMM.NAME", "timm.list_models"]),
        (["MODEL.TIMM.OUT_INDICES", []], ["MODEL.TIMM.OUT_INDICES", "non-empty"]),
        (
            ["MODEL.TIMM.OUT_INDICES", [1, 2, 9]],
            ["MODEL.TIMM.OUT_INDICES", "out of range", "5 feature levels"],
        ),
        (["MODEL.TIMM.OUT_INDICES", [3, 1]], ["MODEL.TIMM.OUT_INDICES", "increasing"]),
        (["MODEL.TIMM.WEIGHTS", "/no/such/weights.pth"], ["MODEL.TIMM.WEIGHTS", "is not a file"]),
        (["MODEL.TIMM.FREEZE_AT", -1], ["MODEL.TIMM.FREEZE_AT", ">= 0"]),
        (["MODEL.TIMM.NORM", "GN"], ["MODEL.TIMM.NORM", "FrozenBN"]),
        (
            ["MODEL.TIMM.PRETRAINED", True, "MODEL.TIMM.WEIGHTS", __file__],
            ["PRETRAINED", "WEIGHTS", "only one"],
        ),
        # The pyramid's own checks, on the timm outputs' names and strides.
        (
            ["MODEL.FPN.IN_FEATURES", ["stage1", "stage3"]],
            ["MODEL.FPN.IN_FEATURES", "do not double"],
        ),
        (["MODEL.FPN.IN_FEATURES", ["res2", "res3"]], ["MODEL.FPN.IN_FEATURES", "stage1"]),
    ],
)
def test_bad_values_name_the_key(opts, words):
    cfg = timm_cfg("mobilenetv3_small_050", (1, 2, 3, 4), *opts)
    with pytest.raises(ValueError) as e:
        build_backbone(cfg)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_network_whose_strides_do_not_double_gets_the_pyramid_error():
    # A ViT's feature levels all have stride 16.
    cfg = timm_cfg("test_vit", (3, 4, 5))
    words = r"MODEL.FPN.IN_FEATURES .* strides \[16, 16, 16\].*do not double"
    with pytest.raises(ValueError, match=words):
        build_backbone(cfg)


def test_missing_timm_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ImportError, match=r"MODEL.FPN.BOTTOM_UP.*pip install timm"):
        build_backbone(timm_cfg())


@pytest.fixture
def no_network(monkeypatch):
    """timm's two download paths fail as they do without network; the calls are recorded."""
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise OSError("Network is unreachable (replaced in the test)")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", offline)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", offline)
    return calls


def test_pretrained_without_network_says_what_to_do(no_network):
    cfg = timm_cfg("mobilenetv3_small_050", (1, 2, 3, 4))
    build_backbone(cfg)  # PRETRAINED False (the default): no download is tried
    assert not no_network
    cfg.MODEL.TIMM.PRETRAINED = True
    with pytest.raises(ValueError) as e:
        build_backbone(cfg)
    assert no_network, "a download should have been tried"
    for words in (
        "MODEL.TIMM.PRETRAINED",
        "Network is unreachable",
        "MODEL.TIMM.WEIGHTS",
        "PRETRAINED False",
    ):
        assert words in str(e.value), str(e.value)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_local_weights_file_loads_and_checks_normalisation(no_network, tmp_path):
    """MODEL.TIMM.WEIGHTS: timm's classification checkpoint (classifier included) loads into the
    features model without any download; BGR inputs with these weights get a warning."""
    torch.manual_seed(1)
    full = timm.create_model("mobilenetv3_small_050")
    path = str(tmp_path / "mobilenetv3_small_050.pth")
    torch.save(full.state_dict(), path)
    cfg = timm_cfg("mobilenetv3_small_050", (1, 2, 3, 4), "MODEL.TIMM.WEIGHTS", path)
    records = _Records()
    timm_backbone.logger.addHandler(records)
    try:
        bottom_up = build_backbone(cfg).bottom_up
        assert not records.messages  # the config's RGB ImageNet normalisation is timm's
        cfg.merge_from_list(["INPUT.FORMAT", "BGR", "MODEL.PIXEL_MEAN", [103.53, 116.28, 123.675]])
        build_backbone(cfg)
    finally:
        timm_backbone.logger.removeHandler(records)
    assert not no_network
    loaded, saved = bottom_up.model.state_dict(), full.state_dict()
    for key in ("conv_stem.weight", "blocks.5.0.conv.weight"):
        assert torch.equal(loaded[key], saved[key]), key
    assert len(records.messages) == 1, records.messages
    assert "INPUT.FORMAT 'RGB'" in records.messages[0], records.messages
    # A checkpoint of another network is refused with the key's name.
    cfg.MODEL.TIMM.NAME = "efficientnet_b0"
    with pytest.raises(ValueError, match=r"MODEL.TIMM.WEIGHTS .* loaded into efficientnet_b0"):
        build_backbone(cfg)


def test_plain_detector_builds_from_the_full_size_config():
    """configs/convnext_t_fpn.yaml builds (random weights, nothing downloaded) with ConvNeXt-T's
    stages as C2..C5, and runs one small image."""
    cfg = get_plugin_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "convnext_t_fpn.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    assert not cfg.MODEL.TIMM.PRETRAINED and not cfg.MODEL.TIMM.WEIGHTS and not cfg.MODEL.WEIGHTS
    assert cfg.INPUT.FORMAT == "RGB"
    model = build_model(cfg).eval()
    shapes = model.backbone.bottom_up.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "stage0": (96, 4),
        "stage1": (192, 8),
        "stage2": (384, 16),
        "stage3": (768, 32),
    }
    with torch.no_grad():
        model([{"image": torch.rand(3, 64, 96) * 255}])
