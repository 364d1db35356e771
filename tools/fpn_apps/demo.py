"""The demo (tools/demo.py): a detector's predictions on images or a video, drawn and recorded.

Inputs are image files, folders and globs (:func:`resolve_inputs`) or one video; outputs are
planned before the model is built (:func:`plan_outputs`, :func:`plan_video_output`), so that a
typo fails at once. :class:`DetectionDemo` runs an :class:`~fpn_plugin.engine.FPNPredictor`,
draws with Detectron2's ``Visualizer`` (``VideoVisualizer`` for videos: steady colours across
frames) or, to colour by pyramid level, :class:`~fpn_plugin.utils.visualizer.LevelVisualizer`,
and writes next to every output ``X`` a JSON record ``X.json`` (:func:`instances_to_json`).
A panoptic model's output (Panoptic FPN) is drawn as its panoptic segmentation and a semantic
model's as its semantic segmentation, their segments recorded too (:func:`segments_to_json`).
"""

import glob
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.structures import Boxes, Instances
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

from fpn_plugin.data import register_shapes_datasets, register_shapes_panoptic_datasets
from fpn_plugin.engine.defaults import load_plugin_config
from fpn_plugin.engine.predictor import FPNPredictor
from fpn_plugin.utils.visualizer import LevelVisualizer

__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUT_EXTENSIONS",
    "DemoError",
    "load_demo_config",
    "resolve_inputs",
    "plan_outputs",
    "plan_video_output",
    "select_instances",
    "instances_to_json",
    "segments_to_json",
    "pooled_levels",
    "write_json",
    "DetectionDemo",
]

# The demo tool's logger, under the "fpn_plugin" logger that tools/demo.py sets up.
logger = logging.getLogger("fpn_plugin.demo")

#: Extensions of the files taken from an input folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Output extensions kept from the input's name; other inputs are written as PNG.
OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg")


class DemoError(Exception):
    """A user error (bad path, unreadable input): reported as one line, without a traceback."""


# ------------------------------------------------------------------------------------------------
# Config, inputs and outputs
# ------------------------------------------------------------------------------------------------


def load_demo_config(config_file: str, opts: Sequence[str], confidence_threshold: float) -> CfgNode:
    """The plugin config of ``config_file`` + ``opts`` with ``confidence_threshold`` (0-1) as the
    score threshold of every kind of detector, as in Detectron2's demo, and the detections'
    pyramid levels recorded (``MODEL.ROI_HEADS.PRED_LEVELS``: the JSON and --color-by-level show
    them). Not frozen."""
    try:
        cfg = load_plugin_config(config_file, opts)
    except FileNotFoundError as e:
        raise DemoError(str(e)) from None
    cfg.MODEL.ROI_HEADS.PRED_LEVELS = True
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    if not cfg.MODEL.WEIGHTS:
        logger.warning(
            "MODEL.WEIGHTS is empty: the model has random weights "
            "(pass --opts MODEL.WEIGHTS file.pth)."
        )
    return cfg


def resolve_inputs(patterns: Sequence[str]) -> List[str]:
    """Image files named by ``patterns`` (files, folders, globs), in order, without repeats.

    Raises DemoError naming the first pattern that is no file, no folder with images, and no
    glob matching a file.
    """
    listed = ", ".join(IMAGE_EXTENSIONS)
    paths: List[str] = []
    for pattern in patterns:
        path = os.path.expanduser(pattern)
        if os.path.isfile(path):
            found = [path]
        elif os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                raise DemoError(f"input folder '{pattern}' holds no image ({listed})")
        else:
            matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
            if not matches:
                raise DemoError(f"input '{pattern}' does not exist and matches no file")
            found = [p for p in matches if p.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                raise DemoError(f"input '{pattern}' matches no image ({listed})")
        paths.extend(p for p in found if p not in paths)
    return paths


def is_folder_target(output: str) -> bool:
    """Whether ``output`` names a folder: an existing folder, or a path ending with a separator
    or without an extension (``out/``, ``out``); else a file (``out.png``, ``clip.mp4``)."""
    return (
        os.path.isdir(output) or output.endswith(("/", os.sep)) or not os.path.splitext(output)[1]
    )


def _check_not_input(output: str, input_path: str) -> None:
    if os.path.abspath(output) == os.path.abspath(input_path):
        raise DemoError(f"output '{output}' would overwrite its input: pass another --output")


def plan_outputs(inputs: Sequence[str], output: str) -> List[str]:
    """Output image path for each input: ``output`` itself for one input and an image-file
    ``output``, else ``output/<input basename>`` (``.png`` unless the input is PNG or JPEG)."""
    if not is_folder_target(output):
        if len(inputs) != 1:
            raise DemoError(
                f"--output '{output}' is a file name but there are {len(inputs)} inputs: "
                "pass a folder (a path ending with '/')"
            )
        if not output.lower().endswith(OUTPUT_EXTENSIONS):
            raise DemoError(
                f"--output '{output}': an output image must end with {', '.join(OUTPUT_EXTENSIONS)}"
            )
        outputs = [output]
    else:
        outputs = []
        for path in inputs:
            stem, ext = os.path.splitext(os.path.basename(path))
            kept = ext if ext.lower() in OUTPUT_EXTENSIONS else ".png"
            outputs.append(os.path.join(output, stem + kept))
        seen: Dict[str, str] = {}
        for path, out in zip(inputs, outputs):
            if out in seen:
                raise DemoError(
                    f"inputs '{seen[out]}' and '{path}' would both be written to '{out}'"
                )
            seen[out] = path
    for path, out in zip(inputs, outputs):
        _check_not_input(out, path)
    return outputs


def plan_video_output(video: str, output: str) -> str:
    """Output video path for the video file ``video``: ``output`` itself if it names a file,
    else ``output/<video stem>.mp4``. Raises DemoError if ``video`` is not a file."""
    path = os.path.expanduser(video)
    if not os.path.isfile(path):
        raise DemoError(f"--video-input '{video}' does not exist")
    if is_folder_target(output):
        output = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".mp4")
    _check_not_input(output, path)
    return output


