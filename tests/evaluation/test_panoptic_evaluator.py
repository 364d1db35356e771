"""PQ / SQ / RQ without panopticapi (fpn_plugin/evaluation/panoptic.py), and the evaluators each
dataset gets (fpn_plugin/evaluation/dataset_evaluators.py).

The evaluator is checked on hand-made cases, against a transcription of panopticapi's
definition (pq_compute) on random segmentations, against Detectron2's COCOPanopticEvaluator
where panopticapi is installed, and on fpn_shapes_panoptic's own ground truth.
"""

import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)

import fpn_plugin.evaluation.panoptic as panoptic_module
from fpn_plugin.data import (
    SHAPES_PANOPTIC_TRAIN,
    SHAPES_PANOPTIC_VAL,
    register_shapes_panoptic_datasets,
)
from fpn_plugin.evaluation import (
    PANOPTIC_RESULT_KEYS,
    PanopticQualityEvaluator,
    build_dataset_evaluator,
    build_panoptic_evaluator,
)

# Categories of the hand-made datasets: things 1, 2 and stuff 5, 6, with contiguous ids 0..3.
CATEGORIES = {1: True, 2: True, 5: False, 6: False}
CONTIGUOUS = {1: 0, 2: 1, 5: 2, 6: 3}
_counter = [0]


def _register(tmp_path, gt_images):
    """A COCO-panoptic dataset of ``gt_images`` [(ids (H, W), segments_info)]; returns its name."""
    _counter[0] += 1
    name = f"_panoptic_test_{_counter[0]}"
    root = tmp_path / name
    root.mkdir()
    annotations = []
    for image_id, (ids, segments) in enumerate(gt_images, start=1):
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(root / f"{image_id}.png")
        for s in segments:
            s.setdefault("area", int((ids == s["id"]).sum()))
            s.setdefault("iscrowd", 0)
        annotations.append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments}
        )
    categories = [{"id": c, "name": f"c{c}", "isthing": int(t)} for c, t in CATEGORIES.items()]
    with open(root / "panoptic.json", "w") as f:
        json.dump({"images": [], "annotations": annotations, "categories": categories}, f)
    MetadataCatalog.get(name).set(
        panoptic_json=str(root / "panoptic.json"),
        panoptic_root=str(root),
        thing_dataset_id_to_contiguous_id={c: CONTIGUOUS[c] for c, t in CATEGORIES.items() if t},
        stuff_dataset_id_to_contiguous_id={
            c: CONTIGUOUS[c] for c, t in CATEGORIES.items() if not t
        },
        label_divisor=1000,
    )
    return name


def _output(ids, segments):
    """A model's "panoptic_seg" output: contiguous category ids, isthing set."""
    info = [
        {
            "id": s["id"],
            "category_id": CONTIGUOUS[s["category_id"]],
            "isthing": CATEGORIES[s["category_id"]],
        }
        for s in segments
    ]
    return {"panoptic_seg": (torch.as_tensor(ids, dtype=torch.int32), info)}


def _evaluate(name, predictions):
    evaluator = PanopticQualityEvaluator(name)
    evaluator.reset()
    for image_id, (ids, segments) in enumerate(predictions, start=1):
        evaluator.process([{"image_id": image_id}], [_output(ids, segments)])
    return evaluator.evaluate()["panoptic_seg"]


def _close(a, b, tol=1e-4):  # percent; torchmetrics divides in float32
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


# --- panopticapi's definition, transcribed -----------------------------------------------------


