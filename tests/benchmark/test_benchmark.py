"""Smoke test of tools/benchmark.py: a tiny run (small images, one repetition) as a subprocess.

It checks that the tool runs and writes sensible figures; it never asserts speed.
"""
import json
import math
import os
import subprocess
import sys

from tests.accel.test_cpu_allocator import GLIBC, env_without_allocator_settings
from tests.conftest import REPO

BENCHMARK = os.path.join(REPO, "tools", "benchmark.py")


def test_benchmark_tiny_run_writes_json(tmp_path):
    import torch

    out = tmp_path / "out.json"
    # Without the user's allocator settings, so that --keep-freed-memory applies.
    env = dict(env_without_allocator_settings(os.environ), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, BENCHMARK, "--reps", "1", "--warmup", "0", "--threads", "1", "--size", "256x320",
         "--num-rois", "300", "--train-rois", "128", "--only", "anchors,pooler", "--keep-freed-memory", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "| measurement | fpn_plugin | Detectron2 | ratio |" in proc.stdout

    data = json.loads(out.read_text())
    env_info = data["environment"]
    for key in ("torch", "torchvision", "detectron2", "device", "threads", "image_sizes"):
        assert key in env_info
    assert env_info["device"] == "cpu" and env_info["threads"] == 1
    assert env_info["image_sizes"] == [[256, 320], [256, 320]]
    # What oneDNN has for MODEL.FPN.AUTOCAST_DTYPE on this CPU, as PyTorch detects it.
    isa = env_info["cpu_low_precision_isa"]
    assert isinstance(isa, dict) and all(isinstance(v, bool) for v in isa.values())
    if hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        assert isa["AVX512-BF16"] == torch.cpu._is_avx512_bf16_supported()
        assert "CPU instructions for MODEL.FPN.AUTOCAST_DTYPE" in proc.stdout

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
            assert isinstance(m[key], float) and math.isfinite(m[key]) and m[key] > 0, (name, key, m[key])
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


def _benchmark_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fpn_benchmark_tool", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_for_another_bottom_up_is_detectron2s_fpn_over_it():
    """--config-file configs/quickstart.yaml (a BasicBlock bottom-up that build_resnet_fpn_backbone
    cannot build): the reference is Detectron2's FPN class over the same bottom-up, the weights load
    strictly, and both models give the same features."""
    import torch
    from detectron2.modeling.backbone.fpn import FPN

    from fpn_plugin import FPNNeck

    bench = _benchmark_module()
    _benchmark_module()  # a second import must not register the reference twice (the registry raises)
    args = bench.parse_args(["--config-file", os.path.join(REPO, "configs", "quickstart.yaml")])
    cfg_ours, cfg_ref, _ = bench.build_cfgs(args)
    assert cfg_ref.MODEL.BACKBONE.NAME == bench.REFERENCE_FPN
    ref, ours = bench.build_models(args, cfg_ours, cfg_ref)
    assert type(ref.backbone) is FPN and isinstance(ours.backbone, FPNNeck)
    assert type(ref.backbone.bottom_up) is type(ours.backbone.bottom_up)
    x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        a, b = ref.backbone(x), ours.backbone(x)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4)


def test_bottom_up_alone_is_timed_in_the_backbones_precision():
    """With MODEL.FPN.AUTOCAST_DTYPE the "bottom-up alone" figure times the bottom-up under autocast,
    as the backbone runs it in eval; without it, in float32."""
    import torch

    bench = _benchmark_module()
    x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(0)) * 255
    for dtype_name, dtype in (("", torch.float32), ("bfloat16", torch.bfloat16)):
        args = bench.parse_args(["--config-file", os.path.join(REPO, "configs", "quickstart.yaml"),
                                 "--opts", "MODEL.FPN.AUTOCAST_DTYPE", dtype_name])
        cfg_ours, cfg_ref, _ = bench.build_cfgs(args)
        _, ours = bench.build_models(args, cfg_ours, cfg_ref)
        with torch.no_grad():
            outputs = bench._bottom_up_call(ours.backbone, bench._bottom_up_input(ours.backbone, x))()
        assert {v.dtype for v in outputs.values()} == {dtype}, dtype_name
