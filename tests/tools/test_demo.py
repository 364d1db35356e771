"""tools/demo.py run as a subprocess, end to end: flags, outputs, JSON records, exit codes.

The demo runs a tiny random-weight detector (configs/quickstart.yaml, one block per stage) whose
weights the test saves first, so that the tool and an in-process ``DefaultPredictor`` use the same
model; with a score threshold of 0 a random model still detects something.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

import fpn_plugin  # noqa: F401  (registers the components)
from fpn_plugin.config import get_plugin_cfg
from tests.conftest import REPO

DEMO = os.path.join(REPO, "tools", "demo.py")

# Colours the demo must use for --color-by-level (P2 red, P3 orange, P4 green, P5 blue).
EXPECTED_HUES = {2: "red", 3: "orange", 4: "green", 5: "blue"}

TINY_OPTS = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.RESNETS.BLOCKS_PER_STAGE",
    "[1,1,1,1]",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "TEST.DETECTIONS_PER_IMAGE",
    "5",
    "INPUT.MIN_SIZE_TEST",
    "384",
    "INPUT.MAX_SIZE_TEST",
    "512",
]


def _run(args, env_extra=None, timeout=180):
    # PYTHONPATH: the tool imports this checkout's fpn_plugin, not an installed one.
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=REPO,
    )
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _check_ok(proc):
    assert proc.returncode == 0, (
        f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with two small noise images: 256x320 grayscale PNG and 240x300 RGB JPEG."""
    folder = tmp_path_factory.mktemp("demo_inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (256, 320), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (240, 300, 3), dtype=np.uint8), "RGB").save(
        folder / "rgb.jpg", quality=95
    )
    (folder / "notes.txt").write_text("not an image")  # ignored when the folder is the input
    return folder


def _tiny_cfg(opts):
    cfg = get_plugin_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "quickstart.yaml"))
    cfg.merge_from_list(opts)
    # No metadata needed in-process; keeps the catalogs of other tests untouched.
    cfg.DATASETS.TEST = ()
    return cfg


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, images):
    """Config opts (MODEL.WEIGHTS included) of a tiny random-weight detector saved for the tests.

    Its box regressions are scaled down, so that detections are (nearly) anchors: boxes spread
    over the image, of the anchor sizes. The seed is the first whose detections on gray.png come
    from two pyramid levels or more, so that --color-by-level has several colours to draw.
    """
    folder = tmp_path_factory.mktemp("tiny_weights")
    weights = str(folder / "tiny.pth")
    opts = TINY_OPTS + ["MODEL.WEIGHTS", weights]
    image = read_image(str(images / "gray.png"), format="BGR")
    for seed in range(64):
        torch.manual_seed(seed)
        model = build_model(_tiny_cfg(TINY_OPTS))
        with torch.no_grad():
            model.proposal_generator.rpn_head.anchor_deltas.weight.mul_(1e-3)
            model.roi_heads.box_predictor.bbox_pred.weight.mul_(1e-3)
        DetectionCheckpointer(model, save_dir=str(folder)).save("tiny")
        levels = DefaultPredictor(_tiny_cfg(opts))(image)["instances"].pred_levels
        if len(set(levels.tolist())) >= 2:
            break
    return opts


def _demo(args, opts, tmp_path, env_extra=None):
    data_root = tmp_path / "fpn_data"
    env = {"FPN_PLUGIN_DATA": str(data_root)}
    env.update(env_extra or {})
    proc = _run([DEMO, "--config-file", "configs/quickstart.yaml", *args, "--opts", *opts], env)
    assert not data_root.exists(), "the demo must not generate the shapes dataset"
    return proc


def _predict(opts, path):
    """DefaultPredictor's detections (boxes, scores, classes, levels) for the image at ``path``."""
    image = read_image(str(path), format="BGR")
    return DefaultPredictor(_tiny_cfg(opts))(image)["instances"].to("cpu")


