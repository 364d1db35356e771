"""RetinaNet on the plugin's FPN, R50, COCO 1x: Detectron2's ``retinanet_R_50_FPN_1x`` with the
plugin's components."""

from .common.accel import accel
from .common.coco_recipe import dataloader, lr_multiplier, optimizer, train
from .common.models.retinanet_fpn import model

dataloader.train.mapper.use_instance_mask = False
optimizer.lr = 0.01
