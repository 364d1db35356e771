"""COCO-format folders: a damaged annotation file is named, with the fix."""

import json

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from fpn_plugin.data import register_coco_folder


def test_truncated_annotation_file_is_named(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    text = json.dumps(data)
    json_file = tmp_path / "instances.json"
    json_file.write_text(text[: len(text) // 2])  # an interrupted copy
    register_coco_folder("truncated_coco", str(json_file), str(images))
    try:
        with pytest.raises(
            ValueError,
            match=r"instances\.json.*truncated_coco.*not valid JSON.*copy or download it again",
        ):
            DatasetCatalog.get("truncated_coco")
        json_file.write_text(text)  # repaired: the same registration loads
        assert len(DatasetCatalog.get("truncated_coco")) == 1
    finally:
        DatasetCatalog.remove("truncated_coco")
        MetadataCatalog.remove("truncated_coco")
