#!/usr/bin/env python
"""Run a detector built from fpn_plugin's components on images (or a video) and draw its detections.

Same flags as Detectron2's demo/demo.py:

    python tools/demo.py --config-file configs/quickstart.yaml --input img1.jpg img2.png --output out/ \\
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/demo.py --config-file ... --input 'photos/*.jpg' --output out/ --color-by-level

``--input`` takes image files, folders (every image in them) and globs. ``--output`` is a folder
(an existing folder, or a path ending with ``/`` or without an extension; created if needed; each
output keeps its input's basename, ``.png`` unless the input is a PNG or JPEG) or, for one input,
an image file (``out.png``, ``out.jpg``). There is no on-screen display, so ``--output`` is required.

Next to every output image ``X`` the tool writes ``X.json``: the drawn detections, boxes in
XYXY image pixels with their scores, classes, class names and ``pred_levels``, the pyramid level
(2 for P2, ...) each detection's RoI was pooled from (``LevelMappingROIHeads`` records it;
``null`` for ROI heads that do not).

``--color-by-level`` colours every detection by that level -- P2 red, P3 orange, P4 green,
P5 blue, P6 purple -- and draws a legend in the top-left corner, so that the paper's level
mapping (Eqn. 1: small objects from fine levels, large ones from coarse levels) can be seen at
work. The JSON then also holds the legend: each level's colour and swatch rectangle.

With ``--video-input`` the output is a video (``.mp4``, codec mp4v) and its JSON holds the
detections of every frame.
"""
import argparse
import glob
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import fpn_plugin  # noqa: E402  (registers the components)
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from detectron2.utils.colormap import colormap  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.visualizer import ColorMode, GenericMask, Visualizer  # noqa: E402

from fpn_plugin.config import fall_back_to_cpu  # noqa: E402
from fpn_plugin.accel.cpu_allocator import add_system_malloc_argument, keep_freed_memory_for_tool  # noqa: E402
from fpn_plugin.data import register_shapes_datasets  # noqa: E402

logger = logging.getLogger("fpn_plugin.demo")

#: Extensions of the files taken from an ``--input`` folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Output extensions kept from the input's name; other inputs are written as PNG.
OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg")

#: One fixed colour (RGB, 0-255) per pyramid level, for --color-by-level.
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


_warned = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


class DemoError(Exception):
    """A user error (bad path, missing dependency): reported as one line, without a traceback."""


# ------------------------------------------------------------------------------------------------
# Config, inputs and outputs
# ------------------------------------------------------------------------------------------------


def setup_cfg(args):
    """Plugin config: defaults + ``--config-file`` + ``--opts`` + ``--confidence-threshold``."""
    cfg = fpn_plugin.get_plugin_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    # As in Detectron2's demo: the threshold applies to every kind of detector.
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    message = fall_back_to_cpu(cfg)
    if message:
        logger.info(message)
    message = keep_freed_memory_for_tool(args, cfg.MODEL.DEVICE)
    if message:
        logger.info(message)
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: the model has random weights (pass --opts MODEL.WEIGHTS file.pth).")
    cfg.freeze()
    return cfg


