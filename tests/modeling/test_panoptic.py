"""Panoptic FPN and the semantic FPN on the plugin's components.

configs/panoptic_fpn_r50.yaml and configs/semantic_fpn_r50.yaml are Detectron2's built-in
COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml and Misc/semantic_R_50_FPN_1x.yaml with the
plugin's names: Detectron2's state_dict loads strictly, and with the same weights the eval
outputs agree to 1e-4 (boxes, scores, masks, the semantic logits and the panoptic segmentation).
"""

import pytest
import torch

from detectron2.modeling import GeneralizedRCNN, build_model

from fpn_plugin import FPNNeck, LevelMappingROIHeads
from fpn_plugin.accel import accelerate
from tests.conftest import build_parity_pair, d2_cfg, plugin_cfg
from tests.test_config import assert_detectron2s_with_the_plugin_names

PANOPTIC = ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "configs/panoptic_fpn_r50.yaml")
SEMANTIC = ("Misc/semantic_R_50_FPN_1x.yaml", "configs/semantic_fpn_r50.yaml")
NUM_DETECTIONS = 20
TOL = dict(rtol=1e-4, atol=1e-4)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.rand(3, 256, 384, generator=g) * 255, "height": 256, "width": 384}]


@pytest.mark.parametrize("d2_name, path", [PANOPTIC, SEMANTIC])
def test_config_is_detectron2s_with_the_plugin_names(d2_name, path):
    assert_detectron2s_with_the_plugin_names(d2_name, path)


@pytest.fixture(scope="module")
def panoptic_pair():
    # A lower stuff-area limit than COCO's 4096 px keeps stuff segments in a 256 x 384 image.
    opts = [
        "TEST.DETECTIONS_PER_IMAGE",
        NUM_DETECTIONS,
        "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
        512,
    ]
    return build_parity_pair(*PANOPTIC, opts)


def test_panoptic_fpn_loads_detectron2s_state_dict_strictly(panoptic_pair):
    ref, ours, result = panoptic_pair
    assert not result.missing_keys and not result.unexpected_keys
    assert type(ours).__name__ == type(ref).__name__ == "PanopticFPN"
    assert isinstance(ours.backbone, FPNNeck) and isinstance(ours.roi_heads, LevelMappingROIHeads)
    assert type(ours.sem_seg_head).__name__ == "SemSegFPNHead"
    assert ours.sem_seg_head.in_features == ["p2", "p3", "p4", "p5"]
    mine, theirs = ours.state_dict(), ref.state_dict()
    assert set(mine) == set(theirs) and all(mine[k].shape == theirs[k].shape for k in mine)


def test_panoptic_fpn_outputs_match_detectron2(panoptic_pair):
    ref, ours, _ = panoptic_pair
    inputs = _inputs()
    with torch.no_grad():
        raw_ref, sem_ref = ref.inference(inputs, do_postprocess=False)
        raw_ours, sem_ours = ours.inference(inputs, do_postprocess=False)
        final_ref, final_ours = ref(inputs)[0], ours(inputs)[0]
    # Raw detections: boxes, scores, classes, 28 x 28 mask probabilities.
    a, b = raw_ref[0], raw_ours[0]
    assert len(a) == len(b) == NUM_DETECTIONS
    torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, **TOL)
    torch.testing.assert_close(b.scores, a.scores, **TOL)
    assert torch.equal(b.pred_classes, a.pred_classes) and len(a.pred_classes.unique()) > 1
    torch.testing.assert_close(b.pred_masks, a.pred_masks, **TOL)
    assert 0.01 < (a.pred_masks > 0.5).float().mean() < 0.99
    # Semantic logits, before and after resizing to the image.
    assert sem_ref.shape == sem_ours.shape == (1, 54, 256, 384)
    torch.testing.assert_close(sem_ours, sem_ref, **TOL)
    assert sem_ref.std() > 1e-3  # not constant
    assert final_ref["sem_seg"].shape == (54, 256, 384)
    torch.testing.assert_close(final_ours["sem_seg"], final_ref["sem_seg"], **TOL)
    # Pasted masks, then the panoptic segmentation made of them and of the semantic labels.
    masks_ref, masks_ours = final_ref["instances"].pred_masks, final_ours["instances"].pred_masks
    assert masks_ref.shape == masks_ours.shape == (NUM_DETECTIONS, 256, 384)
    assert (masks_ref != masks_ours).float().mean() < 1e-4
    (ids_ref, segments_ref), (ids_ours, segments_ours) = (
        final_ref["panoptic_seg"],
        final_ours["panoptic_seg"],
    )
    assert (ids_ref != ids_ours).float().mean() < 1e-4
    assert [s["id"] for s in segments_ours] == [s["id"] for s in segments_ref]
    for s, t in zip(segments_ours, segments_ref):
        assert (s["isthing"], s["category_id"]) == (t["isthing"], t["category_id"])
        if s["isthing"]:
            assert abs(s["score"] - t["score"]) < 1e-4
    kinds = {s["isthing"] for s in segments_ref}
    assert kinds == {True, False}, segments_ref  # things and stuff both present
    assert set(ids_ref.unique().tolist()) - {0} == {s["id"] for s in segments_ref}


def test_semantic_fpn_matches_detectron2():
    """SemanticSegmentor: Detectron2's state_dict strictly, the same logits, as the tools run it."""
    torch.manual_seed(0)
    ref = build_model(d2_cfg(SEMANTIC[0])).eval()
    cfg = plugin_cfg(SEMANTIC[1])
    ours = build_model(cfg).eval()
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    accelerate(ours, cfg)
    assert type(ours).__name__ == "SemanticSegmentor" and isinstance(ours.backbone, FPNNeck)
    assert not isinstance(ours, GeneralizedRCNN)
    inputs = _inputs()
    with torch.no_grad():
        a, b = ref(inputs)[0]["sem_seg"], ours(inputs)[0]["sem_seg"]
    assert a.shape == b.shape == (54, 256, 384)
    torch.testing.assert_close(b, a, **TOL)
    labels = a.argmax(dim=0)
    assert len(labels.unique()) > 1
    assert (b.argmax(dim=0) != labels).float().mean() < 1e-4