def _panopticapi_pq(images):
    """PQ, SQ, RQ (All / Things / Stuff, percent) as panopticapi's pq_compute defines them, for
    [(gt ids, gt segments, pred ids, pred segments)]; id 0 is unlabelled / unassigned."""
    stats = {c: {"iou": 0.0, "tp": 0, "fp": 0, "fn": 0} for c in CATEGORIES}
    for gt_ids, gt_segments, pred_ids, pred_segments in images:
        gt = {s["id"]: s for s in gt_segments}
        pred = {s["id"]: s for s in pred_segments}
        pred_area = {i: int((pred_ids == i).sum()) for i in pred}
        pairs, counts = np.unique(
            np.stack([gt_ids.ravel(), pred_ids.ravel()]), axis=1, return_counts=True
        )
        overlap = {(int(g), int(p)): int(n) for (g, p), n in zip(pairs.T, counts)}
        gt_matched, pred_matched = set(), set()
        for (g, p), n in overlap.items():
            if g not in gt or p not in pred or gt[g]["iscrowd"]:
                continue
            if gt[g]["category_id"] != pred[p]["category_id"]:
                continue
            iou = n / (pred_area[p] + gt[g]["area"] - n - overlap.get((0, p), 0))
            if iou > 0.5:
                stats[gt[g]["category_id"]]["tp"] += 1
                stats[gt[g]["category_id"]]["iou"] += iou
                gt_matched.add(g)
                pred_matched.add(p)
        crowd = {}
        for g, s in gt.items():
            if g in gt_matched:
                continue
            if s["iscrowd"]:
                crowd[s["category_id"]] = g
            else:
                stats[s["category_id"]]["fn"] += 1
        for p, s in pred.items():
            if p in pred_matched:
                continue
            ignored = overlap.get((0, p), 0)
            if s["category_id"] in crowd:
                ignored += overlap.get((crowd[s["category_id"]], p), 0)
            if ignored / pred_area[p] <= 0.5:
                stats[s["category_id"]]["fp"] += 1
    results = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        values = []
        for c, st in stats.items():
            if (isthing is not None and CATEGORIES[c] != isthing) or st["tp"] + st["fp"] + st[
                "fn"
            ] == 0:
                continue
            denominator = st["tp"] + 0.5 * st["fp"] + 0.5 * st["fn"]
            sq = st["iou"] / st["tp"] if st["tp"] else 0.0
            values.append((st["iou"] / denominator, sq, st["tp"] / denominator))
        means = np.mean(values, axis=0) if values else [math.nan] * 3
        for key, value in zip(("PQ", "SQ", "RQ"), means):
            results[key + suffix] = 100 * float(value)
    return results


def _random_case(rng, size=24):
    """(gt ids, gt segments, pred ids, pred segments): stuff split by a column, unlabelled bands,
    thing rectangles; the prediction shifts, relabels, drops and adds things and leaves holes."""

    def paint(ids, segments, next_id, box, category):
        y0, x0, h, w = box
        region = np.zeros_like(ids, dtype=bool)
        region[y0 : y0 + h, x0 : x0 + w] = True
        ids[region] = next_id
        segments.append({"id": next_id, "category_id": category})

    def stuff(ids, segments, split, stuff_ids, next_id):
        left, right = stuff_ids
        cols = np.arange(ids.shape[1])[None, :].repeat(ids.shape[0], 0)
        for category, region in ((left, cols < split), (right, cols >= split)):
            segments.append({"id": next_id, "category_id": category})
            ids[region] = next_id
            next_id += 1
        return next_id

    gt_ids, gt_segments = np.zeros((size, size), np.int64), []
    stuff_ids = [int(c) for c in rng.permutation([5, 6])]  # one segment per stuff category
    split = int(rng.integers(4, size - 4))
    next_id = stuff(gt_ids, gt_segments, split, stuff_ids, 1)
    things = []
    for _ in range(int(rng.integers(1, 4))):
        h, w = rng.integers(3, 9, size=2)
        box = (int(rng.integers(0, size - h)), int(rng.integers(0, size - w)), int(h), int(w))
        category = int(rng.choice([1, 2]))
        paint(gt_ids, gt_segments, next_id, box, category)
        things.append((box, category))
        next_id += 1
    if rng.random() < 0.7:  # an unlabelled band
        row = int(rng.integers(0, size - 2))
        gt_ids[row : row + int(rng.integers(1, 4))] = 0

    pred_ids, pred_segments = np.zeros((size, size), np.int64), []
    swapped = stuff_ids[::-1] if rng.random() < 0.3 else stuff_ids
    next_id = stuff(pred_ids, pred_segments, split + int(rng.integers(-3, 4)), swapped, 1)
    for box, category in things:
        if rng.random() < 0.2:
            continue  # missed
        y0, x0, h, w = box
        dy, dx = rng.integers(-2, 3, size=2)
        moved = (max(0, y0 + int(dy)), max(0, x0 + int(dx)), h, w)
        paint(
            pred_ids,
            pred_segments,
            next_id,
            moved,
            3 - category if rng.random() < 0.2 else category,
        )
        next_id += 1
    if rng.random() < 0.5:  # a false positive
        paint(
            pred_ids,
            pred_segments,
            next_id,
            (int(rng.integers(0, size - 4)), int(rng.integers(0, size - 4)), 4, 4),
            1,
        )
    if rng.random() < 0.5:  # a hole left unassigned
        col = int(rng.integers(0, size - 3))
        pred_ids[:, col : col + int(rng.integers(1, 4))] = 0
    present = set(np.unique(pred_ids).tolist())
    pred_segments = [s for s in pred_segments if s["id"] in present]
    present = set(np.unique(gt_ids).tolist())
    gt_segments = [s for s in gt_segments if s["id"] in present]
    return gt_ids, gt_segments, pred_ids, pred_segments


