"""The paper's Faster R-CNN with FPN (Lin et al. 2017), R50 bottom-up, as a LazyConfig model.

The same model as configs/fpn_r50.yaml and as Detectron2's R50-FPN (its lazy
``common/models/mask_rcnn_fpn.py`` without the mask head), built from the plugin's components with
explicit constructor arguments: :class:`FPNNeck` (P2-P5 + P6 subsampled from P5),
:class:`SharedAnchorGenerator` (one size per level, 3 ratios: 15 anchor shapes) and
:class:`LevelMappingROIHeads` pooling through :class:`LevelMappingROIPooler` (Eqn. 1).
Detectron2's R50-FPN checkpoints load into it unchanged.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers

from fpn_plugin import (
    FPNNeck,
    LastLevelSubsample,
    LevelMappingROIHeads,
    LevelMappingROIPooler,
    SharedAnchorGenerator,
)

# 1 / stride of P2..P5, the levels RoIs are pooled from.
POOLED_SCALES = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)


def head_pooler(output_size: int):
    """The pooler of a mask or keypoint head added to ``model.roi_heads``: ``output_size`` bins,
    pooled from P2..P5 by Eqn. (1) with the box pooler's s0 and k0."""
    return L(LevelMappingROIPooler)(
        output_size=output_size,
        scales=POOLED_SCALES,
        sampling_ratio=0,
        pooler_type="ROIAlignV2",
        canonical_box_size="${..box_pooler.canonical_box_size}",
        canonical_level="${..box_pooler.canonical_level}",
    )


model = L(GeneralizedRCNN)(
    backbone=L(FPNNeck)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res2", "res3", "res4", "res5"],  # C2..C5, strides 4..32
            freeze_at=2,  # stem and res2 frozen, as in Detectron2's recipe
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,  # d = 256
        top_block=L(LastLevelSubsample)(in_feature="p5"),  # P6 = P5 subsampled by 2 (Sec. 4.1)
        upsample="nearest",
        fuse_type="sum",
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        # One 3x3 conv + two 1x1 convs shared by all levels; 3 anchors per location.
        head=L(StandardRPNHead)(in_channels=256, num_anchors=3),
        anchor_generator=L(SharedAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],  # one anchor area per level, P2..P6
            aspect_ratios=[[0.5, 1.0, 2.0]],  # shared by all levels
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        # IoU > 0.7 positive, < 0.3 negative (Sec. 4.1).
        anchor_matcher=L(Matcher)(
            thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),  # per level, (train, test)
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(LevelMappingROIHeads)(
        num_classes=80,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(
            thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False
        ),
        box_in_features=["p2", "p3", "p4", "p5"],
        # Eqn. (1): k = floor(k0 + log2(sqrt(wh) / 224)), k0 = 4.
        box_pooler=L(LevelMappingROIPooler)(
            output_size=7,
            scales=POOLED_SCALES,
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
            canonical_box_size=224,
            canonical_level=4,
        ),
        # 2 fc layers shared by all levels (Sec. 4.2).
        box_head=L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
        ),
    ),
    # ImageNet mean/std of Detectron2's MSRA R-50 weights (BGR, 0..255).
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
