"""BiFPN, EfficientDet's neck (Tan et al. 2020, Sec. 3, Fig. 2d and Fig. 3).

One BiFPN layer takes the maps P_3^in..P_7^in (d channels each) and returns P_3^out..P_7^out of
the same shapes through a top-down and a bottom-up path (Eq. 4, written for level 6):

    P_6^td  = Conv((w1 P_6^in + w2 Resize(P_7^in)) / (w1 + w2 + eps))
    P_6^out = Conv((w1' P_6^in + w2' P_6^td + w3' Resize(P_5^out)) / (w1' + w2' + w3' + eps))

- every node is a fast normalized fusion (Eq. 3, :class:`~.weighted_fusion.FastNormalizedFusion`)
  of its inputs, with its own learned weights, followed by a depthwise-separable 3x3 conv, batch
  norm and swish (Sec. 3.3: "batch normalization and activation after each convolution");
- the intermediate levels (4..6) have a top-down node; the finest level's only node is its output
  (its top-down node would be the same map), and the coarsest level has no top-down node;
- each intermediate output node also takes the level's input (the extra same-level edge, Sec. 3.2);
- Resize is nearest-neighbour x2 upsampling top-down and 3x3 max-pooling with stride 2 bottom-up.

:class:`BiFPN` is the whole neck on a bottom-up network: C_3..C_5 mapped to d channels by a 1x1
conv + norm (only where their channels are not d), P_6^in and P_7^in made from C_5 by a 1x1 conv +
norm and stride-2 max-pooling, then ``num_layers`` BiFPN layers in a row (EfficientDet-D0: 3
layers, d = 64). The pyramid's width d is ``MODEL.FPN.OUT_CHANNELS`` and its inputs are
``MODEL.FPN.BOTTOM_UP`` / ``MODEL.FPN.IN_FEATURES``, as for the other necks, so that comparing
necks changes only ``MODEL.BACKBONE.NAME``; its own options are under ``MODEL.BIFPN``.

Parameter names: ``bottom_up.*``, ``input_conv{k}`` (C_k -> P_k^in; ``input_conv6`` reads C_5),
``layers.{i}.p{k}_td`` and ``layers.{i}.p{k}_out``, each with ``fusion.weight`` and
``conv.depthwise`` / ``conv.pointwise`` (with ``conv.pointwise.norm``).
"""

import math
from typing import Dict, List, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, DepthwiseSeparableConv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from ..config import plugin_key
from ._checks import check_choice
from .neck import UPSAMPLE_MODES, FPNNeck, build_bottom_up
from .weighted_fusion import FastNormalizedFusion

__all__ = ["BiFPNNode", "BiFPNLayer", "BiFPN", "build_bifpn_backbone"]


