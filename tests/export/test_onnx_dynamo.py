"""ONNX through the dynamo exporter: torchvision's nms and roi_align, as a detector uses them, give
torchvision's results in ONNX Runtime, on sizes other than the exported ones.

A toy module (NMS, then RoIAlign of the kept boxes: ROIAlignV2 with adaptive sampling as
Detectron2's box head, and the legacy unaligned one with a fixed sampling ratio) is exported
with dynamic feature size and box count; ONNX Runtime must keep the same boxes and pool the same
values (to float rounding). NMS keeping a single box must work too (torchvision's own fake kernel
asserts at least 2).
"""

import pytest
import torch
import torchvision

from fpn_plugin.export.common import ExportError
from fpn_plugin.export.fake_kernels import register_fake_kernels
from fpn_plugin.export.onnx_dynamo import export_onnx_dynamo, onnx_session, run_onnx_dynamo


class NmsRoiAlign(torch.nn.Module):
    """(1, C, H, W) features, (N, 4) boxes (input pixels, stride 4), (N,) scores -> kept indices
    (K,), (K, C, 7, 7) ROIAlignV2 (sampling 0) and (K, C, 7, 7) RoIAlign (sampling 2)."""

    def forward(self, features, boxes, scores):
        keep = torchvision.ops.nms(boxes, scores, 0.5)
        kept = boxes[keep]
        rois = torch.cat([torch.zeros_like(kept[:, :1]), kept], dim=1)
        v2 = torchvision.ops.roi_align(features, rois, (7, 7), 0.25, 0, True)
        v1 = torchvision.ops.roi_align(features, rois, (7, 7), 0.25, 2, False)
        return keep, v2, v1


def _inputs(height, width, n, seed):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 8, height, width, generator=g)
    # Boxes partly outside the feature map, of sizes from 1 to 200 pixels (1 to 50 cells: the
    # adaptive sampling ratio varies).
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width * 4.0, height * 4.0]) - 20
    wh = torch.rand(n, 2, generator=g) * 200 + 1
    return features, torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=g)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "toy.onnx")
    h, w, n = (torch.export.Dim(k, min=2, max=4096) for k in ("h", "w", "n"))
    export_onnx_dynamo(
        NmsRoiAlign(),
        path,
        ["features", "boxes", "scores"],
        ["keep", "v2", "v1"],
        args=_inputs(20, 24, 50, 0),
        dynamic_shapes=({2: h, 3: w}, {0: n}, {0: n}),
    )
    return path


@pytest.mark.parametrize("size", [(33, 41, 300), (50, 17, 1000), (9, 13, 2)])
def test_nms_and_roi_align_match_torchvision(onnx_file, size):
    inputs = _inputs(*size, seed=sum(size))
    keep, v2, v1 = NmsRoiAlign()(*inputs)
    got_keep, got_v2, got_v1 = run_onnx_dynamo(onnx_session(onnx_file), *inputs)
    assert torch.equal(got_keep, keep)
    assert got_v2.shape == v2.shape and got_v1.shape == v1.shape
    torch.testing.assert_close(got_v2, v2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_v1, v1, rtol=1e-5, atol=1e-5)


def test_nms_of_one_box_runs_in_the_exported_program():
    """torchvision's fake kernel says NMS keeps >= 2 boxes, and torch.export turns that into a
    runtime assertion; the registered exact kernel (0 <= kept <= N) lets 1 and 0 boxes through."""
    register_fake_kernels()
    n = torch.export.Dim("n", min=0, max=4096)
    program = torch.export.export(
        NmsRoiAlign(), _inputs(20, 24, 50, 0), dynamic_shapes=({}, {0: n}, {0: n})
    )
    for count in (1, 0):
        keep, v2, _ = program.module()(*_inputs(20, 24, count, 3))
        assert keep.shape == (count,) and v2.shape == (count, 8, 7, 7)


def test_low_opset_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ExportError, match="opset 18"):
        export_onnx_dynamo(
            NmsRoiAlign(), str(tmp_path / "x.onnx"), ["f", "b", "s"], ["k", "a", "b"], opset=11
        )


def test_inputs_count_checked(onnx_file):
    with pytest.raises(ValueError, match="takes 3"):
        run_onnx_dynamo(onnx_file, torch.zeros(1, 8, 4, 4))
