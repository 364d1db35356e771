"""Detectron2's ``DefaultTrainer`` for the plugin's detectors: COCO evaluation, checked data,
the execution strategies of ``MODEL.ACCEL``, CPU multi-process."""

import logging
import os
import weakref

from tqdm import tqdm

from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..accel import accelerate
from ..data.mapper import CheckedDatasetMapper
from ..evaluation import build_dataset_evaluator
from .checkpoint import FPNCheckpointer, is_intact_checkpoint

__all__ = [
    "FPNTrainer",
    "create_ddp_model_any_device",
    "check_num_classes",
    "check_semantic_classes",
]


def create_ddp_model_any_device(model, **kwargs):
    """Detectron2's ``create_ddp_model`` for CUDA and CPU models alike: a CPU model gets no
    ``device_ids`` (Detectron2 passes the local GPU's, which fails without one)."""
    if next(model.parameters()).device.type != "cuda":
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


def check_num_classes(cfg) -> None:
    """``ValueError`` naming the key to set when the model has fewer classes than a training
    dataset's metadata lists (training would stop later on an out-of-bounds class index)."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        key, num_classes = "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    else:
        key, num_classes = "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in cfg.DATASETS.TRAIN:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        _check_class_count(name, classes, "categories", key, num_classes)
    if cfg.MODEL.META_ARCHITECTURE in ("PanopticFPN", "SemanticSegmentor"):
        check_semantic_classes(cfg)


def check_semantic_classes(cfg) -> None:
    """For a model with a semantic head: ``ValueError`` naming the key or dataset to change when a
    training dataset has no semantic labels (an instance-only dataset) or more semantic classes
    (``stuff_classes``) than ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``."""
    key, num_classes = "MODEL.SEM_SEG_HEAD.NUM_CLASSES", cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    for name in cfg.DATASETS.TRAIN:
        metadata = MetadataCatalog.get(name)
        instances_only = metadata.get("evaluator_type", None) == "coco"
        if instances_only and not metadata.get("sem_seg_root", None):
            raise ValueError(
                f"Dataset {name!r} in DATASETS.TRAIN has instances only, but "
                f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} also learns semantic "
                "labels: train on a panoptic dataset's separated version, e.g. "
                "fpn_shapes_panoptic_train_separated (configs/quickstart_panoptic.yaml)."
            )
        classes = metadata.get("stuff_classes", None)
        _check_class_count(name, classes, "semantic classes", key, num_classes)


def _check_class_count(dataset, classes, what, key, num_classes) -> None:
    """``ValueError`` naming ``key`` and the value to set when the list ``classes`` of ``dataset``
    (None: unknown) is longer than the model's ``num_classes``."""
    if classes is not None and len(classes) > num_classes:
        raise ValueError(
            f"Dataset {dataset!r} has {len(classes)} {what} but {key} = {num_classes}; "
            f"set {key} {len(classes)} (e.g. append '{key} {len(classes)}' to the command line)."
        )


class _Progress:
    """A data loader shown with a progress bar on the main process (Detectron2 iterates it with
    ``len``)."""

    def __init__(self, loader, desc: str):
        self.loader, self.desc = loader, desc

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(
            tqdm(
                self.loader,
                desc=self.desc,
                total=len(self.loader),
                disable=not comm.is_main_process(),
                mininterval=2.0,
            )
        )


class FPNTrainer(DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation (and mIoU and PQ on panoptic datasets, see
    :func:`fpn_plugin.evaluation.build_dataset_evaluator`), :class:`CheckedDatasetMapper` and
    ``MODEL.ACCEL``.

    Unlike Detectron2's, it also runs several processes on CPU (``--num-gpus 2`` without GPUs:
    gloo backend, DistributedDataParallel without device ids), writes checkpoints atomically and
    resumes from the newest intact one (:class:`FPNCheckpointer`), checks ``NUM_CLASSES`` against
    the training data, and a non-finite loss stops training with advice and the path of the last
    (intact) checkpoint.
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ written out, with two changes: the model is wrapped by
        # create_ddp_model_any_device (Detectron2's create_ddp_model passes the local GPU as device
        # id) and the checkpointer is an FPNCheckpointer (atomic saves), as neither is a method
        # to override there.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()  # Detectron2's logger, when the application has not set it up
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        # The order in which Detectron2 builds them.
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model_any_device(model, broadcast_buffers=False)
        loop = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = loop(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = FPNCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())
        # The plugin's own messages (dropped boxes, fallbacks) in the run's log.txt too, beside
        # Detectron2's; still passed on to the root logger, where an application may listen.
        setup_logger(
            cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="fpn_plugin"
        ).propagate = True

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's ``build_model``, then :func:`fpn_plugin.accel.accelerate` with
        ``MODEL.ACCEL``."""
        return accelerate(super().build_model(cfg), cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        # Keypoint AP needs one OKS sigma per keypoint: TEST.KEYPOINT_OKS_SIGMAS, else the dataset's
        # own (fpn_shapes has 4 keypoints, not COCO's 17).
        sigmas = cfg.TEST.KEYPOINT_OKS_SIGMAS
        if cfg.MODEL.KEYPOINT_ON and not sigmas:
            sigmas = MetadataCatalog.get(dataset_name).get("keypoint_oks_sigmas", ())

        # Panoptic and semantic datasets also get mIoU and PQ (by their metadata's evaluator_type).
        def coco():
            return COCOEvaluator(
                dataset_name, output_dir=output_folder, kpt_oks_sigmas=list(sigmas)
            )

        return build_dataset_evaluator(dataset_name, output_folder, coco)

    @classmethod
    def build_train_loader(cls, cfg):
        loader = build_detection_train_loader(cfg, mapper=CheckedDatasetMapper(cfg, is_train=True))
        check_num_classes(cfg)  # the datasets are loaded now, and their metadata has the classes
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = build_detection_test_loader(
            cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False)
        )
        return _Progress(loader, f"evaluating on {dataset_name}")

    def train(self):
        try:
            results = super().train()
            self._ensure_final_checkpoint()
            return results
        except FloatingPointError as e:
            last = (
                self.checkpointer.get_checkpoint_file()
                if self.checkpointer.has_checkpoint()
                else None
            )
            raise FloatingPointError(
                f"{e}\nTraining stopped before the optimizer step, so no weight was changed by "
                f"this loss. The last checkpoint on disk is intact: {last or 'none saved yet'}. "
                "Lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, check the data, then continue "
                "with --resume."
            ) from e

    def _ensure_final_checkpoint(self) -> None:
        """A run that reached ``MAX_ITER`` leaves an intact ``model_final.pth``, also when it
        resumed from a checkpoint of the last iteration after a save of the final one was
        interrupted."""
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        if (
            comm.is_main_process()
            and self.iter + 1 >= self.max_iter
            and not is_intact_checkpoint(final)
        ):
            self.checkpointer.save("model_final", iteration=self.max_iter - 1)
