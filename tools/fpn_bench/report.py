"""The benchmark's report: the environment, the Markdown header and table, the JSON file.

The table is ``| measurement | fpn_plugin | Detectron2 | ratio |`` (ratio = fpn_plugin /
reference; < 1 means the plugin is faster or smaller), compact and with the figures
right-aligned, ready to paste into the docs.
"""

import json
import math
import os
import platform
import statistics
from typing import Dict, List, Mapping, Sequence

import torch
from tabulate import DataRow, TableFormat, tabulate

import detectron2

import fpn_plugin
from fpn_plugin.accel import strategies_of

from .bench import Bench
from .measurements import blocked_layout_active

__all__ = ["environment", "format_report", "write_json"]

HEADERS = ("measurement", "fpn_plugin", "Detectron2", "ratio")


def _cpu_name() -> str:
    """The CPU's model name, as PyTorch's environment report finds it (lscpu, sysctl, WMI)."""
    from torch.utils import collect_env

    info = collect_env.get_cpu_info(collect_env.run)
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "Name") and value.strip():
            return value.strip()
    first = info.strip().splitlines()[0].strip() if info.strip() else ""
    return first if first and ":" not in first else (platform.processor() or platform.machine())


def _cpu_low_precision_isa() -> Dict[str, bool]:
    """Which CPU instructions for bfloat16/float16 arithmetic PyTorch detects here: with them
    oneDNN runs MODEL.ACCEL.AUTOCAST_DTYPE convolutions natively; without them it emulates them.
    Empty where this PyTorch has no such probe."""
    probes = {
        "AVX512-BF16": "_is_avx512_bf16_supported",
        "AMX tiles": "_is_amx_tile_supported",
        "AMX-FP16": "_is_amx_fp16_supported",
    }
    return {
        name: bool(getattr(torch.cpu, fn)())
        for name, fn in probes.items()
        if hasattr(torch.cpu, fn)
    }


def environment(b: Bench) -> Dict:
    """Versions, device, threads, inputs, settings: the JSON ``environment``."""
    import torchvision

    from detectron2.utils.collect_env import collect_env_info

    o = b.options
    cuda = b.device.startswith("cuda")
    images, _ = b.batch("detectron2")
    with torch.no_grad():
        blocked = blocked_layout_active(b.ours.backbone, images.tensor)
        ref_blocked = blocked_layout_active(b.ref.backbone, images.tensor)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "fpn_plugin": fpn_plugin.__version__,
        "device": b.device,
        "device_name": torch.cuda.get_device_name(0) if cuda else _cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "config": b.config_names[0],
        "reference_config": b.config_names[1],
        "weights": o.weights or "random, RPN head and box predictor scaled (make_trained_like)",
        "images": o.images or f"random {o.size[0]}x{o.size[1]}",
        "image_sizes": [list(s) for s in images.image_sizes],
        "padded_batch_size": list(images.tensor.shape[-2:]),
        "batch": o.batch,
        "reps": o.reps,
        "warmup": o.warmup,
        "seed": o.seed,
        "opts": list(o.opts),
        "cpu_blocked_layout_active": blocked,
        "cpu_low_precision_isa": None if cuda else _cpu_low_precision_isa(),
        "memory_allocator": b.allocator,
        "accelerate_reference": o.accelerate_reference,
        "reference_cpu_blocked_layout_active": ref_blocked,
        "reference_backbone_strategies": [s.__name__ for s in strategies_of(b.ref.backbone)],
        "collect_env": collect_env_info(),
    }


def _fmt(value: float, unit: str) -> str:
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if value >= 1.0:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} µs"


def _summarise(values: Sequence) -> str:
    if not values:
        return "-"
    if len(set(values)) == 1:
        return f"{values[0]} (x{len(values)})"
    return f"median {statistics.median(values):g}, min {min(values)}, max {max(values)}"


def _alignment_line(colwidths, colaligns) -> str:
    # The first column left, the figures right; the rows are not padded to the column widths.
    return "|---|" + "---:|" * (len(colwidths) - 1)


