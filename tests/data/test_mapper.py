"""CheckedDatasetMapper and data loading: bad images, bad boxes, empty images, image modes."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.structures import BoxMode

from fpn_plugin.data import register_coco_folder
from fpn_plugin.data.mapper import CheckedDatasetMapper
from tests.conftest import plugin_cfg


def _cfg():
    cfg = plugin_cfg("configs/quickstart.yaml")
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.RANDOM_FLIP = "none"
    return cfg


def _record(path, annotations, height=64, width=64):
    return {
        "file_name": str(path),
        "image_id": 7,
        "height": height,
        "width": width,
        "annotations": annotations,
    }


def _ann(x0, y0, x1, y1):
    return {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        path
    )
    return path


def test_missing_image_names_the_file(tmp_path):
    mapper = CheckedDatasetMapper(_cfg(), is_train=True)
    missing = tmp_path / "nope" / "gone.jpg"
    with pytest.raises(FileNotFoundError) as e:
        mapper(_record(missing, [_ann(1, 1, 10, 10)]))
    assert str(missing) in str(e.value) and "image_id 7" in str(e.value)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(OSError) as e:
        CheckedDatasetMapper(_cfg(), is_train=True)(_record(bad, [_ann(1, 1, 10, 10)]))
    assert str(bad) in str(e.value) and "Replace the file" in str(e.value)


def test_boxes_outside_are_clipped_and_zero_area_dropped_with_a_count(image, caplog):
    mapper = CheckedDatasetMapper(_cfg(), is_train=True)
    anns = [
        _ann(-10, -5, 20, 30),  # partly outside: clipped
        _ann(50, 50, 90, 80),  # partly outside: clipped
        _ann(5, 5, 5, 20),  # zero width: dropped
        _ann(30, 30, 20, 40),  # inverted: dropped
        _ann(70, 70, 90, 90),  # entirely outside: dropped
    ]
    before = CheckedDatasetMapper.dropped_boxes
    with caplog.at_level(logging.WARNING, logger="fpn_plugin.data.mapper"):
        out = mapper(_record(image, anns))
        again = mapper(_record(image, anns))  # the next epoch: the same boxes, not counted again
    boxes = out["instances"].gt_boxes.tensor
    assert boxes.tolist() == [[0.0, 0.0, 20.0, 30.0], [50.0, 50.0, 64.0, 64.0]]
    assert again["instances"].gt_boxes.tensor.tolist() == boxes.tolist()
    assert CheckedDatasetMapper.dropped_boxes - before == 3
    warnings = [
        r.getMessage() for r in caplog.records if "zero-area or out-of-image" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert (
        "dropped 3 zero-area or out-of-image box(es)" in warnings[0] and str(image) in warnings[0]
    )


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "RGB"])
def test_grayscale_rgba_and_palette_images(tmp_path, mode):
    path = tmp_path / f"img_{mode}.png"
    rgb = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert(mode).save(path)
    out = CheckedDatasetMapper(_cfg(), is_train=True)(_record(path, [_ann(1, 1, 30, 30)]))
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.uint8
    if mode == "L":  # gray: the three channels are equal
        assert torch.equal(out["image"][0], out["image"][1])


@pytest.mark.parametrize("filter_empty, expected", [(True, 1), (False, 2)])
def test_images_without_annotations_follow_filter_empty_annotations(
    tmp_path, image, filter_empty, expected
):
    coco = {
        "images": [
            {"id": 1, "file_name": "img.png", "height": 64, "width": 64},
            {"id": 2, "file_name": "img.png", "height": 64, "width": 64},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "bbox": [1, 1, 20, 20],
                "area": 400,
                "iscrowd": 0,
                "category_id": 1,
            }
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    json_file = tmp_path / "ann.json"
    json_file.write_text(json.dumps(coco))
    name = "fpn_test_empty_images"
    register_coco_folder(name, str(json_file), str(tmp_path))
    try:
        dicts = get_detection_dataset_dicts([name], filter_empty=filter_empty)
        assert len(dicts) == expected
        mapped = [CheckedDatasetMapper(_cfg(), is_train=True)(d) for d in dicts]
        assert sorted(len(m["instances"]) for m in mapped) == ([1] if filter_empty else [0, 1])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
