"""The paper's components and their variants, registered in Detectron2's registries on import.

What is computed, and nothing about how it is run fast (that is :mod:`fpn_plugin.accel`).
"""

from .anchors import SharedAnchorGenerator
from .basic_resnet import build_basic_resnet_backbone
from .bifpn import BiFPN, BiFPNLayer, BiFPNNode, build_bifpn_backbone
from .extra_levels import LastLevelP6P7, LastLevelSubsample, build_extra_levels
from .neck import FPNNeck, TopDownMerge, build_fpn_neck_backbone, build_retinanet_fpn_neck_backbone
from .path_aggregation import PathAggregationNeck, build_pafpn_neck_backbone
from .pooler import LevelMappingROIPooler, assign_boxes_to_levels
from .roi_heads import LevelMappingROIHeads
from .timm_backbone import TimmBottomUp, build_timm_backbone
from .weighted_fusion import FastNormalizedFusion, WeightedTopDownMerge

__all__ = [
    "FPNNeck",
    "TopDownMerge",
    "LastLevelSubsample",
    "LastLevelP6P7",
    "build_extra_levels",
    "build_fpn_neck_backbone",
    "build_retinanet_fpn_neck_backbone",
    "build_basic_resnet_backbone",
    "PathAggregationNeck",
    "build_pafpn_neck_backbone",
    "FastNormalizedFusion",
    "WeightedTopDownMerge",
    "SharedAnchorGenerator",
    "LevelMappingROIPooler",
    "assign_boxes_to_levels",
    "LevelMappingROIHeads",
    "TimmBottomUp",
    "build_timm_backbone",
    "BiFPN",
    "BiFPNLayer",
    "BiFPNNode",
    "build_bifpn_backbone",
]
