"""fpn_plugin: Feature Pyramid Networks (Lin et al., CVPR 2017) as Detectron2 components.

``import fpn_plugin`` registers, in Detectron2's registries:

- ``BACKBONE_REGISTRY``: ``build_fpn_neck_backbone`` (a bottom-up network + :class:`FPNNeck`),
  ``build_pafpn_neck_backbone`` (+ :class:`PathAggregationNeck`) and ``build_basic_resnet_backbone``
- ``ANCHOR_GENERATOR_REGISTRY``: ``SharedAnchorGenerator``
- ``ROI_HEADS_REGISTRY``: ``LevelMappingROIHeads`` (pooling through :class:`LevelMappingROIPooler`)

``add_fpn_plugin_config(cfg)`` adds the plugin's config keys to a Detectron2 ``CfgNode``, and
``accelerate(model, cfg)`` applies the execution strategies of ``MODEL.ACCEL`` to a built model.

Packages: :mod:`.modeling` (the paper), :mod:`.accel` (running it fast), :mod:`.data`,
:mod:`.engine` (training, prediction, ablation), :mod:`.export`, :mod:`.benchmark`.
"""
from ._requirements import check_detectron2

check_detectron2()

from .accel import AccelOptions, accelerate  # noqa: E402
from .config import add_fpn_plugin_config, get_plugin_cfg  # noqa: E402
from .modeling import (  # noqa: E402
    FastNormalizedFusion,
    FPNNeck,
    LastLevelP6P7,
    LastLevelSubsample,
    LevelMappingROIHeads,
    LevelMappingROIPooler,
    PathAggregationNeck,
    SharedAnchorGenerator,
    assign_boxes_to_levels,
    build_basic_resnet_backbone,
    build_fpn_neck_backbone,
    build_pafpn_neck_backbone,
)

__all__ = [
    "add_fpn_plugin_config",
    "get_plugin_cfg",
    "accelerate",
    "AccelOptions",
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
__version__ = "0.2.0"
