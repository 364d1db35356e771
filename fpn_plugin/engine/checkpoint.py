"""Checkpoints that survive an interrupted save, and weights files checked before they are loaded.

Detectron2's ``DetectionCheckpointer`` writes ``model_final.pth`` (and ``last_checkpoint``, the
name of the newest one) in place: a run killed while writing leaves a truncated file that
``--resume`` then loads, or a zero-byte ``model_final.pth`` behind a run that reports success.
:class:`FPNCheckpointer` writes each file under a temporary name and renames it into place, so a
checkpoint file is either complete or absent; and ``--resume`` skips a ``last_checkpoint`` that
names a missing or damaged file, falling back to the newest intact checkpoint with a warning.
"""

import logging
import os
import zipfile
from typing import List, Optional

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["FPNCheckpointer", "is_intact_checkpoint", "load_weights_for_evaluation"]

logger = logging.getLogger(__name__)

_LAST = "last_checkpoint"


def is_intact_checkpoint(path: str) -> bool:
    """Whether ``path`` is a complete ``torch.save`` file: a zip archive, whose directory is written
    last, so that a truncated file has none."""
    return os.path.isfile(path) and os.path.getsize(path) > 0 and zipfile.is_zipfile(path)


class FPNCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, resumption that skips damaged checkpoints, and
    errors that name the weights file and the fix. Same arguments and use."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        temporary = f".{name}.partial"
        self._tagging = False  # super().save tags the temporary name; the final one is tagged below
        try:
            super().save(temporary, **kwargs)
        finally:
            self._tagging = True
        os.replace(
            os.path.join(self.save_dir, f"{temporary}.pth"),
            os.path.join(self.save_dir, f"{name}.pth"),
        )
        self.tag_last_checkpoint(f"{name}.pth")

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not getattr(self, "_tagging", True):
            return
        path = os.path.join(self.save_dir, _LAST)
        with open(path + ".partial", "w") as f:
            f.write(last_filename_basename)
        os.replace(path + ".partial", path)

    def _intact_checkpoints(self) -> List[str]:
        """Complete ``*.pth`` checkpoints of ``save_dir``, newest first."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        paths = [
            os.path.join(self.save_dir, n)
            for n in os.listdir(self.save_dir)
            if n.endswith(".pth") and not n.startswith(".")
        ]
        return sorted(
            (p for p in paths if is_intact_checkpoint(p)), key=os.path.getmtime, reverse=True
        )

    def get_checkpoint_file(self) -> str:
        tagged = super().get_checkpoint_file()
        if tagged and is_intact_checkpoint(tagged):
            return tagged
        intact = self._intact_checkpoints()
        fallback = intact[0] if intact else ""
        logger.warning(
            f"{os.path.join(self.save_dir, _LAST)} names {tagged or 'nothing'}, which is missing "
            "or incomplete (an interrupted save?); resuming from "
            f"{fallback or 'scratch: no intact checkpoint is left'} instead."
        )
        return fallback

    def has_checkpoint(self) -> bool:
        # Without get_checkpoint_file: callers ask this, then for the file, and its fallback
        # warning should be logged once.
        if not super().has_checkpoint():
            return False
        return is_intact_checkpoint(super().get_checkpoint_file()) or bool(
            self._intact_checkpoints()
        )

    def load(self, path: str, checkpointables: Optional[List[str]] = None):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"Weights file {path!r} (MODEL.WEIGHTS) does not exist; set MODEL.WEIGHTS to a "
                "checkpoint written by training (e.g. output/quickstart/model_final.pth) or a "
                "Detectron2 .pkl."
            )
        try:
            return super().load(path, checkpointables=checkpointables)
        finally:
            self._parsed_url_during_load = None  # Detectron2 resets it only when the load succeeds

    def _load_file(self, filename: str):
        if os.path.isfile(filename) and os.path.getsize(filename) == 0:
            raise ValueError(
                f"Weights file {filename!r} is empty (0 bytes): probably a save that was "
                "interrupted. Use another checkpoint of that run (model_XXXXXXX.pth), or train "
                "again with --resume."
            )
        try:
            return super()._load_file(filename)
        # torch.load's error for a file that is no checkpoint varies with its bytes.
        except Exception as e:
            raise ValueError(
                f"Weights file {filename!r} is not a readable checkpoint ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}); set MODEL.WEIGHTS to a .pth written by training "
                "or a Detectron2 model-zoo .pkl."
            ) from e


def load_weights_for_evaluation(model, cfg, resume: bool) -> str:
    """Load the weights an evaluation run evaluates into ``model``: with ``resume``, the newest
    intact checkpoint of ``cfg.OUTPUT_DIR`` if there is one, else ``cfg.MODEL.WEIGHTS``. Returns the
    path; ``ValueError`` when there is nothing to load (it would evaluate random weights)."""
    checkpointer = FPNCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    if resume and checkpointer.has_checkpoint():
        path = checkpointer.get_checkpoint_file()
    elif cfg.MODEL.WEIGHTS:
        path = cfg.MODEL.WEIGHTS
    else:
        where = (
            f"; OUTPUT_DIR {cfg.OUTPUT_DIR!r} has no checkpoint to resume from" if resume else ""
        )
        raise ValueError(
            f"--eval-only needs trained weights, but MODEL.WEIGHTS is empty{where}: it would "
            "evaluate random weights. Set MODEL.WEIGHTS to a checkpoint (e.g. "
            "output/quickstart/model_final.pth), or use --resume with the OUTPUT_DIR of a "
            "training run."
        )
    checkpointer.load(path, checkpointables=[])
    return path
