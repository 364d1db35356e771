"""Default-on strategies run only on the device types where they were measured; elsewhere (e.g.
CUDA) they step aside. Checked on CPU: the decision by device, and the strategies on tensors of a
device type they were not measured on ("meta")."""

import pytest
import torch

from detectron2.modeling import build_model

from fpn_plugin.accel import AccelOptions, accelerate
from fpn_plugin.accel.devices import MEASURED_DEVICE_TYPES, roi_align_auto_path, runs_by_default
from fpn_plugin.accel.multilevel_pooler import MultiLevelROIAlign
from tests.conftest import plugin_cfg


def test_decision_by_device_type():
    cuda = torch.device("cuda")
    assert all(runs_by_default(name, torch.device("cpu")) for name in MEASURED_DEVICE_TYPES)
    assert [n for n in MEASURED_DEVICE_TYPES if runs_by_default(n, cuda)] == ["anchor_cache"]
    assert not runs_by_default("roi_align_auto", "cuda:1")
    # ROI_ALIGN "auto": on CUDA, Detectron2's RoI op level by level, in training and inference.
    assert roi_align_auto_path(cuda, gradients=True) == "per_level"
    assert roi_align_auto_path(cuda, gradients=False) == "per_level"
    assert roi_align_auto_path("cpu", gradients=True) == "embedding_bag"
    assert roi_align_auto_path("cpu", gradients=False) == "parallel"
    with pytest.raises(KeyError, match="channels_last.*not a default-on strategy"):
        runs_by_default("channels_last", "cpu")


@pytest.fixture(scope="module")
def quickstart():
    torch.manual_seed(0)
    return build_model(plugin_cfg("configs/quickstart.yaml")).eval()


def test_auto_pooler_steps_aside_where_not_measured(quickstart):
    pooler = accelerate(quickstart, AccelOptions()).roi_heads.box_pooler
    assert isinstance(pooler, MultiLevelROIAlign) and pooler.by_default
    assert pooler.pools_in_one_call(torch.zeros(1, 8, 4, 4))
    assert not pooler.pools_in_one_call(torch.zeros(1, 8, 4, 4, device="meta"))
    # Asked for by name, the embedding bag runs on any device.
    chosen = accelerate(
        build_model(plugin_cfg("configs/quickstart.yaml")).eval(),
        AccelOptions(roi_align="embedding_bag"),
    ).roi_heads.box_pooler
    assert not chosen.by_default
    assert chosen.pools_in_one_call(torch.zeros(1, 8, 4, 4, device="meta"))


def test_in_place_merge_and_anchor_cache_step_aside_where_not_measured(quickstart):
    model = accelerate(quickstart, AccelOptions())
    merge = model.backbone.top_down_merges[0]
    for device, in_place in (("cpu", True), ("meta", False)):
        lateral = torch.zeros(1, 4, 8, 8, device=device)
        with torch.no_grad():
            out = merge(lateral, torch.ones(1, 4, 4, 4, device=device), [8, 8])
        assert (out is lateral) == in_place, device
    generator = model.proposal_generator.anchor_generator
    generator.__dict__.pop("_anchor_cache", None)
    generator([torch.zeros(1, 4, 8, 8, device="meta")] * len(generator.strides))
    assert "_anchor_cache" not in generator.__dict__
    generator([torch.zeros(1, 4, 8, 8)] * len(generator.strides))
    assert "_anchor_cache" in generator.__dict__
