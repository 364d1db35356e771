"""The shapes datasets in Detectron2's catalogs: ``fpn_shapes_{train,val}`` and
``fpn_shapes_panoptic_{train,val}`` (three views each), generated on first use under
:func:`default_data_root`."""

import os
from typing import Any, Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import (
    load_coco_json,
    register_coco_panoptic,
    register_coco_panoptic_separated,
)

from ..coco import register_idempotent
from .cache import ANNOTATIONS_FILE, IMAGES_FOLDER
from .drawing import (
    SHAPE_CLASSES,
    SHAPE_KEYPOINT_CONNECTION_RULES,
    SHAPE_KEYPOINT_FLIP_MAP,
    SHAPE_KEYPOINT_NAMES,
    SHAPE_KEYPOINT_OKS_SIGMAS,
)
from .instances import generate_shapes_dataset
from .panoptic import generate_shapes_panoptic_dataset, shapes_panoptic_metadata, split_paths

__all__ = [
    "SHAPES_TRAIN",
    "SHAPES_VAL",
    "SHAPES_PANOPTIC_TRAIN",
    "SHAPES_PANOPTIC_VAL",
    "default_data_root",
    "register_shapes_datasets",
    "register_shapes_panoptic_datasets",
    "register_shapes_datasets_from_config",
]

#: Names under which :func:`register_shapes_datasets` registers the two splits.
SHAPES_TRAIN = "fpn_shapes_train"
SHAPES_VAL = "fpn_shapes_val"
#: Base names of the two panoptic splits. Each is registered three times, as Detectron2 registers
#: COCO panoptic: the name itself (standard panoptic), ``<name>_separated`` (instances + semantic
#: labels: Panoptic FPN) and ``<name>_stuffonly`` (semantic labels only).
SHAPES_PANOPTIC_TRAIN = "fpn_shapes_panoptic_train"
SHAPES_PANOPTIC_VAL = "fpn_shapes_panoptic_val"


def default_data_root() -> str:
    """Where generated datasets live: ``$FPN_PLUGIN_DATA`` if set, else ``~/.cache/fpn_plugin``."""
    return os.path.expanduser(
        os.environ.get("FPN_PLUGIN_DATA") or os.path.join("~", ".cache", "fpn_plugin")
    )


class _ShapesLoader:
    """Dataset loader registered for a shapes split: generates it (if needed), then loads it."""

    def __init__(self, name: str, spec: Dict[str, Any]):
        self.name, self.spec = name, spec

    def __call__(self) -> List[dict]:
        json_file = generate_shapes_dataset(**self.spec, progress=True)
        return load_coco_json(
            json_file, os.path.join(os.path.dirname(json_file), IMAGES_FOLDER), self.name
        )


def register_shapes_datasets(
    root: Optional[str] = None,
    num_train: int = 1000,
    num_val: int = 100,
    seed: int = 0,
    image_size: int = 512,
) -> None:
    """Register ``fpn_shapes_train`` and ``fpn_shapes_val`` in Detectron2's catalogs.

    Nothing is generated here: a split is generated (see :func:`generate_shapes_dataset`) the first
    time ``DatasetCatalog.get`` is called for it, then loaded with ``load_coco_json``. Both splits
    live in
    ``<root>/fpn_shapes_<image_size>px_seed<seed>_train<num_train>_val<num_val>/{train,val}``, so
    datasets with different parameters are cached side by side. The validation split uses
    ``seed + 1``. The metadata has ``thing_classes`` (:data:`SHAPE_CLASSES`), ``json_file``,
    ``image_root``, ``evaluator_type="coco"`` (for ``COCOEvaluator``), and for keypoint detectors
    ``keypoint_names``, ``keypoint_flip_map``, ``keypoint_connection_rules`` and
    ``keypoint_oks_sigmas`` (see :data:`SHAPE_KEYPOINT_NAMES` and the constants after it).

    Calling it again with the same arguments does nothing; with other arguments, the new
    registration replaces the previous one.

    Args:
        root: data folder; None for :func:`default_data_root`.
        num_train, num_val: number of images in each split.
        seed: random seed of the training split (non-negative).
        image_size: image width and height, pixels.
    """
    specs = _split_specs("fpn_shapes", root, num_train, num_val, seed, image_size)
    for name, spec in zip((SHAPES_TRAIN, SHAPES_VAL), specs):
        metadata = {
            "thing_classes": list(SHAPE_CLASSES),
            "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPE_CLASSES))},
            "keypoint_names": list(SHAPE_KEYPOINT_NAMES),
            "keypoint_flip_map": [list(p) for p in SHAPE_KEYPOINT_FLIP_MAP],
            "keypoint_connection_rules": [list(r) for r in SHAPE_KEYPOINT_CONNECTION_RULES],
            "keypoint_oks_sigmas": list(SHAPE_KEYPOINT_OKS_SIGMAS),
            "fpn_shapes": dict(spec),
        }
        split_dir = os.path.join(spec["root"], spec["split"])
        register_idempotent(
            name,
            os.path.join(split_dir, ANNOTATIONS_FILE),
            os.path.join(split_dir, IMAGES_FOLDER),
            metadata,
            _ShapesLoader(name, spec),
        )


