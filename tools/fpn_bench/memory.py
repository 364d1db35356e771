"""Peak memory of one end-to-end eval forward, for both models.

CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before, after a warm-up
forward. CPU: the process's memory is all there is to read, so each model runs in a fresh
subprocess (:mod:`.memory_worker`): one warm-up forward, then the peak RSS of one forward minus
the RSS before it. glibc's mmap threshold is fixed there (``MALLOC_MMAP_THRESHOLD_``) so that freed
tensors go back to the OS and the RSS follows the live tensors.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

import torch

import fpn_plugin

from .bench import Bench
from .inputs import model_inputs
from .timing import entry

__all__ = ["MIB", "WORKER_MODULE", "measure_memory"]

MIB = 1024.0 * 1024.0
WORKER_MODULE = "fpn_bench.memory_worker"
#: Bytes; allocations above it are mmap-ed, and so returned to the OS when freed.
MMAP_THRESHOLD = 131072


def _run_workers(b: Bench, reps: int) -> Dict[str, List[Dict]]:
    """Runs the memory worker alternately for both models, ``reps`` times each; its JSON results."""
    results = {w: [] for w in b.models}
    # ``python -m`` from the folder holding fpn_bench, with the folder holding the fpn_plugin this
    # process imported first on the worker's path: it imports the same package, installed or not.
    tools = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(fpn_plugin.__file__)))
    python_path = [package_parent] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    env = dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD),
        OMP_NUM_THREADS=str(b.options.threads),
        PYTHONPATH=os.pathsep.join(python_path),
    )
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "weights.pth")
        torch.save(b.ref.state_dict(), state)
        options = dataclasses.asdict(b.options)
        options["json"] = None
        for _ in range(reps):
            for w in b.models:
                spec = os.path.join(tmp, f"{w}.json")
                with open(spec, "w") as f:
                    json.dump({"which": w, "state_dict": state, "options": options}, f)
                proc = subprocess.run(
                    [sys.executable, "-m", WORKER_MODULE, spec],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=tools,
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"memory worker ({w}) failed:\n{proc.stderr[-4000:]}")
                results[w].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def measure_memory(b: Bench) -> Dict:
    """Peak memory increase of one end-to-end eval forward of one image, MiB."""
    o = b.options
    inputs = model_inputs(b.single_inputs()[:1])
    if b.device.startswith("cuda"):
        values = {w: [] for w in b.models}
        with torch.no_grad():
            for m in b.models.values():
                m(inputs)  # warm-up
            for _ in range(o.reps):
                for w, m in b.models.items():
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                    m(inputs)
                    torch.cuda.synchronize()
                    values[w].append(torch.cuda.max_memory_allocated() - before)
        method = (
            "torch.cuda.max_memory_allocated() minus memory_allocated() before, after one "
            "warm-up forward"
        )
        reps, rss = o.reps, None
    else:
        reps = max(1, min(o.reps, 3))  # deterministic up to allocator noise: a few runs suffice
        runs = _run_workers(b, reps)
        values = {w: [r["peak_increase_bytes"] for r in runs[w]] for w in b.models}
        rss = {w: statistics.median(r["rss_before_bytes"] for r in runs[w]) / MIB for w in b.models}
        method = (
            runs["ours"][0]["method"] + "; one fresh subprocess per model and repetition, one "
            f"warm-up forward, MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}"
        )
    med = {w: statistics.median(v) / MIB for w, v in values.items()}
    samples = {w: [x / MIB for x in v] for w, v in values.items()}
    return {
        "memory": entry(
            "peak memory increase of one eval forward (1 image)",
            med["ours"],
            med["detectron2"],
            "MiB",
            reps,
            1,
            samples=samples,
            method=method,
            rss_before_mib=rss,
        )
    }
