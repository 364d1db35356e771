"""Tests of fpn_plugin.data: the synthetic fpn_shapes dataset and COCO-folder registration."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from detectron2.data import DatasetCatalog, MetadataCatalog

import fpn_plugin.data.shapes.cache as cache_module
import fpn_plugin.data.shapes.instances as instances_module
from fpn_plugin.data import (
    SHAPE_CLASSES,
    SHAPE_KEYPOINT_NAMES,
    SHAPES_TRAIN,
    SHAPES_VAL,
    default_data_root,
    generate_shapes_dataset,
    register_coco_folder,
    register_shapes_datasets,
)


def _load(json_path):
    with open(json_path, encoding="utf-8") as f:
        return json.load(f)


def _image_dir(json_path):
    return os.path.join(os.path.dirname(json_path), "images")


def _pixels(json_path, file_name):
    return np.asarray(Image.open(os.path.join(_image_dir(json_path), file_name)).convert("RGB"))


def _erode(mask):
    """Pixels of a boolean (H, W) mask whose 4 neighbours are all in the mask."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def _by_image(data):
    anns = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        anns[ann["image_id"]].append(ann)
    return anns


@pytest.fixture(scope="module")
def shapes40(tmp_path_factory):
    """40 images at 512 px, the default size range."""
    json_path = generate_shapes_dataset(
        str(tmp_path_factory.mktemp("shapes40")), "train", 40, seed=3, progress=False
    )
    return json_path, _load(json_path)


# --- Determinism -------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    kwargs = dict(split="train", num_images=3, image_size=128, progress=False)
    a = generate_shapes_dataset(str(tmp_path / "a"), seed=7, **kwargs)
    b = generate_shapes_dataset(str(tmp_path / "b"), seed=7, **kwargs)
    c = generate_shapes_dataset(str(tmp_path / "c"), seed=8, **kwargs)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    names = sorted(os.listdir(_image_dir(a)))
    assert names == sorted(os.listdir(_image_dir(b))) and len(names) == 3
    for name in names:
        with (
            open(os.path.join(_image_dir(a), name), "rb") as fa,
            open(os.path.join(_image_dir(b), name), "rb") as fb,
        ):
            assert fa.read() == fb.read()
    data_a, data_c = _load(a), _load(c)
    assert data_a["annotations"] != data_c["annotations"]
    assert not np.array_equal(_pixels(a, names[0]), _pixels(c, names[0]))


def test_split_name_changes_data(tmp_path):
    a = generate_shapes_dataset(str(tmp_path), "train", 2, seed=0, image_size=96, progress=False)
    b = generate_shapes_dataset(str(tmp_path), "val", 2, seed=0, image_size=96, progress=False)
    assert _load(a)["annotations"] != _load(b)["annotations"]


# --- Content -----------------------------------------------------------------------------------


def test_coco_format(shapes40):
    json_path, data = shapes40
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == list(
        SHAPE_CLASSES
    )
    assert len(data["images"]) == 40
    assert len({img["id"] for img in data["images"]}) == 40
    assert len({ann["id"] for ann in data["annotations"]}) == len(data["annotations"])
    for img in data["images"]:
        assert (img["width"], img["height"]) == (512, 512)
        assert Image.open(os.path.join(_image_dir(json_path), img["file_name"])).size == (512, 512)
    for anns in _by_image(data).values():
        assert 2 <= len(anns) <= 8
    for ann in data["annotations"]:
        assert ann["iscrowd"] == 0
        assert ann["category_id"] in {1, 2, 3, 4}
        assert len(ann["segmentation"]) == 1 and len(ann["segmentation"][0]) % 2 == 0
    # Every class is used, and circles are fine polygons.
    assert {ann["category_id"] for ann in data["annotations"]} == {1, 2, 3, 4}
    assert all(
        len(a["segmentation"][0]) >= 64 for a in data["annotations"] if a["category_id"] == 1
    )


