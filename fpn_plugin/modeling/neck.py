"""The FPN neck: bottom-up C2..C5 -> pyramid P2..P6 (Lin et al. 2017, Sec. 3 and Fig. 3).

Parameter names follow Detectron2's ``FPN`` (``fpn_lateral{k}``, ``fpn_output{k}``, ``bottom_up``,
``top_block.p6``/``p7``), so Detectron2 checkpoints of its FPN load unchanged; the convolutions
are created and initialised in Detectron2's order, so a seeded build starts from the same weights.
How the neck is run fast (memory layouts, precision, in-place merges) is not decided here:
see :mod:`fpn_plugin.accel`.
"""

import copy
import math
from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from ..config import plugin_key
from ._checks import check_choice, check_in_features
from .extra_levels import build_extra_levels

__all__ = [
    "FPNNeck",
    "TopDownMerge",
    "build_fpn_neck_backbone",
    "build_retinanet_fpn_neck_backbone",
    "build_bottom_up",
]

UPSAMPLE_MODES = ("nearest", "bilinear")
FUSE_TYPES = ("sum", "avg")


#: Builders of necks, which cannot be the bottom-up network of a neck.
NECK_BUILDERS = (
    "build_fpn_neck_backbone",
    "build_retinanet_fpn_neck_backbone",
    "build_pafpn_neck_backbone",
    "build_bifpn_backbone",
)


