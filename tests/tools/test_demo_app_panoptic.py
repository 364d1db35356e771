"""fpn_apps.demo with panoptic and semantic predictions (a stub predictor): drawn with
Detectron2's draw_panoptic_seg / draw_sem_seg, segments recorded in the JSON."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data.catalog import Metadata
from detectron2.structures import Boxes, Instances

from fpn_apps.demo import DetectionDemo, plan_video_output, segments_to_json
from fpn_plugin.data import shapes_panoptic_metadata

H, W = 48, 64


class PanopticStub:
    """Panoptic FPN's output: two things (circle, score 0.9; cross, score 0.3), stuff "stripes"
    on the left half and "checks" on the right, 6 px unassigned."""

    def __init__(self, semantic_only=False):
        self.semantic_only = semantic_only

    def __call__(self, image_bgr):
        sem_seg = torch.zeros(4, H, W)
        sem_seg[2, :, : W // 2] = 1.0  # stripes
        sem_seg[3, :, W // 2 :] = 1.0  # checks
        if self.semantic_only:
            return {"sem_seg": sem_seg}
        instances = Instances((H, W))
        instances.pred_boxes = Boxes(
            torch.tensor([[4.0, 4.0, 20.0, 20.0], [40.0, 30.0, 50.0, 40.0]])
        )
        instances.scores = torch.tensor([0.9, 0.3])
        instances.pred_classes = torch.tensor([0, 3])
        masks = torch.zeros(2, H, W, dtype=torch.bool)
        masks[0, 4:20, 4:20] = True
        masks[1, 30:40, 40:50] = True
        instances.pred_masks = masks
        ids = torch.full((H, W), 2, dtype=torch.int32)
        ids[:, W // 2 :] = 3
        ids[4:20, 4:20] = 1
        ids[0, :6] = 0
        segments = [
            {"id": 1, "isthing": True, "score": 0.9, "category_id": 0, "instance_id": 0},
            {"id": 2, "isthing": False, "category_id": 2, "area": int((ids == 2).sum())},
            {"id": 3, "isthing": False, "category_id": 3, "area": int((ids == 3).sum())},
        ]
        return {"sem_seg": sem_seg, "instances": instances, "panoptic_seg": (ids, segments)}


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.full((H, W, 3), 128, dtype=np.uint8)).save(path)
    return str(path)


def _metadata():
    return Metadata(name="_demo_panoptic").set(**shapes_panoptic_metadata(separated=True))


def test_panoptic_prediction_drawn_and_recorded(tmp_path, image_file):
    out = str(tmp_path / "out.png")
    demo = DetectionDemo(PanopticStub(), _metadata(), confidence_threshold=0.5)
    assert demo.process_images([image_file], [out]) == []
    drawn = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert drawn.shape == (H, W, 3)
    # The stuff is painted (an instance drawing leaves the background as it is), each half in
    # its class's colour.
    left, right = drawn[30:46, 2:20].reshape(-1, 3), drawn[10:25, 34:62].reshape(-1, 3)
    assert (
        np.median(np.abs(left - 128).sum(axis=1)) > 10
        and np.median(np.abs(right - 128).sum(axis=1)) > 10
    )
    assert np.abs(left.mean(axis=0) - right.mean(axis=0)).sum() > 10
    with open(out + ".json") as f:
        record = json.load(f)
    assert record["num_instances"] == 1 and record["class_names"] == ["circle"]  # score >= 0.5
    segments = record["panoptic_segments"]
    assert [(s["id"], s["isthing"], s["class_name"]) for s in segments] == [
        (1, True, "circle"),
        (2, False, "stripes"),
        (3, False, "checks"),
    ]
    assert segments[0]["score"] == pytest.approx(0.9) and segments[1]["score"] is None
    assert [s["area"] for s in segments] == [16 * 16, H * W // 2 - 16 * 16 - 6, H * W // 2]
    assert record["unassigned_area"] == 6


def test_semantic_prediction_drawn_and_recorded(tmp_path, image_file):
    out = str(tmp_path / "out.jpg")
    demo = DetectionDemo(PanopticStub(semantic_only=True), _metadata(), confidence_threshold=0.5)
    demo.process_images([image_file], [out])
    with open(out + ".json") as f:
        record = json.load(f)
    assert record["num_instances"] == 0 and "panoptic_segments" not in record
    assert record["semantic_classes"] == [
        {"category_id": 2, "class_name": "stripes", "area": H * W // 2},
        {"category_id": 3, "class_name": "checks", "area": H * W // 2},
    ]
    drawn = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert np.abs(drawn - 128).sum(axis=2).mean() > 10  # painted


def test_video_frames_record_their_segments(tmp_path):
    import cv2

    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (W, H), True)
    for _ in range(2):
        writer.write(np.full((H, W, 3), 128, dtype=np.uint8))
    writer.release()
    out = plan_video_output(video, str(tmp_path / "out"))
    DetectionDemo(PanopticStub(), _metadata(), confidence_threshold=0.5).process_video(video, out)
    with open(out + ".json") as f:
        frames = json.load(f)["frames"]
    assert [len(fr["panoptic_segments"]) for fr in frames] == [3, 3]


def test_no_segments_for_detections_only():
    assert segments_to_json({"instances": Instances((H, W))}) == {}