#: tabulate's "github" pipe table, with alignment colons and unpadded cells (as in the docs).
_MARKDOWN = TableFormat(
    lineabove=None,
    linebelowheader=_alignment_line,
    linebetweenrows=None,
    linebelow=None,
    headerrow=DataRow("|", "|", "|"),
    datarow=DataRow("|", "|", "|"),
    padding=1,
    with_header_hide=None,
)


def _table(results: Mapping[str, Dict]) -> str:
    rows = []
    for record in results.values():
        ref = record[record["reference"]]
        ref_text = _fmt(ref, record["unit"]) + (
            " (torchvision)" if record["reference"] == "torchvision" else ""
        )
        ratio = record["ratio"]
        ratio_text = f"{ratio:.2f}" if not math.isfinite(ratio) or ratio >= 0.1 else f"{ratio:.2g}"
        rows.append([record["label"], _fmt(record["ours"], record["unit"]), ref_text, ratio_text])
    return tabulate(
        rows, HEADERS, tablefmt=_MARKDOWN, stralign=None, numalign=None, disable_numparse=True
    )


def format_report(
    env: Dict,
    results: Mapping[str, Dict],
    checks: Mapping[str, float],
    counts: Mapping[str, List[int]],
    notes: Sequence[str] = (),
) -> str:
    """The header (a Markdown list) and the Markdown table of ``results``."""
    lines = [
        "# fpn_plugin vs Detectron2",
        "",
        f"- fpn_plugin {env['fpn_plugin']} ({env['config']}) vs Detectron2 {env['detectron2']} "
        f"({env['reference_config']}); torch {env['torch']}, torchvision {env['torchvision']}, "
        f"Python {env['python']}",
        f"- device: {env['device']} ({env['device_name']}), threads: {env['threads']} "
        f"(of {env['cpu_count']} CPUs)",
        f"- images: {env['images']}, sizes {env['image_sizes']} "
        f"(padded {env['padded_batch_size']}); "
        f"weights: {env['weights']}",
        f"- median of {env['reps']} repetitions after {env['warmup']} warm-up ones, the two models "
        "alternated (A, B, A, B, ...)",
        "- oneDNN blocked-layout inference (MODEL.ACCEL.CPU_BLOCKED_LAYOUT) active: "
        f"{env.get('cpu_blocked_layout_active')}",
        f"- {env['memory_allocator']}",
    ]
    if env.get("cpu_low_precision_isa"):
        isa = ", ".join(
            f"{name} {'yes' if ok else 'no'}" for name, ok in env["cpu_low_precision_isa"].items()
        )
        lines.append(
            "- CPU instructions for MODEL.ACCEL.AUTOCAST_DTYPE (bfloat16/float16 convolutions): "
            + isa
        )
    if env.get("accelerate_reference"):
        strategies = ", ".join(env.get("reference_backbone_strategies") or []) or "none"
        lines.append(
            "- Detectron2's model accelerated too (--accelerate-reference): "
            "fpn_plugin.accel.accelerate("
            f"model, the plugin config's MODEL.ACCEL); its backbone's strategies: {strategies}; "
            f"blocked layout active: {env.get('reference_cpu_blocked_layout_active')}"
        )
    if env.get("opts"):
        # MODEL.ACCEL is read by accelerate() alone, which Detectron2's model gets only with
        # --accelerate-reference; its components ignore the plugin's other keys.
        scope = (
            "MODEL.ACCEL applies to both"
            if env.get("accelerate_reference")
            else "Detectron2's components ignore the plugin's keys"
        )
        lines.append(
            f"- config overrides (both models; {scope}): {' '.join(map(str, env['opts']))}"
        )
    for key, value in counts.items():
        lines.append(f"- RPN proposals per image, {key}: {_summarise(value)}")
    for key, value in checks.items():
        lines.append(f"- check: {key} = {value:.3g}")
    lines += [f"- {note}" for note in notes]
    lines += [
        "",
        _table(results),
        "",
        "ratio = fpn_plugin / reference (< 1: fpn_plugin is faster or smaller).",
    ]
    return "\n".join(lines)


def _finite(obj):
    """JSON-safe copy (NaN/inf -> None)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str, out: Dict) -> None:
    """``out`` (the run's results) to ``path``, NaN and infinities as null, folders created."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_finite(out), f, indent=2)
