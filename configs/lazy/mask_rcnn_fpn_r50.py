"""Mask R-CNN with FPN, R50, COCO 1x: Detectron2's ``mask_rcnn_R_50_FPN_1x`` with the plugin's
components."""

from .common.accel import accel
from .common.coco_recipe import dataloader, lr_multiplier, optimizer, train
from .common.models.mask_rcnn_fpn import model
