"""A whole benchmark run: :func:`run_benchmark`."""

from typing import Callable, Dict, Optional

import torch

from fpn_plugin.accel.cpu_allocator import allocator_choice, keep_freed_cpu_memory

from .bench import Bench
from .measurements import MEASURE
from .options import MEASUREMENTS, BenchmarkOptions
from .report import environment

__all__ = ["memory_allocator_setting", "run_benchmark"]


def memory_allocator_setting(options: BenchmarkOptions) -> str:
    """Applies ``--keep-freed-memory`` (process-wide); says which memory allocator settings the
    figures are taken with (CPU times depend on them: with glibc's defaults every forward
    page-faults its large blocks anew)."""
    if options.keep_freed_memory:
        return keep_freed_cpu_memory()
    choice = allocator_choice()
    if choice:
        return f"memory allocator: as set in the environment ({choice})"
    return "memory allocator: the C library's defaults"


def run_benchmark(
    options: BenchmarkOptions, progress: Optional[Callable[[str], None]] = None
) -> Dict:
    """Builds the two models and takes the measurements ``options.only`` names, in the order of
    ``MEASUREMENTS``; ``progress(name)`` is called before each. Sets the process's thread count
    (``options.threads``) and, with ``keep_freed_memory``, its allocator.

    Returns ``{"environment", "measurements", "checks", "proposal_counts", "notes"}``, what the
    JSON file holds (:func:`.report.write_json`) and the report shows
    (:func:`.report.format_report`).
    """
    torch.set_num_threads(options.threads)
    b = Bench(options, memory_allocator_setting(options))
    results: Dict[str, Dict] = {}
    for name in MEASUREMENTS:
        if name in options.only:
            if progress is not None:
                progress(name)
            results.update(MEASURE[name](b))
    b.proposals()  # the batch's RPN proposal counts are always reported
    env = environment(b)
    target = b.cfg_ref.MODEL.RPN.POST_NMS_TOPK_TEST
    fewest = min((min(v) for v in b.proposal_counts.values() if v), default=target)
    notes = []
    if fewest < target // 2:
        notes.append(
            f"WARNING: the RPN yields as few as {fewest} proposals per image (test-time "
            f"target {target}); the RoI-head part of the times is not representative of a "
            "trained detector."
        )
    return {
        "environment": env,
        "measurements": results,
        "checks": b.checks,
        "proposal_counts": b.proposal_counts,
        "notes": notes,
    }
