"""RetinaNet (Lin et al. 2017b) on the plugin's FPN neck, R50: P3-P7, P6 and P7 by stride-2 3x3
convs from C5, shared anchors with 3 octave scales x 3 aspect ratios (9 per location) on every
level.
The same model as Detectron2's lazy ``common/models/retinanet.py`` with the plugin's components.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch import RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from fpn_plugin import FPNNeck, LastLevelP6P7, SharedAnchorGenerator

model = L(RetinaNet)(
    backbone=L(FPNNeck)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],  # C3..C5
            freeze_at=2,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        # P6 = conv3x3/2(C5), P7 = conv3x3/2(relu(P6)); C5 has 2048 channels.
        top_block=L(LastLevelP6P7)(
            in_channels=2048, out_channels="${..out_channels}", in_feature="res5"
        ),
    ),
    head=L(RetinaNetHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,  # P3..P7
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        prior_prob=0.01,
        num_anchors=9,
    ),
    anchor_generator=L(SharedAnchorGenerator)(
        sizes=[[32], [64], [128], [256], [512]],  # base size per level P3..P7
        aspect_ratios=[[0.5, 1.0, 2.0]],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
        scales_per_octave=3,  # each size s -> s * 2**(i/3), i = 0, 1, 2
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(
        thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True
    ),
    num_classes=80,
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
