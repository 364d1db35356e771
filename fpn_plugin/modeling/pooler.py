"""Level-mapping RoI pooler: each RoI is pooled from the pyramid level that matches its size.

Paper, Eqn. (1): an RoI of width w and height h (input-image pixels) is assigned to level

    k = floor(k0 + log2(sqrt(w * h) / 224)),   k0 = 4,

clamped to the levels present, so a 224x224 RoI is pooled from P4 and one half that size from P3.
"""

import math
from typing import List, Optional

import torch
from torch import nn
from torchvision.ops import RoIPool

from detectron2.layers import ROIAlign, ROIAlignRotated, nonzero_tuple
from detectron2.modeling.poolers import convert_boxes_to_pooler_format
from detectron2.structures import Boxes

__all__ = ["LevelMappingROIPooler", "assign_boxes_to_levels"]

POOLER_TYPES = ("ROIAlignV2", "ROIAlign", "ROIPool", "ROIAlignRotated")


def assign_boxes_to_levels(
    box_lists: List[Boxes],
    min_level: int,
    max_level: int,
    canonical_box_size: float,
    canonical_level: int,
) -> torch.Tensor:
    """Level of every box by Eqn. (1), as an offset from ``min_level``.

    Args:
        box_lists: N ``Boxes`` (or ``RotatedBoxes``), one per image, in input-image pixels.
        min_level, max_level: log2 strides of the finest and coarsest pooled levels.
        canonical_box_size: s0 (224 in the paper), pixels.
        canonical_level: k0 (4 in the paper).
    Returns:
        (M,) int64 in [0, max_level - min_level], M = total boxes, in ``box_lists`` order (undefined
        for boxes with a NaN coordinate).
    """
    areas = torch.cat([boxes.area() for boxes in box_lists])
    # Inverted boxes have negative area: treat them as empty (finest level) instead of NaN.
    box_sizes = torch.sqrt(areas.clamp(min=0))
    # Same float expression as Detectron2 so boxes on a level boundary map to the same level;
    # the 1e-8 keeps log2 finite for empty boxes.
    levels = torch.floor(canonical_level + torch.log2(box_sizes / canonical_box_size + 1e-8))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


