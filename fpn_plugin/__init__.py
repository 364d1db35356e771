"""fpn_plugin: Feature Pyramid Networks (Lin et al., CVPR 2017) as Detectron2 components.

``import fpn_plugin`` registers, in Detectron2's registries:

- ``BACKBONE_REGISTRY``: ``build_fpn_neck_backbone`` (a bottom-up network + :class:`FPNNeck`) and
  ``build_pafpn_neck_backbone`` (+ :class:`PathAggregationNeck`: PAFPN, or BiFPN-style weighted fusion)
- ``ANCHOR_GENERATOR_REGISTRY``: ``SharedAnchorGenerator``
- ``ROI_HEADS_REGISTRY``: ``LevelMappingROIHeads`` (pooling through :class:`LevelMappingROIPooler`)

and ``add_fpn_plugin_config(cfg)`` adds the plugin's new config keys to a Detectron2 ``CfgNode``.
"""
from ._requirements import check_detectron2

check_detectron2()

from .config import add_fpn_plugin_config, get_plugin_cfg  # noqa: E402
from .bottom_up import build_basic_resnet_backbone  # noqa: E402
from .neck import FPNNeck, LastLevelP6P7, LastLevelSubsample, build_fpn_neck_backbone  # noqa: E402
from .path_aggregation import PathAggregationNeck, build_pafpn_neck_backbone  # noqa: E402
from .weighted_fusion import FastNormalizedFusion  # noqa: E402
from .anchors import SharedAnchorGenerator  # noqa: E402
from .pooler import LevelMappingROIPooler, assign_boxes_to_levels  # noqa: E402
from .roi_heads import LevelMappingROIHeads  # noqa: E402

__all__ = [
    "add_fpn_plugin_config",
    "get_plugin_cfg",
    "FPNNeck",
    "LastLevelSubsample",
    "LastLevelP6P7",
    "build_fpn_neck_backbone",
    "build_basic_resnet_backbone",
    "PathAggregationNeck",
    "build_pafpn_neck_backbone",
    "FastNormalizedFusion",
    "SharedAnchorGenerator",
    "LevelMappingROIPooler",
    "assign_boxes_to_levels",
    "LevelMappingROIHeads",
]
__version__ = "0.1.0"
