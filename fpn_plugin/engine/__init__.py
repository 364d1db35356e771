"""Running the detectors: training (Detectron2's loop), prediction, the paper's ablation."""
from .defaults import load_plugin_config, prepare_process
from .predictor import FPNPredictor
from .trainer import FPNTrainer, create_ddp_model_any_device

__all__ = ["FPNTrainer", "FPNPredictor", "create_ddp_model_any_device", "load_plugin_config", "prepare_process"]