def build_bottom_up(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """The bottom-up network that ``MODEL.FPN.BOTTOM_UP`` names, built from ``cfg``."""
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = plugin_key(cfg, "MODEL.FPN.BOTTOM_UP")
    if name in NECK_BUILDERS or name not in BACKBONE_REGISTRY:
        raise ValueError(
            f"MODEL.FPN.BOTTOM_UP = {name!r} is not a registered bottom-up network; use a "
            "BACKBONE_REGISTRY name such as 'build_resnet_backbone' (import the module that "
            "registers it first)."
        )
    return BACKBONE_REGISTRY.get(name)(cfg, input_shape)


class TopDownMerge(nn.Module):
    """One step of the top-down pathway (Sec. 3, Fig. 3): the coarser merged map is upsampled x2
    and merged element-wise with the lateral map of the finer level. No parameters."""

    def __init__(self, upsample: str = "nearest", fuse_type: str = "sum"):
        """
        Args:
            upsample: "nearest" (the paper) or "bilinear" (``MODEL.FPN.UPSAMPLE``).
            fuse_type: "sum" (the paper) or "avg" (``MODEL.FPN.FUSE_TYPE``).
        """
        super().__init__()
        check_choice(upsample, UPSAMPLE_MODES, "MODEL.FPN.UPSAMPLE")
        check_choice(fuse_type, FUSE_TYPES, "MODEL.FPN.FUSE_TYPE")
        self.upsample = upsample
        self.fuse_type = fuse_type

    def forward(
        self, lateral: Optional[torch.Tensor], coarser: torch.Tensor, size: List[int]
    ) -> torch.Tensor:
        """
        Args:
            lateral: (N, D, H, W), the 1x1-reduced C_k; None without lateral connections.
            coarser: (N, D, ceil(H / 2), ceil(W / 2)), the merged map of the level above.
            size: [H, W]. Upsampling to C_k's size rather than by a factor keeps the grids aligned
                for inputs that are not multiples of the coarsest stride.
        Returns:
            (N, D, H, W) the merged map of level k.
        """
        top_down = F.interpolate(coarser, size=size, mode=self.upsample)
        if lateral is None:
            return top_down
        if self.fuse_type == "avg":
            return (lateral + top_down) / 2
        return lateral + top_down

    def extra_repr(self) -> str:
        return f"upsample={self.upsample}, fuse_type={self.fuse_type}"


class FPNNeck(Backbone):
    """Feature Pyramid Network on top of a bottom-up :class:`Backbone`.

    A drop-in replacement of ``detectron2.modeling.FPN``: same constructor arguments and outputs,
    plus the paper's ablation options as keyword arguments.

    Forward: image batch (N, 3, H, W) -> ``{"p2": (N, D, H/4, W/4), ..., "p6": (N, D, H/64, W/64)}``
    (one entry per input level, finest first, then the extra levels; D = ``out_channels``).
    """

    @configurable
    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int,
        norm: str = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
        *,
        upsample: str = "nearest",
        top_down: bool = True,
        lateral: bool = True,
        finest_only: bool = False,
    ):
        """
        Args:
            bottom_up: the bottom-up network; its outputs named in ``in_features`` are C2..C5.
            in_features: names of the bottom-up outputs, finest first
                (e.g. ``["res2", ..., "res5"]``); their strides must double level to level
                (``MODEL.FPN.IN_FEATURES``).
            out_channels: d, channels of every pyramid level (``MODEL.FPN.OUT_CHANNELS``, 256).
            norm: normalization after each conv: "" (none, the paper), "BN", "SyncBN", "GN", ...
                (``MODEL.FPN.NORM``; any name ``detectron2.layers.get_norm`` knows).
            top_block: module making the levels above the last input, with attributes
                ``num_levels`` and ``in_feature`` (see :mod:`.extra_levels`); None for none.
            fuse_type: merge of lateral and top-down maps, "sum" (the paper) or "avg"
                (``MODEL.FPN.FUSE_TYPE``).
            square_pad: if > 0, images are padded to this square size.
            upsample: "nearest" (the paper) or "bilinear" x2 top-down upsampling
                (``MODEL.FPN.UPSAMPLE``).
            top_down: False removes the top-down pathway: P_k = conv3x3(lateral(C_k))
                (Tables 1-2, row d).
            lateral: False removes the 1x1 lateral connections below the coarsest level:
                P_k = conv3x3(upsample(M_{k+1})) (Tables 1-2, row e).
            finest_only: True outputs only the finest level (Tables 1-2, row f); ``top_block``
                must be None.
        """
        super().__init__()
        strides = self._check_arguments(
            bottom_up, in_features, norm, out_channels, top_down, lateral, finest_only, top_block
        )
        input_shapes = bottom_up.output_shape()
        stages = [int(math.log2(s)) for s in strides]
        use_bias = norm == ""
        lateral_convs, output_convs, merges = [], [], []
        for idx, (stage, feat) in enumerate(zip(stages, in_features)):
            # The coarsest level always has a lateral: the top-down pathway starts from it.
            has_lateral = lateral or idx == len(in_features) - 1
            has_output = not finest_only or idx == 0
            # Created, then initialised, in Detectron2's order: the same random draws from a seed.
            lateral_conv = output_conv = None
            if has_lateral:
                lateral_conv = Conv2d(
                    input_shapes[feat].channels,
                    out_channels,
                    kernel_size=1,
                    bias=use_bias,
                    norm=get_norm(norm, out_channels),
                )
            if has_output:
                output_conv = Conv2d(
                    out_channels,
                    out_channels,
                    kernel_size=3,
                    stride=1,
                    padding=1,
                    bias=use_bias,
                    norm=get_norm(norm, out_channels),
                )
            for conv, name in ((lateral_conv, "fpn_lateral"), (output_conv, "fpn_output")):
                if conv is not None:
                    weight_init.c2_xavier_fill(conv)
                    self.add_module(f"{name}{stage}", conv)
            merge = TopDownMerge(upsample, fuse_type)
            self.add_module(f"fpn_merge{stage}", merge)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
            merges.append(merge)
        # Plain lists (not ModuleLists) so that parameter names stay Detectron2's; coarsest first,
        # the order of the top-down pass.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.top_down_merges = merges[::-1]
        self.top_block = top_block  # registered before bottom_up: Detectron2's state_dict order
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up
        self._fuse_type = fuse_type
        self._upsample = upsample
        self._top_down = top_down
        self._square_pad = square_pad
        # Images are padded to a multiple of the coarsest input stride so that every top-down
        # x2 upsampling lands exactly on the finer grid.
        self._size_divisibility = strides[-1]

        out_strides = {f"p{st}": 2**st for st in (stages[:1] if finest_only else stages)}
        if top_block is not None:
            for st in range(stages[-1] + 1, stages[-1] + 1 + top_block.num_levels):
                out_strides[f"p{st}"] = 2**st
        self._out_feature_strides = out_strides
        self._out_features = list(out_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}

    @staticmethod
    def _check_arguments(
        bottom_up, in_features, norm, out_channels, top_down, lateral, finest_only, top_block
    ) -> List[int]:
        """Clear errors for settings that cannot build a pyramid; returns the input strides."""
        if not isinstance(bottom_up, Backbone):
            raise ValueError(
                "bottom_up (MODEL.FPN.BOTTOM_UP) must be a detectron2 Backbone, got "
                f"{type(bottom_up).__name__}; register a builder that returns a Backbone in "
                "BACKBONE_REGISTRY."
            )
        check_in_features(in_features)
        if not top_down and not lateral:
            raise ValueError(
                "MODEL.FPN.TOP_DOWN = False and MODEL.FPN.LATERAL = False leave no path from "
                "C2..C4 to the pyramid; turn one of them back on."
            )
        if finest_only and top_block is not None:
            raise ValueError(
                "MODEL.FPN.FINEST_ONLY = True outputs only the finest level; set "
                "MODEL.FPN.EXTRA_LEVELS to 'none'."
            )
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"MODEL.FPN.IN_FEATURES names {missing}, which the bottom-up network "
                f"({type(bottom_up).__name__}) does not produce; it produces {list(input_shapes)}. "
                "Use those names, or add them to the bottom-up outputs "
                "(MODEL.RESNETS.OUT_FEATURES, MODEL.TIMM.OUT_INDICES)."
            )
        strides = [input_shapes[f].stride for f in in_features]
        for finer, coarser in zip(strides[:-1], strides[1:]):
            if coarser != 2 * finer:
                raise ValueError(
                    f"MODEL.FPN.IN_FEATURES {list(in_features)} have strides {strides}, which do "
                    "not double level to level; choose consecutive stages (e.g. ['res2', 'res3', "
                    "'res4', 'res5'])."
                )
        if any(s & (s - 1) for s in strides):
            raise ValueError(f"MODEL.FPN.IN_FEATURES strides {strides} must be powers of 2.")
        try:
            get_norm(norm, out_channels)
        except Exception as e:  # detectron2 raises KeyError/AssertionError for unknown names
            raise ValueError(
                f"MODEL.FPN.NORM = {norm!r} is not a known norm ({e}); use '', 'BN', 'SyncBN' or "
                "'GN'."
            ) from e
        return strides

    @classmethod
    def from_config(
        cls, cfg, input_shape: Optional[ShapeSpec] = None, extra_levels: Optional[str] = None
    ):
        """``extra_levels``: one of ``EXTRA_LEVEL_TYPES`` in place of ``MODEL.FPN.EXTRA_LEVELS``
        (a builder that fixes the extra levels, as Detectron2's builders do); None reads the key."""
        bottom_up = build_bottom_up(cfg, input_shape)
        in_features = list(cfg.MODEL.FPN.IN_FEATURES)
        check_in_features(in_features)
        out_channels = cfg.MODEL.FPN.OUT_CHANNELS
        finest_only = plugin_key(cfg, "MODEL.FPN.FINEST_ONLY")
        if extra_levels is None:
            extra_levels = plugin_key(cfg, "MODEL.FPN.EXTRA_LEVELS")
        extra = "none" if finest_only else extra_levels
        return {
            "bottom_up": bottom_up,
            "in_features": in_features,
            "out_channels": out_channels,
            "norm": cfg.MODEL.FPN.NORM,
            "top_block": build_extra_levels(extra, bottom_up, in_features, out_channels),
            "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
            "upsample": plugin_key(cfg, "MODEL.FPN.UPSAMPLE"),
            "top_down": plugin_key(cfg, "MODEL.FPN.TOP_DOWN"),
            "lateral": plugin_key(cfg, "MODEL.FPN.LATERAL"),
            "finest_only": finest_only,
        }

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images (N, C_in, H, W), H and W multiples of ``size_divisibility``.
        Returns:
            dict "p<k>" -> (N, out_channels, H / 2**k, W / 2**k), finest first.
        """
        # Bottom-up pathway: C2..C5, strides 4..32.
        bottom_up_features = self.bottom_up(x)
        results: List[torch.Tensor] = []
        prev_features: Optional[torch.Tensor] = None  # the merged map of the level above
        # Top-down pathway, from the coarsest level down.
        for idx, (lateral_conv, merge, output_conv) in enumerate(
            zip(self.lateral_convs, self.top_down_merges, self.output_convs)
        ):
            features = bottom_up_features[self.in_features[-idx - 1]]
            # Lateral connection: a 1x1 conv reduces C_k to d channels.
            lateral = lateral_conv(features) if lateral_conv is not None else None
            if prev_features is not None and self._top_down:
                # Upsample the coarser map by 2 and merge it with the lateral map.
                prev_features = merge(lateral, prev_features, features.shape[-2:])
            else:
                prev_features = lateral
            if output_conv is not None:
                assert prev_features is not None  # for TorchScript's types
                # A 3x3 conv on each merged map reduces the aliasing effect of upsampling.
                results.insert(0, output_conv(prev_features))
        results = self._extra_path(results)
        if self.top_block is not None:
            name = self.top_block.in_feature
            if name in bottom_up_features:
                source = bottom_up_features[name]
            else:
                source = results[self._out_features.index(name)]
            results.extend(self.top_block(source))
        return {name: res for name, res in zip(self._out_features, results)}

    def _extra_path(self, results: List[torch.Tensor]) -> List[torch.Tensor]:
        """Hook after the top-down pathway: P maps finest first -> the output maps (here unchanged).
        Subclasses add paths here (e.g. PANet's bottom-up path augmentation); the extra levels
        (``top_block``) are then made from what this returns."""
        return results

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def __prepare_scriptable__(self) -> "FPNNeck":
        """Called by ``torch.jit.script``: a copy whose per-level lists are ModuleLists, which
        TorchScript can iterate (parameter names of the copy change; the original is untouched)."""
        if any(c is None for c in self.lateral_convs + self.output_convs):
            raise ValueError(
                "TorchScript scripting cannot export an FPNNeck without some lateral or output "
                "convs (MODEL.FPN.LATERAL = False or MODEL.FPN.FINEST_ONLY = True); export it by "
                "tracing instead."
            )
        ret = copy.deepcopy(self)
        ret.lateral_convs = nn.ModuleList(ret.lateral_convs)
        ret.output_convs = nn.ModuleList(ret.output_convs)
        ret.top_down_merges = nn.ModuleList(ret.top_down_merges)
        for name, _ in self.named_children():
            if name.startswith(("fpn_", "pa_")):
                delattr(ret, name)
        return ret


@BACKBONE_REGISTRY.register()
def build_fpn_neck_backbone(cfg, input_shape: ShapeSpec) -> FPNNeck:
    """``MODEL.BACKBONE.NAME: "build_fpn_neck_backbone"``:
    ``MODEL.FPN.BOTTOM_UP`` + :class:`FPNNeck`."""
    return FPNNeck(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_retinanet_fpn_neck_backbone(cfg, input_shape: ShapeSpec) -> FPNNeck:
    """``MODEL.BACKBONE.NAME: "build_retinanet_fpn_neck_backbone"``: the counterpart of
    Detectron2's ``build_retinanet_resnet_fpn_backbone``, :class:`FPNNeck` with RetinaNet's P6, P7
    made from C5 by stride-2 3x3 convs (``MODEL.FPN.EXTRA_LEVELS`` "p6p7_c5", whatever the key
    says, as Detectron2's builder fixes them). The bottom-up network is ``MODEL.FPN.BOTTOM_UP``.
    """
    extra = plugin_key(cfg, "MODEL.FPN.EXTRA_LEVELS")
    # The key's default ("p6_subsample") cannot be told apart from an unset key; any other value
    # than RetinaNet's asks for levels this builder does not make.
    if extra not in ("p6_subsample", "p6p7_c5") or plugin_key(cfg, "MODEL.FPN.FINEST_ONLY"):
        raise ValueError(
            "MODEL.BACKBONE.NAME = 'build_retinanet_fpn_neck_backbone' makes P6, P7 from C5 "
            f"(MODEL.FPN.EXTRA_LEVELS 'p6p7_c5'), but the config sets MODEL.FPN.EXTRA_LEVELS = "
            f"{extra!r} / MODEL.FPN.FINEST_ONLY = {plugin_key(cfg, 'MODEL.FPN.FINEST_ONLY')}; "
            "for other extra levels use 'build_fpn_neck_backbone' with MODEL.FPN.EXTRA_LEVELS."
        )
    return FPNNeck(cfg, input_shape, extra_levels="p6p7_c5")
