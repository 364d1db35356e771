"""The main job end to end: training with Detectron2's loop on the embedded data, evaluation,
resume, failures."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

from fpn_plugin import get_plugin_cfg
from fpn_plugin.data import SHAPES_TRAIN, SHAPES_VAL, register_shapes_datasets_from_config
from fpn_plugin.engine.trainer import FPNTrainer
from tests.conftest import REPO

TINY = [
    "MODEL.DEVICE",
    "cpu",
    "DATASETS.FPN_SHAPES.NUM_TRAIN",
    "8",
    "DATASETS.FPN_SHAPES.NUM_VAL",
    "4",
    "DATASETS.FPN_SHAPES.IMAGE_SIZE",
    "256",
    "INPUT.MIN_SIZE_TRAIN",
    "(256,)",
    "INPUT.MAX_SIZE_TRAIN",
    "256",
    "INPUT.MIN_SIZE_TEST",
    "256",
    "INPUT.MAX_SIZE_TEST",
    "256",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "5",
    "DATALOADER.NUM_WORKERS",
    "0",
    "TEST.EVAL_PERIOD",
    "0",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fpn_data"))


def tiny_cfg(data_root, output_dir, *opts, config="quickstart.yaml"):
    cfg = get_plugin_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", config))
    cfg.merge_from_list(
        TINY
        + ["DATASETS.FPN_SHAPES.ROOT", data_root, "OUTPUT_DIR", str(output_dir)]
        + [str(o) for o in opts]
    )
    register_shapes_datasets_from_config(cfg)
    return cfg


def train_tiny(data_root, output_dir, max_iter, *opts, config="quickstart.yaml"):
    """FPNTrainer on ``tiny_cfg(data_root, output_dir, *opts, config=config)``, trained from scratch
    for ``max_iter`` iterations and checkpointed only at the end: (cfg, trainer, copies of the
    backbone's parameters before the first step, for the tests of what training changed)."""
    opts = ("SOLVER.MAX_ITER", max_iter, "SOLVER.CHECKPOINT_PERIOD", 1000, *opts)
    cfg = tiny_cfg(data_root, output_dir, *opts, config=config)
    trainer = FPNTrainer(cfg)
    initial = {n: p.detach().clone() for n, p in trainer.model.backbone.named_parameters()}
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, trainer, initial


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(autouse=True, scope="module")
def _cleanup_catalog():
    yield
    for name in (SHAPES_TRAIN, SHAPES_VAL):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_short_training_then_coco_evaluation(data_root, tmp_path):
    cfg = tiny_cfg(data_root, tmp_path, "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 100)
    trainer = FPNTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    last = [m for m in read_metrics(tmp_path) if "total_loss" in m][-1]
    assert last["iteration"] == 3
    # The fraction of RoIs pooled from each level is in metrics.json, and sums to one.
    levels = {k: v for k, v in last.items() if k.startswith("roi_levels/")}
    assert set(levels) == {"roi_levels/p2", "roi_levels/p3", "roi_levels/p4", "roi_levels/p5"}
    assert abs(sum(levels.values()) - 1) < 1e-5
    results = FPNTrainer.test(cfg, trainer.model)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert os.path.isfile(os.path.join(tmp_path, "model_final.pth"))


def test_loss_goes_down(data_root, tmp_path):
    cfg = tiny_cfg(
        data_root,
        tmp_path,
        "SOLVER.MAX_ITER",
        60,
        "SOLVER.BASE_LR",
        0.01,
        "SOLVER.CHECKPOINT_PERIOD",
        1000,
    )
    trainer = FPNTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [m["total_loss"] for m in read_metrics(tmp_path) if "total_loss" in m]
    assert len(losses) == 3  # logged every 20 iterations
    assert losses[-1] < 0.8 * losses[0], losses


def test_non_finite_loss_stops_with_advice_and_keeps_checkpoint(data_root, tmp_path):
    class NaNAfter(torch.nn.Module):
        """Wraps a detector; from the 4th call on, its losses are NaN."""

        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0

        def forward(self, batched_inputs):
            self.calls += 1
            losses = self.model(batched_inputs)
            if self.calls >= 4:
                losses = {k: v * float("nan") for k, v in losses.items()}
            return losses

    class Trainer(FPNTrainer):
        @classmethod
        def build_model(cls, cfg):
            return NaNAfter(super().build_model(cfg))

    cfg = tiny_cfg(data_root, tmp_path, "SOLVER.MAX_ITER", 10, "SOLVER.CHECKPOINT_PERIOD", 2)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError) as e:
        trainer.train()
    message = str(e.value)
    assert (
        "NaN" in message
        and "intact" in message
        and "model_0000001.pth" in message
        and "--resume" in message
    )
    checkpoint = torch.load(
        os.path.join(tmp_path, "model_0000001.pth"), map_location="cpu", weights_only=False
    )
    assert checkpoint["iteration"] == 1
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )
    with open(os.path.join(tmp_path, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000001.pth"


#: The environment of the tools run as subprocesses: this checkout's package first.
TOOL_ENV = dict(os.environ, PYTHONPATH=REPO)


def _train_net(data_root, output_dir, *opts, resume=False):
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "train_net.py"),
        "--config-file",
        os.path.join(REPO, "configs", "quickstart.yaml"),
    ]
    if resume:
        cmd.append("--resume")
    cmd += (
        TINY
        + ["DATASETS.FPN_SHAPES.ROOT", data_root, "OUTPUT_DIR", str(output_dir)]
        + [str(o) for o in opts]
    )
    return cmd


