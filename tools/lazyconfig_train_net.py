#!/usr/bin/env python
"""Train and evaluate a LazyConfig (Python config file) detector, with Detectron2's training loop.

The LazyConfig counterpart of tools/train_net.py, with Detectron2's flags:

    python tools/lazyconfig_train_net.py --config-file configs/lazy/quickstart.py
    python tools/lazyconfig_train_net.py --config-file configs/lazy/faster_rcnn_fpn_r50.py \
        --num-gpus 8 train.init_checkpoint=/path/R-50.pkl
    python tools/lazyconfig_train_net.py --config-file ... --eval-only \
        train.init_checkpoint=model_final.pth
    python tools/lazyconfig_train_net.py --config-file ... --resume   # from the last checkpoint
    python tools/lazyconfig_train_net.py --config-file ... accel.channels_last=True

Trailing ``key=value`` arguments override the config (Hydra syntax, e.g. ``train.max_iter=100``).
What a config provides (``model``, ``dataloader``, ``optimizer``, ``lr_multiplier``, ``train``, and
optionally ``datasets`` and ``accel``, the execution strategies) is described in
fpn_plugin/engine/lazy_train.py. ``train.device`` "cuda" falls back to CPU when no GPU is present;
``--num-gpus N`` without GPUs runs N CPU processes (gloo).
"""

import tool_startup  # noqa: F401  (first: Detectron2 without the TorchScript warning)

from detectron2.engine import default_argument_parser, default_setup

from fpn_plugin.accel.cpu_allocator import add_system_malloc_argument
from fpn_plugin.engine import launch_tool
from fpn_plugin.engine.lazy_train import (
    do_eval_only,
    do_train,
    load_lazy_config,
    prepare_lazy_process,
    register_lazy_datasets,
)


def main(args):
    cfg = load_lazy_config(args.config_file, args.opts)
    prepare_lazy_process(cfg, args)  # in each process of --num-gpus N
    default_setup(cfg, args)
    register_lazy_datasets(cfg)
    if args.eval_only:
        return do_eval_only(cfg, resume=args.resume)
    do_train(cfg, resume=args.resume)


def get_parser():
    parser = default_argument_parser()
    add_system_malloc_argument(parser)
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    launch_tool(main, args, "lazyconfig_train_net.py")