def test_sizes_cover_all_coco_buckets(shapes40):
    _, data = shapes40
    sizes = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in data["annotations"]])
    assert sizes.min() <= 10 and sizes.max() >= 300
    assert sizes.min() >= 8 - 0.1 and sizes.max() <= 400 + 0.1
    areas = np.array([a["area"] for a in data["annotations"]])
    small, large = areas < 32**2, areas > 96**2
    assert small.sum() >= 5 and large.sum() >= 5 and (~small & ~large).sum() >= 5
    # Log-uniform: each of the 3 size decades-ish [8, 40), [40, 200), [200, 400] is populated.
    assert (
        (sizes < 40).sum() >= 20
        and ((sizes >= 40) & (sizes < 200)).sum() >= 20
        and (sizes >= 200).sum() >= 5
    )


def test_boxes_inside_tight_and_disjoint(shapes40):
    _, data = shapes40
    for anns in _by_image(data).values():
        boxes = []
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= 512 and y + h <= 512
            poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
            np.testing.assert_allclose(poly.min(axis=0), [x, y], atol=1.0)
            np.testing.assert_allclose(poly.max(axis=0), [x + w, y + h], atol=1.0)
            boxes.append((x, y, x + w, y + h))
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                overlap_w = min(a[2], b[2]) - max(a[0], b[0])
                overlap_h = min(a[3], b[3]) - max(a[1], b[1])
                assert overlap_w <= 0 or overlap_h <= 0, (a, b)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_polygon_masks_match_image_and_area(shapes40):
    json_path, data = shapes40
    files = {img["id"]: img["file_name"] for img in data["images"]}
    checked = 0
    for image_id, anns in _by_image(data).items():
        pixels = _pixels(json_path, files[image_id]).astype(np.float64)
        background = np.ones(pixels.shape[:2], dtype=bool)
        for ann in anns:
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 512, 512))
            mask = mask_utils.decode(rle).astype(bool)
            background &= ~mask
            # The rasterised polygon has the annotated area (up to ~half a pixel along the outline).
            x, y, w, h = ann["bbox"]
            assert abs(mask.sum() - ann["area"]) <= 0.5 * (w + h), ann
            assert float(mask_utils.area(rle)) == mask.sum()
            # Mask pixels have the object's colour (noise and JPEG aside): most of them, and
            # nearly all of those away from the (anti-aliased) outline.
            distance = np.linalg.norm(pixels - np.array(ann["color"]), axis=2)
            assert np.mean(distance[mask] < 30) > 0.7, (ann, np.median(distance[mask]))
            interior = _erode(mask)
            if interior.sum() >= 40:  # enough pixels for a 95% share to be meaningful
                assert np.mean(distance[interior] < 30) > 0.95, ann
            checked += 1
        # The background is not of one colour: a flat threshold cannot isolate the objects.
        assert pixels[background].std(axis=0).max() > 10
    assert checked == len(data["annotations"])


def _distance_to_outline(points, poly):
    """(P,) distance of each point (P, 2) to the closed polygon's outline (V, 2), pixels."""
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(((points[:, None] - a[None]) * ab[None]).sum(-1) / (ab**2).sum(-1)[None], 0, 1)
    nearest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None] - nearest, axis=-1).min(axis=1)


def _extremes_ok(keypoints, poly, atol=0.011):
    """True if (4, 2) continuous keypoints are the top, right, bottom, left extreme points of the
    polygon."""
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    expected = [
        keypoints[0, 1] - lo[1],
        keypoints[1, 0] - hi[0],
        keypoints[2, 1] - hi[1],
        keypoints[3, 0] - lo[0],
    ]
    return np.abs(expected).max() <= atol and _distance_to_outline(keypoints, poly).max() <= atol


def test_keypoints_are_extreme_points_on_the_outline(shapes40):
    _, data = shapes40
    for cat in data["categories"]:
        assert cat["keypoints"] == list(SHAPE_KEYPOINT_NAMES)
        assert all(1 <= i <= len(SHAPE_KEYPOINT_NAMES) for edge in cat["skeleton"] for i in edge)
    for ann in data["annotations"]:
        assert ann["num_keypoints"] == 4 and len(ann["keypoints"]) == 12
        kp = np.array(ann["keypoints"], dtype=np.float64).reshape(4, 3)
        assert (kp[:, 2] == 2).all()
        xy = kp[:, :2] + 0.5  # COCO pixel indices -> continuous coordinates
        poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
        assert _extremes_ok(xy, poly), (ann["id"], xy, poly.min(axis=0), poly.max(axis=0))
        x, y, w, h = ann["bbox"]
        assert (xy >= [x - 0.01, y - 0.01]).all() and (xy <= [x + w + 0.01, y + h + 0.01]).all()


