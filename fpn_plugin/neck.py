"""The FPN neck: bottom-up C2..C5 -> pyramid P2..P6 (Lin et al. 2017, Sec. 3 and Fig. 3).

Parameter names follow Detectron2's ``FPN`` (``fpn_lateral{k}``, ``fpn_output{k}``, ``bottom_up``,
``top_block.p6``/``p7``), so Detectron2 checkpoints of its FPN load unchanged.
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

from .blocked_layout import (
    blocked_conv, blocked_layout_matches, cpu_autocast_enabled, resnet_blocked_forward, supports_blocked_layout,
)
from .frozen_bn_fold import fold_frozen_batchnorm

__all__ = ["FPNNeck", "LastLevelSubsample", "LastLevelP6P7", "build_fpn_neck_backbone"]

UPSAMPLE_MODES = ("nearest", "bilinear")
FUSE_TYPES = ("sum", "avg")
EXTRA_LEVEL_TYPES = ("none", "p6_subsample", "p6p7_c5", "p6p7_p5")
AUTOCAST_DTYPES = {"": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LastLevelSubsample(nn.Module):
    """P6 from P5 by stride-2 subsampling (paper, Sec. 4.1): (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))."""

    def __init__(self, in_feature: str = "p5"):
        super().__init__()
        self.num_levels = 1
        self.in_feature = in_feature

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        # A 1x1 max-pool with stride 2 keeps every other pixel: the paper's subsampling.
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """P6 and P7 by 3x3 stride-2 convs (RetinaNet, Lin et al. 2017b): P6 = conv(x), P7 = conv(relu(P6))."""

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5"):
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            weight_init.c2_xavier_fill(module)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


def _check_in_features(in_features) -> None:
    if not in_features:
        raise ValueError("MODEL.FPN.IN_FEATURES is empty; list the bottom-up outputs, e.g. ['res2', 'res3', 'res4', 'res5'].")


def _check_choice(value: str, choices, key: str) -> None:
    if value not in choices:
        raise ValueError(f"{key} = {value!r} is not supported; use one of {list(choices)}.")


class FPNNeck(Backbone):
    """Feature Pyramid Network on top of a bottom-up :class:`Backbone`.

    A drop-in replacement of ``detectron2.modeling.FPN``: same constructor arguments and outputs,
    plus the options below as keyword arguments.

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
        channels_last: bool = False,
        autocast_dtype: str = "",
        fold_frozen_bn: bool = False,
        cpu_blocked_layout: bool = True,
    ):
        """
        Args:
            bottom_up: the bottom-up network; its outputs named in ``in_features`` are C2..C5.
            in_features: names of the bottom-up outputs, finest first (e.g. ``["res2", ..., "res5"]``);
                their strides must double level to level (``MODEL.FPN.IN_FEATURES``).
            out_channels: d, channels of every pyramid level (``MODEL.FPN.OUT_CHANNELS``, 256).
            norm: normalization after each conv: "" (none, the paper), "BN", "SyncBN", "GN", ...
                (``MODEL.FPN.NORM``; any name ``detectron2.layers.get_norm`` knows).
            top_block: module making the levels above the last input, with attributes
                ``num_levels`` and ``in_feature`` (see :class:`LastLevelSubsample`); None for none.
            fuse_type: merge of lateral and top-down maps, "sum" (the paper) or "avg" (``MODEL.FPN.FUSE_TYPE``).
            square_pad: if > 0, images are padded to this square size.
            upsample: "nearest" (the paper) or "bilinear" x2 top-down upsampling (``MODEL.FPN.UPSAMPLE``).
            top_down: False removes the top-down pathway: P_k = conv3x3(lateral(C_k)) (Tables 1-2, row d).
            lateral: False removes the 1x1 lateral connections below the coarsest level:
                P_k = conv3x3(upsample(M_{k+1})) (Tables 1-2, row e).
            finest_only: True outputs only the finest level (Tables 1-2, row f); ``top_block`` must be None.
            channels_last: run the bottom-up network and the neck in channels-last (NHWC) memory
                layout, which CPU and GPU convolutions run faster; same parameter names and values,
                features equal to float rounding (NHWC convolutions sum in another order)
                (``MODEL.FPN.CHANNELS_LAST``). The outputs are channels-last too.
            autocast_dtype: "" (float32), "float16" or "bfloat16": in eval mode, run the bottom-up
                network and the neck under ``torch.autocast`` with this dtype and return the
                features as float32 (``MODEL.FPN.AUTOCAST_DTYPE``; inference only, training mixed
                precision is ``SOLVER.AMP.ENABLED``). Outputs differ from float32 by the dtype's
                rounding (float16: ~1e-3 relative).
            fold_frozen_bn: in eval, fold the bottom-up network's FrozenBatchNorm layers into the
                convolutions before them (``MODEL.FPN.FOLD_FROZEN_BN``; see ``frozen_bn_fold.py``).
            cpu_blocked_layout: for float32 CPU inference without gradients, run a Detectron2 ResNet
                bottom-up and the lateral convs in oneDNN's blocked layout: outputs bit-identical to
                the NCHW path's (folded or not), fewer memory passes (``MODEL.FPN.CPU_BLOCKED_LAYOUT``;
                see ``blocked_layout.py``). Ignored with ``channels_last`` or ``autocast_dtype``,
                inside a caller's ``torch.autocast`` region, or for a bottom-up it does not support.
        """
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise ValueError(
                f"bottom_up (MODEL.FPN.BOTTOM_UP) must be a detectron2 Backbone, got {type(bottom_up).__name__}; "
                "register a builder that returns a Backbone in BACKBONE_REGISTRY."
            )
        _check_in_features(in_features)
        _check_choice(fuse_type, FUSE_TYPES, "MODEL.FPN.FUSE_TYPE")
        _check_choice(upsample, UPSAMPLE_MODES, "MODEL.FPN.UPSAMPLE")
        _check_choice(autocast_dtype, AUTOCAST_DTYPES, "MODEL.FPN.AUTOCAST_DTYPE")
        if not top_down and not lateral:
            raise ValueError(
                "MODEL.FPN.TOP_DOWN = False and MODEL.FPN.LATERAL = False leave no path from C2..C4 to the "
                "pyramid; turn one of them back on."
            )
        if finest_only and top_block is not None:
            raise ValueError(
                "MODEL.FPN.FINEST_ONLY = True outputs only the finest level; set MODEL.FPN.EXTRA_LEVELS to 'none'."
            )

        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"MODEL.FPN.IN_FEATURES names {missing}, which the bottom-up network "
                f"({type(bottom_up).__name__}) does not produce; it produces {list(input_shapes)}. "
                "Use those names, or add them to the bottom-up outputs (e.g. MODEL.RESNETS.OUT_FEATURES)."
            )
        strides = [input_shapes[f].stride for f in in_features]
        for finer, coarser in zip(strides[:-1], strides[1:]):
            if coarser != 2 * finer:
                raise ValueError(
                    f"MODEL.FPN.IN_FEATURES {list(in_features)} have strides {strides}, which do not double "
                    "level to level; choose consecutive stages (e.g. ['res2', 'res3', 'res4', 'res5'])."
                )
        if any(s & (s - 1) for s in strides):
            raise ValueError(f"MODEL.FPN.IN_FEATURES strides {strides} must be powers of 2.")
        try:
            get_norm(norm, out_channels)
        except Exception as e:  # detectron2 raises KeyError/AssertionError for unknown names
            raise ValueError(f"MODEL.FPN.NORM = {norm!r} is not a known norm ({e}); use '', 'BN', 'SyncBN' or 'GN'.") from e

        stages = [int(math.log2(s)) for s in strides]
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, (stage, feat) in enumerate(zip(stages, in_features)):
            is_top = idx == len(in_features) - 1
            if lateral or is_top:
                conv = Conv2d(
                    input_shapes[feat].channels, out_channels, kernel_size=1, bias=use_bias,
                    norm=get_norm(norm, out_channels),
                )
                weight_init.c2_xavier_fill(conv)
                self.add_module(f"fpn_lateral{stage}", conv)
            else:
                conv = None
            lateral_convs.append(conv)
            if finest_only and idx > 0:
                conv = None
            else:
                conv = Conv2d(
                    out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=use_bias,
                    norm=get_norm(norm, out_channels),
                )
                weight_init.c2_xavier_fill(conv)
                self.add_module(f"fpn_output{stage}", conv)
            output_convs.append(conv)
        # Plain lists (not ModuleLists) so that parameter names stay Detectron2's; coarsest first,
        # the order of the top-down pass.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]
        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        self.top_block = top_block
        self._fuse_type = fuse_type
        self._upsample = upsample
        self._top_down = top_down
        self._square_pad = square_pad
        self._channels_last = channels_last
        self._autocast_dtype = AUTOCAST_DTYPES[autocast_dtype]
        self._cpu_blocked_layout = cpu_blocked_layout and not channels_last and self._autocast_dtype is None
        self._fold_frozen_bn = fold_frozen_bn
        if fold_frozen_bn:
            fold_frozen_batchnorm(bottom_up)
        if channels_last:
            # Weights in NHWC order once here, so convolutions do not reorder them at every call;
            # load_state_dict copies values into these tensors and keeps their layout.
            self.to(memory_format=torch.channels_last)
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

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None):
        if input_shape is None:
            input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
        name = cfg.MODEL.FPN.BOTTOM_UP
        if name == "build_fpn_neck_backbone" or name not in BACKBONE_REGISTRY:
            raise ValueError(
                f"MODEL.FPN.BOTTOM_UP = {name!r} is not a registered bottom-up network; use a BACKBONE_REGISTRY "
                "name such as 'build_resnet_backbone' (import the module that registers it first)."
            )
        bottom_up = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
        in_features = list(cfg.MODEL.FPN.IN_FEATURES)
        _check_in_features(in_features)
        out_channels = cfg.MODEL.FPN.OUT_CHANNELS
        finest_only = cfg.MODEL.FPN.FINEST_ONLY
        extra = "none" if finest_only else cfg.MODEL.FPN.EXTRA_LEVELS
        return {
            "bottom_up": bottom_up,
            "in_features": in_features,
            "out_channels": out_channels,
            "norm": cfg.MODEL.FPN.NORM,
            "top_block": build_extra_levels(extra, bottom_up, in_features, out_channels),
            "fuse_type": cfg.MODEL.FPN.FUSE_TYPE,
            "upsample": cfg.MODEL.FPN.UPSAMPLE,
            "top_down": cfg.MODEL.FPN.TOP_DOWN,
            "lateral": cfg.MODEL.FPN.LATERAL,
            "finest_only": finest_only,
            "channels_last": cfg.MODEL.FPN.CHANNELS_LAST,
            "autocast_dtype": cfg.MODEL.FPN.AUTOCAST_DTYPE,
            "fold_frozen_bn": cfg.MODEL.FPN.FOLD_FROZEN_BN,
            "cpu_blocked_layout": cfg.MODEL.FPN.CPU_BLOCKED_LAYOUT,
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
        if self._autocast_dtype is not None and not self.training:
            # The one place the inference mixed precision is applied; float32 out, so the heads
            # (Detectron2's RPN head included) take the features as they would without it.
            with torch.autocast(x.device.type, dtype=self._autocast_dtype):
                features = self._pyramid(x)
            return {k: v.float() for k, v in features.items()}
        return self._pyramid(x)

    def _pyramid(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """:meth:`forward` in the current precision."""
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        blocked = False
        if not torch.jit.is_scripting():  # TorchScript does not compile this block
            blocked = self._use_blocked_layout(x)
        if blocked:
            # Bottom-up outputs stay oneDNN tensors; the laterals read them without conversion.
            bottom_up_features = self._blocked_bottom_up(x)
        else:
            bottom_up_features = self.bottom_up(x)
        results: List[torch.Tensor] = []  # coarsest first while building
        merged: Optional[torch.Tensor] = None
        for idx, (lateral_conv, output_conv) in enumerate(zip(self.lateral_convs, self.output_convs)):
            c = bottom_up_features[self.in_features[-idx - 1]]
            if lateral_conv is not None:
                lateral = self._blocked_lateral(idx, c) if blocked else lateral_conv(c)
            if merged is None or not self._top_down:
                merged = lateral if lateral_conv is not None else c
            elif lateral_conv is not None and self._add_top_down_in_place(lateral, merged):
                merged = lateral
            else:
                # Sec. 3: upsample the coarser map by 2 and merge it with the 1x1-reduced C_k.
                # size= (not scale_factor=) keeps the grids aligned for inputs of any size.
                top_down = F.interpolate(merged, size=c.shape[-2:], mode=self._upsample)
                if lateral_conv is None:
                    merged = top_down
                else:
                    merged = self._fuse_top_down(idx, lateral, top_down)
            if output_conv is not None:
                # The 3x3 conv on each merged map reduces the aliasing of upsampling (Sec. 3).
                results.append(output_conv(merged))
        results = self._extra_path(results[::-1])
        if self.top_block is not None:
            name = self.top_block.in_feature
            if name in bottom_up_features:
                source = bottom_up_features[name]
                source = source.to_dense() if blocked else source
            else:
                source = results[self._out_features.index(name)]
            results.extend(self.top_block(source))
        return {name: res for name, res in zip(self._out_features, results)}

    def _use_blocked_layout(self, x: torch.Tensor) -> bool:
        """Whether this forward takes the oneDNN blocked-layout path (see ``cpu_blocked_layout``)."""
        if not self._cpu_blocked_layout or torch.jit.is_tracing():
            return False
        if self.training or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return False
        if cpu_autocast_enabled():  # the caller's torch.autocast: its convolutions run in low precision
            return False
        if x.numel() == 0 or not all(self.lateral_convs) or not supports_blocked_layout(self.bottom_up):
            return False
        # Folding leaves convs whose norm is not FrozenBN unfolded, so both kinds are checked.
        return blocked_layout_matches() and (not self._fold_frozen_bn or blocked_layout_matches(folded=True))

    def _add_top_down_in_place(self, lateral: torch.Tensor, coarser: torch.Tensor) -> bool:
        """Inference fast path of the paper's merge, lateral + nearest_x2(coarser), computed as
        ``lateral[..., 2i + a, 2j + b] += coarser[..., i, j]`` in place: the same float additions,
        without materialising the upsampled map and the sum (two full-size tensors at P2).
        Returns False, doing nothing, where it does not apply."""
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.is_grad_enabled():
            return False
        if type(self)._fuse_top_down is not FPNNeck._fuse_top_down:  # subclasses fuse their own way
            return False
        if self._fuse_type != "sum" or self._upsample != "nearest" or not lateral.is_contiguous():
            return False
        n, ch, h, w = coarser.shape
        if lateral.shape != (n, ch, 2 * h, 2 * w):
            return False
        lateral.view(n, ch, h, 2, w, 2).add_(coarser[:, :, :, None, :, None])
        return True

    @torch.jit.unused
    def _blocked_bottom_up(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return resnet_blocked_forward(self.bottom_up, x)

    @torch.jit.unused
    def _blocked_lateral(self, idx: int, c: torch.Tensor) -> torch.Tensor:
        """Lateral conv ``idx`` (coarsest first) of a oneDNN tensor C_k, as an NCHW tensor."""
        return blocked_conv(self.lateral_convs[idx], c).to_dense()

    def __prepare_scriptable__(self) -> "FPNNeck":
        """Called by ``torch.jit.script``: a copy whose conv lists are ModuleLists, which TorchScript
        can iterate (parameter names of the copy change; the original is untouched)."""
        if any(c is None for c in self.lateral_convs + self.output_convs):
            raise ValueError(
                "TorchScript scripting cannot export an FPNNeck without some lateral or output convs "
                "(MODEL.FPN.LATERAL = False or MODEL.FPN.FINEST_ONLY = True); export it by tracing instead."
            )
        ret = copy.deepcopy(self)
        ret.lateral_convs = nn.ModuleList(ret.lateral_convs)
        ret.output_convs = nn.ModuleList(ret.output_convs)
        for name, _ in self.named_children():
            if name.startswith("fpn_"):
                delattr(ret, name)
        return ret

    def _fuse_top_down(self, idx: int, lateral: torch.Tensor, top_down: torch.Tensor) -> torch.Tensor:
        """Merge of lateral(C_k) and the upsampled M_{k+1}, both (N, D, H_k, W_k); ``idx`` counts
        levels from the coarsest (0). Subclasses (e.g. weighted fusion) override this."""
        if self._fuse_type == "avg":
            return (lateral + top_down) / 2
        return lateral + top_down

    def _extra_path(self, results: List[torch.Tensor]) -> List[torch.Tensor]:
        """Hook after the top-down pathway: P maps finest first -> the output maps (here unchanged).
        Subclasses add paths here (e.g. PANet's bottom-up path augmentation); the extra levels
        (``top_block``) are then made from what this returns."""
        return results

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


def build_extra_levels(kind: str, bottom_up: Backbone, in_features: List[str], out_channels: int) -> Optional[nn.Module]:
    """The module for ``MODEL.FPN.EXTRA_LEVELS`` (levels above the coarsest input), or None."""
    _check_choice(kind, EXTRA_LEVEL_TYPES, "MODEL.FPN.EXTRA_LEVELS")
    if kind == "none":
        return None
    shapes = bottom_up.output_shape()
    last = in_features[-1]
    last_p = f"p{int(math.log2(shapes[last].stride))}" if last in shapes else "p5"
    if kind == "p6_subsample":
        return LastLevelSubsample(in_feature=last_p)
    if kind == "p6p7_c5":
        return LastLevelP6P7(shapes[last].channels if last in shapes else out_channels, out_channels, in_feature=last)
    return LastLevelP6P7(out_channels, out_channels, in_feature=last_p)


@BACKBONE_REGISTRY.register()
def build_fpn_neck_backbone(cfg, input_shape: ShapeSpec) -> FPNNeck:
    """``MODEL.BACKBONE.NAME: "build_fpn_neck_backbone"``: ``MODEL.FPN.BOTTOM_UP`` + :class:`FPNNeck`."""
    return FPNNeck(cfg, input_shape)