def _edge_pixels(box, width, height):
    """(rows, cols) of the pixels on the middle halves of the four edges of an XYXY box."""
    x0, y0, x1, y1 = box
    xs = np.arange(int(np.ceil(x0 + (x1 - x0) / 4)), int(np.floor(x1 - (x1 - x0) / 4)) + 1)
    ys = np.arange(int(np.ceil(y0 + (y1 - y0) / 4)), int(np.floor(y1 - (y1 - y0) / 4)) + 1)
    row = lambda y: min(int(np.floor(y)), height - 1)  # noqa: E731  the pixel the edge line crosses
    col = lambda x: min(int(np.floor(x)), width - 1)  # noqa: E731
    rows = np.concatenate([np.full(len(xs), row(y0)), np.full(len(xs), row(y1)), ys, ys])
    cols = np.concatenate([xs, xs, np.full(len(ys), col(x0)), np.full(len(ys), col(x1))])
    keep = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    return rows[keep], cols[keep]


def _untouched_mask(boxes, width, height, legend_panel=None):
    """Pixels that no box edge (+-4 px), no label (at any corner a label may go) and no legend
    touch."""
    free = np.ones((height, width), dtype=bool)

    def clear(xa, ya, xb, yb):
        xa, ya = max(int(np.floor(xa)), 0), max(int(np.floor(ya)), 0)
        xb, yb = min(int(np.ceil(xb)), width), min(int(np.ceil(yb)), height)
        if xa < xb and ya < yb:
            free[ya:yb, xa:xb] = False

    for x0, y0, x1, y1 in boxes:
        clear(x0 - 4, y0 - 4, x1 + 4, y0 + 4)
        clear(x0 - 4, y1 - 4, x1 + 4, y1 + 4)
        clear(x0 - 4, y0 - 4, x0 + 4, y1 + 4)
        clear(x1 - 4, y0 - 4, x1 + 4, y1 + 4)
        for tx, ty in ((x0, y0), (x0, y1), (x1, y0)):  # label anchors: text goes right and down
            clear(tx - 4, ty - 4, tx + 125, ty + 22)  # "triangle 100%" at <= 10 pt
    if legend_panel is not None:
        clear(*legend_panel)
    return free


def _rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int32)


def test_demo_on_folder_matches_predictor(tmp_path, tiny_weights, images):
    out_dir = tmp_path / "out"
    proc = _demo(
        ["--input", str(images), "--output", str(out_dir), "--confidence-threshold", "0.0"],
        tiny_weights,
        tmp_path,
    )
    _check_ok(proc)
    log = proc.stdout + proc.stderr
    # On CPU the demo keeps freed memory (fpn_plugin/accel/cpu_allocator.py).
    assert "memory allocator:" in log
    for name, out_name in (("gray.png", "gray.png"), ("rgb.jpg", "rgb.jpg")):
        assert name in log and "detected 5 instances" in log  # progress is logged
        out_path = out_dir / out_name
        assert out_path.is_file(), f"no output for {name}: {sorted(os.listdir(out_dir))}"
        with open(str(out_path) + ".json") as f:
            record = json.load(f)
        source = _rgb(images / name)
        drawn = _rgb(out_path)
        height, width = source.shape[:2]
        assert drawn.shape == source.shape
        assert record["image_size"] == [height, width]
        assert record["num_instances"] == len(record["boxes"]) == len(record["scores"]) == 5
        # fpn_shapes_val's metadata.
        assert set(record["class_names"]) <= {"circle", "square", "triangle", "cross"}
        assert all(2 <= lv <= 5 for lv in record["pred_levels"])

        # The JSON holds what DefaultPredictor gives for the same image, config and weights.
        expected = _predict(tiny_weights, images / name)
        np.testing.assert_allclose(
            record["boxes"], expected.pred_boxes.tensor.numpy(), rtol=1e-4, atol=1e-2
        )
        np.testing.assert_allclose(record["scores"], expected.scores.numpy(), rtol=1e-4, atol=1e-4)
        assert record["classes"] == expected.pred_classes.tolist()
        assert record["pred_levels"] == expected.pred_levels.tolist()

        # The boxes are drawn where the JSON says: their edges changed, pixels far from every box,
        # label and legend did not (exactly, for the PNG; within JPEG noise for the JPEG).
        boxes = np.asarray(record["boxes"])
        for box in boxes[:2]:  # the two top-scoring boxes
            rows, cols = _edge_pixels(box, width, height)
            assert len(rows) > 10
            change = np.abs(drawn[rows, cols] - source[rows, cols]).mean()
            assert change > 15, (
                f"{name}: the edges of box {box} did not change (mean |diff| {change:.1f})"
            )
        free = _untouched_mask(boxes, width, height)
        assert free.sum() > 0.2 * free.size
        diff = np.abs(drawn - source).max(axis=2)[free]
        if out_name.endswith(".png"):
            assert (diff == 0).mean() > 0.999, "pixels away from the drawn boxes changed"
        else:
            assert np.median(diff) <= 12
        # Nothing but the drawing changed: the image itself is not shifted or scaled.
        assert np.abs(drawn - source).mean() < 40
    assert not (out_dir / "notes.png").exists()


