"""What the command-line tools share: loading a plugin config, choosing the device, the CPU
allocator, launching the processes."""

import difflib
import logging
import os
import re
import sys
from typing import Callable, List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.engine import launch

from ..accel.cpu_allocator import keep_freed_memory_for_tool
from ..config import fall_back_to_cpu, get_plugin_cfg

__all__ = ["load_plugin_config", "prepare_process", "launch_tool"]

logger = logging.getLogger(__name__)


def load_plugin_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """Detectron2's defaults + the plugin's keys + the YAML ``config_file`` + ``KEY VALUE`` ``opts``
    (not frozen). ``FileNotFoundError`` naming ``config_file`` when it is not a file; a key that
    does not exist, in the file or in ``opts``, is a one-line ``ValueError`` naming where it was
    set and the closest valid key."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"--config-file {config_file!r} does not exist; pass a YAML config such as "
            "configs/quickstart.yaml."
        )
    cfg = get_plugin_cfg()
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        error = _unknown_key_error(cfg, e, config_file)
        if error is None:
            raise
        raise error from None
    try:
        cfg.merge_from_list(list(opts))
    except AssertionError as e:  # yacs checks command-line keys with assert
        error = _unknown_key_error(cfg, e, "the command line")
        if error is None:
            raise
        raise error from None
    return cfg


def _unknown_key_error(cfg: CfgNode, error: Exception, source: str) -> Optional[ValueError]:
    """yacs' "Non-existent (config) key: A.B.C" ``error`` as a ``ValueError`` that names
    ``source`` (a file, or the command line) and the valid key of ``cfg`` closest to A.B.C, or
    ``None`` for any other error."""
    match = re.search(r"Non-existent (?:config )?key: (\S+)", str(error))
    if match is None:
        return None
    key = match.group(1).strip("'\"")
    close = difflib.get_close_matches(key, _all_keys(cfg), n=1, cutoff=0.6)
    hint = (
        f"did you mean {close[0]}?" if close else "docs/configuration.md lists the plugin's keys."
    )
    return ValueError(f"{source}: unknown config key {key}; {hint}")


def _all_keys(node: CfgNode, prefix: str = "") -> List[str]:
    """Every leaf key of ``node``, dotted (``MODEL.FPN.OUT_CHANNELS``)."""
    keys = []
    for name, value in node.items():
        if isinstance(value, CfgNode):
            keys.extend(_all_keys(value, prefix + name + "."))
        else:
            keys.append(prefix + name)
    return keys


def prepare_process(cfg: CfgNode, args, log=print) -> None:
    """Per process, before the model is built: ``MODEL.DEVICE`` falls back to "cpu" without a GPU,
    and CPU runs keep freed memory unless ``args.system_malloc``; each change is reported with
    ``log``."""
    for message in (fall_back_to_cpu(cfg), keep_freed_memory_for_tool(args, cfg.MODEL.DEVICE)):
        if message:
            log(message)


def launch_tool(main: Callable, args, prog: str) -> None:
    """Run ``main(args)`` in the processes of Detectron2's ``default_argument_parser`` ``args``
    (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``) with
    ``detectron2.engine.launch``. A bad input -- ``ValueError``, ``FileNotFoundError`` or
    ``PermissionError``, whose messages name the input and the fix -- ends the tool as argparse
    does, ``<prog>: error: <message>`` and exit status 1, instead of a traceback."""
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (ValueError, FileNotFoundError, PermissionError) as e:
        sys.exit(f"{prog}: error: {e}")
