"""The ablation (tools/fpn_bench/ablation.py, configs/ablation/, tools/ablation.py): the paper's
variants build the models they claim, and a tiny run writes the table, JSON and chart."""

import json
import math
import os

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes

from fpn_bench import ablation
from fpn_bench.ablation_report import TABLE_AP, TABLE_AR, markdown_table
from tests.conftest import load_tool
from tests.engine.test_training import _cleanup_catalog  # noqa: F401  (autouse: unregisters the tiny datasets afterwards)

tool = load_tool("ablation.py")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ablation_data"))


def _budget(data_root, output_dir, *flags):
    """The shared budget of tools/ablation.py's command line with a tiny budget and ``flags``."""
    return ablation.TrainingBudget.from_flags(vars(_args(data_root, output_dir, *flags)))


def _args(data_root, output_dir, *flags):
    return tool.get_parser().parse_args(
        [
            "--iters",
            "3",
            "--batch",
            "2",
            "--num-train",
            "8",
            "--num-val",
            "4",
            "--image-size",
            "256",
            "--output-dir",
            str(output_dir),
            *flags,
            "--opts",
            "DATALOADER.NUM_WORKERS",
            "0",
            "DATASETS.FPN_SHAPES.ROOT",
            data_root,
        ]
    )


def test_bad_variant_names_give_a_clear_error(capsys):
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['c6'\].*'c4'.*'finest_only'"):
        ablation.parse_variants("c4,c6")
    with pytest.raises(ValueError, match="empty"):
        ablation.parse_variants(" , ")
    with pytest.raises(SystemExit) as e:
        tool.main(["--variants", "fpn,no_pyramid"])
    assert e.value.code == 2
    assert "unknown variant(s) ['no_pyramid']" in capsys.readouterr().err
    # Valid names come back in the paper's row order, "all" gives all six.
    assert ablation.parse_variants(["finest_only,c4", "fpn"]) == ["c4", "fpn", "finest_only"]
    assert ablation.parse_variants("all") == [
        "c4",
        "c5",
        "fpn",
        "no_top_down",
        "no_lateral",
        "finest_only",
    ]


