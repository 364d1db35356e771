#!/usr/bin/env python
"""Train and evaluate a LazyConfig (Python config file) detector, with Detectron2's training loop.

The LazyConfig counterpart of tools/train_net.py, with Detectron2's flags:

    python tools/lazyconfig_train_net.py --config-file configs/lazy/quickstart.py
    python tools/lazyconfig_train_net.py --config-file configs/lazy/faster_rcnn_fpn_r50.py --num-gpus 8 \
        train.init_checkpoint=/path/R-50.pkl
    python tools/lazyconfig_train_net.py --config-file ... --eval-only train.init_checkpoint=model_final.pth
    python tools/lazyconfig_train_net.py --config-file ... --resume          # continue from the last checkpoint

Trailing ``key=value`` arguments override the config (Hydra syntax, e.g. ``train.max_iter=100``).
The config provides ``model``, ``dataloader.{train,test,evaluator}``, ``optimizer``, ``lr_multiplier``
and ``train`` (Detectron2's ``common/train.py`` keys), and optionally ``datasets``, a LazyCall that
registers the datasets the loaders name (configs/lazy/common/data/fpn_shapes.py); the embedded
``fpn_shapes_train``/``fpn_shapes_val`` are registered with their defaults otherwise.
``train.device`` "cuda" falls back to CPU when no GPU is present; ``--num-gpus N`` without GPUs runs
N CPU processes (gloo).
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402

import fpn_plugin  # noqa: E402,F401  (registers the components)
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.engine import (  # noqa: E402
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from fpn_plugin.accel.cpu_allocator import add_system_malloc_argument, keep_freed_memory_for_tool  # noqa: E402
from fpn_plugin.data import register_shapes_datasets  # noqa: E402
from fpn_plugin.engine.trainer import create_ddp_model_any_device  # noqa: E402

logger = logging.getLogger("detectron2")

REQUIRED_KEYS = ("model", "train")


def setup(args):
    """Load the config, apply the ``key=value`` overrides, pick the device, set up logging."""
    if not args.config_file.endswith(".py"):
        raise ValueError(
            f"--config-file {args.config_file!r} is not a LazyConfig (.py) file; "
            "run YAML configs with tools/train_net.py."
        )
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{args.config_file} does not define {missing}; see configs/lazy/quickstart.py for a complete config.")
    device = str(cfg.train.get("device", "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"train.device is {device!r} but no GPU is available: running on CPU.")
        cfg.train.device = "cpu"
    message = keep_freed_memory_for_tool(args, cfg.train.device)  # in each process of --num-gpus N
    if message:
        print(message)
    default_setup(cfg, args)
    return cfg


def register_datasets(cfg):
    """Register the datasets the loaders name: ``cfg.datasets`` if the config has it, else fpn_shapes' defaults."""
    if "datasets" in cfg:
        instantiate(cfg.datasets)
    else:
        register_shapes_datasets()


def ddp(model, cfg):
    """``create_ddp_model`` with the config's ``train.ddp`` options, on GPU or CPU."""
    return create_ddp_model_any_device(model, **cfg.train.get("ddp", {}))


def do_test(cfg, model):
    if "evaluator" not in cfg.get("dataloader", {}):
        logger.warning("The config has no dataloader.evaluator: nothing to evaluate.")
        return {}
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args, cfg):
    model = instantiate(cfg.model)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = ddp(model, cfg)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # A checkpoint stores the iteration that just finished: continue at the next one.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def main(args):
    cfg = setup(args)
    register_datasets(cfg)
    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = ddp(model, cfg)
        # --resume evaluates the last checkpoint of train.output_dir, else train.init_checkpoint.
        DetectionCheckpointer(model, cfg.train.output_dir).resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
        return do_test(cfg, model)
    do_train(args, cfg)


if __name__ == "__main__":
    parser = default_argument_parser()
    add_system_malloc_argument(parser)
    args = parser.parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
