"""The drop-in promise, checked through Detectron2's public entry points.

Each test builds what Detectron2's own tests build -- through its registries and builders, its
TorchScript recipe (``patch_instances`` / ``scripting_with_instances``), ``TracingAdapter`` with a
batch, a seeded construction -- with the plugin's components in place of ``FPN``,
``DefaultAnchorGenerator``, ``ROIPooler`` and ``StandardROIHeads``, and checks the same contract.
Configs are Detectron2's own ``get_cfg()`` with only the component names changed: the plugin's keys
take their defaults where a config lacks them.
"""

import copy

import pytest
import torch

import detectron2.export.torchscript  # noqa: F401  (Detectron2's scripting patches, as its tests use them)
from detectron2.config import get_cfg
from detectron2.export import TracingAdapter
from detectron2.export.torchscript_patch import freeze_training_mode, patch_instances
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_anchor_generator, build_backbone, build_model, build_roi_heads
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes, ImageList, Instances, RotatedBoxes
from detectron2.utils.testing import assert_instances_allclose

from fpn_plugin import FPNNeck, LevelMappingROIHeads, LevelMappingROIPooler, SharedAnchorGenerator
from fpn_plugin.utils.testing import make_trained_like, random_boxes
from tests.conftest import D2_R50_FPN, d2_cfg, plugin_cfg

#: Detectron2's usual Instances fields for scripting (its tests' list).
USUAL_FIELDS = {
    "objectness_logits": torch.Tensor,
    "proposal_boxes": Boxes,
    "pred_classes": torch.Tensor,
    "scores": torch.Tensor,
    "pred_masks": torch.Tensor,
    "pred_boxes": Boxes,
    "pred_keypoints": torch.Tensor,
    "pred_keypoint_heatmaps": torch.Tensor,
}


def _swap_names(cfg):
    cfg.MODEL.BACKBONE.NAME = "build_fpn_neck_backbone"
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "SharedAnchorGenerator"
    cfg.MODEL.ROI_HEADS.NAME = "LevelMappingROIHeads"
    return cfg


def test_built_by_detectron2s_builders_from_detectron2s_config():
    ref_cfg = d2_cfg()
    cfg = _swap_names(d2_cfg())  # no add_fpn_plugin_config: the plugin's keys take their defaults
    backbone, ref_backbone = build_backbone(cfg), build_backbone(ref_cfg)
    assert isinstance(backbone, FPNNeck) and backbone.output_shape() == ref_backbone.output_shape()
    shapes = [backbone.output_shape()[f] for f in cfg.MODEL.RPN.IN_FEATURES]
    anchors, ref_anchors = (
        build_anchor_generator(cfg, shapes),
        build_anchor_generator(ref_cfg, shapes),
    )
    assert (
        isinstance(anchors, SharedAnchorGenerator)
        and anchors.num_anchors == ref_anchors.num_anchors
    )
    features = [torch.zeros(1, 1, 100 // s.stride + 1, 150 // s.stride + 1) for s in shapes]
    for a, b in zip(anchors(features), ref_anchors(features)):
        assert torch.equal(a.tensor, b.tensor)
    heads = build_roi_heads(cfg, backbone.output_shape())
    assert isinstance(heads, LevelMappingROIHeads) and isinstance(
        heads.box_pooler, LevelMappingROIPooler
    )
    assert heads.pred_levels is False  # Detectron2's output fields unless asked


@pytest.mark.parametrize(
    "scales", [(1.0,), (1 / 4, 1 / 8), (1 / 32,), (1 / 16,), (1 / 8, 1 / 16, 1 / 32, 1 / 64)]
)
def test_pooler_takes_any_pyramid_like_detectron2s(scales):
    """Pyramids without the canonical level P4 send each RoI to the nearest level they have."""
    g = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 4, int(64 * s) + 1, int(96 * s) + 1, generator=g) for s in scales]
    boxes = [Boxes(random_boxes(20, 64, 96, g, 1.0, 90.0)) for _ in range(2)]
    args = dict(output_size=5, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2")
    assert torch.equal(
        LevelMappingROIPooler(**args)(features, boxes), ROIPooler(**args)(features, boxes)
    )


def test_pooler_with_no_images():
    pooler = LevelMappingROIPooler(
        output_size=14, scales=(1.0,), sampling_ratio=0, pooler_type="ROIAlignV2"
    )
    assert pooler([torch.rand(0, 32, 32, 32)], []).shape == (0, 32, 14, 14)


@pytest.mark.parametrize("scales", [(1 / 16,), (1 / 4, 1 / 8, 1 / 16, 1 / 32)])
def test_scripted_pooler_equals_eager_bit_for_bit(scales):
    g = torch.Generator().manual_seed(1)
    features = [
        (torch.rand(2, 4, int(160 * s), int(128 * s), generator=g) - 0.5) * 22 for s in scales
    ]
    boxes = [Boxes(random_boxes(10, 160, 128, g, 2.0, 120.0)) for _ in range(2)]
    pooler = LevelMappingROIPooler(
        output_size=7, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2"
    )
    assert torch.equal(pooler(features, boxes), torch.jit.script(pooler)(features, boxes))


def test_rotated_pooler_with_zero_angles_equals_roialignv2():
    g = torch.Generator().manual_seed(2)
    features = [torch.randn(2, 4, 10, 8, generator=g)]
    boxes = [random_boxes(10, 160, 128, g, 2.0, 120.0) for _ in range(2)]
    args = dict(output_size=5, scales=(1 / 16,), sampling_ratio=0)
    axis = LevelMappingROIPooler(**args, pooler_type="ROIAlignV2")(
        features, [Boxes(b) for b in boxes]
    )
    rotated = [
        torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2], torch.zeros(len(b), 1)], 1)
        for b in boxes
    ]
    rot = LevelMappingROIPooler(**args, pooler_type="ROIAlignRotated")(
        features, [RotatedBoxes(r) for r in rotated]
    )
    torch.testing.assert_close(rot, axis, rtol=1e-5, atol=1e-5)


