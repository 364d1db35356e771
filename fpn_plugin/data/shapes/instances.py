"""``fpn_shapes``' COCO instance annotations (boxes, polygons, areas, keypoints) and its splits on
disk (:func:`generate_shapes_dataset`). The dataset is described in
:mod:`fpn_plugin.data.shapes`."""

import os
from typing import Any, Dict, List

from tqdm import tqdm

from .cache import (
    ANNOTATIONS_FILE,
    IMAGES_FOLDER,
    checked_split_args,
    generate_split,
    image_rng,
    save_image,
    split_params,
    write_coco_json,
)
from .drawing import (
    DECIMALS,
    SHAPE_CLASSES,
    SHAPE_KEYPOINT_CONNECTION_RULES,
    SHAPE_KEYPOINT_NAMES,
    extreme_points,
    make_image,
    polygon_area,
)

__all__ = ["GENERATOR", "instance_annotation", "shape_categories", "generate_shapes_dataset"]

#: The generator's name recorded in its annotations' ``info``.
GENERATOR = "fpn_plugin.data.generate_shapes_dataset"


def instance_annotation(obj: Dict[str, Any], ann_id: int, image_id: int) -> Dict[str, Any]:
    """The COCO instance annotation of one object of :func:`make_image` (see the module
    docstring)."""
    poly = obj["polygon"]
    (x0, y0), (x1, y1) = poly.min(axis=0), poly.max(axis=0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category_id"],
        "bbox": [round(float(v), DECIMALS) for v in (x0, y0, x1 - x0, y1 - y0)],
        "area": round(polygon_area(poly), DECIMALS),
        "iscrowd": 0,
        "segmentation": [[float(v) for v in poly.reshape(-1)]],
        # COCO pixel-index convention: continuous coordinate - 0.5; v = 2 (visible).
        "keypoints": [
            v
            for x, y in extreme_points(poly)
            for v in (round(float(x) - 0.5, 3), round(float(y) - 0.5, 3), 2)
        ],
        "num_keypoints": len(SHAPE_KEYPOINT_NAMES),
        "color": obj["color"],
    }


def shape_categories() -> List[Dict[str, Any]]:
    """The COCO categories of :data:`SHAPE_CLASSES` (ids 1..4), with their keypoints."""
    return [
        {
            "id": i + 1,
            "name": name,
            "supercategory": "shape",
            "keypoints": list(SHAPE_KEYPOINT_NAMES),
            "skeleton": [  # 1-based, as COCO's
                [SHAPE_KEYPOINT_NAMES.index(a) + 1, SHAPE_KEYPOINT_NAMES.index(b) + 1]
                for a, b, _ in SHAPE_KEYPOINT_CONNECTION_RULES
            ],
        }
        for i, name in enumerate(SHAPE_CLASSES)
    ]


def _write_split(out_dir: str, params: Dict[str, Any], progress: bool) -> None:
    """Generate all images of a split into ``out_dir``/images, then its annotation file."""
    split, num_images = params["split"], params["num_images"]
    image_size, min_size, max_size = params["image_size"], params["min_size"], params["max_size"]
    os.makedirs(os.path.join(out_dir, IMAGES_FOLDER))
    images, annotations = [], []
    for index in tqdm(
        range(num_images), desc=f"fpn_shapes '{split}'", unit="img", disable=not progress
    ):
        pixels, objects = make_image(image_rng(params, index), image_size, min_size, max_size)
        image_id = save_image(out_dir, index, pixels, images)
        for obj in objects:
            annotations.append(instance_annotation(obj, len(annotations) + 1, image_id))
    info = {
        "description": "fpn_shapes: synthetic solid shapes for FPN detection (fpn_plugin)",
        "generator": GENERATOR,
        "params": params,
    }
    write_coco_json(
        os.path.join(out_dir, ANNOTATIONS_FILE), info, images, annotations, shape_categories()
    )


def generate_shapes_dataset(
    root: str,
    split: str,
    num_images: int,
    seed: int,
    image_size: int = 512,
    min_size: float = 8,
    max_size: float = 400,
    progress: bool = True,
) -> str:
    """Generate one split of ``fpn_shapes`` (:mod:`fpn_plugin.data.shapes`) unless it exists.

    Writes ``root/<split>/images/000000.jpg, ...`` (RGB, ``image_size`` x ``image_size`` px) and
    ``root/<split>/annotations.json`` (COCO instances format; image ids 1..num_images, category ids
    1..4 for :data:`SHAPE_CLASSES`).

    Args:
        root: parent folder, created if needed.
        split: name of the split's folder, e.g. "train"; it also seeds the images, so two splits
            with the same ``seed`` differ.
        num_images: number of images (>= 1).
        seed: non-negative integer; the output is a deterministic function of all the arguments
            except ``root`` and ``progress`` (same JSON bytes, same image bytes).
        image_size: image width and height, pixels (>= 32).
        min_size, max_size: range of object sizes ``sqrt(box area)``, pixels, sampled
            log-uniformly; ``max_size`` is capped so that objects fit in the image.
        progress: show a ``tqdm`` progress bar.

    Returns:
        The path of ``annotations.json``.

    The split is built in a hidden temporary folder under ``root`` and renamed to ``root/<split>``
    when complete. If ``root/<split>`` already holds a complete split made with the same
    parameters, nothing is written; if it holds an incomplete or different one made by this
    function, it is replaced; anything else there raises ``FileExistsError``.
    """
    root = checked_split_args(root, split, num_images, seed, image_size, min_size, max_size)
    params = split_params(split, num_images, seed, image_size, min_size, max_size)
    return generate_split(root, params, _write_split, progress)
