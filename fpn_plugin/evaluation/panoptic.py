"""Panoptic quality (PQ, SQ, RQ; Kirillov et al. 2019) of panoptic predictions, without panopticapi.

Detectron2's ``COCOPanopticEvaluator`` computes PQ with panopticapi, which is not on PyPI.
:class:`PanopticQualityEvaluator` is a Detectron2 ``DatasetEvaluator`` with the same inputs and
the same result keys that matches segments with torchmetrics' ``PanopticQuality`` instead;
:func:`build_panoptic_evaluator` picks Detectron2's evaluator where panopticapi is installed.
"""

import importlib.util
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluator
from detectron2.utils import comm

__all__ = ["PanopticQualityEvaluator", "build_panoptic_evaluator", "PANOPTIC_RESULT_KEYS"]

logger = logging.getLogger(__name__)

#: Keys of the results (under "panoptic_seg"), as Detectron2's COCOPanopticEvaluator names them:
#: over all categories, the things ("_th") and the stuff ("_st"), in percent.
PANOPTIC_RESULT_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")

_INSTALL = (
    "pip install torchmetrics (or pip install -e '.[panoptic]' in fpn_plugin's folder); where "
    "panopticapi is installed, Detectron2's COCOPanopticEvaluator is used instead"
)
_NEEDED_METADATA = (
    "panoptic_json",
    "panoptic_root",
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
)


def _panoptic_quality_class():
    try:
        from torchmetrics.detection import PanopticQuality
    except ImportError as e:
        raise ImportError(f"Panoptic quality needs the package torchmetrics: {_INSTALL}.") from e
    return PanopticQuality


def _rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W) int64 segment ids of a COCO-panoptic (H, W, 3) uint8 PNG: R + 256 G + 256^2 B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


