"""Shared-anchor generator: one anchor size per pyramid level, the same aspect ratios on every
level.

Paper, Sec. 4.1: "anchors of a single scale at each level ... areas of
{32^2, 64^2, 128^2, 256^2, 512^2} pixels on {P2, P3, P4, P5, P6} ... multiple aspect ratios
{1:2, 1:1, 2:1} at each level. So in total there are 15 anchors over the pyramid."
"""

import collections.abc
import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import ANCHOR_GENERATOR_REGISTRY
from detectron2.structures import Boxes

from ..config import plugin_key

__all__ = ["SharedAnchorGenerator"]


def _per_level(params, strides: List[int], name: str, key: str) -> List[List[float]]:
    """One list of values per level. As in Detectron2, a flat list or a single group is shared by
    all levels."""
    num_levels = len(strides)
    if not isinstance(params, collections.abc.Sequence) or len(params) == 0:
        raise ValueError(f"{name} ({key}) must be a non-empty list, got {params!r}.")
    if not isinstance(params[0], collections.abc.Sequence):
        return [list(params)] * num_levels
    if len(params) == 1:
        return [list(params[0])] * num_levels
    if len(params) != num_levels:
        raise ValueError(
            f"{name} ({key}) has {len(params)} groups but the anchor generator gets {num_levels} "
            f"feature levels (strides {strides}); give one group per level, or a single group "
            "shared by all levels."
        )
    return [list(p) for p in params]


@ANCHOR_GENERATOR_REGISTRY.register()
class SharedAnchorGenerator(nn.Module):
    """Anchors for a list of feature maps; a drop-in replacement of Detectron2's
    ``DefaultAnchorGenerator``.

    Gives exactly the same anchors, in the same order (location-major, then size, then aspect
    ratio). :mod:`fpn_plugin.accel` can cache the grids, which depend only on the feature sizes.
    """

    box_dim: torch.jit.Final[int] = 4  # Final: a constant TorchScript can see
    # TorchScript cannot compile the getattr-based properties.
    __jit_unused_properties__ = ["cell_anchors", "num_anchors", "num_cell_anchors"]

    @configurable
    def __init__(
        self,
        *,
        sizes,
        aspect_ratios,
        strides: Sequence[int],
        offset: float = 0.5,
        scales_per_octave: int = 1,
    ):
        """
        Args:
            sizes (list[list[float]] or list[float]): anchor sizes (sqrt of the area, input-image
                pixels); ``sizes[i]`` for level i, or one group shared by all levels
                (``MODEL.ANCHOR_GENERATOR.SIZES``).
            aspect_ratios (list[list[float]] or list[float]): height / width ratios, same broadcast
                rule (``MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS``).
            strides (list[int]): stride of each feature map, in input pixels.
            offset: anchor centre of the top-left cell, as a fraction of the stride, in [0, 1)
                (``MODEL.ANCHOR_GENERATOR.OFFSET``).
            scales_per_octave: n > 1 turns each size s into s * 2**(i/n), i = 0..n-1
                (RetinaNet's octave scales; ``MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE``).
        """
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.num_features = len(self.strides)
        if self.num_features == 0:
            raise ValueError(
                "strides is empty: the anchor generator needs at least one feature level "
                "(MODEL.RPN.IN_FEATURES)."
            )
        if not 0.0 <= offset < 1.0:
            raise ValueError(
                f"offset (MODEL.ANCHOR_GENERATOR.OFFSET) = {offset} must be in [0, 1); 0.5 centres "
                "anchors on cells."
            )
        if int(scales_per_octave) < 1:
            raise ValueError(
                "scales_per_octave (MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE) = "
                f"{scales_per_octave} must be >= 1."
            )
        sizes = _per_level(sizes, self.strides, "sizes", "MODEL.ANCHOR_GENERATOR.SIZES")
        aspect_ratios = _per_level(
            aspect_ratios, self.strides, "aspect_ratios", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"
        )
        n = int(scales_per_octave)
        if n > 1:
            sizes = [[s * 2 ** (i / n) for s in group for i in range(n)] for group in sizes]
        self.offset = float(offset)
        self.scales_per_octave = n
        cell = [self.generate_cell_anchors(s, a).float() for s, a in zip(sizes, aspect_ratios)]
        # Non-persistent buffers: they follow .to(device) but stay out of checkpoints, as in
        # Detectron2.
        for i, c in enumerate(cell):
            self.register_buffer(f"cell_anchors_{i}", c, persistent=False)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [x.stride for x in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
            "scales_per_octave": plugin_key(cfg, "MODEL.ANCHOR_GENERATOR.SCALES_PER_OCTAVE"),
        }

    @property
    def cell_anchors(self) -> List[torch.Tensor]:
        """Per level, (A_i, 4) XYXY anchors centred at (0, 0)."""
        return [getattr(self, f"cell_anchors_{i}") for i in range(self.num_features)]

    @property
    def num_anchors(self) -> List[int]:
        """Anchors per location on each level (3 for the paper's FPN: 15 shapes over 5 levels)."""
        return [len(c) for c in self.cell_anchors]

    @property
    def num_cell_anchors(self) -> List[int]:
        """Alias of :attr:`num_anchors`, as in Detectron2."""
        return self.num_anchors

    @staticmethod
    def generate_cell_anchors(
        sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1, 2)
    ) -> torch.Tensor:
        """(len(sizes) * len(aspect_ratios), 4) XYXY boxes centred at (0, 0), size-major.

        For size s and ratio a = h / w: w * h = s**2, so w = sqrt(s**2 / a) and h = a * w.
        Computed in Python floats, then stored as float32, like Detectron2's, so anchors match bit
        for bit.
        """
        anchors = []
        for size in sizes:
            area = size**2.0
            for ratio in aspect_ratios:
                w = math.sqrt(area / ratio)
                h = ratio * w
                anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(anchors)

    def _grid_anchors(
        self, grid_sizes: List[Tuple[int, int]], device: torch.device
    ) -> List[torch.Tensor]:
        """Per level, (H_i * W_i * A_i, 4) anchors: every cell anchor shifted to every grid
        location."""
        out: List[torch.Tensor] = []
        # named_buffers() rather than the cell_anchors property, so that TorchScript can compile it.
        cell: List[torch.Tensor] = []
        for name, buf in self.named_buffers():
            if name.startswith("cell_anchors_"):
                cell.append(buf)
        for (h, w), stride, base in zip(grid_sizes, self.strides, cell):
            base = base.to(device)
            # float32 aranges, as Detectron2 computes them, so the grids are bit-identical.
            xs = torch.arange(
                self.offset * stride, w * stride, step=stride, dtype=torch.float32, device=device
            )
            ys = torch.arange(
                self.offset * stride, h * stride, step=stride, dtype=torch.float32, device=device
            )
            shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
        return out

    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        """
        Args:
            features: the feature maps, (N, C, H_i, W_i) each, one per stride.
        Returns:
            list[Boxes]: per level, (H_i * W_i * A_i) anchors in input-image pixels (XYXY).
        """
        if len(features) != self.num_features:
            raise ValueError(
                f"got {len(features)} feature maps but the anchor generator was built for strides "
                f"{self.strides}; MODEL.RPN.IN_FEATURES and the anchor strides must match."
            )
        # Sizes kept as traced values (no int()), so that a traced model builds the grids of
        # whatever image size it is given.
        sizes: List[Tuple[int, int]] = [(f.shape[-2], f.shape[-1]) for f in features]
        return [Boxes(a) for a in self._grid_anchors(sizes, features[0].device)]
