"""Detectron2's ``DefaultTrainer`` for the plugin's detectors: COCO evaluation, checked data,
the execution strategies of ``MODEL.ACCEL``, CPU multi-process."""
import os
from unittest import mock

from tqdm import tqdm

import detectron2.engine.defaults
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, create_ddp_model
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from ..accel import accelerate
from ..data.mapper import CheckedDatasetMapper

__all__ = ["FPNTrainer", "create_ddp_model_any_device"]


def create_ddp_model_any_device(model, **kwargs):
    """Detectron2's ``create_ddp_model`` for CUDA and CPU models alike: a CPU model gets no
    ``device_ids`` (Detectron2 passes the local GPU's, which fails without one)."""
    if next(model.parameters()).device.type != "cuda":
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


class _Progress:
    """A data loader shown with a progress bar on the main process (Detectron2 iterates it with ``len``)."""

    def __init__(self, loader, desc: str):
        self.loader, self.desc = loader, desc

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(tqdm(self.loader, desc=self.desc, total=len(self.loader), disable=not comm.is_main_process(), mininterval=2.0))


class FPNTrainer(DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation, :class:`CheckedDatasetMapper` and ``MODEL.ACCEL``.

    Unlike Detectron2's, it also runs several processes on CPU (``--num-gpus 2`` without GPUs:
    gloo backend, DistributedDataParallel without device ids), and a non-finite loss stops
    training with advice and the path of the last (intact) checkpoint.
    """

    def __init__(self, cfg):
        # Detectron2's __init__ wraps the model with create_ddp_model, which passes the local GPU
        # as device id: the CPU-capable wrapper is swapped in for that call.
        with mock.patch.object(detectron2.engine.defaults, "create_ddp_model", create_ddp_model_any_device):
            super().__init__(cfg)

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's ``build_model``, then :func:`fpn_plugin.accel.accelerate` with ``MODEL.ACCEL``."""
        return accelerate(super().build_model(cfg), cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        # Keypoint AP needs one OKS sigma per keypoint: TEST.KEYPOINT_OKS_SIGMAS, else the dataset's
        # own (fpn_shapes has 4 keypoints, not COCO's 17).
        sigmas = cfg.TEST.KEYPOINT_OKS_SIGMAS
        if cfg.MODEL.KEYPOINT_ON and not sigmas:
            sigmas = MetadataCatalog.get(dataset_name).get("keypoint_oks_sigmas", ())
        return COCOEvaluator(dataset_name, output_dir=output_folder, kpt_oks_sigmas=list(sigmas))

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=CheckedDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, is_train=False))
        return _Progress(loader, f"evaluating on {dataset_name}")

    def train(self):
        try:
            return super().train()
        except FloatingPointError as e:
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            raise FloatingPointError(
                f"{e}\nTraining stopped before the optimizer step, so no weight was changed by this loss. "
                f"The last checkpoint on disk is intact: {last or 'none saved yet'}. "
                "Lower SOLVER.BASE_LR or raise SOLVER.WARMUP_ITERS, check the data, then continue with --resume."
            ) from e