# ------------------------------------------------------------------------------------------------
# Detections as JSON
# ------------------------------------------------------------------------------------------------


def select_instances(predictions: dict, threshold: float) -> Instances:
    """The detections to draw: ``predictions["instances"]`` on the CPU, score >= ``threshold``
    (none for a semantic segmentation model, whose predictions have no "instances")."""
    if "instances" not in predictions:
        size = tuple(predictions["sem_seg"].shape[-2:]) if "sem_seg" in predictions else (0, 0)
        return Instances(size, pred_boxes=Boxes(torch.zeros(0, 4)), scores=torch.zeros(0))
    instances = predictions["instances"].to("cpu")
    if instances.has("scores"):
        instances = instances[instances.scores >= threshold]
    return instances


def _class_names(metadata) -> Optional[List[str]]:
    names = metadata.get("thing_classes", None) if metadata is not None else None
    return list(names) if names else None


def _class_name(names: Sequence[str], c: int) -> str:
    """``names[c]``, or ``str(c)`` where the names do not cover class ``c``."""
    return names[c] if 0 <= c < len(names) else str(c)


def instances_to_json(instances: Instances, class_names: Optional[List[str]] = None) -> dict:
    """The detections as JSON-able lists, one entry per detection in the model's order: boxes
    (XYXY, image pixels), scores, classes, class names and ``pred_levels`` (the pyramid level, 2
    for P2, each RoI was pooled from; None for ROI heads that do not record it)."""
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
        "class_names": [None if c is None else _class_name(class_names or [], c) for c in classes],
        "pred_levels": levels,
    }


def segments_to_json(predictions: dict, metadata=None) -> dict:
    """The segments of a panoptic or semantic segmentation as JSON-able lists ({} for neither).

    Panoptic (``predictions["panoptic_seg"]``: (H, W) segment ids, 0 unassigned, and
    segments_info): ``{"panoptic_segments": [{"id", "isthing", "category_id", "class_name",
    "score" (None for stuff), "area" (pixels)}, ...], "unassigned_area": pixels}``, in the
    model's order. Semantic only (``"sem_seg"``, (C, H, W) scores, without "instances"):
    ``{"semantic_classes": [{"category_id", "class_name", "area"}, ...]}``, the classes present.
    Class names come from the metadata's ``thing_classes`` and ``stuff_classes``.
    """
    things = list(metadata.get("thing_classes", []) or []) if metadata is not None else []
    stuff = list(metadata.get("stuff_classes", []) or []) if metadata is not None else []

    if "panoptic_seg" in predictions:
        panoptic, segments_info = predictions["panoptic_seg"]
        ids, counts = torch.unique(panoptic.to("cpu"), return_counts=True)
        area = dict(zip(ids.tolist(), counts.tolist()))
        segments = []
        for segment in segments_info or []:
            isthing, category = bool(segment.get("isthing", False)), int(segment["category_id"])
            score = segment.get("score", None)
            segments.append(
                {
                    "id": int(segment["id"]),
                    "isthing": isthing,
                    "category_id": category,
                    "class_name": _class_name(things if isthing else stuff, category),
                    "score": None if score is None else float(score),
                    "area": int(area.get(int(segment["id"]), 0)),
                }
            )
        return {"panoptic_segments": segments, "unassigned_area": int(area.get(0, 0))}
    if "sem_seg" in predictions and "instances" not in predictions:
        labels = predictions["sem_seg"].argmax(dim=0).to("cpu")
        labels, counts = torch.unique(labels, return_counts=True)
        return {
            "semantic_classes": [
                {"category_id": c, "class_name": _class_name(stuff, c), "area": n}
                for c, n in zip(labels.tolist(), counts.tolist())
            ]
        }
    return {}


