"""fpn_shapes_panoptic (fpn_plugin/data/shapes/panoptic.py): the shapes in front of textured stuff,
with COCO-panoptic annotations that Detectron2's loaders read."""

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog

import fpn_plugin.data.shapes.panoptic as panoptic_module
from fpn_plugin.config import get_plugin_cfg
from fpn_plugin.data import (
    SHAPE_CLASSES,
    SHAPES_PANOPTIC_TRAIN,
    SHAPES_PANOPTIC_VAL,
    STUFF_CLASSES,
    generate_shapes_panoptic_dataset,
    register_shapes_panoptic_datasets,
)

NAMES = [
    n
    for base in (SHAPES_PANOPTIC_TRAIN, SHAPES_PANOPTIC_VAL)
    for n in (base, base + "_separated", base + "_stuffonly")
]


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _digest(folder):
    """{relative path: sha256} of every file under ``folder``."""
    out = {}
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _ids(png_path):
    rgb = np.asarray(Image.open(png_path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """12 images at 192 px."""
    paths = generate_shapes_panoptic_dataset(
        str(tmp_path_factory.mktemp("panoptic")),
        "train",
        12,
        seed=5,
        image_size=192,
        progress=False,
    )
    return paths, _load(paths["panoptic_json"]), _load(paths["instances_json"])


def test_same_arguments_same_bytes_other_seed_other_data(tmp_path):
    kwargs = dict(split="val", num_images=3, image_size=96, progress=False)
    a = generate_shapes_panoptic_dataset(str(tmp_path / "a"), seed=2, **kwargs)
    b = generate_shapes_panoptic_dataset(str(tmp_path / "b"), seed=2, **kwargs)
    c = generate_shapes_panoptic_dataset(str(tmp_path / "c"), seed=3, **kwargs)
    da, db, dc = (_digest(os.path.dirname(p["panoptic_json"])) for p in (a, b, c))
    assert len(da) == 2 + 3 * 3  # two JSON files; an image, a panoptic PNG, a semantic PNG each
    assert da == db
    assert set(da) == set(dc) and all(da[k] != dc[k] for k in da if k.endswith((".jpg", ".png")))


def test_files_and_categories(split):
    paths, panoptic, instances = split
    assert [img["file_name"] for img in panoptic["images"]] == [f"{i:06d}.jpg" for i in range(12)]
    assert panoptic["images"] == instances["images"]
    cats = {c["id"]: c for c in panoptic["categories"]}
    assert [cats[i]["name"] for i in sorted(cats)] == [*SHAPE_CLASSES, *STUFF_CLASSES]
    assert [cats[i]["isthing"] for i in sorted(cats)] == [1, 1, 1, 1, 0, 0, 0]
    assert [c["id"] for c in instances["categories"]] == [1, 2, 3, 4]  # the things only
    for img in panoptic["images"]:
        stem = os.path.splitext(img["file_name"])[0]
        assert os.path.isfile(os.path.join(paths["image_root"], img["file_name"]))
        assert os.path.isfile(os.path.join(paths["panoptic_root"], stem + ".png"))
        assert Image.open(os.path.join(paths["sem_seg_root"], stem + ".png")).mode == "L"
    assert panoptic["info"]["params"]["panoptic_version"] >= 1


def test_png_and_json_agree(split):
    """Segment ids, categories, isthing, areas and boxes of the JSON are those of the PNGs; the
    things are the instance polygons rasterised by pycocotools; the semantic labels follow."""
    paths, panoptic, instances = split
    isthing = {c["id"]: c["isthing"] for c in panoptic["categories"]}
    by_image = {}
    for ann in instances["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    seen_stuff = set()
    for ann in panoptic["annotations"]:
        ids = _ids(os.path.join(paths["panoptic_root"], ann["file_name"]))
        semantic = np.asarray(Image.open(os.path.join(paths["sem_seg_root"], ann["file_name"])))
        segments = ann["segments_info"]
        assert sorted(np.unique(ids).tolist()) == sorted(
            s["id"] for s in segments
        )  # no void, no stray id
        assert 0 not in ids
        things = [s for s in segments if isthing[s["category_id"]]]
        stuff = [s for s in segments if not isthing[s["category_id"]]]
        # Things first, ids 1..n, in the order of the instance annotations; one segment per stuff
        # class.
        assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
        assert [s["id"] for s in things] == list(range(1, len(things) + 1))
        objects = by_image[ann["image_id"]]
        assert [s["category_id"] for s in things] == [o["category_id"] for o in objects]
        assert len({s["category_id"] for s in stuff}) == len(stuff) >= 1
        seen_stuff |= {s["category_id"] for s in stuff}
        h, w = ids.shape
        for segment in segments:
            mask = ids == segment["id"]
            ys, xs = np.nonzero(mask)
            assert segment["area"] == mask.sum() > 0 and segment["iscrowd"] == 0
            assert segment["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
            expected_label = 0 if isthing[segment["category_id"]] else segment["category_id"] - 4
            assert (semantic[mask] == expected_label).all()
        for segment, obj in zip(things, objects):
            rle = mask_utils.merge(mask_utils.frPyObjects(obj["segmentation"], h, w))
            assert np.array_equal(mask_utils.decode(rle).astype(bool), ids == segment["id"])
    assert seen_stuff == {5, 6, 7}


def test_stuff_textures_differ(split):
    """Within 8 x 8 px blocks, "smooth" varies by little more than the pixel noise, "stripes" and
    "checks" by much more."""
    paths, panoptic, _ = split
    spread = {5: [], 6: [], 7: []}
    for ann in panoptic["annotations"]:
        grey = np.asarray(
            Image.open(os.path.join(paths["image_root"], ann["file_name"][:-4] + ".jpg")).convert(
                "L"
            )
        )
        ids = _ids(os.path.join(paths["panoptic_root"], ann["file_name"]))
        category = {s["id"]: s["category_id"] for s in ann["segments_info"]}
        for y in range(0, ids.shape[0], 8):
            for x in range(0, ids.shape[1], 8):
                block = ids[y : y + 8, x : x + 8]
                if (block == block[0, 0]).all() and category[block[0, 0]] in spread:
                    spread[category[block[0, 0]]].append(float(grey[y : y + 8, x : x + 8].std()))
    smooth, stripes, checks = (np.median(spread[c]) for c in (5, 6, 7))
    assert smooth < 8 and 2 * smooth < min(stripes, checks), (smooth, stripes, checks)


def test_cached_split_is_not_rewritten_and_a_missing_png_is(tmp_path, monkeypatch):
    kwargs = dict(
        root=str(tmp_path), split="train", num_images=2, seed=0, image_size=64, progress=False
    )
    paths = generate_shapes_panoptic_dataset(**kwargs)
    before = _digest(str(tmp_path))

    def no_generation(*args, **kwargs):
        raise AssertionError("a complete split was generated again")

    write = panoptic_module._write_panoptic_split
    monkeypatch.setattr(panoptic_module, "_write_panoptic_split", no_generation)
    assert generate_shapes_panoptic_dataset(**kwargs) == paths
    os.remove(os.path.join(paths["panoptic_root"], "000001.png"))
    with pytest.raises(AssertionError, match="generated again"):
        generate_shapes_panoptic_dataset(**kwargs)
    monkeypatch.setattr(panoptic_module, "_write_panoptic_split", write)
    generate_shapes_panoptic_dataset(**kwargs)
    assert _digest(str(tmp_path)) == before


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(num_images=0), "num_images"),
        (dict(seed=-1), "seed"),
        (dict(image_size=16), "image_size"),
        (dict(min_size=50, max_size=20), "min_size"),
        (dict(split="../x"), "split"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, words):
    args = dict(
        root=str(tmp_path), split="train", num_images=1, seed=0, image_size=64, progress=False
    )
    with pytest.raises(ValueError, match=words):
        generate_shapes_panoptic_dataset(**dict(args, **kwargs))
    assert os.listdir(tmp_path) == []


def test_registered_like_coco_panoptic_and_read_by_detectron2(tmp_path, clean_catalog):
    clean_catalog += NAMES
    register_shapes_panoptic_datasets(
        root=str(tmp_path), num_train=3, num_val=2, seed=0, image_size=96
    )
    assert set(NAMES) <= set(DatasetCatalog.list())
    assert os.listdir(tmp_path) == []  # nothing generated yet
    register_shapes_panoptic_datasets(
        root=str(tmp_path), num_train=3, num_val=2, seed=0, image_size=96
    )  # no-op

    separated = MetadataCatalog.get(SHAPES_PANOPTIC_VAL + "_separated")
    assert separated.evaluator_type == "coco_panoptic_seg" and separated.ignore_label == 255
    assert separated.thing_classes == list(SHAPE_CLASSES)
    assert separated.stuff_classes == ["things", *STUFF_CLASSES]
    assert separated.stuff_dataset_id_to_contiguous_id == {0: 0, 5: 1, 6: 2, 7: 3}
    assert MetadataCatalog.get(SHAPES_PANOPTIC_VAL + "_stuffonly").evaluator_type == "sem_seg"
    standard = MetadataCatalog.get(SHAPES_PANOPTIC_VAL)
    assert (
        standard.stuff_classes == [*SHAPE_CLASSES, *STUFF_CLASSES]
        and standard.label_divisor == 1000
    )

    # Detectron2's merge_to_panoptic(load_coco_json, load_sem_seg): instances + semantic labels.
    dicts = DatasetCatalog.get(SHAPES_PANOPTIC_VAL + "_separated")
    assert len(dicts) == 2 and all(os.path.isfile(d["sem_seg_file_name"]) for d in dicts)
    assert all(
        d["annotations"] and all(0 <= a["category_id"] < 4 for a in d["annotations"]) for d in dicts
    )
    assert os.listdir(os.path.join(tmp_path, os.listdir(tmp_path)[0])) == [
        "val"
    ]  # only what was asked
    # load_coco_panoptic_json: contiguous ids over the seven classes, isthing set.
    standard_dicts = DatasetCatalog.get(SHAPES_PANOPTIC_VAL)
    segments = standard_dicts[0]["segments_info"]
    assert {s["isthing"] for s in segments} == {True, False}
    assert all((s["category_id"] < 4) == s["isthing"] and s["category_id"] < 7 for s in segments)
    assert all(os.path.isfile(d["pan_seg_file_name"]) for d in standard_dicts)
    stuffonly = DatasetCatalog.get(SHAPES_PANOPTIC_TRAIN + "_stuffonly")
    assert len(stuffonly) == 3 and "annotations" not in stuffonly[0]

    # Detectron2's DatasetMapper reads the semantic labels for training.
    cfg = get_plugin_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (96,), 96
    cfg.MODEL.MASK_ON = True
    mapped = DatasetMapper(cfg, is_train=True)(dicts[0])
    assert mapped["sem_seg"].shape == (96, 96) and mapped["sem_seg"].dtype == torch.long
    assert set(mapped["sem_seg"].unique().tolist()) <= {0, 1, 2, 3}
    assert len(mapped["instances"]) == len(dicts[0]["annotations"]) and mapped["instances"].has(
        "gt_masks"
    )

    # Other settings replace the registration.
    register_shapes_panoptic_datasets(
        root=str(tmp_path), num_train=3, num_val=1, seed=0, image_size=96
    )
    assert len(DatasetCatalog.get(SHAPES_PANOPTIC_VAL + "_separated")) == 1