def test_resume_after_kill_continues_from_last_checkpoint(data_root, tmp_path):
    opts = ["SOLVER.MAX_ITER", 14, "SOLVER.CHECKPOINT_PERIOD", 4, "SOLVER.STEPS", "(10,)"]
    killed, full = tmp_path / "killed", tmp_path / "full"
    proc = subprocess.Popen(
        _train_net(data_root, killed, *opts),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
        env=TOOL_ENV,
    )
    deadline = time.time() + 240
    tag = killed / "last_checkpoint"  # written once a checkpoint file is complete
    while (
        not (tag.exists() and tag.read_text().strip() == "model_0000007.pth")
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (killed / "model_0000007.pth").exists()
    assert not (killed / "model_final.pth").exists(), "the run finished before it could be killed"
    before = read_metrics(killed) if (killed / "metrics.json").exists() else []

    run = dict(check=True, capture_output=True, cwd=REPO, env=TOOL_ENV, timeout=300)
    subprocess.run(_train_net(data_root, killed, *opts, resume=True), **run)
    subprocess.run(_train_net(data_root, full, *opts), **run)

    with open(killed / "log.txt") as f:
        log = f.read()
    start = int(log.split("Starting training from iteration ")[-1].split()[0])
    # It resumed from the last complete checkpoint (a file being written at the kill is not used).
    assert start in (8, 12)
    assert f"Loading from {killed}/model_{start - 1:07d}.pth" in log
    final = torch.load(killed / "model_final.pth", map_location="cpu", weights_only=False)
    reference = torch.load(full / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == reference["iteration"] == 13
    # The optimizer and the LR schedule continued where they were.
    assert final["trainer"]["hooks"]["LRScheduler"] == reference["trainer"]["hooks"]["LRScheduler"]
    assert final["trainer"]["_trainer"]["optimizer"]["state"], (
        "optimizer state (momentum) was not saved"
    )
    resumed = read_metrics(killed)
    assert resumed[: len(before)] == before  # nothing from before the kill was lost
    full_lr = {m["iteration"]: m["lr"] for m in read_metrics(full) if "lr" in m}
    for m in resumed:
        if "lr" in m:
            assert m["lr"] == pytest.approx(full_lr[m["iteration"]])


def test_two_process_cpu_training_agrees_on_weights(data_root, tmp_path):
    script = tmp_path / "two_procs.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, torch
        from detectron2.engine import launch
        from detectron2.utils import comm
        from tests.engine.test_training import tiny_cfg
        from fpn_plugin.engine.trainer import FPNTrainer

        def main(out):
            cfg = tiny_cfg(
                {data_root!r}, out, "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 100
            )
            trainer = FPNTrainer(cfg)
            trainer.resume_or_load(resume=False)
            trainer.train()
            model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
            torch.save(
                {{k: v.detach() for k, v in model.named_parameters()}},
                os.path.join(out, f"rank{{comm.get_rank()}}.pth"),
            )
            torch.save(comm.get_world_size(), os.path.join(out, f"world{{comm.get_rank()}}.pth"))

        if __name__ == "__main__":
            launch(main, 2, dist_url="auto", args=({str(tmp_path)!r},))
    """)
    )
    subprocess.run(
        [sys.executable, str(script)],
        check=True,
        capture_output=True,
        cwd=REPO,
        env=TOOL_ENV,
        timeout=300,
    )
    a = torch.load(tmp_path / "rank0.pth")
    b = torch.load(tmp_path / "rank1.pth")
    assert torch.load(tmp_path / "world0.pth") == torch.load(tmp_path / "world1.pth") == 2
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        assert torch.equal(a[k], b[k]), k
    initial = FPNTrainer.build_model(tiny_cfg(data_root, tmp_path))
    assert any(not torch.equal(a[k], v) for k, v in initial.named_parameters())  # it did train
