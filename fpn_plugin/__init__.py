"""fpn_plugin: Feature Pyramid Networks (Lin et al., CVPR 2017) as Detectron2 components.

``import fpn_plugin`` registers, in Detectron2's registries:

- ``BACKBONE_REGISTRY``: the necks ``build_fpn_neck_backbone`` (a bottom-up network +
  :class:`FPNNeck`), ``build_retinanet_fpn_neck_backbone`` (the same with RetinaNet's P6, P7),
  ``build_pafpn_neck_backbone`` (+ :class:`PathAggregationNeck`) and
  ``build_bifpn_backbone`` (+ :class:`BiFPN`, EfficientDet's); the bottom-up networks
  ``build_basic_resnet_backbone`` and ``build_timm_backbone`` (any timm network)
- ``ANCHOR_GENERATOR_REGISTRY``: ``SharedAnchorGenerator``
- ``ROI_HEADS_REGISTRY``: ``LevelMappingROIHeads`` (pooling through :class:`LevelMappingROIPooler`)

``add_fpn_plugin_config(cfg)`` adds the plugin's config keys to a Detectron2 ``CfgNode``, and
``accelerate(model, cfg)`` applies the execution strategies of ``MODEL.ACCEL`` to a built model.

:mod:`.convert` turns a Detectron2 FPN config into the plugin's and back (a swap of names).

Packages: :mod:`.modeling` (the paper and its family), :mod:`.accel` (running it fast),
:mod:`.data`, :mod:`.evaluation` (panoptic quality), :mod:`.engine` (training, prediction,
ablation, the GPU check), :mod:`.export`, :mod:`.benchmark`, :mod:`.utils` (drawing, plots).
"""

from ._requirements import check_detectron2

check_detectron2()

from .accel import AccelOptions, accelerate  # noqa: E402
from .config import add_fpn_plugin_config, get_plugin_cfg  # noqa: E402
from .modeling import (  # noqa: E402
    BiFPN,
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
    build_bifpn_backbone,
    build_fpn_neck_backbone,
    build_pafpn_neck_backbone,
    build_retinanet_fpn_neck_backbone,
    build_timm_backbone,
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
    "build_retinanet_fpn_neck_backbone",
    "build_basic_resnet_backbone",
    "PathAggregationNeck",
    "build_pafpn_neck_backbone",
    "BiFPN",
    "build_bifpn_backbone",
    "build_timm_backbone",
    "FastNormalizedFusion",
    "SharedAnchorGenerator",
    "LevelMappingROIPooler",
    "assign_boxes_to_levels",
    "LevelMappingROIHeads",
]
__version__ = "0.2.0"