def test_keypoints_flip_with_the_image(tmp_path, clean_catalog):
    """Detectron2's horizontal flip, with the registered flip map, gives the flipped shape's
    keypoints."""
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T

    clean_catalog += [SHAPES_TRAIN, SHAPES_VAL]
    register_shapes_datasets(root=str(tmp_path), num_train=6, num_val=1, image_size=128)
    meta = MetadataCatalog.get(SHAPES_TRAIN)
    assert meta.keypoint_names == list(SHAPE_KEYPOINT_NAMES)
    assert len(meta.keypoint_oks_sigmas) == len(SHAPE_KEYPOINT_NAMES)
    flip_indices = utils.create_keypoint_hflip_indices([SHAPES_TRAIN])
    assert list(flip_indices) == [0, 3, 2, 1]  # left <-> right, top and bottom stay
    flip = T.TransformList([T.HFlipTransform(128)])
    checked = 0
    for d in DatasetCatalog.get(SHAPES_TRAIN):  # loaded by Detectron2: continuous coordinates
        for ann in d["annotations"]:
            poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
            assert _extremes_ok(np.array(ann["keypoints"]).reshape(4, 3)[:, :2], poly)
            flipped = utils.transform_instance_annotations(
                dict(ann), flip, (128, 128), keypoint_hflip_indices=flip_indices
            )
            kp = np.array(flipped["keypoints"]).reshape(4, 3)
            assert (kp[:, 2] == 2).all()
            assert _extremes_ok(kp[:, :2], np.array(flipped["segmentation"][0]).reshape(-1, 2))
            checked += 1
    assert checked >= 12


# --- Caching and atomicity -----------------------------------------------------------------------


def _mtimes(json_path):
    image_dir = _image_dir(json_path)
    paths = [json_path] + [os.path.join(image_dir, n) for n in os.listdir(image_dir)]
    return {p: os.stat(p).st_mtime_ns for p in paths}


def test_complete_dataset_is_not_rewritten(tmp_path, monkeypatch):
    kwargs = dict(
        root=str(tmp_path), split="val", num_images=3, seed=1, image_size=96, progress=False
    )
    json_path = generate_shapes_dataset(**kwargs)
    before = _mtimes(json_path)

    def no_generation(*args, **kwargs):
        raise AssertionError("a complete dataset was generated again")

    monkeypatch.setattr(instances_module, "_write_split", no_generation)
    assert generate_shapes_dataset(**kwargs) == json_path
    assert _mtimes(json_path) == before
    # No temporary folders are left behind.
    assert sorted(os.listdir(tmp_path)) == ["val"]