def upsample_to(x: torch.Tensor, like: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Resize of the top-down path: (N, D, h, w) -> (N, D, H, W) of ``like``, H = 2h (or 2h - 1).

    To ``like``'s size rather than by a factor, so that odd sizes stay on the finer grid."""
    return F.interpolate(x, size=like.shape[-2:], mode=mode)


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Resize of the bottom-up path and of the extra levels: 3x3 max-pooling with stride 2,
    (N, D, H, W) -> (N, D, ceil(H / 2), ceil(W / 2)), the grid of a stride-2 3x3 conv."""
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def downsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """:func:`downsample`, then aligned to ``like``'s grid. The alignment only acts where a
    bottom-up network rounds odd sizes down (a 2x2 stride-2 stage) on inputs that are not
    multiples of ``size_divisibility``; the detectors pad their inputs, so it never acts there."""
    out = downsample(x)
    if out.shape[-2:] != like.shape[-2:]:
        out = F.interpolate(out, size=like.shape[-2:], mode="nearest")
    return out


class BiFPNNode(nn.Module):
    """One BiFPN node: fast normalized fusion of its inputs, then a depthwise-separable 3x3 conv,
    norm and swish. ``num_inputs`` maps (N, D, H, W) -> one (N, D, H, W)."""

    def __init__(self, num_inputs: int, channels: int, norm: str = "BN", eps: float = 1e-4):
        """
        Args:
            num_inputs: 2 (top-down nodes, the finest and the coarsest output) or 3 (the other
                output nodes, with the same-level input edge).
            channels: d, the pyramid's channels.
            norm: normalization after the pointwise conv ("" for none, ``MODEL.BIFPN.NORM``).
            eps: the fusion's epsilon (``MODEL.BIFPN.FUSION_EPS``).
        """
        super().__init__()
        self.fusion = FastNormalizedFusion(num_inputs, eps)
        # Depthwise 3x3 then pointwise 1x1; norm and swish after the pointwise conv (Sec. 3.3).
        self.conv = DepthwiseSeparableConv2d(
            channels, channels, kernel_size=3, padding=1, norm2=norm, activation2=F.silu
        )

    def forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        return self.conv(self.fusion(inputs))


class BiFPNLayer(nn.Module):
    """One BiFPN layer (Fig. 2d): P^in of ``levels`` -> P^out of the same shapes.

    Nodes, registered as ``p{k}_td`` (intermediate levels, 2 inputs) and ``p{k}_out`` (3 inputs at
    the intermediate levels, 2 at the finest and the coarsest).
    """

    def __init__(
        self,
        levels: List[int],
        channels: int,
        norm: str = "BN",
        eps: float = 1e-4,
        upsample: str = "nearest",
    ):
        """
        Args:
            levels: the pyramid levels k (stride 2**k), finest first, consecutive, at least 2
                (EfficientDet: [3, 4, 5, 6, 7]).
            channels, norm, eps: of every node, see :class:`BiFPNNode`.
            upsample: top-down Resize, "nearest" (the paper) or "bilinear" (``MODEL.FPN.UPSAMPLE``).
        """
        super().__init__()
        if len(levels) < 2:
            raise ValueError(f"a BiFPN layer fuses at least 2 levels, got {list(levels)}.")
        self.levels = list(levels)
        self.upsample = upsample
        # Plain lists indexed like ``levels`` (None where a level has no such node); the modules
        # are registered under their paper names, coarsest top-down node first (the order they run).
        self.td_nodes: List[Optional[BiFPNNode]] = [None] * len(levels)
        for i in range(len(levels) - 2, 0, -1):
            self.td_nodes[i] = BiFPNNode(2, channels, norm, eps)
            self.add_module(f"p{levels[i]}_td", self.td_nodes[i])
        self.out_nodes: List[BiFPNNode] = []
        for i, level in enumerate(levels):
            intermediate = 0 < i < len(levels) - 1
            self.out_nodes.append(BiFPNNode(3 if intermediate else 2, channels, norm, eps))
            self.add_module(f"p{level}_out", self.out_nodes[-1])

    def forward(self, p_in: List[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            p_in: P_k^in for k in ``levels``, finest first, each (N, D, H_k, W_k) with
                H_k = ceil(H_{k-1} / 2).
        Returns:
            P_k^out, the same shapes.
        """
        n = len(self.levels)
        # Top-down path: P_k^td = Conv(fuse(P_k^in, Resize(P_{k+1}^td))) for the intermediate
        # levels, coarsest first; the coarsest level enters with its input P_7^in.
        p_td: List[Optional[torch.Tensor]] = [None] * n
        coarser = p_in[n - 1]
        for i in range(n - 2, 0, -1):
            coarser = self.td_nodes[i]([p_in[i], upsample_to(coarser, p_in[i], self.upsample)])
            p_td[i] = coarser
        # The finest level: P_3^out = Conv(fuse(P_3^in, Resize(P_4^td))).
        p_out = [self.out_nodes[0]([p_in[0], upsample_to(coarser, p_in[0], self.upsample)])]
        # Bottom-up path: P_k^out = Conv(fuse(P_k^in, P_k^td, Resize(P_{k-1}^out))); P_k^in is
        # the extra same-level edge. The coarsest level: P_7^out = Conv(fuse(P_7^in,
        # Resize(P_6^out))).
        for i in range(1, n):
            finer = downsample_to(p_out[i - 1], p_in[i])
            td = p_td[i]
            inputs = [p_in[i], finer] if td is None else [p_in[i], td, finer]
            p_out.append(self.out_nodes[i](inputs))
        return p_out

    def extra_repr(self) -> str:
        return f"levels={self.levels}, upsample={self.upsample}"


class BiFPN(Backbone):
    """The full BiFPN neck on a bottom-up :class:`Backbone`: ``num_layers`` :class:`BiFPNLayer` s.

    Forward: image batch (N, 3, H, W) ->
    ``{"p3": (N, D, H/8, W/8), ..., "p7": (N, D, H/128, W/128)}`` (one entry per input level,
    finest first, then ``num_extra_levels`` levels; D = ``out_channels``).
    """

    @configurable
    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int,
        *,
        num_layers: int = 3,
        norm: str = "BN",
        num_extra_levels: int = 2,
        fusion_eps: float = 1e-4,
        upsample: str = "nearest",
    ):
        """
        Args:
            bottom_up: the bottom-up network; its outputs named in ``in_features`` are C_3..C_5.
            in_features: names of the bottom-up outputs, finest first, strides doubling level to
                level (``MODEL.FPN.IN_FEATURES``; EfficientDet: C_3..C_5).
            out_channels: d, channels of every level (``MODEL.FPN.OUT_CHANNELS``; D0: 64).
            num_layers: BiFPN layers in a row, >= 1 (``MODEL.BIFPN.NUM_LAYERS``; D0: 3).
            norm: normalization after every conv of the neck: "BN" (the paper), "SyncBN", "GN",
                "" for none ... (``MODEL.BIFPN.NORM``; any ``detectron2.layers.get_norm`` name).
            num_extra_levels: levels above the coarsest input, each a stride-2 max-pooling of
                the one below (the first after a 1x1 conv of C_5), >= 0
                (``MODEL.BIFPN.NUM_EXTRA_LEVELS``; the paper: 2, P_6 and P_7).
            fusion_eps: eps of every fusion node, > 0 (``MODEL.BIFPN.FUSION_EPS``; the paper: 1e-4).
            upsample: top-down Resize, "nearest" (the paper) or "bilinear" (``MODEL.FPN.UPSAMPLE``).
        """
        super().__init__()
        # The inputs are checked as FPNNeck checks its own (the same keys, the same rules).
        strides = FPNNeck._check_arguments(
            bottom_up, in_features, "", out_channels, True, True, False, None
        )
        self._check_options(out_channels, num_layers, norm, num_extra_levels, fusion_eps, upsample)
        if len(in_features) + num_extra_levels < 2:
            raise ValueError(
                f"MODEL.FPN.IN_FEATURES {list(in_features)} and MODEL.BIFPN.NUM_EXTRA_LEVELS = "
                f"{num_extra_levels} make one level; a BiFPN fuses at least 2: list more inputs "
                "or set NUM_EXTRA_LEVELS (EfficientDet: C3..C5 and 2)."
            )
        shapes = bottom_up.output_shape()
        input_levels = [int(math.log2(s)) for s in strides]
        levels = input_levels + [input_levels[-1] + 1 + i for i in range(num_extra_levels)]
        use_bias = norm == ""

        def channel_map(in_channels: int) -> Optional[nn.Module]:
            # Inputs already of d channels enter as they are (the paper's resampling rule).
            if in_channels == out_channels:
                return None
            conv = Conv2d(
                in_channels,
                out_channels,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(conv)
            return conv

        self.bottom_up = bottom_up
        self.in_features = tuple(in_features)
        # The 1x1 convs C_k -> P_k^in, finest first, and last (with extra levels) the one that
        # reads C_5 for P_6^in (its own, not P_5^in's): a plain list, the modules registered as
        # input_conv{k}; None where the channels already are d.
        sources = list(zip(input_levels, in_features))
        if num_extra_levels > 0:
            sources.append((input_levels[-1] + 1, in_features[-1]))
        self.input_convs: List[Optional[nn.Module]] = []
        for level, feature in sources:
            conv = channel_map(shapes[feature].channels)
            if conv is not None:
                self.add_module(f"input_conv{level}", conv)
            self.input_convs.append(conv)
        self.layers = nn.ModuleList(
            BiFPNLayer(levels, out_channels, norm, fusion_eps, upsample) for _ in range(num_layers)
        )
        self._num_extra_levels = num_extra_levels
        self._out_features = [f"p{k}" for k in levels]
        self._out_feature_strides = {f"p{k}": 2**k for k in levels}
        self._out_feature_channels = {f"p{k}": out_channels for k in levels}
        # Every level's grid is exactly half the one below: pad images to the coarsest stride.
        self._size_divisibility = 2 ** levels[-1]

    @staticmethod
    def _check_options(out_channels, num_layers, norm, num_extra_levels, fusion_eps, upsample):
        """Clear errors for BiFPN options that cannot build the neck, naming the config key."""
        if not (isinstance(out_channels, int) and out_channels > 0):
            raise ValueError(
                f"MODEL.FPN.OUT_CHANNELS = {out_channels!r} must be a positive int (D0: 64)."
            )
        if not (isinstance(num_layers, int) and num_layers >= 1):
            raise ValueError(
                f"MODEL.BIFPN.NUM_LAYERS = {num_layers!r} must be an int >= 1 (EfficientDet-D0: 3)."
            )
        if not (isinstance(num_extra_levels, int) and num_extra_levels >= 0):
            raise ValueError(
                f"MODEL.BIFPN.NUM_EXTRA_LEVELS = {num_extra_levels!r} must be an int >= 0 "
                "(the paper: 2, for P6 and P7)."
            )
        if not fusion_eps > 0:
            raise ValueError(
                f"MODEL.BIFPN.FUSION_EPS = {fusion_eps!r} must be > 0 (the paper uses 1e-4)."
            )
        check_choice(upsample, UPSAMPLE_MODES, "MODEL.FPN.UPSAMPLE")
        try:
            get_norm(norm, out_channels)
        except Exception as e:  # detectron2 raises KeyError/AssertionError/ValueError
            raise ValueError(
                f"MODEL.BIFPN.NORM = {norm!r} does not build a norm of {out_channels} channels "
                f"({e}); use 'BN' (the paper), 'SyncBN', 'GN' (channels a multiple of 32) or ''."
            ) from e

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None):
        return {
            "bottom_up": build_bottom_up(cfg, input_shape),
            "in_features": list(cfg.MODEL.FPN.IN_FEATURES),
            "out_channels": cfg.MODEL.FPN.OUT_CHANNELS,
            "num_layers": plugin_key(cfg, "MODEL.BIFPN.NUM_LAYERS"),
            "norm": plugin_key(cfg, "MODEL.BIFPN.NORM"),
            "num_extra_levels": plugin_key(cfg, "MODEL.BIFPN.NUM_EXTRA_LEVELS"),
            "fusion_eps": plugin_key(cfg, "MODEL.BIFPN.FUSION_EPS"),
            "upsample": plugin_key(cfg, "MODEL.FPN.UPSAMPLE"),
        }

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: images (N, C_in, H, W), H and W multiples of ``size_divisibility``.
        Returns:
            dict "p<k>" -> P_k^out of the last layer, (N, out_channels, H / 2**k, W / 2**k): the
            input levels, finest first, then the extra ones.
        """
        features = self.bottom_up(x)
        # P_k^in: C_k mapped to d channels.
        p_in = []
        for conv, name in zip(self.input_convs, self.in_features):
            p_in.append(conv(features[name]) if conv is not None else features[name])
        # P_6^in = MaxPool(Conv1x1(C_5)), P_7^in = MaxPool(P_6^in).
        if self._num_extra_levels > 0:
            extra = features[self.in_features[-1]]
            conv = self.input_convs[len(self.in_features)]
            if conv is not None:
                extra = conv(extra)
            for _ in range(self._num_extra_levels):
                extra = downsample(extra)
                p_in.append(extra)
        # The BiFPN layers, each one's P^out the next one's P^in.
        p = p_in
        for layer in self.layers:
            p = layer(p)
        return dict(zip(self._out_features, p))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_bifpn_backbone(cfg, input_shape: ShapeSpec) -> BiFPN:
    """``MODEL.BACKBONE.NAME: "build_bifpn_backbone"``: ``MODEL.FPN.BOTTOM_UP`` + :class:`BiFPN`."""
    return BiFPN(cfg, input_shape)