def test_cuda_without_gpu_is_a_clear_error(data_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: --device cuda is valid here")
    with pytest.raises(ValueError, match="--device cuda.*--device cpu"):
        ablation.base_config(_budget(data_root, tmp_path, "--device", "cuda"))


def test_variants_build_the_models_they_claim(data_root, tmp_path):
    base = ablation.base_config(_budget(data_root, tmp_path))
    torch.manual_seed(0)
    cfgs = {name: ablation.variant_config(base, name, str(tmp_path)) for name in ablation.VARIANTS}
    models = {name: build_model(cfg).eval() for name, cfg in cfgs.items()}
    pyramid = ["p2", "p3", "p4", "p5", "p6"]
    expected_levels = {
        "c4": ["p4"],
        "c5": ["p5"],
        "fpn": pyramid,
        "no_top_down": pyramid,
        "no_lateral": pyramid,
        "finest_only": ["p2"],
    }
    for name, model in models.items():
        assert list(model.backbone.output_shape()) == expected_levels[name], name
        anchors = model.proposal_generator.anchor_generator
        pooler = model.roi_heads.box_pooler
        if len(expected_levels[name]) == 1:
            # Single map: all 5 sizes x 3 ratios on it, every RoI pooled from it.
            assert anchors.num_anchors == [15], name
            assert pooler.min_level == pooler.max_level == int(expected_levels[name][0][1]), name
        else:
            assert anchors.num_anchors == [3] * 5, name
            assert (pooler.min_level, pooler.max_level) == (2, 5), name
        # The same total RPN candidate budget for every variant.
        rpn = cfgs[name].MODEL.RPN
        total = rpn.PRE_NMS_TOPK_TEST * len(rpn.IN_FEATURES)
        assert total == cfgs["fpn"].MODEL.RPN.PRE_NMS_TOPK_TEST * 5, name
        # The shared budget is the same for all.
        assert cfgs[name].SOLVER.MAX_ITER == 3 and cfgs[name].SOLVER.IMS_PER_BATCH == 2
        assert cfgs[name].MODEL.FPN.OUT_CHANNELS == base.MODEL.FPN.OUT_CHANNELS
    # C4 baseline ends at res4 (no unused res5); C5 uses all four stages.
    assert "res5" not in dict(models["c4"].backbone.bottom_up.named_children())
    assert "res5" in dict(models["c5"].backbone.bottom_up.named_children())
    # No lateral connections: only the coarsest level keeps its 1x1 conv.
    laterals = {
        n.split(".")[0]
        for n, _ in models["no_lateral"].backbone.named_parameters()
        if "fpn_lateral" in n
    }
    assert laterals == {"fpn_lateral5"}
    assert (
        len(
            {
                n.split(".")[0]
                for n, _ in models["fpn"].backbone.named_parameters()
                if "fpn_lateral" in n
            }
        )
        == 4
    )

    # Top-down pathway: changing C5's lateral changes P2 in the FPN, not in the bottom-up pyramid.
    image = torch.rand(1, 3, 128, 128)
    for name, changes in (("fpn", True), ("no_top_down", False)):
        backbone = models[name].backbone
        with torch.no_grad():
            before = backbone(image)["p2"]
            backbone.fpn_lateral5.weight.mul_(2.0)
            after = backbone(image)["p2"]
        assert (not torch.allclose(before, after)) == changes, name

    # Only the finest level: every RoI, whatever its size, is pooled from P2 (FPN maps large ones
    # higher).
    inputs = [{"image": torch.rand(3, 256, 256) * 255, "height": 256, "width": 256}]
    levels = {}
    for name in ("finest_only", "fpn"):
        model = models[name]
        with torch.no_grad():
            features = model.backbone(model.preprocess_image(inputs).tensor)
            boxes = [Boxes(torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 250.0, 250.0]]))]
            model.roi_heads.box_pooler(
                [features[f] for f in model.roi_heads.box_in_features], boxes
            )
        levels[name] = model.roi_heads.box_pooler.last_levels.tolist()
    assert levels == {"finest_only": [2, 2], "fpn": [2, 4]}

    # Anchors per image, the paper's "# anchors" column, from the map sizes.
    assert ablation.count_anchors(models["c4"], 256) == (256 // 16) ** 2 * 15
    assert ablation.count_anchors(models["finest_only"], 256) == (256 // 4) ** 2 * 15
    assert ablation.count_anchors(models["fpn"], 256) == sum(
        math.ceil(256 / s) ** 2 * 3 for s in (4, 8, 16, 32, 64)
    )


def test_each_variant_is_one_file_of_overrides(data_root, tmp_path):
    files = sorted(os.listdir(ablation.VARIANT_DIR))
    assert files == sorted(f"{name}.yaml" for name in ablation.VARIANTS)
    base = ablation.base_config(_budget(data_root, tmp_path))
    for name, (row, _) in ablation.VARIANTS.items():
        with open(ablation.variant_file(name)) as f:
            text = f.read()
        assert f"row ({row})" in text.splitlines()[0], name  # the paper row it reproduces
        changed = {
            k
            for k, v in _flat(ablation.variant_config(base, name, str(tmp_path))).items()
            if k != "OUTPUT_DIR" and not k.startswith("MODEL.RPN.") and v != _flat(base)[k]
        }
        # Single-scale variants: all five anchor sizes on one level, written out in the file.
        if name in ("c4", "c5", "finest_only"):
            assert "[[32, 64, 128, 256, 512]]" in text, name
            assert "MODEL.ANCHOR_GENERATOR.SIZES" in changed, name
        expected = {
            "fpn": set(),
            "no_top_down": {"MODEL.FPN.TOP_DOWN"},
            "no_lateral": {"MODEL.FPN.LATERAL"},
        }
        if name in expected:
            assert changed == expected[name], name


def _flat(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_missing_variant_file_is_a_clear_error(data_root, tmp_path):
    base = ablation.base_config(_budget(data_root, tmp_path))
    with pytest.raises(
        FileNotFoundError, match=r"variant 'c4'.*nowhere.c4\.yaml.*configs/ablation"
    ):
        ablation.variant_config(base, "c4", str(tmp_path), variant_dir=str(tmp_path / "nowhere"))


def test_markdown_table_keeps_one_decimal_and_nan():
    record = {
        "row": "c",
        "variant": "fpn",
        "label": "FPN (P2-P6)",
        "rpn_features": ["p2", "p3"],
        "roi_features": ["p2"],
        "anchors_per_image": 12288,
        "ar": {k: 12.0 for k in TABLE_AR},
        "ap": {k: float("nan") for k in TABLE_AP},
    }
    lines = markdown_table([record]).strip().splitlines()
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:5] == ["(c)", "FPN (P2-P6) `fpn`", "p2, p3", "p2", "12288"]
    assert cells[5:] == ["12.0"] * len(TABLE_AR) + ["nan"] * len(TABLE_AP)


def test_tiny_run_writes_table_json_and_chart(data_root, tmp_path):
    budget = _budget(data_root, tmp_path)
    result = ablation.run_ablation(budget, "fpn,c5", str(tmp_path), log=lambda *a: None)

    with open(tmp_path / "ablation.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    budget = saved["budget"]
    assert (
        budget["iterations"],
        budget["batch"],
        budget["num_train"],
        budget["num_val"],
        budget["image_size"],
    ) == (3, 2, 8, 4, 256)
    assert [r["variant"] for r in saved["variants"]] == ["c5", "fpn"]  # the paper's order
    for record in saved["variants"]:
        assert set(record["ar"]) == set(ablation.AR_KEYS) and set(record["ap"]) == set(
            ablation.AP_KEYS
        )
        for value in list(record["ar"].values()) + list(record["ap"].values()):
            assert isinstance(value, float) and (math.isnan(value) or 0.0 <= value <= 100.0)
        # Recall can only grow with more proposals per image.
        assert record["ar"]["AR@1000"] >= record["ar"]["AR@100"]
        assert os.path.isfile(os.path.join(record["output_dir"], "model_final.pth"))
        assert os.path.isfile(
            os.path.join(record["output_dir"], "inference", "fpn_shapes_val", "box_proposals.pkl")
        )
    c5, fpn = saved["variants"]
    assert (c5["rpn_features"], fpn["rpn_features"]) == (["p5"], ["p2", "p3", "p4", "p5", "p6"])
    assert c5["anchors_per_image"] < fpn["anchors_per_image"]
    # Both trained with the same schedule: the same learning rate at the last iteration.
    lrs = []
    for record in saved["variants"]:
        with open(os.path.join(record["output_dir"], "metrics.json")) as f:
            last = [json.loads(line) for line in f if '"lr"' in line][-1]
        lrs.append((last["iteration"], last["lr"]))
    assert lrs[0] == lrs[1] and lrs[0][0] == 2

    table = (tmp_path / "ablation.md").read_text().strip().splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:5] == ["row", "variant", "RPN features", "RoI features", "anchors / image"]
    assert header[5:] == list(TABLE_AR) + [f"box {k}" for k in TABLE_AP]
    assert len(table) == 4
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [r[0] for r in rows] == ["(b)", "(c)"]
    assert all(len(r) == len(header) for r in rows)
    assert rows[0][header.index("AR@1000")] == f"{c5['ar']['AR@1000']:.1f}"
    assert rows[1][header.index("box AP50")] == f"{fpn['ap']['AP50']:.1f}"

    png = (tmp_path / "ablation.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


def test_cpu_runs_keep_freed_memory_unless_system_malloc(monkeypatch):
    calls = []
    from fpn_plugin.accel import cpu_allocator

    monkeypatch.setattr(
        cpu_allocator,
        "keep_freed_cpu_memory",
        lambda: calls.append("kept") or "memory allocator: kept",
    )
    monkeypatch.setattr(tool, "run_ablation", lambda budget, *args: calls.append(budget.device))
    assert tool.main(["--variants", "fpn"]) == 0
    assert tool.main(["--variants", "fpn", "--system-malloc"]) == 0
    assert tool.main(["--variants", "fpn", "--device", "cuda"]) == 0
    assert calls == ["kept", "cpu", "cpu", "cuda"]
