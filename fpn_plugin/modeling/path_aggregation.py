"""Path-aggregation necks: PAFPN (Liu et al. 2018, PANet) and BiFPN-style weighted fusion
(Tan et al. 2020).

:class:`PathAggregationNeck` is :class:`~fpn_plugin.neck.FPNNeck` (the same lateral and top-down
pathway, built by it, with Detectron2's parameter names) plus

- PANet's bottom-up path augmentation (Liu et al. 2018, Sec. 3.1, Fig. 2b) on the FPN outputs P_k:

      N_2 = P_2,    N_{k+1} = conv3x3(conv3x3_stride2(N_k) + P_{k+1})

  (parameters ``pa_downsample{k+1}`` and ``pa_output{k+1}``); the pyramid output is N_2..N_5 and
  the extra levels (P6) are made from N_5 as :class:`FPNNeck` makes them from P_5;
- with ``fuse_type="weighted"``, EfficientDet's fast normalized fusion (Eq. 3, see
  :mod:`.weighted_fusion`) at every node that merges two maps, top-down
  (``M_k = (w1 lateral(C_k) + w2 up(M_{k+1})) / (eps + w1 + w2)``, ``fpn_fuse{k}``) and
  bottom-up (``(w1 down(N_{k-1}) + w2 P_k) / (eps + w1 + w2)`` before ``pa_output{k}``,
  ``pa_fuse{k}``): a BiFPN-style layer on the PANet topology. Not included from BiFPN: its extra
  same-level input edge, its depthwise-separable convs and the repeated layers.

A checkpoint of :class:`FPNNeck` (or Detectron2's FPN) loads into it with only the new path's
parameters missing.
"""

import math
from typing import List, Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone

from ..config import plugin_key
from ._checks import check_choice
from .neck import FUSE_TYPES, FPNNeck
from .weighted_fusion import FastNormalizedFusion, WeightedTopDownMerge

__all__ = ["PathAggregationNeck", "build_pafpn_neck_backbone"]

PA_FUSE_TYPES = FUSE_TYPES + ("weighted",)


