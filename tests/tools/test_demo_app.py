"""fpn_apps.demo: inputs, output planning, JSON records and running, with a stub predictor
(tools/demo.py runs it end to end with a real detector in tests/tools/test_demo.py)."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances
from detectron2.utils.video_visualizer import VideoVisualizer

from fpn_apps.demo import (
    DemoError,
    DetectionDemo,
    instances_to_json,
    plan_outputs,
    plan_video_output,
    resolve_inputs,
    select_instances,
)


class StubPredictor:
    """Two detections per image, the second below a 0.5 threshold; levels 2 and 4."""

    def __init__(self):
        self.calls = 0

    def __call__(self, image_bgr):
        self.calls += 1
        h, w = image_bgr.shape[:2]
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [10.0, 10.0, 20.0, 20.0]]))
        inst.scores = torch.tensor([0.9, 0.3])
        inst.pred_classes = torch.tensor([1, 7])
        inst.pred_levels = torch.tensor([2, 4])
        return {"instances": inst}


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.jpg"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_resolve_inputs(folder):
    a, b = str(folder / "a.jpg"), str(folder / "b.png")
    assert resolve_inputs([str(folder)]) == [a, b]  # sorted, images only
    assert resolve_inputs([b, str(folder / "*")]) == [b, a]  # in order, without repeats
    with pytest.raises(DemoError, match="does not exist and matches no file") as error:
        resolve_inputs([a, str(folder / "nowhere.png")])
    assert "nowhere.png" in str(error.value)
    with pytest.raises(DemoError, match="matches no image"):
        resolve_inputs([str(folder / "*.txt")])
    (folder / "empty").mkdir()
    with pytest.raises(DemoError, match="holds no image"):
        resolve_inputs([str(folder / "empty")])


def test_plan_outputs(folder, tmp_path):
    inputs = [str(folder / "a.jpg"), str(folder / "c.bmp")]
    out = str(tmp_path / "out")
    assert plan_outputs(inputs, out) == [os.path.join(out, "a.jpg"), os.path.join(out, "c.png")]
    assert plan_outputs(inputs[:1], str(tmp_path / "x.png")) == [str(tmp_path / "x.png")]
    with pytest.raises(DemoError, match="is a file name but there are 2 inputs"):
        plan_outputs(inputs, str(tmp_path / "x.png"))
    with pytest.raises(DemoError, match="must end with"):
        plan_outputs(inputs[:1], str(tmp_path / "x.gif"))
    with pytest.raises(DemoError, match="would both be written to"):
        plan_outputs([str(folder / "a.jpg"), str(tmp_path / "other" / "a.jpg")], out)
    with pytest.raises(DemoError, match="would overwrite its input"):
        plan_outputs(inputs[:1], str(folder))
    video = folder / "clip.avi"
    video.write_bytes(b"")
    assert plan_video_output(str(video), out + "/") == os.path.join(out + "/", "clip.mp4")
    assert plan_video_output(str(video), str(tmp_path / "v.mp4")) == str(tmp_path / "v.mp4")
    with pytest.raises(DemoError, match="--video-input .* does not exist"):
        plan_video_output(str(folder / "nowhere.mp4"), out)


def test_selected_instances_as_json():
    instances = select_instances(StubPredictor()(np.zeros((48, 64, 3), np.uint8)), 0.5)
    record = instances_to_json(instances, ["circle", "square"])
    assert record == {
        "num_instances": 1,
        "box_mode": "XYXY_ABS",
        "boxes": [[4.0, 6.0, 30.0, 40.0]],
        "scores": [pytest.approx(0.9)],
        "classes": [1],
        "class_names": ["square"],
        "pred_levels": [2],
    }
    assert instances_to_json(instances[[]])["pred_levels"] == []
    del instances._fields["pred_levels"]  # ROI heads that do not record levels
    assert instances_to_json(instances)["pred_levels"] is None
    assert instances_to_json(instances)["class_names"] == ["1"]  # no metadata: the class id


def test_unreadable_image_is_logged_and_skipped(folder, tmp_path, caplog):
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    inputs = [str(folder / "a.jpg"), str(broken), str(folder / "b.png")]
    out = tmp_path / "out"
    outputs = plan_outputs(inputs, str(out))
    predictor = StubPredictor()
    metadata = Metadata(name="demo_engine_test", thing_classes=["circle", "square"])
    demo = DetectionDemo(predictor, metadata, confidence_threshold=0.5, color_by_level=True)
    with caplog.at_level(logging.INFO, logger="fpn_plugin"):
        unreadable = demo.process_images(inputs, outputs)
    assert unreadable == [str(broken)]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(broken) in errors[0]
    assert predictor.calls == 2
    for name in ("a.jpg", "b.png"):  # before and after the bad file
        with Image.open(out / name) as im:
            assert im.size == (64, 48)
        with open(out / (name + ".json")) as f:
            record = json.load(f)
        assert record["input"] == str(folder / name) and record["image_size"] == [48, 64]
        assert record["num_instances"] == 1 and record["pred_levels"] == [2]
        assert record["class_names"] == ["square"] and record["confidence_threshold"] == 0.5
        # No model to ask for its pooled levels: the legend lists the levels drawn.
        assert [e["name"] for e in record["legend"]["entries"]] == ["P2"]
    assert not (out / "broken.png").exists()


def test_video_keeps_colours_across_frames(tmp_path):
    import cv2

    frames = np.random.default_rng(2).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (64, 48), True)
    for frame in frames:
        writer.write(frame)
    writer.release()
    demo = DetectionDemo(StubPredictor(), confidence_threshold=0.0)
    out = plan_video_output(video, str(tmp_path / "out"))
    demo.process_video(video, out)
    with open(out + ".json") as f:
        record = json.load(f)
    assert [fr["frame"] for fr in record["frames"]] == [0, 1, 2]
    assert [fr["num_instances"] for fr in record["frames"]] == [2, 2, 2]
    assert "legend" not in record  # not coloured by level
    capture = cv2.VideoCapture(out)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()

    # The same detections on the same frame get the same colours from frame to frame (Detectron2's
    # VideoVisualizer); drawn one by one, each draw picks random colours.
    image = np.full((48, 64, 3), 128, dtype=np.uint8)
    instances = select_instances(StubPredictor()(image), 0.0)
    video_vis = VideoVisualizer(demo.metadata)
    steady = [demo.draw(image, instances, video=video_vis)[0] for _ in range(3)]
    assert all(np.array_equal(steady[0], d) for d in steady[1:])
    single = [demo.draw(image, instances)[0] for _ in range(3)]
    assert not all(np.array_equal(single[0], d) for d in single[1:])
