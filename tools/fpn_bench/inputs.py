"""The benchmark's inputs: real images resized as ``DefaultPredictor`` does, or deterministic random
ones; and synthetic ground truth for the training iteration."""

import glob
import os
from typing import Callable, Dict, List

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.structures import Boxes, Instances

from fpn_plugin.utils.testing import random_boxes

from .options import BenchmarkOptions

__all__ = [
    "IMAGE_EXTENSIONS",
    "image_paths",
    "load_inputs",
    "model_inputs",
    "cycler",
    "synthetic_targets",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def image_paths(spec: str) -> List[str]:
    """The image files of ``spec`` (a folder, a file or a glob), sorted; ``ValueError`` if none."""
    if os.path.isdir(spec):
        paths = [os.path.join(spec, f) for f in sorted(os.listdir(spec))]
    else:
        paths = sorted(glob.glob(spec))
    paths = [p for p in paths if os.path.isfile(p) and p.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise ValueError(
            f"--images {spec!r}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found; "
            "pass a folder, a file or a quoted glob."
        )
    return paths


def load_inputs(options: BenchmarkOptions, cfg: CfgNode, count: int) -> List[Dict]:
    """``count`` model inputs ``{"image": (3, H, W) float tensor, 0..255, "height", "width"}`` on
    the device.

    Real images (``--images``, cycled if fewer than ``count``) are read and resized by ``cfg``'s
    test-time ``ResizeShortestEdge`` as ``DefaultPredictor`` does, "height"/"width" being the
    original size in pixels (and "file_name" added); otherwise random images of ``--size``,
    already at the test size.
    """
    out = []
    if options.images:
        from detectron2.data import transforms as T
        from detectron2.data.detection_utils import read_image

        paths = image_paths(options.images)
        aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        for i in range(count):
            path = paths[i % len(paths)]
            original = read_image(path, format=cfg.INPUT.FORMAT)
            image = aug.get_transform(original).apply_image(original)
            tensor = torch.as_tensor(
                np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1))
            )
            out.append(
                {
                    "image": tensor.to(options.device),
                    "height": original.shape[0],
                    "width": original.shape[1],
                    "file_name": path,
                }
            )
    else:
        g = torch.Generator().manual_seed(options.seed)
        h, w = options.size
        for _ in range(count):
            image = torch.rand(3, h, w, generator=g) * 255
            out.append({"image": image.to(options.device), "height": h, "width": w})
    return out


def model_inputs(inputs: List[Dict]) -> List[Dict]:
    """``inputs`` with only the keys a detector reads: "image", "height", "width"."""
    return [{k: v for k, v in x.items() if k in ("image", "height", "width")} for x in inputs]


def cycler(inputs: List[Dict]) -> Callable[[], List[Dict]]:
    """A callable giving the next input (as a one-image batch) at each call, cycling; make one per
    model so that both see the images in the same order."""
    state = {"i": 0}

    def next_batch():
        x = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return model_inputs([x])

    return next_batch


def synthetic_targets(
    inputs: List[Dict], num_classes: int, seed: int, per_image: int = 5
) -> List[Dict]:
    """Training inputs: the images with ``per_image`` random ground-truth boxes (XYXY pixels,
    sizes 32..400) and classes each."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in inputs:
        h, w = x["image"].shape[-2:]
        device = x["image"].device
        inst = Instances((h, w))
        boxes = random_boxes(per_image, h, w, g, min_size=32.0, max_size=min(400.0, h, w))
        inst.gt_boxes = Boxes(boxes.to(device))
        inst.gt_classes = torch.randint(num_classes, (per_image,), generator=g).to(device)
        out.append({"image": x["image"], "height": h, "width": w, "instances": inst})
    return out
