"""Faster R-CNN with FPN, R50, COCO 1x: the LazyConfig twin of configs/fpn_r50.yaml.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/faster_rcnn_fpn_r50.py \
        train.init_checkpoint=/path/to/R-50.pkl
"""

from .common.accel import accel
from .common.coco_recipe import dataloader, lr_multiplier, optimizer, train
from .common.models.faster_rcnn_fpn import model

dataloader.train.mapper.use_instance_mask = False
