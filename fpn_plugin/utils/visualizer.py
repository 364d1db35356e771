"""Detections coloured by the pyramid level their RoI was pooled from, with a legend of the levels.

Detectron2's ``Visualizer`` does the drawing; :class:`LevelVisualizer` only chooses each detection's
colour and label from its ``pred_levels`` (recorded by ``LevelMappingROIHeads``) and adds the
legend, so that the paper's level mapping (Eqn. 1: small objects from fine levels, large ones from
coarse levels) can be seen at work.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib.patches as patches
import numpy as np

from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer, _create_text_labels

__all__ = ["LEVEL_COLORS", "OTHER_LEVEL_COLOR", "level_color", "legend_layout", "LevelVisualizer"]

#: One fixed colour (RGB, 0-255) per pyramid level.
LEVEL_COLORS: Dict[int, Tuple[int, int, int]] = {
    2: (230, 25, 25),  # P2: red
    3: (255, 140, 0),  # P3: orange
    4: (20, 170, 40),  # P4: green
    5: (30, 90, 240),  # P5: blue
    6: (150, 40, 200),  # P6: purple
    7: (0, 190, 190),  # P7: cyan
}
#: Colour of levels not in LEVEL_COLORS.
OTHER_LEVEL_COLOR: Tuple[int, int, int] = (128, 128, 128)


def level_color(level: int) -> Tuple[int, int, int]:
    """RGB (0-255) colour of pyramid level ``level`` (2 for P2, ...)."""
    return LEVEL_COLORS.get(int(level), OTHER_LEVEL_COLOR)


def legend_layout(width: int, height: int, levels: Sequence[int], dpi: float = 100.0) -> dict:
    """Geometry, in image pixels, of the level legend in the top-left corner of a ``width`` x
    ``height`` image.

    Returns ``{"panel": [x0, y0, x1, y1], "font_size": points, "entries": [{"level", "name",
    "color", "swatch": [x0, y0, x1, y1], "text_xy": [x, y]}]}``. The font size is Detectron2's
    Visualizer's (``max(sqrt(h * w) // 90, 10)`` points), so the legend scales with the image.
    """
    font_pt = max(np.sqrt(height * width) // 90, 10)
    font_px = font_pt * dpi / 72.0
    side = max(8, int(round(font_px)))  # swatch side
    pad = max(2, side // 3)
    text_w = int(round(0.7 * font_px * max(len(f"P{lv}") for lv in levels))) if levels else 0
    entries = []
    for i, lv in enumerate(levels):
        y0 = pad + i * (side + pad)
        entries.append(
            {
                "level": int(lv),
                "name": f"P{lv}",
                "color": list(level_color(lv)),
                "swatch": [pad, y0, pad + side, y0 + side],
                "text_xy": [2 * pad + side, y0 + side / 2.0],
            }
        )
    panel = [0, 0, 3 * pad + side + text_w, pad + len(levels) * (side + pad)]
    return {"panel": panel, "font_size": float(font_pt), "entries": entries}


class LevelVisualizer(Visualizer):
    """Detectron2's ``Visualizer`` whose :meth:`draw_instance_predictions` colours each detection
    by its pyramid level (:data:`LEVEL_COLORS`), appends " P<k>" to its label and draws the legend.

    Predictions without ``pred_levels`` are drawn as ``Visualizer`` draws them, without a legend.
    ``legend_levels``: the levels the legend lists (e.g. the box pooler's [2, 3, 4, 5]); by default
    the levels of the drawn detections. After drawing, :attr:`legend` holds the legend's
    :func:`legend_layout` (None without a legend).
    """

    def __init__(
        self,
        img_rgb: np.ndarray,
        metadata=None,
        scale: float = 1.0,
        instance_mode: ColorMode = ColorMode.IMAGE,
        legend_levels: Optional[Sequence[int]] = None,
    ):
        super().__init__(img_rgb, metadata, scale=scale, instance_mode=instance_mode)
        self.legend_levels: Optional[List[int]] = list(legend_levels) if legend_levels else None
        self.legend: Optional[dict] = None

    def draw_instance_predictions(self, predictions: Instances, jittering: bool = True) -> VisImage:
        """Draw ``predictions`` (an image's ``Instances``: ``pred_boxes``, ``pred_levels`` and, if
        present, ``pred_classes``, ``scores``, ``pred_masks``, ``pred_keypoints``)."""
        if not predictions.has("pred_levels"):
            return super().draw_instance_predictions(predictions, jittering=jittering)

        def field(name):
            return predictions.get(name) if predictions.has(name) else None

        levels = predictions.pred_levels.tolist()
        classes = field("pred_classes")
        names = self.metadata.get("thing_classes", None)
        texts = _create_text_labels(
            None if classes is None else classes.tolist(), field("scores"), names
        ) or [""] * len(levels)
        labels = [f"{text} P{lv}".strip() for text, lv in zip(texts, levels)]
        self.overlay_instances(
            boxes=field("pred_boxes"),
            masks=field("pred_masks"),  # a (N, H, W) tensor: overlay_instances makes the polygons
            keypoints=field("pred_keypoints"),
            labels=labels,
            assigned_colors=[tuple(c / 255.0 for c in level_color(lv)) for lv in levels],
        )
        legend_levels = self.legend_levels or sorted(set(levels))
        if legend_levels:
            self.draw_level_legend(legend_levels)
        return self.output

    def draw_level_legend(self, levels: Sequence[int]) -> dict:
        """Draw the legend of :func:`legend_layout` for ``levels``: a dark panel with an opaque
        colour swatch and "P<k>" per level, above the detections. Returns (and keeps in
        :attr:`legend`) the layout."""
        out = self.output
        layout = legend_layout(out.width, out.height, levels, dpi=out.dpi)
        x0, y0, x1, y1 = layout["panel"]
        # zorder above Detectron2's drawings (its labels use 10), so that no detection hides it.
        panel = patches.Rectangle(
            (x0, y0), x1 - x0, y1 - y0, facecolor="black", alpha=0.6, edgecolor="none", zorder=20
        )
        out.ax.add_patch(panel)
        for entry in layout["entries"]:
            sx0, sy0, sx1, sy1 = entry["swatch"]
            color = tuple(c / 255.0 for c in entry["color"])
            swatch = patches.Rectangle(
                (sx0, sy0), sx1 - sx0, sy1 - sy0, facecolor=color, edgecolor="none", zorder=21
            )
            out.ax.add_patch(swatch)
            out.ax.text(
                *entry["text_xy"],
                entry["name"],
                color="white",
                size=layout["font_size"] * out.scale,
                family="sans-serif",
                verticalalignment="center",
                horizontalalignment="left",
                zorder=22,
            )
        self.legend = layout
        return layout