def test_traced_pooler_takes_other_numbers_of_boxes():
    class Model(torch.nn.Module):
        def __init__(self, pooler):
            super().__init__()
            self.pooler = pooler

        def forward(self, x, boxes):
            return self.pooler(x, [Boxes(boxes)])

    g = torch.Generator().manual_seed(3)
    feature = torch.randn(1, 4, 10, 8, generator=g)
    features = [feature, feature]
    model = Model(LevelMappingROIPooler(14, (1 / 16, 1 / 32), 0, "ROIAlignV2"))
    boxes = random_boxes(10, 160, 128, g, 2.0, 100.0)
    traced = torch.jit.trace(
        model, (features, torch.cat([boxes, torch.tensor([[0.0, 0, 500, 500]])]))
    )
    for count in (1, 3, 20):
        other = random_boxes(count, 160, 128, g, 2.0, 300.0)
        assert torch.equal(traced(features, other), model(features, other)), count


def _roi_heads_inputs():
    images = ImageList(torch.rand(2, 20, 30), [(10, 10), (20, 30)])
    features = {"res4": torch.rand(2, 1024, 1, 2)}
    proposals = []
    for size, boxes, logits in (
        ((10, 10), [[1, 1, 3, 3], [2, 2, 6, 6]], [0.5, 0.7]),
        ((20, 30), [[1, 5, 2, 8], [7, 3, 10, 5]], [0.1, 0.9]),
    ):
        p = Instances(size)
        p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        p.objectness_logits = torch.tensor(logits)
        proposals.append(p)
    return images, features, proposals


@pytest.mark.parametrize("pred_levels", [False, True])
def test_roi_heads_scripted_with_detectron2s_recipe(pred_levels):
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "LevelMappingROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10, 10, 5, 5)
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.01
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.01
    torch.manual_seed(0)
    heads = build_roi_heads(cfg, {"res4": ShapeSpec(channels=1024, stride=16)}).eval()
    heads.pred_levels = pred_levels
    images, features, proposals = _roi_heads_inputs()
    eager, _ = heads(images, features, proposals)
    assert eager[0].has("pred_levels") == pred_levels
    fields = dict(USUAL_FIELDS, **({"pred_levels": torch.Tensor} if pred_levels else {}))
    with freeze_training_mode(heads), patch_instances(fields) as new_instances:
        scripted, _ = torch.jit.script(heads)(
            images, features, [new_instances.from_instances(p) for p in proposals]
        )
    for a, b in zip(eager, scripted):
        assert_instances_allclose(a, b, rtol=0)


def test_batched_tracing_takes_other_numbers_of_proposals():
    """A traced batch of two images, run on other images: each image's detections as in eager
    mode."""
    cfg = plugin_cfg("configs/quickstart_mask.yaml")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    make_trained_like(model)
    assert (
        model.roi_heads.pred_levels
    )  # the quickstart configs record levels: checked through the trace

    def inference(model, image1, image2):
        return model.inference([{"image": image1}, {"image": image2}], do_postprocess=False)

    g = torch.Generator().manual_seed(4)
    trace_inputs = (
        torch.rand(3, 128, 160, generator=g) * 255,
        torch.rand(3, 160, 128, generator=g) * 255,
    )
    inputs = (
        torch.rand(3, 192, 256, generator=g) * 255,
        torch.rand(3, 224, 192, generator=g) * 255,
    )
    adapter = TracingAdapter(model, trace_inputs, inference).eval()
    with torch.no_grad():
        traced = torch.jit.trace(adapter, trace_inputs)
        eager = inference(model, *inputs)
        outputs = adapter.outputs_schema(traced(*inputs))
    assert len(eager[0]) != len(eager[1]) or len(eager[0]) > 0
    for a, b in zip(eager, outputs):
        assert_instances_allclose(a, b, size_as_tensor=True)


@pytest.mark.parametrize(
    "d2_name, path",
    [
        (D2_R50_FPN, "configs/fpn_r50.yaml"),
        ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "configs/retinanet_fpn_r50.yaml"),
    ],
)
def test_seeded_construction_gives_detectron2s_initial_weights(d2_name, path):
    torch.manual_seed(7)
    ref = build_model(d2_cfg(d2_name))
    torch.manual_seed(7)
    ours = build_model(plugin_cfg(path))
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert list(ref_state) == list(our_state)
    different = [k for k in ref_state if not torch.equal(ref_state[k], our_state[k])]
    assert not different, different[:5]


def test_neck_scripted_equals_eager():
    cfg = plugin_cfg()
    cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    neck = build_backbone(cfg).eval()
    scripted = torch.jit.script(copy.deepcopy(neck))
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        a, b = neck(x), scripted(x)
    for k in a:
        torch.testing.assert_close(b[k], a[k])