def pooled_levels(model) -> Optional[List[int]]:
    """Levels the model's box head pools from (e.g. [2, 3, 4, 5]), or None if unknown."""
    pooler = getattr(getattr(model, "roi_heads", None), "box_pooler", None)
    lo, hi = getattr(pooler, "min_level", None), getattr(pooler, "max_level", None)
    return list(range(int(lo), int(hi) + 1)) if lo is not None and hi is not None else None


def write_json(path: str, data: dict) -> None:
    """``data`` (a dict) as JSON, one top-level key per line (readable, and diffable between
    runs), written atomically."""
    lines = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in data.items())
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("{\n" + lines + "\n}\n")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------------


class DetectionDemo:
    """Runs ``predictor`` (``predictor(bgr_image) -> {"instances": ...}``) on images or a video,
    keeps the detections with score >= ``confidence_threshold``, draws them and records them.

    ``color_by_level``: colour each detection by its pyramid level and draw a legend of the levels
    the box head pools from (:class:`LevelVisualizer`); else Detectron2's colours.
    """

    def __init__(
        self,
        predictor,
        metadata=None,
        confidence_threshold: float = 0.5,
        color_by_level: bool = False,
    ):
        self.predictor = predictor
        self.metadata = metadata if metadata is not None else MetadataCatalog.get("__unused")
        self.confidence_threshold = confidence_threshold
        self.color_by_level = color_by_level
        self.legend_levels = pooled_levels(getattr(predictor, "model", None))
        self._warned_no_levels = False

    @classmethod
    def from_config(cls, cfg: CfgNode, confidence_threshold: float, color_by_level: bool = False):
        """An :class:`~fpn_plugin.engine.FPNPredictor` of ``cfg``, with the metadata of
        ``cfg.DATASETS.TEST[0]`` (``fpn_shapes_*`` are registered for it; nothing is generated)."""
        register_shapes_datasets()
        register_shapes_panoptic_datasets()
        name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        metadata = MetadataCatalog.get(name)
        return cls(FPNPredictor(cfg), metadata, confidence_threshold, color_by_level)

    def run(self, image_bgr: np.ndarray) -> Tuple[dict, Instances, float]:
        """The predictor's whole output on ``image_bgr`` (H, W, 3) uint8, its kept detections,
        and the predictor's seconds."""
        start = time.perf_counter()
        predictions = self.predictor(image_bgr)
        seconds = time.perf_counter() - start
        return predictions, select_instances(predictions, self.confidence_threshold), seconds

    def predict(self, image_bgr: np.ndarray) -> Tuple[Instances, float]:
        """The kept detections on ``image_bgr`` (H, W, 3) uint8, and the predictor's seconds."""
        _, instances, seconds = self.run(image_bgr)
        return instances, seconds

    def draw(
        self,
        image_rgb: np.ndarray,
        instances: Instances,
        video: Optional[VideoVisualizer] = None,
        predictions: Optional[dict] = None,
    ) -> Tuple[np.ndarray, Optional[dict]]:
        """``instances`` drawn on ``image_rgb`` (H, W, 3): the drawn RGB image (H, W, 3) uint8 and
        the level legend's layout (None without one). ``video``: the ``VideoVisualizer`` that keeps
        colours steady across the frames of a video, used unless colouring by level.
        ``predictions``: the predictor's whole output; its panoptic segmentation, if any, is drawn
        instead of ``instances`` (Detectron2's ``draw_panoptic_seg``, ``VideoVisualizer``'s
        ``draw_panoptic_seg_predictions``: the things the model kept, with their scores, and the
        stuff), and a semantic segmentation alone (no "instances") with ``draw_sem_seg``.
        Colouring by level still draws the detections."""
        if self.color_by_level and instances.has("pred_levels"):
            vis = LevelVisualizer(image_rgb, self.metadata, legend_levels=self.legend_levels)
            return vis.draw_instance_predictions(instances).get_image(), vis.legend
        if self.color_by_level and not self._warned_no_levels:
            self._warned_no_levels = True
            logger.warning(
                "--color-by-level: the detections carry no pred_levels (the ROI heads are not "
                "LevelMappingROIHeads); drawing them in the usual colours, without a legend."
            )
        if predictions is not None and "panoptic_seg" in predictions:
            panoptic, segments_info = predictions["panoptic_seg"]
            panoptic = panoptic.to("cpu")
            if video is not None:
                drawn = video.draw_panoptic_seg_predictions(image_rgb, panoptic, segments_info)
                return drawn.get_image(), None
            vis = Visualizer(image_rgb, self.metadata, instance_mode=ColorMode.IMAGE)
            return vis.draw_panoptic_seg(panoptic, segments_info).get_image(), None
        if predictions is not None and "sem_seg" in predictions and "instances" not in predictions:
            labels = predictions["sem_seg"].argmax(dim=0).to("cpu")
            vis = Visualizer(image_rgb, self.metadata, instance_mode=ColorMode.IMAGE)
            return vis.draw_sem_seg(labels).get_image(), None
        if video is not None:
            return video.draw_instance_predictions(image_rgb, instances).get_image(), None
        vis = Visualizer(image_rgb, self.metadata, instance_mode=ColorMode.IMAGE)
        return vis.draw_instance_predictions(instances).get_image(), None

    def process_images(self, inputs: Sequence[str], outputs: Sequence[str]) -> List[str]:
        """Draw the detections of each image of ``inputs`` into the matching path of ``outputs``,
        with its JSON record. An image that cannot be read is logged as an error and skipped, so
        that one bad file does not cost the others; returns the paths of those skipped."""
        unreadable = []
        for path, out in zip(inputs, outputs):
            try:
                image = read_image(path, format="BGR")
            except Exception as e:  # PIL's errors for bad files vary (OSError, SyntaxError, ...)
                logger.error(f"cannot read image '{path}': {e}; skipping it")
                unreadable.append(path)
                continue
            predictions, instances, seconds = self.run(image)
            drawn, legend = self.draw(image[:, :, ::-1], instances, predictions=predictions)
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            jpeg = out.lower().endswith((".jpg", ".jpeg"))
            Image.fromarray(drawn).save(out, **({"quality": 95} if jpeg else {}))
            record = {
                "input": path,
                "output": out,
                "image_size": [int(image.shape[0]), int(image.shape[1])],  # height, width
                "confidence_threshold": self.confidence_threshold,
                "seconds": round(seconds, 4),
                **instances_to_json(instances, _class_names(self.metadata)),
                **segments_to_json(predictions, self.metadata),
            }
            if legend is not None:
                record["legend"] = legend
            write_json(out + ".json", record)
            logger.info(f"{path}: detected {len(instances)} instances in {seconds:.2f}s -> {out}")
        return unreadable

    def process_video(self, video: str, out: str) -> None:
        """Draw the detections of every frame of the video file ``video`` into the video ``out``
        (codec mp4v, the input's size and frame rate), with the JSON record of every frame."""
        import cv2  # a dependency of fpn_plugin (opencv-python-headless), needed for videos only

        video = os.path.expanduser(video)
        capture = cv2.VideoCapture(video)
        if not capture.isOpened():
            raise DemoError(f"--video-input '{video}' could not be opened by OpenCV")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(capture.get(cv2.CAP_PROP_FPS)) or 25.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True)
        if not writer.isOpened():
            capture.release()
            raise DemoError(f"OpenCV cannot write '{out}' with codec mp4v")
        visualizer = VideoVisualizer(self.metadata, instance_mode=ColorMode.IMAGE)
        frames: List[dict] = []
        legend = None
        start_all = time.perf_counter()
        try:
            while True:
                ok, frame = capture.read()  # BGR
                if not ok:
                    break
                predictions, instances, seconds = self.run(frame)
                drawn, frame_legend = self.draw(
                    frame[:, :, ::-1], instances, video=visualizer, predictions=predictions
                )
                legend = frame_legend or legend
                writer.write(np.ascontiguousarray(drawn[:, :, ::-1]))
                frames.append(
                    {
                        "frame": len(frames),
                        "seconds": round(seconds, 4),
                        **instances_to_json(instances, _class_names(self.metadata)),
                        **segments_to_json(predictions, self.metadata),
                    }
                )
                logger.info(
                    f"{video} frame {len(frames)}/{total}: "
                    f"detected {len(instances)} instances in {seconds:.2f}s"
                )
        finally:
            capture.release()
            writer.release()
        record = {
            "input": video,
            "output": out,
            "image_size": [height, width],
            "fps": fps,
            "confidence_threshold": self.confidence_threshold,
            "frames": frames,
        }
        if legend is not None:
            record["legend"] = legend
        write_json(out + ".json", record)
        elapsed = time.perf_counter() - start_all
        logger.info(f"{video}: {len(frames)} frames in {elapsed:.1f}s -> {out}")
