"""A Detectron2 ``DatasetMapper`` that checks its input: clear errors for bad images, counted drops
for bad boxes."""

import copy
import logging
import os
from typing import Dict, List

from PIL import UnidentifiedImageError

from detectron2.data import DatasetMapper
from detectron2.structures import BoxMode

__all__ = ["CheckedDatasetMapper"]

logger = logging.getLogger(__name__)


def _drop_degenerate_boxes(annotations: List[Dict], height: int, width: int):
    """Split annotations into kept ones and the number dropped.

    A box is dropped when it has zero (or negative) area, or no area left once clipped to the
    height x width image (pixels). Boxes partly outside the image are kept: Detectron2 clips them.
    """
    kept, dropped = [], 0
    for ann in annotations:
        x0, y0, x1, y1 = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
        if height and width:
            x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
            y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
        if x1 > x0 and y1 > y0:
            kept.append(ann)
        else:
            dropped += 1
    return kept, dropped


class CheckedDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` (same arguments, same outputs) that

    - stops with an error naming the file when an image is missing or cannot be decoded;
    - drops zero-area boxes and boxes entirely outside the image, and counts them in a warning,
      once per image (the next epochs drop the same boxes silently); boxes partly outside the
      image are clipped, as Detectron2 does;
    - reads grayscale, palette and RGBA images as RGB (alpha dropped), through Detectron2's
      ``read_image``.
    """

    dropped_boxes = 0  # distinct boxes dropped in this process, reported in the warnings
    _reported = set()  # images whose dropped boxes were reported (and counted)

    def __call__(self, dataset_dict: Dict) -> Dict:
        file_name = dataset_dict["file_name"]
        if not os.path.isfile(file_name):
            raise FileNotFoundError(
                f"Image file {file_name!r} (image_id {dataset_dict.get('image_id')}) does not "
                "exist. Fix the path in the dataset's annotation file, or the image root it was "
                "registered with."
            )
        if "annotations" in dataset_dict:
            dataset_dict = copy.copy(dataset_dict)
            kept, dropped = _drop_degenerate_boxes(
                dataset_dict["annotations"],
                dataset_dict.get("height", 0),
                dataset_dict.get("width", 0),
            )
            key = (file_name, dataset_dict.get("image_id"))
            if dropped and key not in CheckedDatasetMapper._reported:
                CheckedDatasetMapper._reported.add(key)
                CheckedDatasetMapper.dropped_boxes += dropped
                logger.warning(
                    f"{file_name}: dropped {dropped} zero-area or out-of-image box(es) "
                    f"({CheckedDatasetMapper.dropped_boxes} in total so far)."
                )
            dataset_dict["annotations"] = kept
        try:
            return super().__call__(dataset_dict)
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            # PIL raises these for truncated or non-image files.
            raise OSError(
                f"Cannot read image file {file_name!r} (image_id {dataset_dict.get('image_id')}): "
                f"{e}. Replace the file or remove it from the dataset."
            ) from e
