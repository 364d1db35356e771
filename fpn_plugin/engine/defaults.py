"""What the command-line tools share: loading a plugin config, choosing the device, the CPU
allocator."""

import logging
import os
from typing import Sequence

from detectron2.config import CfgNode

from ..accel.cpu_allocator import keep_freed_memory_for_tool
from ..config import fall_back_to_cpu, get_plugin_cfg

__all__ = ["load_plugin_config", "prepare_process"]

logger = logging.getLogger(__name__)


def load_plugin_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2's defaults + the plugin's keys + the YAML ``config_file`` + ``KEY VALUE`` ``opts``
    (not frozen). ``FileNotFoundError`` naming ``config_file`` when it is not a file."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"--config-file {config_file!r} does not exist; pass a YAML config such as "
            "configs/quickstart.yaml."
        )
    cfg = get_plugin_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def prepare_process(cfg: CfgNode, args, log=print) -> None:
    """Per process, before the model is built: ``MODEL.DEVICE`` falls back to "cpu" without a GPU,
    and CPU runs keep freed memory unless ``args.system_malloc``; each change is reported with
    ``log``."""
    for message in (fall_back_to_cpu(cfg), keep_freed_memory_for_tool(args, cfg.MODEL.DEVICE)):
        if message:
            log(message)
