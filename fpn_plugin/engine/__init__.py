"""Running the detectors: training (Detectron2's loop), prediction, the paper's ablation."""

from .checkpoint import FPNCheckpointer, load_weights_for_evaluation
from .defaults import launch_tool, load_plugin_config, prepare_process
from .predictor import FPNPredictor
from .trainer import FPNTrainer, create_ddp_model_any_device

__all__ = [
    "FPNCheckpointer",
    "load_weights_for_evaluation",
    "FPNTrainer",
    "FPNPredictor",
    "create_ddp_model_any_device",
    "load_plugin_config",
    "prepare_process",
    "launch_tool",
]