class PathAggregationNeck(FPNNeck):
    """FPN + PANet bottom-up path augmentation, with optional BiFPN-style weighted fusion.

    Forward: image batch (N, 3, H, W) ->
    ``{"p2": (N, D, H/4, W/4), ..., "p6": (N, D, H/64, W/64)}``, the same names, strides and
    channels as :class:`FPNNeck` (the maps are N_2..N_5 and P6 from N_5).
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
        path_augmentation: bool = True,
        fusion_eps: float = 1e-4,
        **fpn_options,
    ):
        """
        Args:
            bottom_up, in_features, out_channels, norm, top_block, square_pad: as :class:`FPNNeck`.
            fuse_type: how every node merges two maps: "sum" (the papers' FPN and PANet), "avg",
                or "weighted" (fast normalized fusion with learned weights per node, EfficientDet)
                (``MODEL.FPN.FUSE_TYPE``).
            path_augmentation: add PANet's bottom-up path (``MODEL.PAFPN.PATH_AUGMENTATION``);
                False with ``fuse_type`` "sum"/"avg" is exactly :class:`FPNNeck`.
            fusion_eps: eps of the weighted fusion, > 0 (``MODEL.PAFPN.FUSION_EPS``, 1e-4 as the
                paper).
            fpn_options: :class:`FPNNeck`'s other keyword options (``upsample``, ``top_down``,
                ``lateral``, ``finest_only``).
        """
        check_choice(fuse_type, PA_FUSE_TYPES, "MODEL.FPN.FUSE_TYPE")
        if path_augmentation and fpn_options.get("finest_only", False):
            raise ValueError(
                "MODEL.PAFPN.PATH_AUGMENTATION = True needs every pyramid level, but "
                "MODEL.FPN.FINEST_ONLY = True drops P3..P5; turn one of them off."
            )
        # FPNNeck builds the lateral and top-down pathway; the weighted merge replaces its sum
        # below.
        super().__init__(
            bottom_up,
            in_features,
            out_channels,
            norm,
            top_block,
            "sum" if fuse_type == "weighted" else fuse_type,
            square_pad,
            **fpn_options,
        )
        self._fuse_type = fuse_type
        self._path_augmentation = path_augmentation
        if fuse_type == "weighted" and not (fusion_eps > 0):
            raise ValueError(
                f"MODEL.PAFPN.FUSION_EPS = {fusion_eps!r} must be > 0 (the paper uses 1e-4)."
            )

        shapes = bottom_up.output_shape()
        stages = [int(math.log2(shapes[f].stride)) for f in in_features]  # finest first
        use_bias = norm == ""
        # Top-down nodes that merge two maps become weighted ones (coarsest first, as FPNNeck's
        # lists).
        if fuse_type == "weighted" and self._top_down:
            for idx, stage in enumerate(stages[::-1]):
                if idx > 0 and self.lateral_convs[idx] is not None:
                    delattr(self, f"fpn_merge{stage}")
                    fusion = WeightedTopDownMerge(self._upsample, fusion_eps)
                    self.add_module(f"fpn_fuse{stage}", fusion)
                    self.top_down_merges[idx] = fusion
        # Bottom-up path, finest first: entry i makes N at stages[i] from N at stages[i - 1].
        self.downsample_convs: List[Optional[nn.Module]] = [None]
        self.path_output_convs: List[Optional[nn.Module]] = [None]
        self.bottom_up_fusions: List[Optional[nn.Module]] = [None]
        if path_augmentation:
            for stage in stages[1:]:
                # Two 3x3 convs: stride 2 (N_i -> the size of P_{i+1}), then on the sum.
                down, out = (
                    Conv2d(
                        out_channels,
                        out_channels,
                        kernel_size=3,
                        stride=stride,
                        padding=1,
                        bias=use_bias,
                        norm=get_norm(norm, out_channels),
                    )
                    for stride in (2, 1)
                )
                for conv in (down, out):
                    weight_init.c2_xavier_fill(conv)
                self.add_module(f"pa_downsample{stage}", down)
                self.add_module(f"pa_output{stage}", out)
                self.downsample_convs.append(down)
                self.path_output_convs.append(out)
                fusion = None
                if fuse_type == "weighted":
                    fusion = FastNormalizedFusion(2, fusion_eps)
                    self.add_module(f"pa_fuse{stage}", fusion)
                self.bottom_up_fusions.append(fusion)

    @classmethod
    def from_config(cls, cfg, input_shape: Optional[ShapeSpec] = None):
        args = super().from_config(cfg, input_shape)
        args["path_augmentation"] = plugin_key(cfg, "MODEL.PAFPN.PATH_AUGMENTATION")
        args["fusion_eps"] = plugin_key(cfg, "MODEL.PAFPN.FUSION_EPS")
        return args

    def _merge(self, fusion: Optional[nn.Module], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """A bottom-up path node: ``fusion`` (weighted), or the sum / average of the two maps."""
        if self._fuse_type == "weighted":
            return fusion([a, b])
        if self._fuse_type == "avg":
            return (a + b) / 2
        return a + b

    def _extra_path(self, results: List[torch.Tensor]) -> List[torch.Tensor]:
        """PANet's bottom-up path: P_2..P_5 (finest first) -> N_2..N_5, each (N, D, H_k, W_k)."""
        if not self._path_augmentation:
            return results
        outputs = [results[0]]  # N_2 = P_2
        for i in range(1, len(results)):
            down = self.downsample_convs[i](outputs[-1])
            if down.shape[-2:] != results[i].shape[-2:]:
                # Only for inputs that are not multiples of size_divisibility: align to P's grid.
                down = F.interpolate(down, size=results[i].shape[-2:], mode="nearest")
            merged = self._merge(self.bottom_up_fusions[i], down, results[i])
            outputs.append(self.path_output_convs[i](merged))
        return outputs


@BACKBONE_REGISTRY.register()
def build_pafpn_neck_backbone(cfg, input_shape: ShapeSpec) -> PathAggregationNeck:
    """``MODEL.BACKBONE.NAME: "build_pafpn_neck_backbone"``:
    ``MODEL.FPN.BOTTOM_UP`` + :class:`PathAggregationNeck`
    (PAFPN; BiFPN-style with ``MODEL.FPN.FUSE_TYPE: "weighted"``)."""
    return PathAggregationNeck(cfg, input_shape)
