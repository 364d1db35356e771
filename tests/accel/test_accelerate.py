"""fpn_plugin.accel.accelerate: one entry point, on the plugin's models and on Detectron2's own."""

import copy
import pickle

import pytest
import torch
import yaml

from detectron2.modeling import build_model
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone.fpn import FPN

from fpn_plugin.accel import AccelOptions, accelerate, plain_class, remove_strategies, strategies_of
from fpn_plugin.accel.anchor_cache import AnchorCache
from fpn_plugin.accel.blocked_layout import BlockedLayoutNeck
from fpn_plugin.accel.multilevel_pooler import MultiLevelROIAlign
from fpn_plugin.accel.parallel_pooler import ParallelROIAlign
from fpn_plugin.config import RENAMED_KEYS
from fpn_plugin.export import export_scripting, run_scripted
from fpn_plugin.utils.testing import make_trained_like
from tests.conftest import d2_cfg, plugin_cfg

ALL_ON = AccelOptions(
    channels_last=True, autocast_dtype="bfloat16", fold_frozen_bn=True, roi_align="embedding_bag"
)


def _inputs(h=320, w=448, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, h, w, generator=g) * 255, "height": h, "width": w}]


def _detections(model, inputs):
    with torch.no_grad():
        out = model(inputs)[0]["instances"]
    return out.pred_boxes.tensor, out.scores, out.pred_classes


@pytest.fixture(scope="module")
def detectron2_model():
    """Detectron2's own R50-FPN (built without the plugin's names), eval, trained-like heads."""
    torch.manual_seed(0)
    model = build_model(d2_cfg()).eval()
    make_trained_like(model)
    return model


def test_detectron2s_own_model_default_strategies_are_bit_identical(detectron2_model):
    inputs = _inputs()
    ref = _detections(detectron2_model, inputs)
    fast = accelerate(copy.deepcopy(detectron2_model))  # the default options
    assert isinstance(fast.backbone, FPN) and isinstance(fast.backbone, BlockedLayoutNeck)
    assert isinstance(fast.roi_heads.box_pooler, ParallelROIAlign)
    assert isinstance(fast.proposal_generator.anchor_generator, DefaultAnchorGenerator)
    assert isinstance(fast.proposal_generator.anchor_generator, AnchorCache)
    got = _detections(fast, inputs)
    assert len(ref[0]) > 0
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_detectron2s_own_model_with_the_vectorised_pooler(detectron2_model):
    inputs = _inputs(seed=1)
    ref = _detections(detectron2_model, inputs)
    fast = accelerate(copy.deepcopy(detectron2_model), AccelOptions(roi_align="embedding_bag"))
    assert isinstance(fast.roi_heads.box_pooler, MultiLevelROIAlign)
    got = _detections(fast, inputs)
    assert len(got[0]) == len(ref[0]) > 0
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-4)


def _tiny_model():
    torch.manual_seed(0)
    cfg = plugin_cfg("configs/quickstart.yaml")
    cfg.MODEL.RESNETS.NORM = "FrozenBN"  # so that folding applies too
    return build_model(cfg).eval()


def test_parameters_and_state_dict_are_untouched():
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters()}
    accelerate(model, ALL_ON)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k].contiguous(), v) for k, v in before.items())
    assert all(p is params[n] for n, p in model.named_parameters())


def test_disabled_leaves_the_plain_model_and_twice_is_once():
    model = accelerate(_tiny_model(), AccelOptions(enabled=False))
    assert not any(strategies_of(m) for m in model.modules())
    accelerate(model, ALL_ON)
    applied = {name: strategies_of(m) for name, m in model.named_modules()}
    assert sum(map(len, applied.values())) >= 10
    accelerate(model, ALL_ON)
    assert applied == {name: strategies_of(m) for name, m in model.named_modules()}
    remove_strategies(model)
    assert not any(strategies_of(m) for m in model.modules())
    assert all(plain_class(type(m)) is type(m) for m in model.modules())


def test_copy_pickle_and_scripting_keep_working():
    plain = _tiny_model()
    model = accelerate(
        copy.deepcopy(plain), AccelOptions(fold_frozen_bn=True, roi_align="embedding_bag")
    )
    inputs = _inputs(256, 256)
    ref = _detections(model, inputs)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert [strategies_of(m) for m in clone.modules()] == [
            strategies_of(m) for m in model.modules()
        ]
        for a, b in zip(ref, _detections(clone, inputs)):
            assert torch.equal(a, b)
    # TorchScript compiles the plain classes; the eager model keeps its strategies.
    scripted = export_scripting(model)
    out = run_scripted(scripted, inputs[0]["image"])
    plain_out = plain.inference(inputs, do_postprocess=False)[0]
    torch.testing.assert_close(
        getattr(out["pred_boxes"], "tensor", out["pred_boxes"]), plain_out.pred_boxes.tensor
    )
    assert isinstance(model.roi_heads.box_pooler, MultiLevelROIAlign)


def test_old_config_keys_keep_working(tmp_path):
    old = {
        "MODEL.FPN.CHANNELS_LAST": True,
        "MODEL.FPN.AUTOCAST_DTYPE": "bfloat16",
        "MODEL.FPN.FOLD_FROZEN_BN": True,
        "MODEL.FPN.CPU_BLOCKED_LAYOUT": False,
        "MODEL.ANCHOR_GENERATOR.CACHE_SIZE": 3,
    }
    assert set(old) | {"MODEL.FPN.PATH_AUGMENTATION", "MODEL.FPN.FUSION_EPS"} == set(RENAMED_KEYS)
    tree = {"MODEL": {}}
    for key, value in old.items():
        _, section, leaf = key.split(".")
        tree["MODEL"].setdefault(section, {})[leaf] = value
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(tree))
    cfg = plugin_cfg()
    cfg.merge_from_file(str(path))  # a user's YAML of the previous release still loads
    with pytest.warns(FutureWarning) as record:
        options = AccelOptions.from_config(cfg)
    assert (options.channels_last, options.autocast_dtype, options.fold_frozen_bn) == (
        True,
        "bfloat16",
        True,
    )
    assert (options.cpu_blocked_layout, options.anchor_cache_size) == (False, 3)
    for key in old:
        assert any(RENAMED_KEYS[key] in str(w.message) for w in record), key
    cfg.MODEL.ACCEL.ANCHOR_CACHE_SIZE = 7  # both names, two values: which one is meant?
    with pytest.raises(
        ValueError, match="MODEL.ANCHOR_GENERATOR.CACHE_SIZE.*MODEL.ACCEL.ANCHOR_CACHE_SIZE"
    ):
        AccelOptions.from_config(cfg)


def test_old_pafpn_keys_keep_working():
    cfg = plugin_cfg("configs/pafpn_r50.yaml")
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.PATH_AUGMENTATION = False
    with pytest.warns(FutureWarning, match="MODEL.PAFPN.PATH_AUGMENTATION"):
        neck = build_model(cfg).backbone
    assert not neck._path_augmentation


def test_bad_options_name_the_key():
    for kwargs, key in (
        (dict(roi_align="fastest"), "MODEL.ACCEL.ROI_ALIGN"),
        (dict(autocast_dtype="int8"), "MODEL.ACCEL.AUTOCAST_DTYPE"),
    ):
        with pytest.raises(ValueError, match=key):
            AccelOptions(**kwargs)
    cfg = d2_cfg()  # Detectron2's config, without the plugin's keys
    with pytest.raises(ValueError, match="add_fpn_plugin_config"):
        AccelOptions.from_config(cfg)
