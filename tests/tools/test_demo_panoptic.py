"""tools/demo.py on Panoptic FPN (configs/quickstart_panoptic.yaml, random weights), as a
subprocess: the panoptic segmentation is drawn and its segments recorded in the JSON."""

import json

import numpy as np
from PIL import Image

from tests.tools.test_demo import DEMO, _check_ok, _run


def test_demo_draws_a_panoptic_prediction(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (128, 160, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    proc = _run(
        [
            DEMO,
            "--config-file",
            "configs/quickstart_panoptic.yaml",
            "--input",
            str(tmp_path / "in.png"),
            "--output",
            str(out),
            "--confidence-threshold",
            "0.0",
            "--opts",
            "MODEL.DEVICE",
            "cpu",
            "INPUT.MIN_SIZE_TEST",
            "128",
            "INPUT.MAX_SIZE_TEST",
            "160",
            "TEST.DETECTIONS_PER_IMAGE",
            "3",
            "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
            "16",
        ]
    )
    _check_ok(proc)
    drawn = np.asarray(Image.open(out).convert("RGB"))
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)
    with open(str(out) + ".json") as f:
        record = json.load(f)
    segments = record["panoptic_segments"]
    assert {s["isthing"] for s in segments} == {True, False}
    thing_names = {"circle", "square", "triangle", "cross"}
    for s in segments:
        names = thing_names if s["isthing"] else {"smooth", "stripes", "checks"}
        assert s["class_name"] in names and s["area"] > 0
    assert sum(s["area"] for s in segments) + record["unassigned_area"] == 128 * 160
    assert record["num_instances"] == 3
