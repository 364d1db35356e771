"""tools/fpn_bench/ and tools/benchmark.py: a tiny run of the tool (small images, one
repetition) as a subprocess, the models the package builds, and --accelerate-reference.

They check that the benchmark runs and writes sensible figures; they never assert speed.
"""

import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fpn_bench import models as benchmark_models
from fpn_bench.bench import Bench
from fpn_bench.measurements import bottom_up_call, bottom_up_input
from fpn_bench.models import REFERENCE_FPN, build_cfgs, build_models
from fpn_bench.options import BenchmarkOptions
from fpn_bench.report import format_report
from fpn_bench.run import run_benchmark
from fpn_plugin.accel.anchor_cache import AnchorCache
from fpn_plugin.accel.blocked_layout import BlockedLayoutNeck
from tests.accel.test_cpu_allocator import GLIBC, env_without_allocator_settings
from tests.conftest import REPO, load_tool

BENCHMARK = os.path.join(REPO, "tools", "benchmark.py")
QUICKSTART = os.path.join(REPO, "configs", "quickstart.yaml")


def test_benchmark_tiny_run_writes_json(tmp_path):
    out = tmp_path / "out.json"
    # Without the user's allocator settings, so that --keep-freed-memory applies.
    env = dict(
        env_without_allocator_settings(os.environ),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    proc = subprocess.run(
        [sys.executable, BENCHMARK, "--reps", "1", "--warmup", "0", "--threads", "1",
         "--size", "256x320", "--num-rois", "300", "--train-rois", "128",
         "--only", "anchors,pooler", "--keep-freed-memory", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    assert "| measurement | fpn_plugin | Detectron2 | ratio |" in proc.stdout

    data = json.loads(out.read_text())
    env_info = data["environment"]
    for key in ("torch", "torchvision", "detectron2", "device", "threads", "image_sizes"):
        assert key in env_info
    assert env_info["device"] == "cpu" and env_info["threads"] == 1
    assert env_info["image_sizes"] == [[256, 320], [256, 320]]
    # What oneDNN has for MODEL.ACCEL.AUTOCAST_DTYPE on this CPU, as PyTorch detects it.
    isa = env_info["cpu_low_precision_isa"]
    assert isinstance(isa, dict) and all(isinstance(v, bool) for v in isa.values())
    if hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        assert isa["AVX512-BF16"] == torch.cpu._is_avx512_bf16_supported()
        assert "CPU instructions for MODEL.ACCEL.AUTOCAST_DTYPE" in proc.stdout

    # The allocator settings the times were taken with (CPU times depend on them).
    expected = "keeps freed blocks" if GLIBC else "not glibc"
    assert expected in env_info["memory_allocator"] and env_info["memory_allocator"] in proc.stdout

    measurements = data["measurements"]
    assert set(measurements) == {"anchors", "pooler_test", "pooler_train"}
    for name, m in measurements.items():
        for key in ("ours", "detectron2", "ratio", "unit", "reps"):
            assert key in m, (name, key)
        assert m["unit"] == "s" and m["reps"] == 1
        for key in ("ours", "detectron2", "ratio"):
            assert isinstance(m[key], float) and math.isfinite(m[key]) and m[key] > 0, (
                name,
                key,
                m[key],
            )
    assert measurements["pooler_test"]["rois_per_image"] == 300
    assert measurements["pooler_train"]["rois_per_image"] == 128

    # The two poolers agree. Random-weight R50 features reach thousands, where float32 rounding
    # alone is ~1e-3 in absolute terms, so agreement is measured relative to the largest value.
    checks = data["checks"]
    assert 0 <= checks["pooler_max_rel_diff"] < 1e-3
    assert checks["pooler_max_abs_diff"] <= 1e-3 * checks["pooler_max_abs_value"]
    # The scaled random heads give a realistic proposal load.
    for counts in data["proposal_counts"].values():
        assert counts and min(counts) >= 300


def test_reference_for_another_bottom_up_is_detectron2s_fpn_over_it():
    """--config-file configs/quickstart.yaml (a BasicBlock bottom-up that build_resnet_fpn_backbone
    cannot build): the reference is Detectron2's FPN class over the same bottom-up, the weights load
    strictly, and both models give the same features."""
    from detectron2.modeling.backbone.fpn import FPN

    from fpn_plugin import FPNNeck
    from fpn_plugin.accel import plain_class

    # A second import must not register the reference twice (the registry raises).
    importlib.reload(benchmark_models)
    options = load_tool("benchmark.py").parse_args(["--config-file", QUICKSTART])
    assert options == BenchmarkOptions(config_file=QUICKSTART)
    cfg_ours, cfg_ref, _ = build_cfgs(options)
    assert cfg_ref.MODEL.BACKBONE.NAME == REFERENCE_FPN
    ref, ours = build_models(options, cfg_ours, cfg_ref)
    assert type(ref.backbone) is FPN and isinstance(ours.backbone, FPNNeck)
    assert plain_class(type(ref.backbone.bottom_up)) is plain_class(type(ours.backbone.bottom_up))
    x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        a, b = ref.backbone(x), ours.backbone(x)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)


def test_bottom_up_alone_is_timed_in_the_backbones_precision():
    """With MODEL.ACCEL.AUTOCAST_DTYPE the "bottom-up alone" figure times the bottom-up under
    autocast, as the backbone runs it in eval; without it, in float32 (and through the blocked
    layout, which the float32 quickstart backbone takes, with outputs converted back to NCHW)."""
    x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(0)) * 255
    for dtype_name, dtype in (("", torch.float32), ("bfloat16", torch.bfloat16)):
        options = BenchmarkOptions(
            config_file=QUICKSTART, opts=["MODEL.ACCEL.AUTOCAST_DTYPE", dtype_name]
        )
        cfg_ours, cfg_ref, _ = build_cfgs(options)
        _, ours = build_models(options, cfg_ours, cfg_ref)
        with torch.no_grad():
            outputs = bottom_up_call(ours.backbone, bottom_up_input(ours.backbone, x))()
            expected = ours.backbone.bottom_up(x)
        assert {v.dtype for v in outputs.values()} == {dtype}, dtype_name
        assert all(not v.is_mkldnn for v in outputs.values())
        if not dtype_name:
            assert isinstance(ours.backbone, BlockedLayoutNeck)
            for k in expected:  # the blocked layout is bit-identical to the NCHW path
                assert torch.equal(outputs[k], expected[k]), k


def _tiny(*flags):
    return load_tool("benchmark.py").parse_args(
        ["--config-file", QUICKSTART, "--size", "96x128", "--reps", "1", "--warmup", "0",
         "--threads", str(torch.get_num_threads()), "--num-rois", "50", "--train-rois", "32",
         *flags]
    )  # fmt: skip


def test_accelerate_reference_applies_the_plugins_strategies_to_detectron2s_model():
    """--accelerate-reference: Detectron2's own model gets the strategies of the plugin config's
    MODEL.ACCEL (here: the blocked layout on its FPN, the anchor cache), keeps computing the same
    features as the plugin's, and the report says so. Without it the reference stays plain."""
    plain = Bench(_tiny("--only", "anchors"))
    assert not isinstance(plain.ref.backbone, BlockedLayoutNeck)
    assert not isinstance(plain.ref.proposal_generator.anchor_generator, AnchorCache)

    options = _tiny("--only", "neck,anchors", "--accelerate-reference")
    assert options.accelerate_reference
    b = Bench(options)
    assert isinstance(b.ref.backbone, BlockedLayoutNeck) and isinstance(
        b.ours.backbone, BlockedLayoutNeck
    )
    assert isinstance(b.ref.proposal_generator.anchor_generator, AnchorCache)
    x = b.batch("detectron2")[0].tensor
    with torch.no_grad():
        assert b.ref.backbone.takes_blocked_path(x)
        a, c = b.ref.backbone(x), b.ours.backbone(x)
    for k in a:
        torch.testing.assert_close(c[k], a[k], rtol=1e-4, atol=1e-4)

    out = run_benchmark(options)
    env = out["environment"]
    assert (
        env["accelerate_reference"] is True and env["reference_cpu_blocked_layout_active"] is True
    )
    assert "BlockedLayoutNeck" in env["reference_backbone_strategies"]
    assert set(out["measurements"]) == {"bottom_up", "fpn_layers", "neck", "anchors"}
    report = format_report(
        env, out["measurements"], out["checks"], out["proposal_counts"], out["notes"]
    )
    assert "--accelerate-reference" in report and "BlockedLayoutNeck" in report


@pytest.mark.parametrize("argv, named", [
    (["--only", "neck,warp"], "--only"),
    (["--size", "16x800"], "--size"),
    (["--reps", "0"], "--reps"),
    (["--config-file", "no/such.yaml"], "--config-file"),
])  # fmt: skip
def test_bad_flags_are_named(capsys, argv, named):
    with pytest.raises(SystemExit):
        load_tool("benchmark.py").parse_args(argv)
    assert named in capsys.readouterr().err
