"""The neck comparison (tools/fpn_bench/necks.py, tools/compare_necks.py): the four necks on one
detector, their costs and the table."""

import json
import os

import pytest

from detectron2.modeling import build_model

from fpn_bench.necks import NECKS, markdown_table, neck_config
from fpn_plugin.engine.defaults import load_plugin_config
from fpn_plugin.modeling import BiFPN, FPNNeck, PathAggregationNeck
from tests.conftest import REPO, load_tool
from tests.engine.test_training import _cleanup_catalog  # noqa: F401  (fixture)

tool = load_tool("compare_necks.py")


def test_each_neck_changes_only_the_neck():
    base = load_plugin_config(
        os.path.join(REPO, "configs", "quickstart_retinanet.yaml"), ["MODEL.DEVICE", "cpu"]
    )
    kinds = {
        "fpn": FPNNeck,
        "pafpn": PathAggregationNeck,
        "bifpn_style": PathAggregationNeck,
        "bifpn": BiFPN,
    }
    assert list(NECKS) == list(kinds)
    heads = set()
    for name, kind in kinds.items():
        cfg = neck_config(base, name)
        model = build_model(cfg)
        assert type(model.backbone) is kind, name
        assert list(model.backbone.output_shape()) == ["p3", "p4", "p5", "p6", "p7"], name
        changed = {k for k in NECKS[name][1][::2]}
        assert changed <= {"MODEL.BACKBONE.NAME", "MODEL.FPN.FUSE_TYPE"}
        heads.add(sum(p.numel() for p in model.head.parameters()))
    assert len(heads) == 1  # the same head on every neck
    with pytest.raises(ValueError, match="unknown neck"):
        neck_config(base, "nas_fpn")


def test_main_measures_trains_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "out"
    # A tiny shared budget: 2 iterations of 2 images, 2 validation images of 128 px.
    budget = ["--iters", "2", "--batch", "2", "--num-train", "4", "--num-val", "2"]
    records = tool.main(
        ["--necks", "fpn,bifpn", "--image-size", "128", "--reps", "1", "--warmup", "0", "--train"]
        + budget
        + ["--output-dir", str(out), "--system-malloc", "--opts", "DATALOADER.NUM_WORKERS", "0"]
        + ["DATASETS.FPN_SHAPES.ROOT", str(tmp_path / "data")]
    )
    assert [r["neck"] for r in records] == ["fpn", "bifpn"]
    for r in records:
        assert 0 < r["neck_params"] < r["params"] and 0 < r["neck_gflops"] < r["gflops"], r
        assert r["backbone_ms"] > 0 and r["detector_ms"] > 0, r
        assert set(r["ap"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}, r
        assert (out / r["neck"] / "model_final.pth").is_file()  # each neck trained on its own
    fpn, bifpn = records
    # d = 64: the full BiFPN (separable convs) has fewer neck parameters than the FPN's 3x3 convs.
    assert bifpn["neck_params"] < fpn["neck_params"]
    header = (out / "necks.md").read_text().split("\n")[0]
    assert "| neck " in header and "AP50" in header
    assert "| BiFPN, full" in (out / "necks.md").read_text()
    saved = json.loads((out / "necks.json").read_text())
    assert saved["necks"][1]["neck"] == "bifpn" and saved["settings"]["iters"] == 2
    assert "AP" not in markdown_table([{k: v for k, v in r.items() if k != "ap"} for r in records])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        tool.main(["--necks", "nas_fpn", "--output-dir", str(out)])
    assert (
        e.value.code == 2
        and "--necks: unknown or no neck(s) ['nas_fpn']" in capsys.readouterr().err
    )