def _hue(rgb):
    r, g, b = (float(v) for v in rgb)
    if r > 180 and g < 80 and b < 80:
        return "red"
    if r > 200 and 100 <= g <= 190 and b < 70:
        return "orange"
    if g > 130 and r < 90 and b < 90:
        return "green"
    if b > 180 and r < 90 and g < 140:
        return "blue"
    return f"other{tuple(int(v) for v in rgb)}"


def test_demo_color_by_level(tmp_path, tiny_weights, images):
    out = tmp_path / "levels" / "gray_levels.png"  # an output file name, for one input
    proc = _demo(
        [
            "--input",
            str(images / "gray.png"),
            "--output",
            str(out),
            "--confidence-threshold",
            "0.0",
            "--color-by-level",
            "--system-malloc",
        ],
        tiny_weights,
        tmp_path,
    )
    _check_ok(proc)
    assert "memory allocator:" not in proc.stdout + proc.stderr  # --system-malloc: glibc's defaults
    with open(str(out) + ".json") as f:
        record = json.load(f)
    levels = record["pred_levels"]
    assert len(levels) == record["num_instances"] > 0
    assert all(isinstance(lv, int) and 2 <= lv <= 5 for lv in levels)

    drawn, source = _rgb(out), _rgb(images / "gray.png")
    height, width = source.shape[:2]
    legend = record["legend"]
    assert [e["level"] for e in legend["entries"]] == [2, 3, 4, 5]  # the pooler's levels, P2-P5
    assert [e["name"] for e in legend["entries"]] == ["P2", "P3", "P4", "P5"]
    for entry in legend["entries"]:
        assert _hue(entry["color"]) == EXPECTED_HUES[entry["level"]], entry
        x0, y0, x1, y1 = entry["swatch"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height and x1 - x0 >= 6
        # The swatch is filled with the level's colour (its inside, off the anti-aliased border).
        inside = drawn[int(y0) + 1 : int(y1) - 1, int(x0) + 1 : int(x1) - 1].reshape(-1, 3)
        assert np.abs(inside - np.asarray(entry["color"])).max() <= 2, (entry, inside[:3])
    colors = {e["level"]: np.asarray(e["color"], dtype=float) for e in legend["entries"]}
    # The swatches differ: a user can tell the levels apart.
    assert min(np.abs(colors[a] - colors[b]).sum() for a in colors for b in colors if a < b) > 100

    # Each box edge is its level's colour, blended half and half over the image (Visualizer's
    # box alpha is 0.5): (drawn - 0.5 * source) / 0.5 recovers the colour.
    assert len(set(levels)) >= 2, f"the tiny model's detections all come from one level: {levels}"
    x_panel, y_panel = legend["panel"][2], legend["panel"][3]
    checked = set()
    for box, level in zip(record["boxes"], levels):
        rows, cols = _edge_pixels(box, width, height)
        off_legend = (cols >= x_panel + 2) | (rows >= y_panel + 2)
        rows, cols = rows[off_legend], cols[off_legend]
        if len(rows) < 10:
            continue
        recovered = np.median((drawn[rows, cols] - 0.5 * source[rows, cols]) / 0.5, axis=0)
        assert np.abs(recovered - colors[level]).max() < 40, (box, level, recovered)
        checked.add(level)
    assert checked == set(levels)


def test_demo_missing_input_fails_naming_it(tmp_path, tiny_weights):
    missing = tmp_path / "no_such_image.jpg"
    proc = _demo(
        ["--input", str(missing), "--output", str(tmp_path / "out")], tiny_weights, tmp_path
    )
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# A stand-in for OpenCV's video API, so that --video-input can be tested without OpenCV:
# "videos" are .npy arrays (frames, H, W, 3) of BGR uint8 frames.
def test_demo_video(tmp_path, tiny_weights):
    import cv2

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 128, 160, 3), dtype=np.uint8)
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (160, 128), True)
    for frame in frames:
        writer.write(frame)
    writer.release()
    out = tmp_path / "clip_out.mp4"
    args = [
        "--video-input",
        str(video),
        "--output",
        str(out),
        "--confidence-threshold",
        "0.0",
        "--color-by-level",
    ]
    proc = _demo(args, tiny_weights, tmp_path)
    _check_ok(proc)
    # One drawn frame per input frame, and the detections of each.
    capture = cv2.VideoCapture(str(out))
    written = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        written.append(frame)
    assert len(written) == len(frames) and written[0].shape == (128, 160, 3)
    with open(str(out) + ".json") as f:
        record = json.load(f)
    assert [fr["frame"] for fr in record["frames"]] == [0, 1, 2]
    for detections in record["frames"]:
        assert detections["num_instances"] == len(detections["boxes"]) > 0
        assert all(2 <= lv <= 5 for lv in detections["pred_levels"])
    assert [e["level"] for e in record["legend"]["entries"]] == [2, 3, 4, 5]