def _split_specs(
    prefix: str,
    root: Optional[str],
    num_train: int,
    num_val: int,
    seed: int,
    image_size: int,
) -> List[Dict[str, Any]]:
    """The generator's arguments of the "train" and "val" splits of a dataset cached in
    ``<root>/<prefix>_<image_size>px_seed<seed>_train<num_train>_val<num_val>`` (``root`` None:
    :func:`default_data_root`); validation uses ``seed + 1``."""
    root = os.path.abspath(
        os.path.expanduser(os.fspath(root) if root is not None else default_data_root())
    )
    name = f"{prefix}_{int(image_size)}px_seed{int(seed)}_train{int(num_train)}_val{int(num_val)}"
    return [
        {
            "root": os.path.join(root, name),
            "split": split,
            "num_images": int(num_images),
            "seed": int(split_seed),
            "image_size": int(image_size),
        }
        for split, num_images, split_seed in (
            ("train", num_train, seed),
            ("val", num_val, seed + 1),
        )
    ]


class _GenerateThenLoad:
    """A registered dataset loader that generates its split (if needed) before Detectron2's own
    loader (the one ``register_coco_panoptic*`` registered) reads it."""

    def __init__(self, spec: Dict[str, Any], load):
        self.spec, self.load = spec, load

    def __call__(self) -> List[dict]:
        generate_shapes_panoptic_dataset(**self.spec, progress=True)
        return self.load()


def _registered_names(name: str) -> Tuple[str, str, str]:
    return name, name + "_separated", name + "_stuffonly"


def _register_split(name: str, spec: Dict[str, Any]) -> None:
    """Register the three views of one split (see :data:`SHAPES_PANOPTIC_TRAIN`), replacing an
    earlier registration with other settings; a no-op if registered with these."""
    names = _registered_names(name)
    if all(
        n in DatasetCatalog.list() and MetadataCatalog.get(n).get("fpn_shapes", None) == spec
        for n in names
    ):
        return
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        if n in MetadataCatalog.list():
            MetadataCatalog.remove(n)
    split_dir = os.path.join(spec["root"], spec["split"])
    paths = split_paths(split_dir)
    register_coco_panoptic_separated(
        name,
        dict(shapes_panoptic_metadata(separated=True), fpn_shapes=dict(spec)),
        paths["image_root"],
        paths["panoptic_root"],
        paths["panoptic_json"],
        paths["sem_seg_root"],
        paths["instances_json"],
    )
    register_coco_panoptic(
        name,
        dict(shapes_panoptic_metadata(separated=False), fpn_shapes=dict(spec)),
        paths["image_root"],
        paths["panoptic_root"],
        paths["panoptic_json"],
        paths["instances_json"],
    )
    for n in names:
        load = DatasetCatalog[n]
        DatasetCatalog.remove(n)
        DatasetCatalog.register(n, _GenerateThenLoad(spec, load))


def register_shapes_panoptic_datasets(
    root: Optional[str] = None,
    num_train: int = 1000,
    num_val: int = 100,
    seed: int = 0,
    image_size: int = 512,
) -> None:
    """Register ``fpn_shapes_panoptic_{train,val}`` in Detectron2's catalogs, each as Detectron2
    registers ``coco_2017_{train,val}_panoptic``: the name itself (``register_coco_panoptic``:
    standard panoptic dicts), ``<name>_separated`` (``register_coco_panoptic_separated``:
    instances + semantic labels, what Panoptic FPN trains on and is evaluated on) and
    ``<name>_stuffonly`` (semantic labels only).

    Nothing is generated here: a split is generated (:func:`generate_shapes_panoptic_dataset`)
    the first time ``DatasetCatalog.get`` is called for one of its names, then read by
    Detectron2's loader. The splits live in
    ``<root>/fpn_shapes_panoptic_<image_size>px_seed<seed>_train<num_train>_val<num_val>/``
    ``{train,val}``; validation uses ``seed + 1``. The metadata is
    :func:`shapes_panoptic_metadata`'s, with Detectron2's paths, ``evaluator_type``
    ("coco_panoptic_seg", "sem_seg" for ``_stuffonly``) and ``ignore_label`` 255.

    Calling it again with the same arguments does nothing; with other arguments, the new
    registration replaces the previous one. The arguments are those of
    :func:`register_shapes_datasets`.
    """
    specs = _split_specs("fpn_shapes_panoptic", root, num_train, num_val, seed, image_size)
    for name, spec in zip((SHAPES_PANOPTIC_TRAIN, SHAPES_PANOPTIC_VAL), specs):
        _register_split(name, spec)


def register_shapes_datasets_from_config(cfg) -> None:
    """:func:`register_shapes_datasets` and :func:`register_shapes_panoptic_datasets` with the
    settings of ``cfg.DATASETS.FPN_SHAPES``; nothing is generated until a dataset is used."""
    c = cfg.DATASETS.FPN_SHAPES
    settings = dict(root=c.ROOT or None, num_train=c.NUM_TRAIN, num_val=c.NUM_VAL, seed=c.SEED)
    settings["image_size"] = c.IMAGE_SIZE
    register_shapes_datasets(**settings)
    register_shapes_panoptic_datasets(**settings)
