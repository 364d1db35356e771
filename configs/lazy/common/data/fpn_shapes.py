"""Loaders and evaluator for fpn_shapes, the embedded synthetic dataset (fpn_plugin/data/shapes/),
as in configs/quickstart.yaml: 512 px images, horizontal flips for training, COCO evaluation.

``datasets`` registers ``fpn_shapes_train``/``fpn_shapes_val`` (generated on first use under
``root``, None for $FPN_PLUGIN_DATA or ~/.cache/fpn_plugin); tools/lazyconfig_train_net.py
instantiates it before the loaders.
"""

from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator

from fpn_plugin.data import SHAPES_TRAIN, SHAPES_VAL, register_shapes_datasets
from fpn_plugin.data.mapper import CheckedDatasetMapper

datasets = L(register_shapes_datasets)(
    root=None, num_train=1000, num_val=100, seed=0, image_size=512
)

dataloader = OmegaConf.create()
dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names=SHAPES_TRAIN),
    mapper=L(CheckedDatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=[512], max_size=512, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=False,
    ),
    total_batch_size=4,
    num_workers=1,
)
dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names=SHAPES_VAL, filter_empty=False),
    mapper=L(CheckedDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=512, max_size=512)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}", output_dir=None)
