"""The quickstart detector (configs/quickstart.yaml) as a LazyConfig model: the paper's FPN
Faster R-CNN (P2-P6, shared anchors, level-mapping RoI pooling) on a narrow BasicBlock ResNet with
BatchNorm, d = 64 pyramid channels and fewer RoIs, so that it trains from scratch in minutes on a
CPU.
"""

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.modeling.backbone.resnet import BasicBlock
from detectron2.modeling.roi_heads import FastRCNNConvFCHead

from .faster_rcnn_fpn import model


def _stage(in_channels, out_channels, stride):
    """One BasicBlock stage of the narrow ResNet (one block, as BLOCKS_PER_STAGE [1, 1, 1, 1])."""
    return L(ResNet.make_stage)(
        block_class=BasicBlock,
        num_blocks=1,
        stride_per_block=[stride],
        in_channels=in_channels,
        out_channels=out_channels,
        norm="BN",
    )


# res2..res5: 32, 64, 128, 256 channels at strides 4..32; trained from scratch, nothing frozen.
model.backbone.bottom_up = L(ResNet)(
    stem=L(BasicStem)(in_channels=3, out_channels=32, norm="BN"),
    stages=[_stage(32, 32, 1), _stage(32, 64, 2), _stage(64, 128, 2), _stage(128, 256, 2)],
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=0,
)
model.backbone.out_channels = 64  # d = 64
model.backbone.norm = "BN"  # normalised pyramid: faster convergence from scratch
model.proposal_generator.head.in_channels = 64
model.proposal_generator.pre_nms_topk = (1000, 500)  # per level, (train, test)
model.proposal_generator.post_nms_topk = (512, 300)
model.roi_heads.num_classes = 4  # circle, square, triangle, cross
model.roi_heads.batch_size_per_image = 128
model.roi_heads.pred_levels = True  # each detection records the level it was pooled from
# 2 x (3x3 conv 64 + BN) then 1 fc of 256, shared by all levels.
model.roi_heads.box_head = L(FastRCNNConvFCHead)(
    input_shape=ShapeSpec(channels=64, height=7, width=7),
    conv_dims=[64, 64],
    fc_dims=[256],
    conv_norm="BN",
)
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
# Unit-variance inputs for a backbone trained from scratch.
model.pixel_std = [57.375, 57.120, 58.395]
