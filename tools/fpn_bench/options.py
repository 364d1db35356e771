"""What a benchmark run measures and how: :class:`BenchmarkOptions`, the flags of the tool."""

import dataclasses
import os
from typing import Optional, Sequence, Tuple

import torch

__all__ = ["MEASUREMENTS", "BenchmarkOptions"]

#: The measurements, in the order they run and are reported (``--only`` names).
MEASUREMENTS = (
    "neck",
    "anchors",
    "pooler",
    "box_head",
    "end_to_end",
    "end_to_end_batch",
    "train",
    "memory",
    "torchvision",
)


@dataclasses.dataclass
class BenchmarkOptions:
    """One run's settings; each field is the ``tools/benchmark.py`` flag of the same name
    (``config_file`` is ``--config-file``), whose help says what it does. Checked on creation:
    ``ValueError`` naming the flag and the fix. Paths become absolute (the memory measurement's
    subprocesses run in another folder)."""

    config_file: Optional[str] = None
    weights: Optional[str] = None
    images: Optional[str] = None
    size: Tuple[int, int] = (800, 1333)
    batch: int = 2
    num_rois: Optional[int] = None
    train_rois: Optional[int] = None
    device: str = "cpu"
    threads: int = 2
    reps: int = 5
    warmup: int = 2
    only: Tuple[str, ...] = MEASUREMENTS
    json: Optional[str] = None
    seed: int = 0
    keep_freed_memory: bool = False
    accelerate_reference: bool = False
    opts: Sequence[str] = ()

    def __post_init__(self):
        self.size = tuple(int(v) for v in self.size)
        self.only = tuple(self.only)
        self.opts = list(self.opts)
        if len(self.size) != 2 or min(self.size) < 32:
            size = "x".join(map(str, self.size))
            raise ValueError(f"--size {size}: give HxW with both sides >= 32, e.g. 800x1333.")
        unknown = [name for name in self.only if name not in MEASUREMENTS]
        if unknown or not self.only:
            raise ValueError(
                f"--only {','.join(self.only)!r}: unknown {unknown}; "
                f"choose from {','.join(MEASUREMENTS)}."
            )
        for flag, value, least in (
            ("--reps", self.reps, 1),
            ("--warmup", self.warmup, 0),
            ("--batch", self.batch, 1),
            ("--threads", self.threads, 1),
            ("--num-rois", self.num_rois, 1),
            ("--train-rois", self.train_rois, 1),
        ):
            if value is not None and value < least:
                raise ValueError(f"{flag} {value}: must be >= {least}.")
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"--device {self.device}: CUDA is not available here; use --device cpu."
            )
        for name in ("config_file", "weights", "images", "json"):
            value = getattr(self, name)
            if value and "://" not in value:  # URLs (Detectron2's checkpointer) stay as they are
                setattr(self, name, os.path.abspath(os.path.expanduser(value)))
        if self.config_file and not os.path.isfile(self.config_file):
            raise ValueError(
                f"--config-file {self.config_file!r} does not exist; pass a plugin YAML config "
                "such as configs/fpn_r50.yaml."
            )
        if self.weights and "://" not in self.weights and not os.path.isfile(self.weights):
            raise ValueError(
                f"--weights {self.weights!r} does not exist; pass a Detectron2 .pkl/.pth "
                "checkpoint, or leave it out for random weights."
            )
