"""Timing two models fairly, and the record that every measurement returns.

The models run alternately -- A, B, A, B, ... -- in every warm-up and every timed repetition, so
that both see the same machine load (other processes, thermal state, caches); the figure is the
median of the timed repetitions. ``torch.utils.benchmark.Timer`` cannot alternate two statements,
so the loop is here, and the clock is ``torch.utils.benchmark``'s, which synchronizes the
accelerator before it is read.
"""

import statistics
from typing import Callable, Dict, List, Mapping, Tuple

from torch.utils.benchmark import timer as synchronized_clock

__all__ = ["time_alternately", "entry", "timed_entry"]


def time_alternately(
    fns: Mapping[str, Callable[[], object]], reps: int, warmup: int
) -> Tuple[Dict[str, float], Dict[str, List[float]]]:
    """({name: median seconds}, {name: every timed value, seconds}) of ``fns`` (name -> callable),
    run one after the other ``warmup`` untimed times, then ``reps`` timed times."""
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for rep in range(warmup + reps):
        for name, fn in fns.items():
            start = synchronized_clock()
            fn()
            elapsed = synchronized_clock() - start
            if rep >= warmup:
                samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}, samples


def entry(
    label: str,
    ours: float,
    reference: float,
    unit: str,
    reps: int,
    warmup: int,
    *,
    reference_name: str = "detectron2",
    samples=None,
    **details,
) -> Dict:
    """One measurement's record: both figures (``unit`` "s" or "MiB"), their ratio
    (ours / reference) and how they were obtained (``details``, stored as they are)."""
    record = {
        "label": label,
        "ours": ours,
        reference_name: reference,
        "reference": reference_name,
        "ratio": ours / reference if reference else float("nan"),
        "unit": unit,
        "reps": reps,
        "warmup": warmup,
    }
    if samples is not None:
        record["samples"] = samples
    record.update(details)
    return record


def timed_entry(
    label: str,
    fns: Mapping[str, Callable[[], object]],
    reps: int,
    warmup: int,
    reference_name: str = "detectron2",
    **details,
) -> Dict:
    """:func:`entry` of ``fns`` = {"ours": ..., ``reference_name``: ...} timed by
    :func:`time_alternately` (seconds, with every sample)."""
    t, samples = time_alternately(fns, reps, warmup)
    return entry(
        label,
        t["ours"],
        t[reference_name],
        "s",
        reps,
        warmup,
        reference_name=reference_name,
        samples=samples,
        **details,
    )
