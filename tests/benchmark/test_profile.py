"""tools/fpn_bench/profile.py: a call's time split by kind of operator."""

import pytest
import torch
from torch import nn

from fpn_bench.profile import (
    KINDS,
    OUTSIDE,
    format_profile,
    kind_of,
    matmul_rate,
    multiply_adds,
    op_profile,
)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("aten::mkldnn_convolution", "convolution"),
        ("aten::conv2d", "convolution"),
        ("torchvision::roi_align", "RoI align"),
        ("torchvision::nms", "NMS"),
        ("aten::addmm", "matrix product"),
        ("aten::mm", "matrix product"),
        ("aten::_native_batch_norm_legit_no_training", "batch norm"),
        ("aten::sort", "sort / top-k"),
        ("aten::upsample_nearest2d", "resize"),
        ("aten::add", "other operators"),
    ],
)
def test_kind_of(name, kind):
    assert kind_of(name) == kind


def test_op_profile_finds_the_convolutions_and_the_matrix_products():
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 48 * 48, 256)
    ).eval()
    x = torch.rand(4, 3, 48, 48)

    def run():
        with torch.no_grad():
            model(x)

    p = op_profile(run, reps=2)
    assert p["convolution"] > 0 and p["matrix product"] > 0
    assert p["NMS"] == 0 and p["RoI align"] == 0
    inside = sum(v for k, v in p.items() if k not in (OUTSIDE, "total"))
    assert inside <= p["total"] * 1.05 and p[OUTSIDE] >= 0
    table = format_profile({"eager": p, "again": p})
    assert table.splitlines()[0] == "| kind | eager | again |"
    assert len(table.splitlines()) == 2 + len(KINDS) + 3


def test_multiply_adds_and_matmul_rate():
    from detectron2.modeling import build_model

    from tests.conftest import plugin_cfg

    model = build_model(plugin_cfg("configs/quickstart.yaml")).eval()
    small, large = torch.rand(3, 128, 160) * 255, torch.rand(3, 256, 320) * 255
    # The backbone and the RPN scale with the image; the RoI heads do not.
    assert (
        multiply_adds(model, small) < multiply_adds(model, large) < 4 * multiply_adds(model, small)
    )
    assert 1e8 < matmul_rate(size=256, reps=2) < 1e13