class PanopticQualityEvaluator(DatasetEvaluator):
    """PQ, SQ and RQ of the ``"panoptic_seg"`` outputs on a COCO-panoptic dataset, in percent,
    over all categories, the things and the stuff: ``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th",
    ..., "RQ_st"}}``, as Detectron2's ``COCOPanopticEvaluator`` returns them.

    The dataset's metadata needs what ``register_coco_panoptic(_separated)`` sets:
    ``panoptic_json`` and ``panoptic_root`` (the ground truth: segment ids per pixel in PNGs,
    ``R + 256 G + 256^2 B``, and their categories), ``thing_dataset_id_to_contiguous_id`` and
    ``stuff_dataset_id_to_contiguous_id`` (to turn the model's contiguous ids back into the
    dataset's, as Detectron2's evaluator does). Inputs are matched to the ground truth by
    ``image_id``; the outputs must have the ground truth's size.

    Segments are matched, and their IoU, true/false positives and negatives counted, by
    torchmetrics' ``PanopticQuality`` with panopticapi's definition (``pq_compute``): a
    prediction and a ground-truth segment of the same category match when their IoU > 0.5, the
    prediction's pixels on unlabelled ground truth (id 0) left out of the union; an unmatched
    prediction lying more than half on unlabelled ground truth is no false positive; every
    unmatched ground-truth segment is a false negative, whatever the prediction left unassigned
    there. Each category with a true positive, false positive or false negative counts once in
    the averages, which are NaN for a group without any. Two differences from panopticapi: a
    crowd region (``iscrowd`` 1) counts as unlabelled for predictions of any category (in
    panopticapi, only for predictions of its own category), and the predicted segments of one
    stuff category in an image are one segment (Panoptic FPN predicts one per category anyway).

    Raises ``ValueError`` naming the dataset and the missing metadata, and ``ImportError``
    naming torchmetrics when it is not installed.
    """

    def __init__(self, dataset_name: str, distributed: bool = True):
        PanopticQuality = _panoptic_quality_class()
        metadata = MetadataCatalog.get(dataset_name)
        missing = [key for key in _NEEDED_METADATA if not hasattr(metadata, key)]
        if missing:
            raise ValueError(
                f"Dataset {dataset_name!r} has no {', '.join(missing)} in its metadata, which "
                "panoptic evaluation needs: register it with Detectron2's register_coco_panoptic "
                "or register_coco_panoptic_separated (fpn_plugin registers fpn_shapes_panoptic_* "
                "so), or evaluate it without PanopticFPN's panoptic output."
            )
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._panoptic_root = metadata.panoptic_root
        self._thing_to_dataset = {
            v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()
        }
        self._stuff_to_dataset = {
            v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()
        }
        self._thing_contiguous_ids = set(metadata.thing_dataset_id_to_contiguous_id.values())
        self._label_divisor = metadata.get("label_divisor", None)
        with open(metadata.panoptic_json, encoding="utf-8") as f:
            data = json.load(f)
        self._categories = {c["id"]: c for c in data["categories"]}
        self._ground_truth = {a["image_id"]: a for a in data["annotations"]}
        things = sorted(c for c, info in self._categories.items() if info.get("isthing", 0) == 1)
        stuffs = sorted(c for c, info in self._categories.items() if info.get("isthing", 0) != 1)
        # Pixels a prediction leaves unassigned become a segment of a category of their own, which
        # no ground truth has and no average counts: panopticapi's treatment of them (an "unknown"
        # category would be torchmetrics' void, left out of the unions and the false negatives).
        self._unassigned = max(self._categories) + 1
        # Per-class results come things first, then stuff, each in increasing id.
        self._order = things + stuffs + [self._unassigned]
        self._metric = PanopticQuality(
            things=set(things),
            stuffs=set(stuffs) | {self._unassigned},
            return_sq_and_rq=True,
            return_per_class=True,
            sync_on_compute=False,  # the processes' counts are gathered with Detectron2's comm
        )

    def reset(self) -> None:
        self._metric.reset()

    # --- One image -----------------------------------------------------------------------------

    def _dataset_category(self, segment: Dict[str, Any], image_id) -> int:
        isthing = segment.get("isthing", None)
        category = int(segment["category_id"])
        if isthing is None:  # the model gives the dataset's category id itself
            return category
        mapping = self._thing_to_dataset if isthing else self._stuff_to_dataset
        if category not in mapping:
            kind = "thing" if isthing else "stuff"
            raise ValueError(
                f"Image {image_id}: a predicted {kind} segment has contiguous category id "
                f"{category}, which dataset {self._dataset_name!r} does not have: check "
                "MODEL.ROI_HEADS.NUM_CLASSES and MODEL.SEM_SEG_HEAD.NUM_CLASSES against its "
                "classes."
            )
        return mapping[category]

    def _segments_from_labels(self, ids: np.ndarray) -> List[Dict[str, Any]]:
        """segments_info of a prediction given as ``category * label_divisor + instance`` per
        pixel (-1: unassigned), as Detectron2's evaluator reads one without segments_info."""
        if not self._label_divisor:
            raise ValueError(
                f"A panoptic prediction without segments_info needs the metadata label_divisor of "
                f"dataset {self._dataset_name!r}; register it with register_coco_panoptic."
            )
        segments = []
        for label in np.unique(ids).tolist():
            if label >= 0:
                category = label // self._label_divisor
                isthing = category in self._thing_contiguous_ids
                segments.append({"id": label, "category_id": category, "isthing": isthing})
        return segments

    def _prediction(self, output: Dict[str, Any], image_id) -> np.ndarray:
        """(H, W, 2) int64 (dataset category id, segment id) of a ``"panoptic_seg"`` output."""
        panoptic, segments_info = output["panoptic_seg"]
        ids = panoptic.to("cpu").numpy().astype(np.int64)
        if segments_info is None:
            segments_info = self._segments_from_labels(ids)
        pairs = np.zeros(ids.shape + (2,), dtype=np.int64)
        pairs[..., 0] = self._unassigned
        assigned = np.zeros(ids.shape, dtype=bool)
        for segment in segments_info:
            mask = ids == segment["id"]
            pairs[mask] = (self._dataset_category(segment, image_id), segment["id"])
            assigned |= mask
        stray = np.unique(ids[~assigned & (ids > 0)])
        if len(stray):
            raise ValueError(
                f"Image {image_id}: the panoptic prediction has pixels of segment ids "
                f"{stray.tolist()[:5]} that its segments_info does not list."
            )
        return pairs

    def _target(self, image_id) -> np.ndarray:
        """(H, W, 2) int64 (category id, segment id) of the ground truth (category -1:
        unlabelled or crowd)."""
        annotation = self._ground_truth.get(image_id)
        if annotation is None:
            raise ValueError(
                f"Image {image_id} has no annotation in the panoptic JSON of dataset "
                f"{self._dataset_name!r}: evaluate on the dataset the predictions are for."
            )
        path = os.path.join(self._panoptic_root, annotation["file_name"])
        ids = _rgb_to_id(np.asarray(Image.open(path).convert("RGB")))
        pairs = np.full(ids.shape + (2,), -1, dtype=np.int64)
        pairs[..., 1] = 0
        for segment in annotation["segments_info"]:
            if not segment.get("iscrowd", 0):
                pairs[ids == segment["id"]] = (segment["category_id"], segment["id"])
        return pairs

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Count the matches of each image: ``inputs[i]["image_id"]`` and
        ``outputs[i]["panoptic_seg"]`` = ((H, W) int segment ids, 0 unassigned; segments_info
        [{"id", "category_id", "isthing"}, ...], or None for ids ``category * label_divisor +
        instance``, -1 unassigned)."""
        for input_, output in zip(inputs, outputs):
            image_id = input_["image_id"]
            prediction, target = self._prediction(output, image_id), self._target(image_id)
            if prediction.shape != target.shape:
                raise ValueError(
                    f"Image {image_id}: the panoptic prediction is {prediction.shape[:2]} pixels "
                    f"but its ground truth {target.shape[:2]}; predict at the image's own size "
                    "(the inputs' height and width)."
                )
            self._metric.update(torch.from_numpy(prediction)[None], torch.from_numpy(target)[None])

    # --- All images ----------------------------------------------------------------------------

    def _counts(self) -> Tuple[torch.Tensor, ...]:
        m = self._metric
        return m.iou_sum, m.true_positives, m.false_positives, m.false_negatives

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        counts = self._counts()
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(counts)
            if not comm.is_main_process():
                return None
            counts = tuple(sum(parts) for parts in zip(*gathered))
            m = self._metric
            m.iou_sum, m.true_positives, m.false_positives, m.false_negatives = counts
        if not any(int(c.sum()) for c in counts[1:]):
            logger.warning(
                f"PanopticQualityEvaluator: no segment was counted on {self._dataset_name}."
            )
        per_class = self._metric.compute().to(torch.float64)  # (C, 3): pq, sq, rq
        _, tp, fp, fn = counts
        counted = (tp + fp + fn) > 0
        groups = {"": None, "_th": True, "_st": False}
        results, rows = OrderedDict(), []
        for suffix, isthing in groups.items():
            keep = [
                i
                for i, c in enumerate(self._order)
                if c != self._unassigned
                and counted[i]
                and (isthing is None or (self._categories[c].get("isthing", 0) == 1) == isthing)
            ]
            values = per_class[keep].mean(dim=0).tolist() if keep else [math.nan] * 3
            for name, value in zip(("PQ", "SQ", "RQ"), values):
                results[name + suffix] = 100 * value
            rows.append(
                [
                    {"": "All", "_th": "Things", "_st": "Stuff"}[suffix],
                    *(100 * v for v in values),
                    len(keep),
                ]
            )
        table = tabulate(
            rows, headers=["", "PQ", "SQ", "RQ", "#categories"], tablefmt="pipe", floatfmt=".3f"
        )
        logger.info(f"Panoptic evaluation results (torchmetrics' PanopticQuality):\n{table}")
        return {"panoptic_seg": dict(results)}


def build_panoptic_evaluator(
    dataset_name: str, output_dir: Optional[str] = None
) -> DatasetEvaluator:
    """Detectron2's ``COCOPanopticEvaluator`` where panopticapi is installed, else
    :class:`PanopticQualityEvaluator` (same result keys)."""
    if importlib.util.find_spec("panopticapi") is not None:
        return COCOPanopticEvaluator(dataset_name, output_dir)
    return PanopticQualityEvaluator(dataset_name)