# --- Hand-made cases -----------------------------------------------------------------------------


def _hand_made():
    """8 x 8 px: a thing (category 1, 16 px) on stuff 5 (48 px)."""
    gt = np.full((8, 8), 2)
    gt[0:4, 0:4] = 1
    return gt, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 5}]


def test_perfect_prediction_scores_100(tmp_path):
    gt, segments = _hand_made()
    name = _register(
        tmp_path, [(gt, [dict(s) for s in segments]), (gt.T.copy(), [dict(s) for s in segments])]
    )
    results = _evaluate(name, [(gt, segments), (gt.T.copy(), segments)])
    assert set(results) == set(PANOPTIC_RESULT_KEYS)
    assert all(v == pytest.approx(100.0) for v in results.values()), results


def test_known_partial_prediction(tmp_path):
    gt, segments = _hand_made()
    name = _register(tmp_path, [(gt, segments)])
    pred = np.full((8, 8), 3)
    pred[1:5, 0:4] = 1  # 12 px on the thing, 4 on the stuff: IoU 12 / 20 = 0.6, a true positive
    pred[6:8, 6:8] = 2  # a thing of category 2 on the stuff: a false positive
    # The stuff: 44 px predicted, 48 true, 40 in common: IoU 40 / 52.
    predicted = [
        {"id": 1, "category_id": 1},
        {"id": 2, "category_id": 2},
        {"id": 3, "category_id": 5},
    ]
    results = _evaluate(name, [(pred, predicted)])
    stuff = 100 * 40 / 52
    expected = {
        "PQ_th": 30.0,
        "SQ_th": 30.0,
        "RQ_th": 50.0,  # category 1: 0.6, 0.6, 1; category 2: 0, 0, 0
        "PQ_st": stuff,
        "SQ_st": stuff,
        "RQ_st": 100.0,
        "PQ": (60 + 0 + stuff) / 3,
        "SQ": (60 + 0 + stuff) / 3,
        "RQ": 200 / 3,
    }
    assert results == pytest.approx(expected)


def test_unassigned_pixels_count_as_in_panopticapi(tmp_path):
    """Pixels a prediction leaves unassigned stay in the IoU's union (they are not void)."""
    gt, segments = _hand_made()
    name = _register(tmp_path, [(gt, segments)])
    pred = np.full((8, 8), 2)
    pred[0:4, 0:4] = 0
    pred[0:4, 0:2] = 1
    pred[0:1, 2:4] = 1  # 10 of the 16 thing pixels; the other 6 unassigned: IoU 10 / 16
    results = _evaluate(name, [(pred, [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 5}])])
    assert results["SQ_th"] == pytest.approx(62.5) and results["RQ_th"] == pytest.approx(100.0)
    # An unlabelled ground-truth region: a prediction mostly on it is no false positive.
    gt_void = gt.copy()
    gt_void[6:8, :] = 0
    name = _register(tmp_path, [(gt_void, [dict(s) for s in segments])])
    pred = gt_void.copy()
    pred[6:8, :] = 3
    pred[5, 0:2] = 3  # 16 px unlabelled + 2 px on the stuff
    predicted = segments + [{"id": 3, "category_id": 2}]
    results = _evaluate(name, [(pred, predicted)])
    assert results["RQ_th"] == pytest.approx(100.0) and results["PQ_st"] < 100.0


