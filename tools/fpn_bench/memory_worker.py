"""The CPU memory measurement's subprocess (:mod:`.memory`): one model, one warm-up forward, then
the peak RSS increase of one forward. Run from tools/:

    python -m fpn_bench.memory_worker SPEC.json

``SPEC.json`` holds ``{"which": "ours" | "detectron2", "state_dict": path, "options": the run's
BenchmarkOptions as a dict}``. Prints one JSON line ``{"peak_increase_bytes",
"rss_before_bytes", "method"}``.
"""

import json
import resource
import sys

import torch

from detectron2.modeling import build_model

from .inputs import load_inputs, model_inputs
from .models import accelerated, build_cfgs
from .options import BenchmarkOptions

__all__ = ["measure_one_forward"]


def _proc_status_kib(field: str) -> int:
    """A field of ``/proc/self/status`` (VmRSS, VmHWM), KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_one_forward(spec_path: str) -> dict:
    """Builds the model ``spec_path`` names, as the benchmark runs it, and measures one forward."""
    with open(spec_path) as f:
        spec = json.load(f)
    options = BenchmarkOptions(**spec["options"])
    torch.set_num_threads(options.threads)
    cfg_ours, cfg_ref, _ = build_cfgs(options)
    which = spec["which"]
    model = build_model(cfg_ours if which == "ours" else cfg_ref).eval()
    state = torch.load(spec["state_dict"], map_location=options.device)
    model.load_state_dict(state, strict=True)
    accelerated(which, model, cfg_ours, options)
    inputs = model_inputs(load_inputs(options, cfg_ref, 1))
    with torch.no_grad():
        # Warm-up: lazy initialisations (thread pools, kernels' caches) are not counted.
        model(inputs)
        before = _proc_status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark to the current RSS (Linux >= 4.0)
            method = "VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before"
            model(inputs)
            peak = _proc_status_kib("VmHWM")
        except OSError:
            method = "ru_maxrss (lifetime peak, an upper bound) minus VmRSS before"
            model(inputs)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "peak_increase_bytes": (peak - before) * 1024,
        "rss_before_bytes": before * 1024,
        "method": method,
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m fpn_bench.memory_worker SPEC.json (got {sys.argv[1:]})")
    print(json.dumps(measure_one_forward(sys.argv[1])))
