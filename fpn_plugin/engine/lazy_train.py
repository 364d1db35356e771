"""Training and evaluation of a LazyConfig (Python config file) detector with Detectron2's loop.

The config provides ``model``, ``dataloader.{train,test,evaluator}``, ``optimizer``,
``lr_multiplier`` and ``train`` (Detectron2's ``common/train.py`` keys), and optionally:

- ``datasets``: a LazyCall that registers the datasets the loaders name
  (configs/lazy/common/data/fpn_shapes.py); fpn_shapes' defaults are registered otherwise;
- ``accel``: a dict of :class:`fpn_plugin.accel.AccelOptions` fields, the execution strategies
  applied to the model after it is built (the LazyConfig counterpart of ``MODEL.ACCEL``);
  :class:`AccelOptions`'s defaults without it.
"""

import dataclasses
import logging
from typing import Callable, Sequence

import torch
from omegaconf import DictConfig
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm

from ..accel import AccelOptions, accelerate
from ..accel.cpu_allocator import keep_freed_memory_for_tool
from ..data import register_shapes_datasets
from .trainer import create_ddp_model_any_device

__all__ = [
    "REQUIRED_KEYS",
    "load_lazy_config",
    "prepare_lazy_process",
    "register_lazy_datasets",
    "accel_options",
    "build_lazy_model",
    "do_test",
    "do_eval_only",
    "do_train",
]

logger = logging.getLogger("detectron2")

REQUIRED_KEYS = ("model", "train")


def load_lazy_config(config_file: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The LazyConfig ``config_file`` with Hydra-style ``key=value`` ``overrides``; ValueError
    when it is not a ``.py`` file or lacks :data:`REQUIRED_KEYS`."""
    if not config_file.endswith(".py"):
        raise ValueError(
            f"--config-file {config_file!r} is not a LazyConfig (.py) file; "
            "run YAML configs with tools/train_net.py."
        )
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(overrides))
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(
            f"{config_file} does not define {missing}; "
            "see configs/lazy/quickstart.py for a complete config."
        )
    return cfg


def prepare_lazy_process(cfg: DictConfig, args, log: Callable[[str], None] = print) -> None:
    """Per process, before the model is built: ``train.device`` "cuda" falls back to "cpu"
    without a GPU, and CPU runs keep freed memory unless ``args.system_malloc``; each change is
    reported with ``log``."""
    device = str(cfg.train.get("device", "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        log(f"train.device is {device!r} but no GPU is available: running on CPU.")
        device = "cpu"
    cfg.train.device = device
    message = keep_freed_memory_for_tool(args, device)
    if message:
        log(message)


def register_lazy_datasets(cfg: DictConfig) -> None:
    """Register the datasets the loaders name: ``cfg.datasets`` if the config has it, else
    fpn_shapes' defaults."""
    if "datasets" in cfg:
        instantiate(cfg.datasets)
    else:
        register_shapes_datasets()


def accel_options(cfg: DictConfig) -> AccelOptions:
    """The execution strategies of ``cfg.accel`` (a dict of :class:`AccelOptions` fields);
    :class:`AccelOptions`'s defaults when the config has no ``accel``. ValueError naming unknown
    keys."""
    given = dict(cfg.get("accel", None) or {})
    fields = [f.name for f in dataclasses.fields(AccelOptions)]
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise ValueError(
            f"accel: unknown key(s) {unknown} in the LazyConfig; "
            f"use fields of fpn_plugin.accel.AccelOptions: {fields}."
        )
    return AccelOptions(**given)


def build_lazy_model(cfg: DictConfig) -> nn.Module:
    """``instantiate(cfg.model)`` on ``cfg.train.device``, then :func:`fpn_plugin.accel.accelerate`
    with :func:`accel_options`: the model runs as ``FPNTrainer.build_model``'s does."""
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    return accelerate(model, accel_options(cfg))


def _ddp(model: nn.Module, cfg: DictConfig) -> nn.Module:
    """``create_ddp_model`` with the config's ``train.ddp`` options, on GPU or CPU."""
    return create_ddp_model_any_device(model, **cfg.train.get("ddp", {}))


def do_test(cfg: DictConfig, model: nn.Module) -> dict:
    """Runs ``dataloader.test`` through ``model`` into ``dataloader.evaluator``; returns its results
    ({} without an evaluator)."""
    if "evaluator" not in cfg.get("dataloader", {}):
        logger.warning("The config has no dataloader.evaluator: nothing to evaluate.")
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_eval_only(cfg: DictConfig, resume: bool) -> dict:
    """Evaluates the last checkpoint of ``train.output_dir`` (``resume``), else
    ``train.init_checkpoint``; returns the evaluator's results."""
    model = _ddp(build_lazy_model(cfg), cfg)
    DetectionCheckpointer(model, cfg.train.output_dir).resume_or_load(
        cfg.train.init_checkpoint, resume=resume
    )
    return do_test(cfg, model)


def do_train(cfg: DictConfig, resume: bool) -> SimpleTrainer:
    """Trains ``cfg.model`` for ``train.max_iter`` iterations with checkpoints, LR schedule,
    periodic evaluation and metric writers; ``resume`` continues from the last checkpoint of
    ``train.output_dir``. Returns the trainer."""
    model = build_lazy_model(cfg)
    logger.info(f"Model:\n{model}")
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = _ddp(model, cfg)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer
    )
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    main = comm.is_main_process()
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if main
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # A checkpoint stores the iteration that just finished: continue at the next one.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer
