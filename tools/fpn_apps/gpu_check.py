"""The GPU check (``tools/gpu_check.py``, ``make gpu-check``): the README's jobs on one device,
each step within a time budget, with a summary in ``--output-dir``.

Steps (:data:`STEPS`, in this order):

``env``        versions, the card (``torch.cuda.get_device_name``, ``nvidia-smi``), how
               Detectron2's ops were built (``environment.txt``: Detectron2's collect_env_info).
``pytest``     ``pytest -m cuda tests``: tests/test_cuda.py (parity with Detectron2, training
               with and without AMP, export, the execution strategies, on the GPU).
``train``      ``tools/train_net.py --config-file configs/quickstart.yaml`` on the device:
               training and COCO evaluation, end to end.
``launch``     the same through ``--num-gpus 1`` (Detectron2's ``launch``), ``launch_iters``
               iterations.
``demo``       ``tools/demo.py`` on a real photo (scikit-image's astronaut, or ``--image``) with
               the weights of ``train``.
``benchmark``  ``tools/benchmark.py`` in float32, in the fast mode (:data:`FAST_MODE`), and at
               batch ``throughput_batch`` (throughput); each run's JSON and Markdown table.

A tool that dies by a signal (a segmentation fault, say) is run again with faulthandler and
``CUDA_LAUNCH_BLOCKING=1`` for the Python stack of the crash, and a training run also with the
plugin's execution strategies off and without DataLoader workers (:data:`CRASH_VARIANTS`); the
summary says where the crash lies (:mod:`.tool_run`). ``summary.json`` and ``summary.md`` are
rewritten after each step, so that a check stopped from outside still leaves what it found.
"""

import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from fpn_bench.report import format_report

from .gpu_check_report import write_summary
from .tool_run import ToolRun, crash_stack, locate_crash, run_tool, with_faulthandler

__all__ = ["STEPS", "STEP_BUDGETS", "FAST_MODE", "GpuCheckOptions", "GpuCheck", "run_gpu_check"]

STEPS = ("env", "pytest", "train", "launch", "demo", "benchmark")
#: Seconds each step may take at most (the diagnosis of a crash included).
STEP_BUDGETS = dict(env=120, pytest=420, train=480, launch=240, demo=180, benchmark=600)
#: The benchmark's fast mode: float16 on the GPU; bfloat16, the CPU's equivalent, on the CPU.
FAST_MODE = {
    "cuda": ["MODEL.ACCEL.AUTOCAST_DTYPE", "float16", "MODEL.ACCEL.CHANNELS_LAST", "True"],
    "cpu": ["MODEL.ACCEL.AUTOCAST_DTYPE", "bfloat16", "MODEL.ACCEL.CHANNELS_LAST", "True"],
}
#: The benchmark runs: (label, flags); the fast mode's config overrides are added to "fast".
BENCHMARK_RUNS = (
    ("float32", []),
    ("fast", ["--only", "neck,end_to_end,end_to_end_batch,memory"]),
    ("batch", ["--only", "neck,end_to_end_batch"]),  # with --batch throughput_batch
)
#: A crashed training run is run again with one suspect removed: (label, KEY VALUE options).
CRASH_VARIANTS = (
    ("plugin strategies off (MODEL.ACCEL.ENABLED False)", ["MODEL.ACCEL.ENABLED", "False"]),
    ("no DataLoader workers (DATALOADER.NUM_WORKERS 0)", ["DATALOADER.NUM_WORKERS", "0"]),
)
QUICKSTART = os.path.join("configs", "quickstart.yaml")
_ENVIRONMENT_MARK = "ENVIRONMENT "
#: The env step's program: argv = device, path of the collect_env_info() text.
_ENVIRONMENT_SCRIPT = (
    "import json, sys\n"
    "from detectron2.utils.collect_env import collect_env_info\n"
    "from fpn_apps.gpu_check import environment\n"
    "open(sys.argv[2], 'w').write(collect_env_info() + '\\n')\n"
    f"print({_ENVIRONMENT_MARK!r} + json.dumps(environment(sys.argv[1])))\n"
)
#: A step or a run is not started with less time than this left.
MIN_STEP_SECONDS = 10
_OWNED_BENCH_FLAGS = ("--json", "--device", "--threads", "--opts")
_OWNED_KEYS = ("MODEL.DEVICE", "OUTPUT_DIR")


class StepError(Exception):
    """A step could not run; the message says why and what to do."""


@dataclasses.dataclass
class GpuCheckOptions:
    """One check's settings; each field is the ``tools/gpu_check.py`` flag of the same name,
    whose help says what it does. ``repo`` is the checkout whose tools and tests run, ``command``
    the command line recorded in the summary. Checked on creation: ``ValueError`` naming the
    flag and the fix."""

    repo: str
    output_dir: str = os.path.join("output", "gpu_check")
    device: str = "cuda"
    steps: Tuple[str, ...] = STEPS
    tests: str = "tests"
    train_opts: Sequence[str] = ()
    launch_iters: int = 50
    image: Optional[str] = None
    threads: int = 16
    bench_args: Sequence[str] = ()
    throughput_batch: int = 8
    time_limit: float = 0.0
    command: str = ""

    def __post_init__(self):
        self.repo, self.output_dir = os.path.abspath(self.repo), os.path.abspath(self.output_dir)
        self.steps, self.train_opts = tuple(self.steps), [str(o) for o in self.train_opts]
        self.bench_args = list(self.bench_args)
        if not os.path.isfile(os.path.join(self.repo, "tools", "train_net.py")):
            raise ValueError(
                f"{self.repo!r} has no tools/train_net.py: run the check in a checkout."
            )
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown or not self.steps:
            raise ValueError(f"--steps {','.join(self.steps)!r}: choose from {','.join(STEPS)}.")
        if self.device != "cpu" and self.device.split(":")[0] != "cuda":
            raise ValueError(f"--device {self.device!r}: use cuda (the default) or cpu.")
        if self.device != "cpu" and not torch.cuda.is_available():
            raise ValueError(
                f"--device {self.device}: CUDA is not available here (torch.cuda.is_available() "
                "is False); run the check on a GPU machine, or rehearse it with --device cpu."
            )
        owned = [k for k in self.train_opts[::2] if k in _OWNED_KEYS]
        if len(self.train_opts) % 2 or owned:
            raise ValueError(
                f"--train-opts {' '.join(self.train_opts)!r}: give KEY VALUE pairs, without "
                f"{' or '.join(_OWNED_KEYS)} (--device and --output-dir set them)."
            )
        owned = [a for a in self.bench_args if a.split("=")[0] in _OWNED_BENCH_FLAGS]
        if owned:
            raise ValueError(
                f"--bench-args: leave out {owned}; the check sets the device, the threads, the "
                "output files and the fast mode's --opts."
            )
        for flag, value, least in (
            ("--launch-iters", self.launch_iters, 1),
            ("--threads", self.threads, 1),
            ("--throughput-batch", self.throughput_batch, 0),
            ("--time-limit", self.time_limit, 0),
        ):
            if value < least:
                raise ValueError(f"{flag} {value}: must be >= {least}.")
        if self.image and not os.path.isfile(self.image):
            raise ValueError(f"--image {self.image!r} does not exist; pass a photo (JPEG or PNG).")
        self.image = os.path.abspath(self.image) if self.image else None


def _rounded(value) -> Optional[float]:
    return None if value is None else round(float(value), 4)


def read_training(output_dir: str) -> Dict:
    """What a training run left in ``output_dir`` (Detectron2's metrics.json): iterations, the
    median seconds per iteration, the last total loss, the final COCO box results (AP, AP50,
    AP75, APs, APm, APl, in per cent), the final weights' path (None if missing)."""
    path = os.path.join(output_dir, "metrics.json")
    records = []
    if os.path.isfile(path):
        with open(path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if "total_loss" in r]
    times = [r["time"] for r in train if "time" in r]
    evals = [r for r in records if "bbox/AP" in r]
    final = os.path.join(output_dir, "model_final.pth")
    return {
        "iterations": train[-1]["iteration"] + 1 if train else 0,
        "seconds_per_iteration": _rounded(statistics.median(times)) if times else None,
        "total_loss": _rounded(train[-1]["total_loss"]) if train else None,
        "bbox": {
            k: _rounded(evals[-1][f"bbox/{k}"])
            for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")
            if evals and f"bbox/{k}" in evals[-1]
        },
        "weights": final if os.path.isfile(final) else None,
    }


