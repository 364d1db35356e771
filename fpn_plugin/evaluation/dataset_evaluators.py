"""The evaluators of a dataset, chosen by its metadata's ``evaluator_type`` as Detectron2's
tools/train_net.py chooses them."""

from typing import Callable

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, SemSegEvaluator

from .panoptic import build_panoptic_evaluator

__all__ = ["build_dataset_evaluator"]


def build_dataset_evaluator(
    dataset_name: str, output_folder: str, coco_evaluator: Callable[[], DatasetEvaluator]
) -> DatasetEvaluator:
    """The evaluator of ``dataset_name``, by its metadata's ``evaluator_type``:

    - "coco_panoptic_seg" (COCO panoptic and fpn_shapes_panoptic, registered by
      ``register_coco_panoptic(_separated)``): instance AP (``coco_evaluator()``), mIoU
      (Detectron2's ``SemSegEvaluator``; needs the "separated" version's semantic labels) and
      PQ / SQ / RQ (:func:`~fpn_plugin.evaluation.build_panoptic_evaluator`), together;
    - "sem_seg" (``_stuffonly`` datasets): mIoU;
    - anything else: ``coco_evaluator()`` (COCO AP), as before.

    ``output_folder``: where the evaluators write their files.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if evaluator_type == "sem_seg":
        return SemSegEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type != "coco_panoptic_seg":
        return coco_evaluator()
    evaluators = [coco_evaluator()]
    if MetadataCatalog.get(dataset_name).get("sem_seg_root", None):  # the "separated" version
        evaluators.append(SemSegEvaluator(dataset_name, output_dir=output_folder))
    evaluators.append(build_panoptic_evaluator(dataset_name, output_folder))
    return DatasetEvaluators(evaluators)
