"""Quickstart as a LazyConfig: the LazyConfig twin of configs/quickstart.yaml (same model, data,
optimizer and schedule): trains the paper's FPN detector from scratch on the embedded fpn_shapes
data and evaluates it with COCO AP.

    python tools/lazyconfig_train_net.py --config-file configs/lazy/quickstart.py
"""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from .common.accel import accel
from .common.coco_recipe import optimizer, train
from .common.data.fpn_shapes import dataloader, datasets
from .common.models.quickstart_fpn import model

optimizer.lr = 0.03
train.max_iter = 400
train.checkpointer.period = 100
train.eval_period = 0  # evaluated once, at the end
train.output_dir = "output/quickstart_lazy"
train.seed = 1
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"
# LR x0.1 at iterations 300 and 370, after 100 linear warm-up iterations from 0.001 x lr.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[300, 370, 400]),
    warmup_length=100 / 400,
    warmup_method="linear",
    warmup_factor=0.001,
)