def test_incomplete_or_different_dataset_is_regenerated(tmp_path):
    kwargs = dict(
        root=str(tmp_path), split="train", num_images=3, seed=1, image_size=96, progress=False
    )
    json_path = generate_shapes_dataset(**kwargs)
    with open(json_path, "rb") as f:
        reference = f.read()
    os.remove(json_path)  # as if interrupted before the annotations were written
    assert generate_shapes_dataset(**kwargs) == json_path
    with open(json_path, "rb") as f:
        assert f.read() == reference
    os.remove(os.path.join(_image_dir(json_path), "000001.jpg"))  # an image is missing
    generate_shapes_dataset(**kwargs)
    assert sorted(os.listdir(_image_dir(json_path))) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    # Other parameters at the same place: replaced, and the parameters are recorded.
    generate_shapes_dataset(**dict(kwargs, num_images=2))
    data = _load(json_path)
    assert len(data["images"]) == 2 and data["info"]["params"]["num_images"] == 2
    assert sorted(os.listdir(_image_dir(json_path))) == ["000000.jpg", "000001.jpg"]
    assert sorted(os.listdir(tmp_path)) == ["train"]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    kwargs = dict(
        root=str(tmp_path), split="train", num_images=4, seed=0, image_size=64, progress=False
    )
    make_image = instances_module.make_image
    calls = []

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return make_image(*args, **kw)

    monkeypatch.setattr(instances_module, "make_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes_dataset(**kwargs)
    assert os.listdir(tmp_path) == []  # neither a half-written split nor a temporary folder
    monkeypatch.setattr(instances_module, "make_image", make_image)
    assert len(_load(generate_shapes_dataset(**kwargs))["images"]) == 4


@pytest.mark.skipif(os.name != "posix", reason="stale temporary folders are only detected on POSIX")
def test_stale_temporary_folders_are_removed(tmp_path):
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".train.tmp-{socket.gethostname()}-{dead.pid}-abc123"
    alive = tmp_path / f".train.tmp-{socket.gethostname()}-{os.getpid()}-abc123"
    for folder in (stale, alive):
        (folder / "images").mkdir(parents=True)
    generate_shapes_dataset(str(tmp_path), "train", 1, seed=0, image_size=64, progress=False)
    assert not stale.exists() and alive.exists()


def test_foreign_folder_is_not_deleted(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "my_notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="train"):
        generate_shapes_dataset(str(tmp_path), "train", 1, seed=0, image_size=64, progress=False)
    assert (tmp_path / "train" / "my_notes.txt").read_text() == "mine"
    # A COCO folder of one's own with the same layout is not ours either.
    json_path = generate_shapes_dataset(
        str(tmp_path / "gen"), "val", 1, seed=0, image_size=64, progress=False
    )
    data = _load(json_path)
    del data["info"]
    (tmp_path / "val" / "images").mkdir(parents=True)
    (tmp_path / "val" / "annotations.json").write_text(json.dumps(data))
    (tmp_path / "val" / "images" / "000000.jpg").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="val"):
        generate_shapes_dataset(str(tmp_path), "val", 1, seed=0, image_size=64, progress=False)
    assert (tmp_path / "val" / "images" / "000000.jpg").read_bytes() == b"mine"
    # An image folder without annotations, with images that are not named as ours.
    (tmp_path / "test" / "images").mkdir(parents=True)
    (tmp_path / "test" / "images" / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="test"):
        generate_shapes_dataset(str(tmp_path), "test", 1, seed=0, image_size=64, progress=False)
    assert (tmp_path / "test" / "images" / "holiday.jpg").read_bytes() == b"mine"


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_shapes_dataset(str(tmp_path), "../x", 1, seed=0, progress=False)
    with pytest.raises(ValueError):
        generate_shapes_dataset(str(tmp_path), "train", 0, seed=0, progress=False)
    with pytest.raises(ValueError):
        generate_shapes_dataset(
            str(tmp_path), "train", 1, seed=0, min_size=50, max_size=10, progress=False
        )


# --- Registration --------------------------------------------------------------------------------


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("FPN_PLUGIN_DATA", str(tmp_path))
    assert default_data_root() == str(tmp_path)
    monkeypatch.delenv("FPN_PLUGIN_DATA")
    assert default_data_root() == os.path.join(os.path.expanduser("~"), ".cache", "fpn_plugin")


def test_register_shapes_is_lazy_and_idempotent(tmp_path, clean_catalog):
    clean_catalog += [SHAPES_TRAIN, SHAPES_VAL]
    register_shapes_datasets(root=str(tmp_path), num_train=4, num_val=2, image_size=256)
    register_shapes_datasets(root=str(tmp_path), num_train=4, num_val=2, image_size=256)
    assert os.listdir(tmp_path) == []  # nothing generated yet
    meta = MetadataCatalog.get(SHAPES_TRAIN)
    assert meta.thing_classes == list(SHAPE_CLASSES)
    assert meta.evaluator_type == "coco"

    dicts = DatasetCatalog.get(SHAPES_TRAIN)
    assert len(dicts) == 4
    assert os.path.isfile(meta.json_file) and os.path.isdir(meta.image_root)
    for d in dicts:
        assert (d["height"], d["width"]) == (256, 256) and os.path.isfile(d["file_name"])
        assert 2 <= len(d["annotations"]) <= 8
        for ann in d["annotations"]:
            assert 0 <= ann["category_id"] < len(SHAPE_CLASSES)
            assert ann["segmentation"] and len(ann["bbox"]) == 4
    val = DatasetCatalog.get(SHAPES_VAL)
    assert len(val) == 2
    assert val[0]["annotations"] != dicts[0]["annotations"]  # another seed
    assert MetadataCatalog.get(SHAPES_VAL).thing_classes == list(SHAPE_CLASSES)
    # Registering again after loading (metadata now also set by load_coco_json) still works.
    register_shapes_datasets(root=str(tmp_path), num_train=4, num_val=2, image_size=256)
    assert len(DatasetCatalog.get(SHAPES_TRAIN)) == 4


def test_register_shapes_again_with_other_settings_replaces(tmp_path, clean_catalog):
    clean_catalog += [SHAPES_TRAIN, SHAPES_VAL]
    register_shapes_datasets(root=str(tmp_path / "a"), num_train=2, num_val=1, image_size=64)
    assert len(DatasetCatalog.get(SHAPES_VAL)) == 1
    register_shapes_datasets(root=str(tmp_path / "b"), num_train=3, num_val=2, image_size=64)
    assert len(DatasetCatalog.get(SHAPES_VAL)) == 2
    assert MetadataCatalog.get(SHAPES_VAL).json_file.startswith(str(tmp_path / "b"))


def test_register_coco_folder(tmp_path, clean_catalog):
    clean_catalog += ["test_data_coco_folder"]
    json_path = generate_shapes_dataset(
        str(tmp_path), "val", 2, seed=0, image_size=64, progress=False
    )
    register_coco_folder("test_data_coco_folder", json_path, _image_dir(json_path))
    register_coco_folder("test_data_coco_folder", json_path, _image_dir(json_path))  # idempotent
    meta = MetadataCatalog.get("test_data_coco_folder")
    assert meta.evaluator_type == "coco" and meta.json_file == json_path
    assert len(DatasetCatalog.get("test_data_coco_folder")) == 2
    assert meta.thing_classes == list(SHAPE_CLASSES)  # set by the loader


def test_register_coco_folder_missing_paths(tmp_path):
    missing = str(tmp_path / "annotations" / "instances_val.json")
    with pytest.raises(FileNotFoundError, match="instances_val.json"):
        register_coco_folder("test_data_missing", missing, str(tmp_path))
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no_such_images"):
        register_coco_folder(
            "test_data_missing", str(tmp_path / "a.json"), str(tmp_path / "no_such_images")
        )
    assert "test_data_missing" not in DatasetCatalog.list()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_coco_evaluator_scores_ground_truth_100(tmp_path, clean_catalog):
    """The registered metadata is enough for COCOEvaluator, and boxes / polygons / keypoints agree
    with COCO's eval."""
    import torch

    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances
    from detectron2.structures.masks import polygons_to_bitmask

    clean_catalog += [SHAPES_TRAIN, SHAPES_VAL]
    register_shapes_datasets(root=str(tmp_path), num_train=1, num_val=4, image_size=256)
    dicts = DatasetCatalog.get(SHAPES_VAL)  # generates the data, as building the test loader would
    sigmas = MetadataCatalog.get(SHAPES_VAL).keypoint_oks_sigmas
    evaluator = COCOEvaluator(
        SHAPES_VAL, tasks=("bbox", "segm", "keypoints"), distributed=False, kpt_oks_sigmas=sigmas
    )
    evaluator.reset()
    for d in dicts:
        anns = d["annotations"]
        instances = Instances((d["height"], d["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(anns))
        instances.pred_classes = torch.tensor([a["category_id"] for a in anns])
        masks = [polygons_to_bitmask(a["segmentation"], d["height"], d["width"]) for a in anns]
        instances.pred_masks = torch.from_numpy(np.stack(masks))
        instances.pred_keypoints = torch.tensor(
            [a["keypoints"] for a in anns], dtype=torch.float32
        ).view(-1, 4, 3)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["keypoints"]["AP"] == pytest.approx(100.0)


def test_unwritable_data_folder_names_the_variable(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.tempfile, "mkdtemp", refuse)  # root ignores chmod: refuse here
    monkeypatch.setenv("FPN_PLUGIN_DATA", str(tmp_path))
    with pytest.raises(PermissionError, match="FPN_PLUGIN_DATA.*writable"):
        generate_shapes_dataset(default_data_root(), "train", 2, 0, image_size=64)
    assert os.listdir(tmp_path) == []  # nothing written, nothing lost
