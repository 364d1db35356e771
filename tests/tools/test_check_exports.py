"""tools/check_exports.py: its arguments, its one-line errors and its table (no export is run)."""

import math
import os

import pytest

from tests.conftest import REPO, load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("check_exports.py")


def test_defaults_check_every_quickstart_detector_as_pt2_and_onnx(tool):
    args = tool.get_parser().parse_args(["--images", "a.jpg", "b.jpg"])
    assert args.images == ["a.jpg", "b.jpg"] and args.formats == ["pt2", "onnx"]
    assert args.configs == list(tool.CONFIGS) and "quickstart_bifpn" in args.configs
    for name in tool.CONFIGS:
        assert os.path.isfile(os.path.join(REPO, "configs", f"{name}.yaml")), name
    args = tool.get_parser().parse_args(
        ["--images", "a.jpg", "--formats", "aoti", "--configs", "quickstart_mask"]
    )
    assert args.formats == ["aoti"] and args.configs == ["quickstart_mask"]
    with pytest.raises(SystemExit):
        tool.get_parser().parse_args(["--images", "a.jpg", "--formats", "torchscript"])


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--images", "missing.jpg"], "image 'missing.jpg' does not exist (--images)"),
        (["--images", "{empty}"], "empty.jpg' cannot be read"),
        (["--images", "{photo}", "--configs", "no_such_config"], "config 'no_such_config': no "),
    ],
)
def test_bad_input_is_a_one_line_error(tool, tmp_path, capsys, argv, match):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    paths = {"photo": str(tmp_path / "photo.png"), "empty": str(tmp_path / "empty.jpg")}
    argv = [a.format(**paths) for a in argv]
    assert tool.main(argv + ["--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("check_exports.py: error: ") and match in err[0], err
    assert not (tmp_path / "out").exists()  # stopped before building anything


def test_table_has_one_row_per_config_artefact_and_photo(tool):
    rows = [
        {
            "config": "quickstart_mask",
            "artefact": "onnx",
            "photo": "a.jpg (384×512)",
            "num_eager": 100,
            "num_exported": 100,
            "matched": 100,
            "max_box_diff": 1.52587890625e-05,
            "max_score_diff": 0.0,
            "min_mask_iou": 0.998765,
            "panoptic_agreement": 0.999991,
            "agrees": True,
            "export_seconds": 48.04,
        },
        {
            "config": "quickstart_timm",
            "artefact": "onnx",
            "photo": "b.jpg (512×385)",
            "num_eager": 100,
            "num_exported": 100,
            "matched": 98,
            "ties_at_cut": 2,
            "max_box_diff": 0.0,
            "max_score_diff": math.nan,
            "agrees": False,
            "export_seconds": 12.0,
        },
        {"config": "quickstart_bifpn", "artefact": "pt2", "photo": "a.jpg (384×512)", "error": "x"},
    ]
    lines = tool.format_table(rows).splitlines()
    assert len(lines) == 5 and lines[0].startswith("| config | artefact | photo (H×W) | eager |")
    assert lines[1].count("|") == lines[0].count("|") == len(tool.COLUMNS) + 1
    assert lines[2] == (
        "| quickstart_mask | onnx | a.jpg (384×512) | 100 | 100 | 100 | 1.5e-05 | 0 | 0.9988 | - "
        "| 0.99999 | yes | 48.0 |"
    )
    assert "| 98 (+2 tied at the cut) | 0 | - | - | - | - | no | 12.0 |" in lines[3]
    assert lines[4].endswith("| a.jpg (384×512) | - | - | - | - | - | - | - | - | error | - |")


def test_scores_must_meet_their_own_tolerance(tool):
    """compare_detections matches boxes and scores to one tolerance (1e-3); the scores' 1e-4 is
    checked on its result."""
    result = {"ok": 1.0, "max_score_diff": 2e-4}
    assert not tool.agrees(result, 1e-4) and tool.agrees(result, 1e-3)
    assert tool.agrees({"ok": 1.0, "max_score_diff": math.nan}, 1e-4)
    assert not tool.agrees({"ok": 0.0, "max_score_diff": 0.0}, 1e-4)
