"""The plugin on a CUDA GPU (``pytest -m cuda``; skipped without one, e.g. in CI).

The CPU tests' checks, on the GPU: the detectors equal Detectron2's (same weights; features,
proposals and detections to 1e-3 in float32, TF32 off), a few training iterations with and
without ``SOLVER.AMP.ENABLED``, export by tracing, and the execution strategies of
``fpn_plugin.accel`` (the defaults keep the plain model's detections; the vectorised RoI pooler
and the float16 fast mode stay close to float32). Images are small: each test takes seconds.
``tools/gpu_check.py`` runs this file with the rest of the GPU check.
"""

import copy

import pytest
import torch

from detectron2.engine import AMPTrainer
from detectron2.modeling import build_model
from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from fpn_plugin.accel import AccelOptions, accelerate, strategies_of
from fpn_plugin.accel.multilevel_pooler import MultiLevelROIAlign
from fpn_plugin.engine.trainer import FPNTrainer
from fpn_plugin.export import compare_detections, eager_detections, export_tracing, run_traced
from fpn_plugin.export.common import fields
from fpn_plugin.utils.testing import blob_image as smooth_image
from fpn_plugin.utils.testing import make_trained_like, random_boxes
from tests.accel.test_fast_mode import assert_fast_mode_close
from tests.accel.test_roi_align import fast_pooler
from tests.conftest import build_parity_pair, plugin_cfg
from tests.engine.test_training import (  # noqa: F401  (fixtures)
    _cleanup_catalog,
    data_root,
    read_metrics,
    tiny_cfg,
)
from tests.modeling.test_detectors import DETECTORS, EVAL_OPTS, NUM_DETECTIONS, _raw_and_final
from tests.modeling.test_parity import _run
from tests.modeling.test_pooler import SCALES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEVICE = "cuda"
TOL = dict(rtol=1e-3, atol=1e-3)


