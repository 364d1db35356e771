"""The benchmark's ``end_to_end_batch`` measurement: the whole ``--batch`` in one call."""

import math
import os

from fpn_bench.bench import Bench
from fpn_bench.measurements import measure_end_to_end_batch
from fpn_bench.options import MEASUREMENTS, BenchmarkOptions
from fpn_bench.report import environment, format_report
from tests.conftest import REPO

QUICKSTART = os.path.join(REPO, "configs", "quickstart.yaml")


def test_the_batch_is_run_in_one_call_and_reported_as_throughput():
    options = BenchmarkOptions(
        config_file=QUICKSTART,
        size=(128, 160),
        batch=3,
        reps=2,
        warmup=1,
        threads=1,
        only=("end_to_end_batch",),
    )
    assert "end_to_end_batch" in MEASUREMENTS
    b = Bench(options)
    calls = {w: [] for w in b.models}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, w=w: calls[w].append(len(args[0])))
        for w, m in b.models.items()
    ]
    try:
        results = measure_end_to_end_batch(b)
    finally:
        for h in hooks:
            h.remove()
    assert calls == {"ours": [3, 3, 3], "detectron2": [3, 3, 3]}  # warm-up + 2 reps, 3 images each
    record = results["end_to_end_batch"]
    assert record["batch"] == 3 and record["reps"] == 2 and record["unit"] == "s"
    assert "batch 3" in record["label"]
    for w, key in (("ours", "ours"), ("detectron2", "detectron2")):
        assert len(record["samples"][w]) == 2
        assert math.isclose(record["images_per_second"][w], 3 / record[key])
    report = format_report(environment(b), results, b.checks, b.proposal_counts)
    assert "| end-to-end eval, batch 3 in one call |" in report