def read_junit(path: str) -> Dict:
    """Counts (tests, passed, failed, skipped) and the failing tests' names (at most 20) of a
    pytest JUnit XML report."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors")}
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    failing = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    failed = count["failures"] + count["errors"]
    passed = count["tests"] - failed - skipped
    return dict(
        tests=count["tests"], passed=passed, failed=failed, skipped=skipped, failing=failing[:20]
    )


def demo_photo(image: Optional[str], folder: str) -> Tuple[str, str]:
    """(path, description) of the demo's photo: ``image``, else scikit-image's astronaut (a
    photo shipped inside that package, no download) written to ``folder`` as a PNG."""
    if image:
        return image, os.path.basename(image)
    try:
        from skimage import data
    except ImportError:
        raise StepError("no photo: scikit-image is not installed; pass --image PATH (JPEG or PNG)")
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "astronaut.png")
    Image.fromarray(data.astronaut()).save(path)
    return path, "scikit-image's astronaut photo (512x512)"


def _nvidia_smi() -> Optional[str]:
    if not shutil.which("nvidia-smi"):
        return None
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"
    return out.stdout.strip() or out.stderr.strip() or None


def environment(device: str) -> Dict:
    """Versions, the device (name, compute capability, memory) and nvidia-smi's line, and how
    Detectron2's compiled ops were built."""
    import torchvision

    import detectron2

    import fpn_plugin

    cuda = device.startswith("cuda")
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "torchvision": torchvision.__version__,
        "detectron2": f"{detectron2.__version__} ({os.path.dirname(detectron2.__file__)})",
        "fpn_plugin": f"{fpn_plugin.__version__} ({os.path.dirname(fpn_plugin.__file__)})",
        "cpu_count": os.cpu_count(),
        "device_name": torch.cuda.get_device_name(device) if cuda else f"{platform.machine()} CPU",
        "nvidia_smi": _nvidia_smi(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(device)
        info.update(
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
        )
    try:
        from detectron2 import _C

        info["detectron2_ops"] = f"{_C.get_compiler_version()}, CUDA {_C.get_cuda_version()}"
    except ImportError as e:
        info["detectron2_ops"] = f"not importable ({e})"
    return info


def _failure(run: ToolRun) -> Optional[Dict]:
    """The status and summary of a run that did not succeed (None if it did)."""
    if run.crash:
        return {"status": "crashed", "summary": f"died of {run.crash}"}
    if run.timed_out:
        return {"status": "timeout", "summary": f"stopped at the time limit; see {run.log}"}
    if run.returncode != 0:
        return {"status": "failed", "summary": f"exit status {run.returncode}; see {run.log}"}
    return None


class GpuCheck:
    """Runs the selected steps in order; :meth:`run` returns the summary, also written to
    ``summary.json`` / ``summary.md`` after each step, and passed to ``progress(name, result)``
    if given."""

    def __init__(self, options: GpuCheckOptions, progress: Optional[Callable] = None):
        self.o = options
        self.progress = progress
        self.out = options.output_dir
        self.start = time.monotonic()
        self.deadline = self.start + options.time_limit if options.time_limit else float("inf")
        self.summary: Dict = {
            "command": options.command,
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": options.device,
            "options": {k: v for k, v in dataclasses.asdict(options).items() if k != "command"},
            "steps": {},
        }

    def run(self) -> Dict:
        os.makedirs(self.out, exist_ok=True)
        for name in STEPS:
            if name in self.o.steps:
                self._run_step(name)
        return self.summary

    def _run_step(self, name: str) -> None:
        start = time.monotonic()
        budget = min(STEP_BUDGETS[name], self.deadline - start)
        if budget < MIN_STEP_SECONDS:
            limit = f"--time-limit {self.o.time_limit:.0f} s"
            result = {"status": "out_of_time", "summary": f"not run: {limit} reached"}
        else:
            try:
                result = getattr(self, f"_step_{name}")(start + budget)
            except StepError as e:
                result = {"status": "failed", "summary": str(e)}
            except Exception as e:  # a bug in one step must not cost the others their results
                result = {"status": "failed", "summary": f"{type(e).__name__}: {e}"}
                result["traceback"] = traceback.format_exc()
            result.update(seconds=round(time.monotonic() - start, 1), budget_seconds=round(budget))
        self.summary["steps"][name] = result
        statuses = [s["status"] for s in self.summary["steps"].values()]
        self.summary["ok"] = all(s in ("ok", "skipped") for s in statuses)
        self.summary["seconds"] = round(time.monotonic() - self.start, 1)
        write_summary(self.summary, self.out)
        if self.progress is not None:
            self.progress(name, result)

    def _python(
        self, log_name: str, args: Sequence[str], end: float, faulthandler=False, cwd=None
    ) -> ToolRun:
        """``python args...`` in the checkout (or ``cwd``) until ``end``, its output in
        ``<log_name>.log``."""
        command, env = [sys.executable, *args], dict(os.environ, PYTHONUNBUFFERED="1")
        if faulthandler:
            command, env = with_faulthandler(command, env)
        log = os.path.join(self.out, f"{log_name}.log")
        return run_tool(
            command, log, timeout=end - time.monotonic(), env=env, cwd=cwd or self.o.repo
        )

    def _diagnose(self, name: str, args: List[str], end: float, variants=(), cwd=None) -> Dict:
        """After a crash: ``args`` run again with faulthandler (the crashing thread's stack, and
        whose code it lies in), then with each of ``variants`` appended, while time is left."""
        import fpn_plugin

        roots = [os.path.dirname(fpn_plugin.__file__), os.path.join(self.o.repo, "tools")]
        reruns = []
        for i, (label, extra) in enumerate((("the same run", []), *variants)):
            if end - time.monotonic() < MIN_STEP_SECONDS:
                reruns.append({"label": label, "status": "out_of_time"})
                continue
            run = self._python(
                f"{name}_crash_{i}", [*args, *extra], end, faulthandler=True, cwd=cwd
            )
            with open(run.log, errors="replace") as f:
                frames = crash_stack(f.read())
            location = locate_crash(frames, roots) if run.crash else None
            reruns.append({"label": label, "crashed": run.crash, **run.as_dict()})
            reruns[-1].update(stack=frames[:25], location=location)
        located = [r["location"] for r in reruns if r.get("location")]
        verdict = located[0]["verdict"] if located else "no crash again with faulthandler on"
        # A variant that ran to the end where the same run crashed points at the suspect it removed.
        spared = [
            r["label"] for r in reruns[1:] if r.get("returncode") == 0 and not r.get("crashed")
        ]
        if reruns[0].get("crashed") and spared:
            verdict += "; no crash with " + ", ".join(spared)
        return {"reruns": reruns, "verdict": verdict}

    # --- the steps: each takes the time it must end by, returns {"status", "summary", ...} ---

    def _step_env(self, end: float) -> Dict:
        # In a process of its own: loading Detectron2's compiled ops or the CUDA driver may crash.
        # It runs in tools/, where its program imports this module from.
        args = ["-c", _ENVIRONMENT_SCRIPT, self.o.device, os.path.join(self.out, "environment.txt")]
        tools = os.path.join(self.o.repo, "tools")
        run = self._python("env", args, end, cwd=tools)
        failure = _failure(run)
        if run.crash:
            crash = self._diagnose("env", args, end, cwd=tools)
            return {"run": run.as_dict(), **failure, "crash": crash}
        with open(run.log, errors="replace") as f:
            found = [line for line in f if line.startswith(_ENVIRONMENT_MARK)]
        if failure or not found:
            failure = failure or {"status": "failed", "summary": f"no report; see {run.log}"}
            return {"run": run.as_dict(), **failure}
        info = json.loads(found[-1][len(_ENVIRONMENT_MARK) :])
        self.summary["environment"] = info
        summary = (
            f"{info['device_name']}; torch {info['torch']} (CUDA {info['torch_cuda']}); "
            f"Detectron2 ops: {info['detectron2_ops']}"
        )
        return {"status": "ok", "summary": summary, **info}

    def _step_pytest(self, end: float) -> Dict:
        xml = os.path.join(self.out, "pytest_cuda.xml")
        args = ["-m", "pytest", "-m", "cuda", self.o.tests, "-q", "-rs", "-p", "no:cacheprovider"]
        run = self._python("pytest", [*args, f"--junitxml={xml}"], end)
        result = {"run": run.as_dict()}
        if run.crash:
            crash = self._diagnose("pytest", run.command[1:], end)
            return {**result, **_failure(run), "crash": crash}
        if not os.path.isfile(xml):
            failure = _failure(run) or {"status": "failed"}
            return {**result, **failure, "summary": f"pytest wrote no report; see {run.log}"}
        result.update(read_junit(xml))
        text = f"{result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped"
        if run.timed_out:
            status, text = "timeout", f"stopped at the time limit: {text}"
        elif result["failed"] or run.returncode != 0:
            status, text = "failed", f"{text}: {', '.join(result['failing'])}"
        elif result["tests"] == 0:
            status, text = "failed", "no test marked cuda was collected"
        elif self.o.device != "cpu" and result["skipped"]:
            status, text = "failed", f"{text}: the CUDA tests must not skip on a GPU"
        elif not result["passed"]:
            status, text = "skipped", f"{text} (no GPU: they skip)"
        else:
            status = "ok"
        return {**result, "status": status, "summary": text}

    def _train_args(self, folder: str, extra: Sequence[str] = ()) -> List[str]:
        tool = os.path.join("tools", "train_net.py")
        owned = ["MODEL.DEVICE", self.o.device, "OUTPUT_DIR", os.path.join(self.out, folder)]
        return [tool, "--config-file", QUICKSTART, *extra, *self.o.train_opts, *owned]

    def _training(self, name: str, args: List[str], end: float) -> Dict:
        run = self._python(name, args, end)
        result = {"run": run.as_dict(), **read_training(os.path.join(self.out, name))}
        failure = _failure(run)
        if run.crash:
            crash = self._diagnose(name, args, end, CRASH_VARIANTS)
            failure["summary"] += f"; {crash['verdict']}"
            return {**result, **failure, "crash": crash}
        if failure:
            failure["summary"] += f" (after {result['iterations']} iterations)"
            return {**result, **failure}
        if not result["weights"] or not result["bbox"]:
            return {**result, "status": "failed", "summary": "no model_final.pth or no box AP"}
        bbox, per_iteration = result["bbox"], result["seconds_per_iteration"]
        timing = f", {per_iteration} s/iter" if per_iteration is not None else ""
        summary = (
            f"{result['iterations']} iterations{timing}; box AP {bbox.get('AP')} "
            f"(AP50 {bbox.get('AP50')}, AP75 {bbox.get('AP75')})"
        )
        return {**result, "status": "ok", "summary": summary}

    def _step_train(self, end: float) -> Dict:
        return self._training("train", self._train_args("train"), end)

    def _step_launch(self, end: float) -> Dict:
        args = self._train_args("train_launch", ["--num-gpus", "1"])
        args += ["SOLVER.MAX_ITER", str(self.o.launch_iters)]
        return self._training("train_launch", args, end)

    def _step_demo(self, end: float) -> Dict:
        folder = os.path.join(self.out, "demo")
        photo, description = demo_photo(self.o.image, folder)
        weights = os.path.join(self.out, "train", "model_final.pth")
        weights = weights if os.path.isfile(weights) else ""
        name = os.path.splitext(os.path.basename(photo))[0]
        output = os.path.join(folder, f"{name}_detections.png")
        args = [os.path.join("tools", "demo.py"), "--config-file", QUICKSTART, "--input", photo]
        args += ["--output", output, "--color-by-level"]
        args += ["--opts", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", self.o.device]
        run = self._python("demo", args, end)
        result = {"run": run.as_dict(), "photo": photo, "output": output}
        result["weights"] = weights or "random (the train step left no model_final.pth)"
        failure = _failure(run)
        if run.crash:
            return {**result, **failure, "crash": self._diagnose("demo", args, end)}
        if failure or not os.path.isfile(output + ".json"):
            return {**result, **(failure or {"status": "failed", "summary": "no output written"})}
        with open(output + ".json") as f:
            record = json.load(f)
        levels = record.get("pred_levels") or []
        result.update(
            num_instances=record["num_instances"],
            seconds_per_image=record.get("seconds"),
            levels={f"P{k}": levels.count(k) for k in sorted(set(levels))},
        )
        summary = (
            f"{record['num_instances']} detections on {description} in {record.get('seconds')} s "
            f"(levels {result['levels'] or '-'}; {'trained' if weights else 'random'} weights)"
        )
        return {**result, "status": "ok", "summary": summary}

    def _step_benchmark(self, end: float) -> Dict:
        runs, failed, lines = {}, [], []
        for label, flags in BENCHMARK_RUNS:
            opts = FAST_MODE["cpu" if self.o.device == "cpu" else "cuda"] if label == "fast" else []
            if label == "batch":
                if not self.o.throughput_batch:
                    continue
                batch = str(self.o.throughput_batch)
                label, flags = f"batch{batch}", ["--batch", batch, *flags]
            if end - time.monotonic() < MIN_STEP_SECONDS:
                runs[label] = {"status": "out_of_time"}
                failed.append(label)
                continue
            path = os.path.join(self.out, f"benchmark_{label}.json")
            args = [os.path.join("tools", "benchmark.py"), "--device", self.o.device]
            args += ["--threads", str(self.o.threads), *flags, *self.o.bench_args, "--json", path]
            args += ["--opts", *opts] if opts else []
            run = self._python(f"benchmark_{label}", args, end)
            failure = _failure(run)
            if failure or not os.path.isfile(path):
                runs[label] = {"run": run.as_dict(), **(failure or {"status": "failed"})}
                if run.crash:
                    runs[label]["crash"] = self._diagnose(f"benchmark_{label}", args, end)
                failed.append(label)
                continue
            with open(path) as f:
                data = json.load(f)
            markdown = os.path.join(self.out, f"benchmark_{label}.md")
            with open(markdown, "w") as f:
                keys = ("environment", "measurements", "checks", "proposal_counts", "notes")
                f.write(format_report(*(data[k] for k in keys)) + "\n")
            figures = {
                key: {w: m.get(w) for w in ("ours", "detectron2", "ratio", "images_per_second")}
                for key, m in data["measurements"].items()
            }
            runs[label] = {"run": run.as_dict(), "status": "ok", "json": path}
            runs[label].update(markdown=markdown, figures=figures)
            ratios = [f"{k} {m['ratio']:.2f}" for k, m in figures.items() if m["ratio"] is not None]
            lines.append(f"{label}: " + ", ".join(ratios))
        summary = "; ".join(lines) + (f"; failed: {', '.join(failed)}" if failed else "")
        result = {"status": "failed" if failed else "ok", "summary": summary, "runs": runs}
        crashes = [r["crash"] for r in runs.values() if r.get("crash")]
        if crashes:  # the first one in the summary's crash section
            result.update(status="crashed", crash=crashes[0])
        return result


def run_gpu_check(options: GpuCheckOptions, progress: Optional[Callable] = None) -> Dict:
    """Run the check; returns the summary (``ok``: every step passed, or skipped as expected).
    ``progress(name, result)`` is called after each step."""
    return GpuCheck(options, progress).run()
