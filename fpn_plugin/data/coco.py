"""COCO-format folders registered in Detectron2's catalogs, idempotently and with clear errors."""

import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

__all__ = ["register_coco_folder", "register_idempotent", "CheckedCocoLoader"]

logger = logging.getLogger(__name__)


def register_idempotent(
    name: str,
    json_file: str,
    image_root: str,
    metadata: Dict[str, Any],
    loader: Optional[Callable[[], List[dict]]] = None,
) -> None:
    """``register_coco_instances``, idempotent: a no-op if ``name`` is registered with the same
    metadata, a replacement if it is registered differently. ``loader``, if given, replaces the
    registered loader (e.g. to generate the data before loading it)."""
    wanted = dict(metadata, json_file=json_file, image_root=image_root, evaluator_type="coco")
    if name in DatasetCatalog.list():
        existing = MetadataCatalog.get(name).as_dict()
        if all(key in existing and existing[key] == value for key, value in wanted.items()):
            return
        logger.info(f"Dataset '{name}' was registered with other settings; replacing it.")
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    elif name in MetadataCatalog.list():
        # Metadata set before registration: keep it unless it conflicts.
        existing = MetadataCatalog.get(name).as_dict()
        if any(key in existing and existing[key] != value for key, value in wanted.items()):
            MetadataCatalog.remove(name)
    register_coco_instances(name, metadata, json_file, image_root)
    if loader is not None:
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, loader)


class CheckedCocoLoader:
    """The dataset loader ``register_coco_instances`` registers (``load_coco_json``), with an
    error naming the file when it is not valid JSON (e.g. truncated by an interrupted copy)."""

    def __init__(self, name: str, json_file: str, image_root: str):
        self.name, self.json_file, self.image_root = name, json_file, image_root

    def __call__(self) -> List[dict]:
        try:
            return load_coco_json(self.json_file, self.image_root, self.name)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"Annotation file {self.json_file!r} of dataset {self.name!r} is not valid JSON "
                f"({e}); it may be truncated: copy or download it again."
            ) from e


def register_coco_folder(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instances dataset under ``name``, for ``cfg.DATASETS.TRAIN/TEST``.

    A checked, idempotent ``register_coco_instances``: the JSON is read (by ``load_coco_json``) when
    the dataset is first used, which also sets the metadata's ``thing_classes``; ``json_file``,
    ``image_root`` and ``evaluator_type="coco"`` are set now, so ``COCOEvaluator`` works.

    Args:
        name: dataset name, e.g. "my_val".
        json_file: COCO instances annotation file, e.g. ``.../annotations/instances_val2017.json``.
        image_root: folder the ``file_name`` of the JSON's images are relative to, e.g.
            ``.../val2017``.

    Raises:
        FileNotFoundError: ``json_file`` is not a file or ``image_root`` is not a folder.

    Registering the same name with the same paths again does nothing; with other paths, the new
    registration replaces the previous one.
    """
    json_file = os.path.abspath(os.path.expanduser(os.fspath(json_file)))
    image_root = os.path.abspath(os.path.expanduser(os.fspath(image_root)))
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Cannot register COCO dataset '{name}': annotation file '{json_file}' "
            f"{'is a folder' if os.path.isdir(json_file) else 'does not exist'}. "
            "Pass the path of its instances JSON (e.g. annotations/instances_val2017.json), "
            "or download / generate the dataset there first."
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(
            f"Cannot register COCO dataset '{name}': image folder '{image_root}' does not exist. "
            "Pass the folder that the 'file_name' entries of the JSON's images are relative to "
            "(e.g. val2017/), or download / extract the images there first."
        )
    register_idempotent(
        name, json_file, image_root, {}, CheckedCocoLoader(name, json_file, image_root)
    )
