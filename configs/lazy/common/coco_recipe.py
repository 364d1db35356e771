"""Detectron2's COCO training recipe for LazyConfig models, loaded from Detectron2's own lazy
configs (``common/optim.py``, ``common/coco_schedule.py``, ``common/data/coco.py``,
``common/train.py``): SGD (lr 0.02, momentum 0.9, weight decay 1e-4, batch 16), the 1x schedule
(90k iterations, LR / 10 at 60k and 80k, 1000 warm-up iterations), COCO 2017 loaders (shorter side
640-800 for training, 800 for testing, at most 1333), COCO evaluation.

No weights are downloaded: ``train.init_checkpoint`` is empty. For COCO training set it to a local
copy of Detectron2's ImageNet ``R-50.pkl``, or to a Detectron2 R50-FPN checkpoint to evaluate it.
"""

from detectron2.config import LazyConfig

from fpn_plugin.config import detectron2_config_file

optimizer = LazyConfig.load(detectron2_config_file("common/optim.py"), "SGD")
lr_multiplier = LazyConfig.load(
    detectron2_config_file("common/coco_schedule.py"), "lr_multiplier_1x"
)
dataloader = LazyConfig.load(detectron2_config_file("common/data/coco.py"), "dataloader")
train = LazyConfig.load(detectron2_config_file("common/train.py"), "train")
train.init_checkpoint = ""
