"""fpn_plugin.utils.visualizer: detections coloured by pyramid level, on Detectron2's Visualizer."""

import numpy as np
import torch

from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances

from fpn_plugin.utils.visualizer import LEVEL_COLORS, LevelVisualizer, legend_layout, level_color

HEIGHT, WIDTH = 200, 240
GRAY = 128
METADATA = Metadata(name="level_visualizer_test", thing_classes=["circle", "square"])
# Far from the legend in the top-left corner; box 0 is small (level 2), box 1 large (level 5).
BOXES = [[120.0, 120.0, 160.0, 160.0], [60.0, 60.0, 230.0, 190.0]]


def _instances(levels=(2, 5), masks=False):
    inst = Instances((HEIGHT, WIDTH))
    inst.pred_boxes = Boxes(torch.tensor(BOXES))
    inst.scores = torch.tensor([0.9, 0.8])
    inst.pred_classes = torch.tensor([0, 1])
    if levels is not None:
        inst.pred_levels = torch.tensor(levels)
    if masks:
        m = torch.zeros(2, HEIGHT, WIDTH, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(BOXES):
            m[i, int(y0) + 5 : int(y1) - 5, int(x0) + 5 : int(x1) - 5] = True
        inst.pred_masks = m
    return inst


def _draw(instances, legend_levels=None):
    image = np.full((HEIGHT, WIDTH, 3), GRAY, dtype=np.uint8)
    vis = LevelVisualizer(image, METADATA, legend_levels=legend_levels)
    drawn = vis.draw_instance_predictions(instances).get_image().astype(float)
    texts = [t.get_text() for t in vis.output.ax.texts]
    return vis, drawn, texts


def _recovered_edge_color(drawn, box):
    """The colour blended half and half (the box alpha) over the gray image on the box's left
    edge, the median over its middle half."""
    x0, y0, x1, y1 = (int(v) for v in box)
    rows = np.arange(y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4)
    return np.median((drawn[rows, x0] - 0.5 * GRAY) / 0.5, axis=0)


def test_legend_layout():
    layout = legend_layout(WIDTH, HEIGHT, [2, 3, 4, 5])
    assert [e["name"] for e in layout["entries"]] == ["P2", "P3", "P4", "P5"]
    assert [e["color"] for e in layout["entries"]] == [list(LEVEL_COLORS[k]) for k in (2, 3, 4, 5)]
    px0, py0, px1, py1 = layout["panel"]
    previous_bottom = py0
    for entry in layout["entries"]:
        x0, y0, x1, y1 = entry["swatch"]
        assert px0 <= x0 < x1 <= px1 and previous_bottom <= y0 < y1 <= py1  # stacked, inside
        assert entry["text_xy"][0] > x1  # the name right of its swatch
        previous_bottom = y1
    # The font follows the image size, as Detectron2's labels do.
    assert legend_layout(2000, 1600, [2])["font_size"] > layout["font_size"] == 10.0
    assert level_color(9) == (128, 128, 128)


def test_level_colours_labels_and_legend():
    vis, drawn, texts = _draw(_instances(), legend_levels=[2, 3, 4, 5])
    for box, level in zip(BOXES, (2, 5)):
        recovered = _recovered_edge_color(drawn, box)
        assert np.abs(recovered - np.asarray(level_color(level))).max() < 40, (level, recovered)
    assert "circle 90% P2" in texts and "square 80% P5" in texts
    assert [e["level"] for e in vis.legend["entries"]] == [2, 3, 4, 5]
    for entry in vis.legend["entries"]:
        assert entry["name"] in texts
        x0, y0, x1, y1 = entry["swatch"]
        inside = drawn[int(y0) + 1 : int(y1) - 1, int(x0) + 1 : int(x1) - 1].reshape(-1, 3)
        assert np.abs(inside - np.asarray(entry["color"])).max() <= 2

    # Without legend_levels, the legend lists the levels drawn.
    vis, _, _ = _draw(_instances(levels=(3, 3)))
    assert [e["level"] for e in vis.legend["entries"]] == [3]


def test_masks_are_filled_with_the_level_colour():
    _, drawn, _ = _draw(_instances(levels=(4, 4), masks=True))
    # Inside the small box's mask, off its label: the level colour blended over the image.
    inside = (drawn[135:145, 135:145] - 0.5 * GRAY) / 0.5
    assert np.abs(np.median(inside.reshape(-1, 3), axis=0) - np.asarray(level_color(4))).max() < 60


def test_without_levels_draws_as_detectron2_without_legend():
    vis, drawn, texts = _draw(_instances(levels=None))
    assert vis.legend is None
    assert "circle 90%" in texts and not any("P" in t for t in texts)
    assert np.abs(drawn - GRAY).max(axis=2)[120, 120:160].max() > 30  # the boxes are drawn
