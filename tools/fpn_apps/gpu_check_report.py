"""The GPU check's summary (:mod:`.gpu_check`): ``summary.json`` (everything) and
``summary.md`` (the environment, one table row per step, each crash's stack and verdict, the
benchmark tables), ready to paste into docs/gpu.md."""

import os
from typing import Dict, List

from tabulate import tabulate

from fpn_bench.report import write_json

__all__ = ["format_summary", "write_summary"]

_STATUS = {
    "ok": "ok",
    "skipped": "skipped",
    "failed": "FAILED",
    "crashed": "CRASHED",
    "timeout": "TIMEOUT",
    "out_of_time": "NOT RUN",
}


def _crash_lines(name: str, crash: Dict) -> List[str]:
    lines = ["", f"## Crash in `{name}`", "", f"Verdict: {crash['verdict']}", ""]
    for run in crash["reruns"]:
        if run.get("status") == "out_of_time":
            lines.append(f"- {run['label']}: not run (no time left)")
            continue
        outcome = (
            f"crashed again ({run['crashed']})"
            if run.get("crashed")
            else (f"did not crash (exit status {run.get('returncode')})")
        )
        lines.append(f"- {run['label']}, with faulthandler: {outcome}; log `{run['log']}`")
    stack = next((r["stack"] for r in crash["reruns"] if r.get("stack")), [])
    if stack:
        lines += ["", "Python stack of the crashing thread, innermost first:", "", "```"]
        lines += [f"{f['file']}:{f['line']} in {f['function']}" for f in stack]
        lines.append("```")
    return lines


def format_summary(summary: Dict) -> str:
    """The Markdown summary of a check."""
    env = summary.get("environment", {})
    steps = summary["steps"]
    failed = [n for n, s in steps.items() if s["status"] not in ("ok", "skipped")]
    lines = [
        f"# GPU check: {env.get('device_name', summary['device'])}",
        "",
        f"- command: `{summary.get('command') or '(API call)'}`",
        f"- started {summary['started']}, {summary.get('seconds', 0):.0f} s in all; result: "
        + ("every step passed" if not failed else f"failed: {', '.join(failed)}"),
    ]
    if env:
        lines += [
            f"- torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), torchvision "
            f"{env['torchvision']}, Python {env['python']}, {env['cpu_count']} CPUs",
            f"- Detectron2 {env['detectron2']}; its ops: {env['detectron2_ops']}",
            f"- fpn_plugin {env['fpn_plugin']}",
            f"- nvidia-smi: {env.get('nvidia_smi') or 'not found'}",
        ]
    rows = [
        [
            name,
            _STATUS.get(s["status"], s["status"]),
            f"{s['seconds']:.0f} s" if "seconds" in s else "-",
            s.get("summary", ""),
        ]
        for name, s in steps.items()
    ]
    lines += ["", tabulate(rows, headers=["step", "status", "time", "result"], tablefmt="github")]
    for name, s in steps.items():
        if s.get("crash"):
            lines += _crash_lines(name, s["crash"])
    for label, run in steps.get("benchmark", {}).get("runs", {}).items():
        if run.get("markdown") and os.path.isfile(run["markdown"]):
            with open(run["markdown"]) as f:
                table = f.read().strip()
            if table.startswith("# "):  # the benchmark report's own title
                table = table.split("\n", 1)[-1].strip()
            lines += ["", f"## Benchmark: {label}", "", table]
    return "\n".join(lines) + "\n"


def write_summary(summary: Dict, output_dir: str) -> None:
    """``summary.json`` and ``summary.md`` in ``output_dir``."""
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, "summary.json"), summary)  # NaN as null
    with open(os.path.join(output_dir, "summary.md"), "w") as f:
        f.write(format_summary(summary))