@pytest.fixture(autouse=True, scope="module")
def _float32():
    """Plain float32 convolutions and matrix products (cuDNN uses TF32 by default on Ampere and
    later, 10-bit mantissas: the comparisons below are of float32)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _inputs(sizes=((512, 768), (448, 640)), seed=1):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, h, w, generator=g) * 255 for h, w in sizes]
    return [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]


def _on_cpu(detections):
    return {k: v.cpu() for k, v in detections.items()}


def _assert_same_detections(ref, got, tol=1e-3):
    """Detections (Instances or field dicts) equal to ``tol`` (pixels, scores) up to the order of
    near-tied scores, classes equal (:func:`fpn_plugin.export.compare_detections`)."""
    ref = _on_cpu(ref if isinstance(ref, dict) else fields(ref))
    got = _on_cpu(got if isinstance(got, dict) else fields(got))
    result = compare_detections(ref, got, tol)
    assert len(ref["scores"]) > 0 and result["ok"] == 1.0, result
    return result


@pytest.fixture(scope="module")
def r50_models():
    """(Detectron2's R50-FPN, the plugin's plain, the plugin's as the tools run it) on the GPU,
    eval, the same weights."""
    ref, plain, _ = build_parity_pair(accelerated=False)
    ours = accelerate(copy.deepcopy(plain), AccelOptions())
    return ref.to(DEVICE), plain.to(DEVICE), ours.to(DEVICE)


def test_r50_fpn_matches_detectron2(r50_models):
    ref, _, ours = r50_models
    inputs = _inputs()
    f1, p1, d1 = _run(ref, inputs)
    f2, p2, d2 = _run(ours, inputs)
    assert f1.keys() == f2.keys() == {"p2", "p3", "p4", "p5", "p6"}
    for k in f1:
        assert f2[k].device.type == DEVICE
        torch.testing.assert_close(f2[k], f1[k], **TOL)
    for a, b in zip(p1, p2):
        assert len(a) == len(b) >= 500  # a realistic proposal load
        torch.testing.assert_close(b.proposal_boxes.tensor, a.proposal_boxes.tensor, **TOL)
        torch.testing.assert_close(b.objectness_logits, a.objectness_logits, **TOL)
    for a, b in zip(d1, d2):
        assert len(a.pred_classes.unique()) > 1
        _assert_same_detections(a, b)
        assert b.pred_levels.min() >= 2 and b.pred_levels.max() <= 5


def test_default_strategies_keep_the_plain_models_detections(r50_models):
    _, plain, ours = r50_models
    assert any(strategies_of(m) for m in ours.modules())
    inputs = _inputs(seed=2)
    with torch.no_grad():
        a = plain(inputs)
        b = ours(inputs)
    for x, y in zip(a, b):
        x, y = x["instances"], y["instances"]
        assert len(x) == len(y) > 0
        assert torch.equal(y.pred_boxes.tensor, x.pred_boxes.tensor)
        assert torch.equal(y.scores, x.scores)
        assert torch.equal(y.pred_classes, x.pred_classes)


def test_vectorised_roi_pooler_is_close_to_detectron2s(r50_models):
    """MODEL.ACCEL.ROI_ALIGN "embedding_bag" on the GPU: the whole detector, and the pooler alone
    on a real-sized load (2 x 1000 RoIs on 256-channel P2-P5), forward and backward."""
    ref, plain, _ = r50_models
    fast = accelerate(copy.deepcopy(plain), AccelOptions(roi_align="embedding_bag"))
    assert isinstance(fast.roi_heads.box_pooler, MultiLevelROIAlign)
    inputs = _inputs(seed=3)
    with torch.no_grad():
        for a, b in zip(ref(inputs), fast(inputs)):
            _assert_same_detections(a["instances"], b["instances"])

    g = torch.Generator().manual_seed(2)
    feats = [
        torch.randn(2, 256, 800 // s, 1216 // s, generator=g).to(DEVICE) for s in (4, 8, 16, 32)
    ]
    boxes = [Boxes(random_boxes(1000, 800, 1216, g, 8.0, 900.0).to(DEVICE)) for _ in range(2)]
    args = dict(output_size=7, scales=SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    pooler = fast_pooler(**args)
    assert pooler.pools_in_one_call(feats[0])
    grads = []
    for p in (ROIPooler(**args), pooler):
        xs = [f.clone().requires_grad_() for f in feats]
        out = p(xs, boxes)
        out.backward(torch.arange(out.numel(), device=DEVICE).view_as(out).remainder(7).float())
        grads.append((out.detach(), [x.grad for x in xs]))
    (ref_out, ref_grads), (out, out_grads) = grads
    assert out.device.type == DEVICE and out.shape == (2000, 256, 7, 7)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    for a, b in zip(ref_grads, out_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(DETECTORS))
def test_other_detectors_match_detectron2(name):
    d2_name, path = DETECTORS[name]
    ref, ours, _ = build_parity_pair(
        d2_name, path, ["TEST.DETECTIONS_PER_IMAGE", NUM_DETECTIONS[name]]
    )
    ref, ours = ref.to(DEVICE), ours.to(DEVICE)
    inputs = _inputs(((384, 576),), seed=4)
    raw_ref, final_ref = _raw_and_final(ref, inputs)
    raw_ours, final_ours = _raw_and_final(ours, inputs)
    n = NUM_DETECTIONS[name]
    for a, b in zip(final_ref, final_ours):
        assert len(a) == len(b) == n and b.scores.device.type == DEVICE
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, **TOL)
        torch.testing.assert_close(b.scores, a.scores, **TOL)
        assert torch.equal(b.pred_classes, a.pred_classes)
    for a, b in zip(raw_ref, raw_ours):
        if name == "mask_rcnn":
            assert b.pred_masks.shape == a.pred_masks.shape == (n, 1, 28, 28)
            torch.testing.assert_close(b.pred_masks, a.pred_masks, **TOL)
            assert 0.01 < (a.pred_masks > 0.5).float().mean() < 0.99
        if name == "keypoint_rcnn":
            assert b.pred_keypoints.shape == a.pred_keypoints.shape == (n, 17, 3)
            torch.testing.assert_close(b.pred_keypoints, a.pred_keypoints, **TOL)
            assert torch.isfinite(a.pred_keypoint_heatmaps).all()
    if name == "mask_rcnn":  # image-sized masks after pasting
        a, b = final_ref[0].pred_masks, final_ours[0].pred_masks
        assert a.shape == b.shape == (n, 384, 576)
        assert (a != b).float().mean() < 1e-3


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "amp"])
def test_a_few_training_iterations(amp, data_root, tmp_path):
    cfg = tiny_cfg(
        data_root,
        tmp_path,
        "MODEL.DEVICE",
        DEVICE,
        "SOLVER.MAX_ITER",
        8,
        "SOLVER.CHECKPOINT_PERIOD",
        100,
        "SOLVER.AMP.ENABLED",
        amp,
        *EVAL_OPTS,
    )
    trainer = FPNTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    assert next(model.parameters()).device.type == DEVICE
    assert isinstance(trainer._trainer, AMPTrainer) == amp
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dtypes = []
    conv = model.backbone.bottom_up.stem.conv1
    hook = conv.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype) if m.training else None
    )
    try:
        trainer.train()
    finally:
        hook.remove()
    # With AMP the convolutions ran in float16 (Detectron2's AMPTrainer), else in float32.
    assert dtypes and set(dtypes) == {torch.float16 if amp else torch.float32}
    last = [m for m in read_metrics(tmp_path) if "total_loss" in m][-1]
    assert last["iteration"] == 7
    losses = {k: v for k, v in last.items() if k.startswith("loss_")}
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) > len(before) // 2  # it did train
    results = FPNTrainer.test(cfg, model)
    assert all(0 <= results["bbox"][k] <= 100 for k in ("AP", "AP50", "AP75")), results


def test_export_by_tracing_on_the_gpu(tmp_path):
    """torch.jit.trace on the GPU, saved, loaded back and run on an image of another size: the
    detections of eager mode to 1e-3."""
    torch.manual_seed(0)
    model = build_model(plugin_cfg("configs/quickstart.yaml")).eval()
    make_trained_like(model)
    model.to(DEVICE)
    images = [smooth_image(512, 640, 1).to(DEVICE), smooth_image(608, 800, 2).to(DEVICE)]
    traced, names = export_tracing(model, images[0])
    path = str(tmp_path / "model.ts")
    torch.jit.save(traced, path)
    loaded = torch.jit.load(path)
    for img in images:
        got = run_traced(loaded, img, names)
        assert got["pred_boxes"].device.type == DEVICE
        result = _assert_same_detections(eager_detections(model, img), got)
        assert result["num_eager"] >= 50 and result["matched"] >= result["num_eager"] - 2, result


def test_float16_fast_mode_is_close_to_float32():
    """MODEL.ACCEL.AUTOCAST_DTYPE float16 + CHANNELS_LAST (the GPU fast mode): convolutions in
    float16, float32 channels-last features close to the float32 model's, finite detections."""
    torch.manual_seed(0)
    cfg = plugin_cfg("configs/quickstart.yaml")
    ref = build_model(cfg).eval().to(DEVICE)
    fast = accelerate(
        copy.deepcopy(ref), AccelOptions(autocast_dtype="float16", channels_last=True)
    )
    # float16 keeps 11 significant bits (relative rounding 2**-12 per op): a few layers deep the
    # features agree to well under a per cent of their scale, and are not identical.
    assert_fast_mode_close(ref, fast, _inputs(((512, 512),), seed=5), torch.float16, rel_tol=0.01)
