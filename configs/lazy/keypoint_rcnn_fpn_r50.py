"""Keypoint R-CNN with FPN, R50, COCO 1x: Detectron2's ``keypoint_rcnn_R_50_FPN_1x`` with the
plugin's components."""

from detectron2.config import LazyConfig

from fpn_plugin.config import detectron2_config_file

from .common.accel import accel
from .common.coco_recipe import lr_multiplier, optimizer, train
from .common.models.keypoint_rcnn_fpn import model

# COCO person keypoints: Detectron2's keypoint loaders (horizontal flips swap left/right keypoints).
dataloader = LazyConfig.load(detectron2_config_file("common/data/coco_keypoint.py"), "dataloader")
