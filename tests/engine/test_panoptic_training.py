"""Panoptic FPN trained with FPNTrainer on fpn_shapes_panoptic (configs/quickstart_panoptic.yaml,
tiny sizes) and evaluated with instance AP, mIoU and PQ; configs that cannot train say why."""

import math

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from fpn_plugin.data import SHAPES_PANOPTIC_TRAIN, SHAPES_PANOPTIC_VAL, SHAPES_TRAIN, SHAPES_VAL
from fpn_plugin.engine.trainer import FPNTrainer
from fpn_plugin.evaluation import PANOPTIC_RESULT_KEYS
from tests.engine.test_training import read_metrics, tiny_cfg, train_tiny

# Low thresholds: after 3 iterations few detections pass the defaults, and AP needs some.
EVAL_OPTS = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    0.001,
    "TEST.DETECTIONS_PER_IMAGE",
    10,
    "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
    0.001,
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
    64,
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fpn_data"))
    yield root
    for base in (SHAPES_PANOPTIC_TRAIN, SHAPES_PANOPTIC_VAL):
        for name in (base, base + "_separated", base + "_stuffonly"):
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
    for name in (SHAPES_TRAIN, SHAPES_VAL):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_tiny_panoptic_training_then_ap_miou_and_pq(data_root, tmp_path):
    opts = ["DATASETS.FPN_SHAPES.NUM_VAL", 2, *EVAL_OPTS]
    cfg, trainer, _ = train_tiny(data_root, tmp_path, 3, *opts, config="quickstart_panoptic.yaml")
    assert cfg.DATASETS.TRAIN == ("fpn_shapes_panoptic_train_separated",)
    last = [m for m in read_metrics(tmp_path) if "total_loss" in m][-1]
    assert last["iteration"] == 2
    losses = {k for k in last if k.startswith("loss_")}
    assert losses == {
        "loss_sem_seg",
        "loss_rpn_cls",
        "loss_rpn_loc",
        "loss_cls",
        "loss_box_reg",
        "loss_mask",
    }
    assert all(math.isfinite(last[k]) for k in losses)

    results = FPNTrainer.test(cfg, trainer.model)
    assert set(results) == {"bbox", "segm", "sem_seg", "panoptic_seg"}
    for task in ("bbox", "segm"):
        assert all(0 <= results[task][k] <= 100 for k in ("AP", "AP50", "AP75")), results[task]
    semantic = results["sem_seg"]
    assert {"mIoU", "fwIoU", "mACC", "pACC", "IoU-things", "IoU-stripes"} <= set(semantic)
    assert 0 <= semantic["mIoU"] <= 100
    panoptic = results["panoptic_seg"]
    assert set(panoptic) == set(PANOPTIC_RESULT_KEYS)
    assert all(0 <= panoptic[k] <= 100 for k in ("PQ", "SQ", "RQ")), panoptic
    assert torch.isfinite(torch.tensor([panoptic["PQ_th"], panoptic["PQ_st"]])).all()


@pytest.mark.parametrize(
    "opts, words",
    [
        (
            ["DATASETS.TRAIN", "('fpn_shapes_train',)"],
            ["'fpn_shapes_train'", "fpn_shapes_panoptic_train_separated"],
        ),
        (
            ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3],
            ["4 semantic classes", "MODEL.SEM_SEG_HEAD.NUM_CLASSES 4"],
        ),
    ],
)
def test_training_data_without_semantic_labels_or_classes_names_the_fix(
    data_root, tmp_path, opts, words
):
    cfg = tiny_cfg(
        data_root, tmp_path, "SOLVER.MAX_ITER", 1, *opts, config="quickstart_panoptic.yaml"
    )
    with pytest.raises(ValueError) as error:
        FPNTrainer(cfg)
    assert all(w in str(error.value) for w in words), str(error.value)