def resolve_inputs(patterns: Sequence[str]) -> List[str]:
    """Image files named by ``patterns`` (files, folders, globs), in order, without repeats.

    Raises DemoError naming the first pattern that is no file, no folder with images, and no
    glob matching a file.
    """
    paths: List[str] = []
    for pattern in patterns:
        path = os.path.expanduser(pattern)
        if os.path.isfile(path):
            found = [path]
        elif os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                raise DemoError(f"input folder '{pattern}' holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
            if not matches:
                raise DemoError(f"input '{pattern}' does not exist and matches no file")
            found = [p for p in matches if p.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                raise DemoError(f"input '{pattern}' matches no image ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(p for p in found if p not in paths)
    return paths


def _is_folder_target(output: str) -> bool:
    """Whether ``--output`` names a folder: an existing folder, or a path ending with a separator
    or without an extension (``out/``, ``out``); else a file (``out.png``, ``clip.mp4``)."""
    return os.path.isdir(output) or output.endswith(("/", os.sep)) or not os.path.splitext(output)[1]


def plan_outputs(inputs: Sequence[str], output: str) -> List[str]:
    """Output image path for each input: ``output`` itself for one input and an image-file
    ``output``, else ``output/<input basename>`` (``.png`` unless the input is PNG or JPEG)."""
    if not _is_folder_target(output):
        if len(inputs) != 1:
            raise DemoError(
                f"--output '{output}' is a file name but there are {len(inputs)} inputs: "
                "pass a folder (a path ending with '/')"
            )
        if not output.lower().endswith(OUTPUT_EXTENSIONS):
            raise DemoError(f"--output '{output}': an output image must end with {', '.join(OUTPUT_EXTENSIONS)}")
        outputs = [output]
    else:
        outputs = []
        for path in inputs:
            stem, ext = os.path.splitext(os.path.basename(path))
            outputs.append(os.path.join(output, stem + (ext if ext.lower() in OUTPUT_EXTENSIONS else ".png")))
        seen: Dict[str, str] = {}
        for path, out in zip(inputs, outputs):
            if out in seen:
                raise DemoError(f"inputs '{seen[out]}' and '{path}' would both be written to '{out}'")
            seen[out] = path
    for path, out in zip(inputs, outputs):
        if os.path.abspath(out) == os.path.abspath(path):
            raise DemoError(f"output '{out}' would overwrite its input: pass another --output")
    return outputs


# ------------------------------------------------------------------------------------------------
# Detections: selection, JSON, drawing
# ------------------------------------------------------------------------------------------------


def select_instances(predictions: dict, threshold: float) -> Instances:
    """The detections to draw: ``predictions["instances"]`` on the CPU with score >= ``threshold``."""
    instances = predictions["instances"].to("cpu")
    if instances.has("scores"):
        instances = instances[instances.scores >= threshold]
    return instances


def class_names_of(metadata) -> Optional[List[str]]:
    names = metadata.get("thing_classes", None) if metadata is not None else None
    return list(names) if names else None


def _class_name(class_id: int, names: Optional[List[str]]) -> str:
    return names[class_id] if names and 0 <= class_id < len(names) else str(class_id)


def instances_to_json(instances: Instances, class_names: Optional[List[str]] = None) -> dict:
    """The detections as JSON-able lists (one entry per detection, in the model's order)."""
    n = len(instances)
    boxes = instances.pred_boxes.tensor.tolist() if instances.has("pred_boxes") else []
    scores = instances.scores.tolist() if instances.has("scores") else [None] * n
    classes = instances.pred_classes.tolist() if instances.has("pred_classes") else [None] * n
    levels = instances.pred_levels.tolist() if instances.has("pred_levels") else None
    return {
        "num_instances": n,
        "box_mode": "XYXY_ABS",
        "boxes": boxes,
        "scores": scores,
        "classes": classes,
        "class_names": [None if c is None else _class_name(c, class_names) for c in classes],
        "pred_levels": levels,
    }


def level_color(level: int) -> Tuple[int, int, int]:
    """RGB (0-255) colour of pyramid level ``level`` (2 for P2, ...)."""
    return LEVEL_COLORS.get(int(level), OTHER_LEVEL_COLOR)


def pooled_levels(model) -> Optional[List[int]]:
    """Levels the model's box head pools from (e.g. [2, 3, 4, 5]), or None if unknown."""
    pooler = getattr(getattr(model, "roi_heads", None), "box_pooler", None)
    lo, hi = getattr(pooler, "min_level", None), getattr(pooler, "max_level", None)
    return list(range(int(lo), int(hi) + 1)) if lo is not None and hi is not None else None


def legend_layout(width: int, height: int, levels: Sequence[int], dpi: float = 100.0) -> dict:
    """Geometry (image pixels) of the level legend drawn in the top-left corner.

    Returns ``{"panel": [x0, y0, x1, y1], "font_size": points, "entries": [{"level", "name",
    "color", "swatch": [x0, y0, x1, y1], "text_xy": [x, y]}]}``. Sizes follow Detectron2's
    Visualizer font size (``max(sqrt(h * w) // 90, 10)`` points), so the legend scales with the image.
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


def draw_level_legend(vis, levels: Sequence[int]) -> dict:
    """Draw the legend of :func:`legend_layout` on a Detectron2 ``Visualizer``: a dark panel with an
    opaque colour swatch and "P<k>" per level, above everything else. Returns the layout."""
    import matplotlib.patches as patches

    out = vis.output
    layout = legend_layout(out.width, out.height, levels, dpi=getattr(out, "dpi", 100.0))
    x0, y0, x1, y1 = layout["panel"]
    out.ax.add_patch(
        patches.Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor="black", alpha=0.6, edgecolor="none", zorder=20)
    )
    for entry in layout["entries"]:
        sx0, sy0, sx1, sy1 = entry["swatch"]
        color = tuple(c / 255.0 for c in entry["color"])
        out.ax.add_patch(
            patches.Rectangle((sx0, sy0), sx1 - sx0, sy1 - sy0, facecolor=color, edgecolor="none", alpha=1.0, zorder=21)
        )
        out.ax.text(
            *entry["text_xy"], entry["name"], color="white", size=layout["font_size"] * out.scale,
            family="sans-serif", verticalalignment="center", horizontalalignment="left", zorder=22,
        )
    return layout


def draw_detections(
    image_rgb: np.ndarray,
    instances: Instances,
    metadata=None,
    color_by_level: bool = False,
    legend_levels: Optional[Sequence[int]] = None,
    class_colors: bool = False,
) -> Tuple[np.ndarray, Optional[dict]]:
    """Draw ``instances`` on ``image_rgb`` (H, W, 3) with Detectron2's ``Visualizer``.

    Labels are "<class> <score>%" (plus " P<k>" with ``color_by_level``). Colours: one per pyramid
    level and a legend of ``legend_levels`` (default: the levels present) with ``color_by_level``;
    else one per class with ``class_colors`` (steady across video frames), else random, as
    Detectron2's demo. Masks (if any, and OpenCV is installed) and keypoints are drawn too.

    Returns the drawn RGB image (H, W, 3) uint8 and the legend layout (None without a legend).
    """
    vis = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    names = class_names_of(metadata)
    n = len(instances)
    boxes = instances.pred_boxes.tensor.numpy() if instances.has("pred_boxes") else None
    classes = instances.pred_classes.tolist() if instances.has("pred_classes") else None
    scores = instances.scores.tolist() if instances.has("scores") else None
    labels = []
    for i in range(n):
        parts = []
        if classes is not None:
            parts.append(_class_name(classes[i], names))
        if scores is not None:
            parts.append(f"{scores[i] * 100:.0f}%")
        labels.append(" ".join(parts))

    colors = None
    legend = None
    if color_by_level and instances.has("pred_levels"):
        levels = instances.pred_levels.tolist()
        labels = [f"{label} P{lv}" for label, lv in zip(labels, levels)]
        colors = [tuple(c / 255.0 for c in level_color(lv)) for lv in levels]
        legend_levels = list(legend_levels) if legend_levels else sorted(set(levels))
    elif class_colors and classes is not None:
        palette = colormap(rgb=True, maximum=1)
        colors = [tuple(palette[c % len(palette)]) for c in classes]

    masks = None
    if instances.has("pred_masks"):
        h, w = vis.output.height, vis.output.width
        masks = [GenericMask(m, h, w) for m in np.asarray(instances.pred_masks)]
    keypoints = instances.pred_keypoints if instances.has("pred_keypoints") else None

    if n:
        vis.overlay_instances(
            boxes=boxes, labels=labels or None, masks=masks, keypoints=keypoints, assigned_colors=colors
        )
    if color_by_level:
        if instances.has("pred_levels"):
            if legend_levels:
                legend = draw_level_legend(vis, legend_levels)
        else:
            _warn_once(
                "--color-by-level: the detections carry no pred_levels (the ROI heads are not "
                "LevelMappingROIHeads); drawing them in the usual colours, without a legend."
            )
    return vis.output.get_image(), legend


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------


def _write_json(path: str, data: dict) -> None:
    """``data`` (a dict) as JSON, one top-level key per line, written atomically."""
    text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items()) + "\n}\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_on_images(args, predictor, metadata, legend_levels, inputs, outputs) -> None:
    names = class_names_of(metadata)
    for path, out in zip(inputs, outputs):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:  # PIL's errors for unreadable files vary
            raise DemoError(f"cannot read image '{path}': {e}") from e
        start = time.perf_counter()
        predictions = predictor(image)
        seconds = time.perf_counter() - start
        instances = select_instances(predictions, args.confidence_threshold)
        drawn, legend = draw_detections(
            image[:, :, ::-1], instances, metadata, color_by_level=args.color_by_level, legend_levels=legend_levels
        )
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        pil = Image.fromarray(drawn)
        if out.lower().endswith((".jpg", ".jpeg")):
            pil.save(out, quality=95)
        else:
            pil.save(out)
        record = {
            "input": path,
            "output": out,
            "image_size": [int(image.shape[0]), int(image.shape[1])],  # height, width
            "confidence_threshold": args.confidence_threshold,
            "seconds": round(seconds, 4),
            **instances_to_json(instances, names),
        }
        if legend is not None:
            record["legend"] = legend
        _write_json(out + ".json", record)
        logger.info(f"{path}: detected {len(instances)} instances in {seconds:.2f}s -> {out}")


def run_on_video(args, predictor, metadata, legend_levels) -> None:
    import cv2  # a dependency of fpn_plugin (opencv-python-headless), needed here only

    path = os.path.expanduser(args.video_input)
    if not os.path.isfile(path):
        raise DemoError(f"--video-input '{args.video_input}' does not exist")
    if _is_folder_target(args.output):
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".mp4")
    else:
        out = args.output
    if os.path.abspath(out) == os.path.abspath(path):
        raise DemoError(f"output '{out}' would overwrite its input: pass another --output")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DemoError(f"--video-input '{path}' could not be opened by OpenCV")
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = float(capture.get(cv2.CAP_PROP_FPS)) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True)
    if not writer.isOpened():
        capture.release()
        raise DemoError(f"OpenCV cannot write '{out}' with codec mp4v")
    names = class_names_of(metadata)
    frames = []
    legend = None
    start_all = time.perf_counter()
    try:
        while True:
            ok, frame = capture.read()  # BGR
            if not ok:
                break
            start = time.perf_counter()
            instances = select_instances(predictor(frame), args.confidence_threshold)
            seconds = time.perf_counter() - start
            drawn, frame_legend = draw_detections(
                frame[:, :, ::-1], instances, metadata, color_by_level=args.color_by_level,
                legend_levels=legend_levels, class_colors=True,
            )
            legend = frame_legend or legend
            writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
            frames.append({"frame": len(frames), "seconds": round(seconds, 4), **instances_to_json(instances, names)})
            logger.info(f"{path} frame {len(frames)}/{total}: detected {len(instances)} instances in {seconds:.2f}s")
    finally:
        capture.release()
        writer.release()
    record = {
        "input": path,
        "output": out,
        "image_size": [height, width],
        "fps": fps,
        "confidence_threshold": args.confidence_threshold,
        "frames": frames,
    }
    if legend is not None:
        record["legend"] = legend
    _write_json(out + ".json", record)
    logger.info(f"{path}: {len(frames)} frames in {time.perf_counter() - start_all:.1f}s -> {out}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="fpn_plugin demo: draw a detector's predictions on images or a video")
    parser.add_argument("--config-file", default="configs/quickstart.yaml", metavar="FILE", help="path to config file")
    parser.add_argument(
        "--input", nargs="+",
        help="image files, folders or globs, e.g. 'directory/*.jpg' (quote globs so the tool expands them)",
    )
    parser.add_argument("--video-input", help="path to a video file (needs opencv-python)")
    parser.add_argument(
        "--output",
        help="output folder, or output image file for a single input; each output X gets an X.json of its detections",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score for instance predictions to be shown"
    )
    parser.add_argument(
        "--color-by-level", action="store_true",
        help="colour each detection by the pyramid level (P2 red, P3 orange, P4 green, P5 blue, P6 purple) "
        "its RoI was pooled from, and draw a legend",
    )
    add_system_malloc_argument(parser)
    parser.add_argument(
        "--opts", help="modify config options using the command-line 'KEY VALUE' pairs", default=[],
        nargs=argparse.REMAINDER,
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    if bool(args.input) == bool(args.video_input):
        parser.error("give exactly one of --input and --video-input")
    if not args.output:
        parser.error("--output is required (this tool has no on-screen display)")
    setup_logger(name="fvcore")
    setup_logger(name="fpn_plugin")
    logger.info(f"Arguments: {args}")

    # Check the inputs before building the model, so that a typo fails at once.
    if args.video_input:
        if not os.path.isfile(os.path.expanduser(args.video_input)):
            raise DemoError(f"--video-input '{args.video_input}' does not exist")
        inputs = outputs = None
    else:
        inputs = resolve_inputs(args.input)
        outputs = plan_outputs(inputs, args.output)
    if not os.path.isfile(args.config_file):
        raise DemoError(f"--config-file '{args.config_file}' does not exist")

    register_shapes_datasets()  # names and metadata of fpn_shapes_*; generates nothing
    cfg = setup_cfg(args)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if len(cfg.DATASETS.TEST) else MetadataCatalog.get("__unused")
    predictor = DefaultPredictor(cfg)
    legend_levels = pooled_levels(predictor.model)
    if args.video_input:
        run_on_video(args, predictor, metadata, legend_levels)
    else:
        run_on_images(args, predictor, metadata, legend_levels, inputs, outputs)


if __name__ == "__main__":
    try:
        main()
    except DemoError as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        sys.exit(1)