def test_agrees_with_panopticapis_definition_on_random_cases(tmp_path):
    rng = np.random.default_rng(0)
    for trial in range(8):
        cases = [_random_case(rng) for _ in range(3)]
        name = _register(tmp_path, [(g, [dict(s) for s in gs]) for g, gs, _, _ in cases])
        results = _evaluate(name, [(p, ps) for _, _, p, ps in cases])
        expected = _panopticapi_pq(
            [
                (g, [dict(s, iscrowd=0, area=int((g == s["id"]).sum())) for s in gs], p, ps)
                for g, gs, p, ps in cases
            ]
        )
        assert all(_close(results[k], expected[k]) for k in PANOPTIC_RESULT_KEYS), (
            trial,
            results,
            expected,
        )
        assert 0 < results["PQ"] < 100


def test_prediction_as_labels_without_segments_info(tmp_path):
    """category * label_divisor + instance per pixel, -1 unassigned (Panoptic-DeepLab's format)."""
    rng = np.random.default_rng(1)
    gt, gt_segments, pred, pred_segments = _random_case(rng)
    name = _register(tmp_path, [(gt, gt_segments)])
    labels = np.full(pred.shape, -1)
    for s in pred_segments:
        labels[pred == s["id"]] = CONTIGUOUS[s["category_id"]] * 1000 + s["id"]
    evaluator = PanopticQualityEvaluator(name)
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"panoptic_seg": (torch.as_tensor(labels), None)}])
    assert evaluator.evaluate()["panoptic_seg"] == pytest.approx(
        _evaluate(name, [(pred, pred_segments)]), nan_ok=True
    )


@pytest.mark.skipif(
    importlib.util.find_spec("panopticapi") is None, reason="panopticapi is not installed"
)
def test_agrees_with_detectron2s_evaluator_where_panopticapi_is_installed(tmp_path):
    rng = np.random.default_rng(2)
    cases = [_random_case(rng) for _ in range(3)]
    name = _register(tmp_path, [(g, gs) for g, gs, _, _ in cases])
    reference = COCOPanopticEvaluator(name, str(tmp_path / "d2"))
    reference.reset()
    for image_id, (_, _, p, ps) in enumerate(cases, start=1):
        reference.process(
            [{"image_id": image_id, "file_name": f"{image_id}.jpg"}], [_output(p, ps)]
        )
    expected = reference.evaluate()["panoptic_seg"]
    results = _evaluate(name, [(p, ps) for _, _, p, ps in cases])
    assert all(_close(results[k], expected[k]) for k in PANOPTIC_RESULT_KEYS), (results, expected)


# --- Errors --------------------------------------------------------------------------------------


def test_bad_inputs_name_the_problem(tmp_path, monkeypatch):
    MetadataCatalog.get("_panoptic_test_no_metadata").set(thing_classes=["a"])
    with pytest.raises(ValueError, match="panoptic_json.*register_coco_panoptic"):
        PanopticQualityEvaluator("_panoptic_test_no_metadata")
    gt, segments = _hand_made()
    name = _register(tmp_path, [(gt, segments)])
    evaluator = PanopticQualityEvaluator(name)
    with pytest.raises(ValueError, match=r"\(8, 8\).*\(6, 8\)|\(6, 8\).*\(8, 8\)"):
        evaluator.process([{"image_id": 1}], [_output(gt[:6], segments)])
    with pytest.raises(ValueError, match="Image 7 has no annotation"):
        evaluator.process([{"image_id": 7}], [_output(gt, segments)])
    with pytest.raises(ValueError, match="segments_info does not list"):
        evaluator.process([{"image_id": 1}], [_output(gt, segments[:1])])
    monkeypatch.setitem(sys.modules, "torchmetrics.detection", None)
    with pytest.raises(ImportError, match="pip install torchmetrics"):
        PanopticQualityEvaluator(name)


