"""A narrow BasicBlock ResNet bottom-up, for FPN detectors that must train in minutes on a CPU.

Detectron2's ResNet-18/34 fix the width of res2 at 64 channels; this builder takes any width and
any number of blocks per stage, and is made of Detectron2's own ``BasicStem``, ``BasicBlock`` and
``ResNet`` (so its parameter names and ``FREEZE_AT``/``OUT_FEATURES`` behave as in ResNet).
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

from ..config import plugin_key

__all__ = ["build_basic_resnet_backbone"]


@BACKBONE_REGISTRY.register()
def build_basic_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """BasicBlock ResNet: stem (7x7/2 conv + 3x3/2 max-pool) then res2..res5 at strides 4..32.

    Config: ``MODEL.RESNETS.STEM_OUT_CHANNELS`` (stem width), ``RES2_OUT_CHANNELS`` (res2 width,
    doubled at each later stage), ``NORM``, ``OUT_FEATURES``, ``MODEL.BACKBONE.FREEZE_AT`` and the
    plugin's ``MODEL.RESNETS.BLOCKS_PER_STAGE`` (4 numbers; [2, 2, 2, 2] is ResNet-18's).
    Returns feature maps (N, RES2_OUT_CHANNELS * 2**(k-2), H / 2**k, W / 2**k) named "res<k>".
    """
    norm = cfg.MODEL.RESNETS.NORM
    blocks = list(plugin_key(cfg, "MODEL.RESNETS.BLOCKS_PER_STAGE"))
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(
            f"MODEL.RESNETS.BLOCKS_PER_STAGE = {blocks} must be 4 positive numbers (res2..res5), "
            "e.g. [2, 2, 2, 2]."
        )
    stem = BasicStem(
        in_channels=input_shape.channels,
        out_channels=cfg.MODEL.RESNETS.STEM_OUT_CHANNELS,
        norm=norm,
    )
    in_channels, out_channels = (
        cfg.MODEL.RESNETS.STEM_OUT_CHANNELS,
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS,
    )
    stages = []
    for idx, num_blocks in enumerate(blocks):
        first_stride = 1 if idx == 0 else 2  # the stem already brings res2 to stride 4
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=norm,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(stem, stages, out_features=cfg.MODEL.RESNETS.OUT_FEATURES).freeze(
        cfg.MODEL.BACKBONE.FREEZE_AT
    )