def test_demo_confidence_threshold_outside_0_1_is_a_usage_error(tmp_path, images):
    # Before the model is built: no weights needed, nothing written.
    for value in ("1.5", "-0.1"):
        proc = _run(
            [
                DEMO,
                "--input",
                str(images / "gray.png"),
                "--output",
                str(tmp_path / "out"),
                "--confidence-threshold",
                value,
            ]
        )
        assert proc.returncode == 2, (value, proc.returncode, proc.stderr)  # argparse's usage error
        assert "--confidence-threshold" in proc.stderr and "[0, 1]" in proc.stderr, proc.stderr
        assert value in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_demo_reports_unreadable_image_and_goes_on(tmp_path, tiny_weights, images):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a PNG")
    out_dir = tmp_path / "out"
    inputs = [str(images / "gray.png"), str(broken), str(images / "rgb.jpg")]
    proc = _demo(
        ["--input", *inputs, "--output", str(out_dir), "--confidence-threshold", "0.0"],
        tiny_weights,
        tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log
    # Logged as an error when met, then listed in the one-line message at the end.
    errors = [line for line in log.splitlines() if "cannot read image" in line]
    assert len(errors) == 1 and str(broken) in errors[0], log
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("demo.py: error: could not read 1 of 3 input images")
        and str(broken) in last
    )
    assert "Traceback" not in proc.stderr
    # Nothing else lost: the images before and after it were drawn and recorded.
    for name in ("gray.png", "rgb.jpg"):
        assert (out_dir / name).is_file(), sorted(os.listdir(out_dir))
        with open(out_dir / (name + ".json")) as f:
            assert json.load(f)["num_instances"] == 5
    assert not (out_dir / "broken.png").exists() and not (out_dir / "broken.png.json").exists()
