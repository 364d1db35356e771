"""The one entry point: :func:`accelerate` applies the execution strategies to a built model.

    model = build_model(cfg)                # what is computed: the paper's model
    accelerate(model, cfg)                  # how it is run: MODEL.ACCEL.*
    accelerate(model, AccelOptions(channels_last=True, autocast_dtype="float16"))

It works on the plugin's models and on Detectron2's own (``FPN``, ``DefaultAnchorGenerator``,
``ROIPooler``), in place, and keeps every parameter name and value: checkpoints load as before.
The bit-identical strategies are on by default, on the devices where they were measured
(:mod:`.devices`); those that change the last bits of the outputs (memory layout, precision,
folding, compilation) are opt-in. ``AccelOptions(enabled=False)`` (or
``MODEL.ACCEL.ENABLED False``) leaves the plain model.
"""

import dataclasses
import logging
from typing import List, Optional, Union

from torch import nn
from torchvision.ops import RoIPool

from detectron2.config import CfgNode
from detectron2.layers import ROIAlign, ROIAlignRotated
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN
from detectron2.modeling.poolers import ROIPooler

from ..config import plugin_key
from ..modeling.anchors import SharedAnchorGenerator
from ..modeling.neck import FPNNeck, TopDownMerge
from ..modeling.pooler import LevelMappingROIPooler
from .anchor_cache import AnchorCache
from .autocast import AUTOCAST_DTYPES, InferenceAutocast
from .blocked_layout import apply_blocked_layout
from .channels_last import apply_channels_last
from .compile import apply_compile
from .frozen_bn_fold import fold_frozen_batchnorm
from .in_place_merge import InPlaceTopDown
from .multilevel_pooler import MultiLevelROIAlign
from .parallel_pooler import ParallelROIAlign
from .strategy import apply_strategy, mark_ancestors, plain_class

__all__ = ["AccelOptions", "accelerate", "ROI_ALIGN_MODES", "level_mapping_pooler_like"]

#: Values of MODEL.ACCEL.ROI_ALIGN -> the pooler strategies, applied in this order (the last one
#: applied runs first). "auto": in inference the RoI ops on threads (bit-identical), with
#: gradients the one-call embedding bag (training's fastest; equal to float rounding).
ROI_ALIGN_MODES = {
    "per_level": (),
    "parallel": (ParallelROIAlign,),
    "embedding_bag": (MultiLevelROIAlign,),
    "auto": (MultiLevelROIAlign, ParallelROIAlign),
}

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class AccelOptions:
    """How a model is run; each field is the ``MODEL.ACCEL`` key of the same name in capitals
    (see ``fpn_plugin/config.py`` for what each one does)."""

    enabled: bool = True
    cpu_blocked_layout: bool = True
    in_place_top_down: bool = True
    anchor_cache_size: int = 16
    roi_align: str = "auto"
    channels_last: bool = False
    autocast_dtype: str = ""
    fold_frozen_bn: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(
                f"MODEL.ACCEL.AUTOCAST_DTYPE = {self.autocast_dtype!r} is not supported; use one "
                f"of {list(AUTOCAST_DTYPES)}."
            )
        if self.roi_align not in ROI_ALIGN_MODES:
            raise ValueError(
                f"MODEL.ACCEL.ROI_ALIGN = {self.roi_align!r} is not supported; use one of "
                f"{list(ROI_ALIGN_MODES)}."
            )
        if int(self.anchor_cache_size) < 0:
            raise ValueError(
                f"MODEL.ACCEL.ANCHOR_CACHE_SIZE = {self.anchor_cache_size} must be >= 0 (0 turns "
                "the cache off)."
            )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> "AccelOptions":
        """The options of ``cfg.MODEL.ACCEL`` (old names of its keys still count, with a
        warning)."""
        if "ACCEL" not in cfg.MODEL:
            raise ValueError(
                "the config has no MODEL.ACCEL: add the plugin's keys with "
                "fpn_plugin.add_fpn_plugin_config(cfg)."
            )
        return cls(
            **{
                f.name: plugin_key(cfg, f"MODEL.ACCEL.{f.name.upper()}")
                for f in dataclasses.fields(cls)
            }
        )