def test_detectron2s_evaluator_is_used_where_panopticapi_is_installed(tmp_path, monkeypatch):
    gt, segments = _hand_made()
    name = _register(tmp_path, [(gt, segments)])
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        panoptic_module.importlib.util,
        "find_spec",
        lambda n: None if n == "panopticapi" else find_spec(n),
    )
    assert type(build_panoptic_evaluator(name)) is PanopticQualityEvaluator
    monkeypatch.setattr(
        panoptic_module.importlib.util,
        "find_spec",
        lambda n: object() if n == "panopticapi" else find_spec(n),
    )
    assert type(build_panoptic_evaluator(name, str(tmp_path))) is COCOPanopticEvaluator


# --- On fpn_shapes_panoptic ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_panoptic(tmp_path_factory):
    """fpn_shapes_panoptic_val, 3 images at 96 px, generated (the evaluators read its files when
    they are made, as after Detectron2's test loader)."""
    register_shapes_panoptic_datasets(
        str(tmp_path_factory.mktemp("data")), num_train=2, num_val=3, image_size=96
    )
    DatasetCatalog.get(SHAPES_PANOPTIC_VAL + "_separated")
    yield SHAPES_PANOPTIC_VAL
    for base in (SHAPES_PANOPTIC_VAL, SHAPES_PANOPTIC_TRAIN):
        for name in (base, base + "_separated", base + "_stuffonly"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_fpn_shapes_panoptic_ground_truth_as_prediction_scores_100(shapes_panoptic):
    """The separated metadata's contiguous ids (stuff 1..3, "things" 0) map back to 5..7."""
    name = shapes_panoptic + "_separated"
    dicts = DatasetCatalog.get(name)
    metadata = MetadataCatalog.get(name)
    with open(metadata.panoptic_json) as f:
        annotations = {a["image_id"]: a for a in json.load(f)["annotations"]}
    evaluator = build_panoptic_evaluator(name)
    evaluator.reset()
    for d in dicts:
        annotation = annotations[d["image_id"]]
        rgb = np.asarray(
            Image.open(os.path.join(metadata.panoptic_root, annotation["file_name"]))
        ).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        segments = []
        for s in annotation["segments_info"]:
            isthing = s["category_id"] in metadata.thing_dataset_id_to_contiguous_id
            mapping = (
                metadata.thing_dataset_id_to_contiguous_id
                if isthing
                else metadata.stuff_dataset_id_to_contiguous_id
            )
            segments.append(
                {"id": s["id"], "category_id": mapping[s["category_id"]], "isthing": isthing}
            )
        evaluator.process(
            [d], [{"panoptic_seg": (torch.as_tensor(ids, dtype=torch.int32), segments)}]
        )
    results = evaluator.evaluate()["panoptic_seg"]
    assert all(v == pytest.approx(100.0) for v in results.values()), results


def test_each_dataset_gets_its_evaluators(shapes_panoptic, tmp_path):
    def coco():
        return "the COCO evaluator"

    name = shapes_panoptic + "_separated"
    separated = build_dataset_evaluator(
        name, str(tmp_path), lambda: COCOEvaluator(name, output_dir=str(tmp_path))
    )
    assert isinstance(separated, DatasetEvaluators)
    kinds = [type(e) for e in separated._evaluators]
    assert kinds == [COCOEvaluator, SemSegEvaluator, PanopticQualityEvaluator]
    assert (
        type(build_dataset_evaluator(shapes_panoptic + "_stuffonly", str(tmp_path), coco))
        is SemSegEvaluator
    )
    standard = build_dataset_evaluator(shapes_panoptic, str(tmp_path), coco)  # no semantic labels
    assert [type(e) for e in standard._evaluators] == [str, PanopticQualityEvaluator]
    MetadataCatalog.get("_panoptic_test_instances").set(evaluator_type="coco")
    assert (
        build_dataset_evaluator("_panoptic_test_instances", str(tmp_path), coco)
        == "the COCO evaluator"
    )