class LevelMappingROIPooler(nn.Module):
    """Pools a fixed-size feature for every RoI from the level chosen by Eqn. (1).

    A drop-in replacement of Detectron2's ``ROIPooler`` (same arguments, same outputs): each
    level's RoIs are pooled by that level's RoI op (``level_poolers``). Exportable by TorchScript
    scripting and tracing, and so to ONNX. :mod:`fpn_plugin.accel` can pool all levels in one
    vectorised call instead.
    """

    # (M,) level of each RoI of the last forward; declared so that TorchScript can assign it.
    last_levels: Optional[torch.Tensor]

    def __init__(
        self,
        output_size,
        scales,
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: float = 224,
        canonical_level: int = 4,
    ):
        """
        Args:
            output_size (int or (int, int)): bins of the pooled feature, e.g. 7
                (``MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION``).
            scales (list[float]): 1 / stride of each level, finest first; strides must double
                level to level.
            sampling_ratio: samples per bin and axis for ROIAlign; 0 for adaptive
                (``POOLER_SAMPLING_RATIO``).
            pooler_type: "ROIAlignV2" (Detectron2's default), "ROIAlign", "ROIPool" or
                "ROIAlignRotated" (``POOLER_TYPE``).
            canonical_box_size: s0 of Eqn. (1), pixels (``MODEL.ROI_HEADS.CANONICAL_BOX_SIZE``).
            canonical_level: k0 of Eqn. (1) (``MODEL.ROI_HEADS.CANONICAL_LEVEL``); a pyramid without
                that level gets each RoI from the nearest level it has, as with Detectron2's pooler.
        """
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2 or not all(isinstance(s, int) and s > 0 for s in output_size):
            raise ValueError(
                f"output_size (POOLER_RESOLUTION) = {output_size} must be a positive int or two of "
                "them."
            )
        self.output_size = tuple(output_size)
        if pooler_type not in POOLER_TYPES:
            raise ValueError(
                f"pooler_type (POOLER_TYPE) = {pooler_type!r} is not supported; use one of "
                f"{list(POOLER_TYPES)}."
            )
        if len(scales) == 0:
            raise ValueError(
                "scales is empty: give 1/stride of each pooled level (MODEL.ROI_HEADS.IN_FEATURES)."
            )
        levels = [-math.log2(s) for s in scales]
        if not all(math.isclose(k, round(k)) for k in levels):
            raise ValueError(f"scales {list(scales)} must be 1 / (a power of 2).")
        levels = [int(round(k)) for k in levels]
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(
                f"scales {list(scales)} (strides {[2**k for k in levels]}) do not form a pyramid "
                "whose strides double level to level; list consecutive levels, finest first, in "
                "MODEL.ROI_HEADS.IN_FEATURES."
            )
        self.min_level, self.max_level = levels[0], levels[-1]
        if not canonical_box_size > 0:
            raise ValueError(
                f"canonical_box_size (MODEL.ROI_HEADS.CANONICAL_BOX_SIZE) = {canonical_box_size} "
                "must be > 0."
            )
        self.canonical_box_size = float(canonical_box_size)  # float for TorchScript; same values
        self.canonical_level = canonical_level
        self.scales = [float(s) for s in scales]
        self.sampling_ratio = int(sampling_ratio)
        self.pooler_type = pooler_type
        if pooler_type == "ROIPool":
            ops = [RoIPool(self.output_size, spatial_scale=s) for s in scales]
        elif pooler_type == "ROIAlignRotated":
            ops = [
                ROIAlignRotated(self.output_size, spatial_scale=s, sampling_ratio=sampling_ratio)
                for s in scales
            ]
        else:
            aligned = pooler_type == "ROIAlignV2"
            ops = [
                ROIAlign(
                    self.output_size,
                    spatial_scale=s,
                    sampling_ratio=sampling_ratio,
                    aligned=aligned,
                )
                for s in scales
            ]
        # Named like Detectron2's, so code that inspects `level_poolers` keeps working.
        self.level_poolers = nn.ModuleList(ops)
        # (M,) pyramid level k of each RoI of the last forward (for logging and visualisation,
        # see LevelMappingROIHeads); not part of the state dict.
        self.last_levels: Optional[torch.Tensor] = None

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """
        Args:
            x: the pooled levels, (N, C, H_l, W_l) each, with strides ``1 / scales``.
            box_lists: N ``Boxes`` (``RotatedBoxes`` for ROIAlignRotated), input-image pixels.
        Returns:
            (M, C, PH, PW), M = total boxes, in ``box_lists`` order.
        """
        if not isinstance(x, (list, tuple)) or not isinstance(box_lists, (list, tuple)):
            raise TypeError(
                "LevelMappingROIPooler takes a list of feature maps and a list of Boxes."
            )
        if len(x) != len(self.scales):
            raise ValueError(
                f"got {len(x)} feature maps for a pooler built for {len(self.scales)} levels "
                f"(scales {self.scales})."
            )
        if len(box_lists) != x[0].shape[0]:
            raise ValueError(
                f"got {len(box_lists)} box lists for a batch of {x[0].shape[0]} images."
            )
        num_channels = x[0].shape[1]
        if len(box_lists) == 0:
            return x[0].new_zeros((0, num_channels) + self.output_size)
        # Detectron2's conversion: (M, 5) rows of (batch index, box); it also traces the per-image
        # box counts instead of freezing them, so exported models take any number of boxes.
        rois = convert_boxes_to_pooler_format(box_lists)
        levels = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        # A box with a non-finite coordinate (a diverged box regression, say) pools to zeros, as
        # Detectron2's pooler does for NaN boxes, rather than reaching the RoI op, which fails on
        # inf.
        finite = torch.isfinite(rois[:, 1:]).all(dim=1)
        levels = torch.where(finite, levels, torch.zeros_like(levels))
        self.last_levels = levels + self.min_level
        return self.pool(x, rois, torch.where(finite, levels, torch.full_like(levels, -1)))

    def pool(self, x: List[torch.Tensor], rois: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Each RoI pooled from its level by that level's RoI op.

        Args:
            x: the pooled levels, (N, C, H_l, W_l) each.
            rois: (M, 5) rows of (batch index, box in input-image pixels).
            levels: (M,) int64 level index of each RoI, in [0, len(x)); -1 for zeros (not pooled).
        Returns:
            (M, C, PH, PW).
        """
        output = x[0].new_zeros((rois.shape[0], x[0].shape[1]) + self.output_size)
        for level, pooler in enumerate(self.level_poolers):
            inds = nonzero_tuple(levels == level)[0]  # scriptable torch.nonzero(as_tuple=True)
            # index_put_ rather than advanced-index assignment (pytorch issue 49852).
            output.index_put_((inds,), pooler(x[level], rois[inds]))
        return output