def level_mapping_pooler_like(pooler: ROIPooler) -> LevelMappingROIPooler:
    """The :class:`LevelMappingROIPooler` that computes what Detectron2's ``pooler`` computes
    (poolers hold no parameters: one can replace the other)."""
    op = pooler.level_poolers[0]
    if isinstance(op, ROIAlign):
        pooler_type, sampling_ratio = (
            ("ROIAlignV2" if op.aligned else "ROIAlign"),
            op.sampling_ratio,
        )
    elif isinstance(op, ROIAlignRotated):
        pooler_type, sampling_ratio = "ROIAlignRotated", op.sampling_ratio
    elif isinstance(op, RoIPool):
        pooler_type, sampling_ratio = "ROIPool", 0
    else:
        raise ValueError(f"unknown RoI op {type(op).__name__} in Detectron2's ROIPooler")
    scales = [p.spatial_scale for p in pooler.level_poolers]
    return LevelMappingROIPooler(
        pooler.output_size,
        scales,
        sampling_ratio,
        pooler_type,
        pooler.canonical_box_size,
        pooler.canonical_level,
    )


def _apply_pooler_strategies(model: nn.Module, mode: str) -> int:
    """The strategies of ``ROI_ALIGN_MODES[mode]`` on every ROIAlign pooler of ``model``,
    Detectron2's ``ROIPooler`` replaced by its equivalent first; returns how many poolers."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is ROIPooler and isinstance(child.level_poolers[0], ROIAlign):
                setattr(parent, name, level_mapping_pooler_like(child))
    poolers = [m for m in model.modules() if isinstance(m, LevelMappingROIPooler)]
    poolers = [p for p in poolers if p.pooler_type in ("ROIAlignV2", "ROIAlign")]
    for pooler in poolers:
        for strategy in ROI_ALIGN_MODES[mode]:
            # "auto" is a default: its embedding bag steps aside where it was not measured.
            settings = {"by_default": mode == "auto"} if strategy is MultiLevelROIAlign else {}
            apply_strategy(pooler, strategy, **settings)
    return len(poolers)


def _necks(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (FPNNeck, FPN))]


def _backbone(model: nn.Module) -> Optional[nn.Module]:
    if isinstance(model, Backbone):
        return model
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else None


def accelerate(model: nn.Module, options: Union[AccelOptions, CfgNode, None] = None) -> nn.Module:
    """Apply the execution strategies that ``options`` (default: :class:`AccelOptions`'s
    defaults; a config: its ``MODEL.ACCEL``) turn on to ``model``, in place; returns ``model``.

    ``model`` is a detector (with a ``backbone``) or a backbone, built by the plugin or by
    Detectron2. Each strategy applies where it can and steps aside at run time where it does not
    (training, gradients, tracing, another device); applying the same options twice changes nothing.
    """
    if isinstance(options, CfgNode):
        options = AccelOptions.from_config(options)
    options = options or AccelOptions()
    if not options.enabled:
        return model
    applied = []
    # The compiler folds the norms and fuses the merge itself, and cannot trace oneDNN tensors:
    # under COMPILE the strategies that do these by hand inside the backbone are left out.
    if options.fold_frozen_bn and not options.compile and fold_frozen_batchnorm(model):
        applied.append("fold_frozen_bn")
    for neck in _necks(model):
        if options.in_place_top_down and not options.compile:
            for merge in getattr(neck, "top_down_merges", []):
                if plain_class(type(merge)) is TopDownMerge and (
                    merge.fuse_type,
                    merge.upsample,
                ) == ("sum", "nearest"):
                    apply_strategy(merge, InPlaceTopDown)
                    applied.append("in_place_top_down")
        # The blocked layout is a float32 NCHW path: the other layout and precision replace it.
        replaced = options.channels_last or options.autocast_dtype or options.compile
        if options.cpu_blocked_layout and not replaced:
            if apply_blocked_layout(neck):
                applied.append("cpu_blocked_layout")
    backbone = _backbone(model)
    if backbone is not None and options.channels_last:
        apply_channels_last(backbone)
        applied.append("channels_last")
    if backbone is not None and options.autocast_dtype:
        apply_strategy(
            backbone, InferenceAutocast, autocast_dtype=AUTOCAST_DTYPES[options.autocast_dtype]
        )
        applied.append(f"autocast {options.autocast_dtype}")
    if options.anchor_cache_size > 0:
        for m in model.modules():
            if isinstance(m, (SharedAnchorGenerator, DefaultAnchorGenerator)):
                apply_strategy(m, AnchorCache, anchor_cache_size=int(options.anchor_cache_size))
                applied.append("anchor_cache")
    if ROI_ALIGN_MODES[options.roi_align] and _apply_pooler_strategies(model, options.roi_align):
        applied.append(f"roi_align {options.roi_align}")
    # Last: the compiled program runs the strategies above on the same module (autocast, layout).
    if options.compile and apply_compile(model):
        applied.append("compile")
    mark_ancestors(model)
    logger.info(
        f"fpn_plugin.accel: applied {sorted(set(applied)) or 'nothing'} to "
        f"{plain_class(type(model)).__name__}"
    )
    return model
