"""Where a detector's time goes: one call under ``torch.profiler``, its CPU time split by kind of
operator (tools/benchmark_deploy.py ``--profile``).

Every ATen operator's *self* time (its time less that of the operators it calls) is put in one
kind by its name; the kinds add up to the time spent inside operators. What is left of the call's
wall time ran outside any operator: Python glue in eager mode, and in an AOTInductor package the
kernels Inductor generated (fused element-wise loops, its own matrix products), which call no
ATen operator.

:func:`matmul_rate` and :func:`multiply_adds` give the floor under any runner's time on this
CPU: the detector's multiply-adds at the rate of one large float32 matrix product.
"""

import re
import time
from typing import Callable, Dict, List, Mapping, Tuple

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from detectron2.utils.analysis import FlopCountAnalysis

__all__ = [
    "KINDS",
    "OUTSIDE",
    "format_profile",
    "kind_of",
    "matmul_rate",
    "multiply_adds",
    "op_profile",
]

#: Kinds of operator, by a pattern of their names; the first that matches is the kind.
KINDS: Tuple[Tuple[str, str], ...] = (
    ("convolution", r"conv|mkldnn_convolution|_convolution_pointwise"),
    ("RoI align", r"roi_align"),
    ("NMS", r"\bnms\b|::nms"),
    ("matrix product", r"addmm|\bmm\b|::mm$|bmm|linear|matmul|mkl_linear"),
    ("batch norm", r"batch_norm"),
    ("sort / top-k", r"sort|topk"),
    ("resize", r"upsample|interpolate|grid_sampler"),
)
OTHER = "other operators"
#: Wall time outside every operator.
OUTSIDE = "outside operators"


def kind_of(name: str) -> str:
    """The kind (a :data:`KINDS` name, or ``"other operators"``) of the operator ``name``
    (e.g. ``aten::mkldnn_convolution``)."""
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return OTHER


def op_profile(run: Callable[[], object], reps: int = 1) -> Dict[str, float]:
    """Seconds per call of ``run()`` by kind of operator (the keys of :data:`KINDS`,
    ``"other operators"``, ``"outside operators"``) and ``"total"`` (wall), averaged over
    ``reps`` calls under the profiler (after one untimed call)."""
    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(reps):
            run()
        wall = time.perf_counter() - start
    seconds = {kind: 0.0 for kind, _ in KINDS}
    seconds[OTHER] = 0.0
    for event in prof.key_averages():
        seconds[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    inside = sum(seconds.values())
    seconds[OUTSIDE] = max(0.0, wall - inside)
    seconds["total"] = wall
    return {kind: value / reps for kind, value in seconds.items()}


def format_profile(profiles: Mapping[str, Dict[str, float]]) -> str:
    """Markdown table: one column per profiled artefact (seconds per call, and the share of its
    total), one row per kind of operator."""
    names = list(profiles)
    kinds: List[str] = [k for k, _ in KINDS] + [OTHER, OUTSIDE, "total"]
    lines = [
        "| kind | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for kind in kinds:
        cells = []
        for name in names:
            p = profiles[name]
            share = p[kind] / p["total"] if p["total"] else 0.0
            cells.append(
                f"{p[kind]:.3f} s" if kind == "total" else f"{p[kind]:.3f} s ({share:.0%})"
            )
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def matmul_rate(size: int = 2048, reps: int = 5) -> float:
    """Multiply-adds per second of a (size x size) float32 matrix product on the CPU, with torch's
    current threads: best of ``reps`` (after one untimed), the practical ceiling of the
    convolutions and fully connected layers, which oneDNN runs as such products."""
    a, b = torch.rand(size, size), torch.rand(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return size**3 / best


def multiply_adds(model: nn.Module, image: torch.Tensor) -> int:
    """Multiply-adds of a Detectron2 detector's inference on one (3, H, W) image, counted by
    Detectron2's fvcore counter (convolutions, fully connected layers and the like; one
    fused multiply-add = one FLOP)."""
    flops = FlopCountAnalysis(model, [{"image": image}])
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return int(flops.total())
