"""Checkpoints: atomic saves, resumption past damaged files, clear errors for bad weights files."""

import logging
import os

import pytest
import torch
from torch import nn

from fpn_plugin.engine import FPNCheckpointer, FPNPredictor, load_weights_for_evaluation
from fpn_plugin.engine.checkpoint import is_intact_checkpoint
from fpn_plugin.engine.trainer import FPNTrainer
from tests.conftest import plugin_cfg
from tests.engine.test_training import _cleanup_catalog, data_root, tiny_cfg  # noqa: F401


def _checkpointer(tmp_path):
    torch.manual_seed(0)
    return FPNCheckpointer(nn.Linear(4, 3), save_dir=str(tmp_path))


def test_an_interrupted_save_leaves_the_previous_checkpoint_in_place(tmp_path, monkeypatch):
    ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000009", iteration=9)
    real_save = torch.save

    def killed(obj, f, *args, **kwargs):  # writes part of the file, then the process "dies"
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_final", iteration=19)
    monkeypatch.setattr(torch, "save", real_save)
    assert not (
        tmp_path / "model_final.pth"
    ).exists()  # never a truncated file under the final name
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    ckpt.save("model_final", iteration=19)
    assert is_intact_checkpoint(str(tmp_path / "model_final.pth"))
    assert not [n for n in os.listdir(tmp_path) if "partial" in n]


@pytest.mark.parametrize("damage", ["empty", "truncated", "missing"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage, caplog):
    ckpt = _checkpointer(tmp_path)
    ckpt.save("model_0000004", iteration=4)
    ckpt.save("model_0000009", iteration=9)
    final = tmp_path / "model_final.pth"
    ckpt.save("model_final", iteration=14)
    data = final.read_bytes()
    if damage == "missing":
        final.unlink()
    else:
        final.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="fpn_plugin"):
        assert ckpt.has_checkpoint()
        assert ckpt.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    assert "model_final.pth" in caplog.text and "model_0000009.pth" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fpn_plugin"):
        assert ckpt.resume_or_load("", resume=True)["iteration"] == 9
    assert caplog.text.count("resuming from") == 1  # one warning per resume


def test_bad_weights_files_are_named_with_the_fix(tmp_path):
    ckpt = _checkpointer(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth.*MODEL.WEIGHTS"):
        ckpt.load(str(tmp_path / "nowhere.pth"))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pth.*0 bytes"):
        ckpt.load(str(empty))
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match=r"notes\.pth.*not a readable checkpoint") as e:
        ckpt.load(str(text))
    assert "weights_only" not in str(e.value)


def test_predictor_with_an_empty_weights_file_names_it(tmp_path):
    empty = tmp_path / "model_final.pth"
    empty.write_bytes(b"")
    cfg = plugin_cfg("configs/quickstart.yaml")
    cfg.MODEL.WEIGHTS = str(empty)
    with pytest.raises(ValueError, match="model_final.pth.*0 bytes"):
        FPNPredictor(cfg)


def test_evaluation_needs_weights(tmp_path):
    cfg = plugin_cfg("configs/quickstart.yaml")
    cfg.OUTPUT_DIR = str(tmp_path)
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty.*random"):
        load_weights_for_evaluation(model, cfg, resume=False)
    with pytest.raises(ValueError, match="has no checkpoint to resume from"):
        load_weights_for_evaluation(model, cfg, resume=True)
    FPNCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    assert load_weights_for_evaluation(model, cfg, resume=True) == str(tmp_path / "model_final.pth")


def test_resumed_run_leaves_an_intact_final_checkpoint(data_root, tmp_path):
    """A run killed while writing model_final.pth (left truncated by a non-atomic writer), resumed:
    it resumes from the intact checkpoint of the same iteration and writes a valid
    model_final.pth."""
    cfg = tiny_cfg(data_root, tmp_path, "SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 3)
    trainer = FPNTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = tmp_path / "model_final.pth"
    final.write_bytes(b"")
    resumed = FPNTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6
    resumed.train()
    assert is_intact_checkpoint(str(final))
    assert torch.load(final, map_location="cpu", weights_only=False)["iteration"] == 5


def test_too_few_classes_for_the_data_name_the_key(data_root, tmp_path):
    cfg = tiny_cfg(data_root, tmp_path, "MODEL.ROI_HEADS.NUM_CLASSES", 2)
    with pytest.raises(
        ValueError, match=r"4 categories.*MODEL.ROI_HEADS.NUM_CLASSES = 2.*NUM_CLASSES 4"
    ):
        FPNTrainer(cfg)


def test_train_net_eval_only_without_weights_fails_naming_the_key(data_root, tmp_path):
    import subprocess

    from tests.engine.test_training import TOOL_ENV, _train_net

    for resume in (False, True):
        cmd = _train_net(data_root, tmp_path, resume=resume)
        cmd.insert(cmd.index("--config-file"), "--eval-only")  # a flag: before the KEY VALUE pairs
        proc = subprocess.run(cmd, capture_output=True, text=True, env=TOOL_ENV, timeout=300)
        assert proc.returncode != 0
        assert "MODEL.WEIGHTS is empty" in proc.stderr, proc.stderr[-2000:]
        assert "copypaste" not in proc.stdout  # no AP table of random weights
