"""A tool run as a subprocess by a check: its log, its time limit, and, when it crashes (a
segmentation fault, say), the Python stack of the crash and whose code it lies in.

A process killed by a signal leaves no Python traceback. :func:`run_tool` records the signal
(from the exit status, or from the log where a DataLoader worker died of it); running the same
command again with :func:`with_faulthandler` makes Python print every thread's stack when the
signal arrives, and :func:`crash_stack` and :func:`locate_crash` read that stack from the log.
"""

import dataclasses
import os
import re
import signal
import subprocess
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["ToolRun", "run_tool", "with_faulthandler", "crash_stack", "locate_crash"]

#: A DataLoader worker's death, as PyTorch reports it in the main process.
_WORKER_KILLED = re.compile(r"killed by signal: ([A-Za-z ]+)")
_FATAL = re.compile(r"Fatal Python error: (\w[\w ]*)")
_FRAME = re.compile(r'^\s+File "(.+)", line (\d+) in (.+)$')
_SIGNAL_TEXT = {
    "Segmentation fault": "SIGSEGV",
    "Aborted": "SIGABRT",
    "Bus error": "SIGBUS",
    "Floating point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
}


@dataclasses.dataclass
class ToolRun:
    """One run of a command: ``returncode`` is None when it was stopped at its time limit;
    ``crash`` names the signal that killed it or one of its DataLoader workers (else None)."""

    command: List[str]
    log: str
    returncode: Optional[int]
    seconds: float
    crash: Optional[str] = None

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.crash is None

    def as_dict(self) -> Dict:
        return {
            "command": " ".join(self.command),
            "log": self.log,
            "returncode": self.returncode,
            "seconds": round(self.seconds, 1),
            "timed_out": self.timed_out,
            "crash": self.crash,
        }


def _crash_of(returncode: Optional[int], log_text: str) -> Optional[str]:
    if returncode is not None and returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    worker = _WORKER_KILLED.search(log_text)
    if worker:
        name = worker.group(1).strip()
        return f"{_SIGNAL_TEXT.get(name, name)} in a DataLoader worker"
    fatal = _FATAL.search(log_text)
    if fatal and fatal.group(1).strip() in _SIGNAL_TEXT:
        return _SIGNAL_TEXT[fatal.group(1).strip()]
    return None


def run_tool(
    command: Sequence[str],
    log: str,
    timeout: float,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
) -> ToolRun:
    """Run ``command`` with its stdout and stderr into the file ``log``; after ``timeout``
    seconds it and every process it started are killed (it runs in a session of its own)."""
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    start = time.monotonic()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(command)}\n")
        f.flush()
        proc = subprocess.Popen(
            list(command),
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
    seconds = time.monotonic() - start
    with open(log, errors="replace") as f:
        text = f.read()
    if returncode is None:
        with open(log, "a") as f:
            f.write(f"\n[stopped at the time limit of {timeout:.0f} s]\n")
    return ToolRun(list(command), log, returncode, seconds, _crash_of(returncode, text))


def with_faulthandler(
    command: Sequence[str], env: Optional[Mapping[str, str]] = None
) -> Tuple[List[str], Dict[str, str]]:
    """``command`` (a Python one: ``[python, script, ...]``) and its environment, changed so that
    a crash prints the Python stack of every thread (``-X faulthandler``, inherited by forked
    workers) and CUDA errors surface at the call that caused them (``CUDA_LAUNCH_BLOCKING=1``)."""
    env = dict(os.environ if env is None else env)
    env.update(PYTHONFAULTHANDLER="1", CUDA_LAUNCH_BLOCKING="1")
    return [command[0], "-X", "faulthandler", *command[1:]], env


def crash_stack(log_text: str) -> List[Dict]:
    """The frames (innermost first: ``{"file", "line", "function"}``) of the thread that crashed,
    from the last faulthandler report in ``log_text`` (``Current thread ...``, else the first
    thread listed); empty if there is none."""
    start = log_text.rfind("Fatal Python error:")
    if start < 0:
        return []
    lines = log_text[start:].splitlines()
    headers = [
        i for i, line in enumerate(lines) if line.rstrip().endswith("(most recent call first):")
    ]
    current = [i for i in headers if lines[i].startswith("Current thread")]
    if not (current or headers):
        return []
    frames = []
    for line in lines[(current or headers)[0] + 1 :]:
        match = _FRAME.match(line)
        if not match:
            break
        frames.append(
            {"file": match.group(1), "line": int(match.group(2)), "function": match.group(3)}
        )
    return frames


def _owner(path: str) -> str:
    """The package a source file belongs to: the folder after site-packages/dist-packages, else
    the file's parent folder."""
    parts = os.path.normpath(path).split(os.sep)
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1]
    return os.path.basename(os.path.dirname(path)) or path


def _where(frame: Dict) -> str:
    return f"{frame['file']}:{frame['line']} ({frame['function']})"


def locate_crash(frames: Sequence[Dict], plugin_roots: Sequence[str]) -> Dict:
    """Whose code the crash lies in, from the crashing thread's stack (innermost first).

    The innermost Python frame is the one that called the native code that crashed: if it is
    the plugin's (a file under one of ``plugin_roots``), the plugin made that call; otherwise
    the crash is in a library (PyTorch, Detectron2, ...) or the environment, and the innermost
    plugin frame, if any, says from where the plugin got there. Returns ``{"in_plugin",
    "innermost", "innermost_plugin_frame", "verdict"}``."""
    roots = [os.path.abspath(r) + os.sep for r in plugin_roots]
    in_plugin = [f for f in frames if os.path.abspath(f["file"]).startswith(tuple(roots))]
    if not frames:
        return {
            "in_plugin": None,
            "innermost": None,
            "innermost_plugin_frame": None,
            "verdict": "no Python stack was captured: the crash happened in a thread without "
            "Python frames, or before faulthandler could write",
        }
    innermost = frames[0]
    plugin_frame = in_plugin[0] if in_plugin else None
    if plugin_frame is innermost:
        verdict = (
            f"plugin: the native call that crashed was made by the plugin at {_where(innermost)}"
        )
    elif plugin_frame is not None:
        verdict = (
            f"library ({_owner(innermost['file'])}) at {_where(innermost)}, reached from the "
            f"plugin at {_where(plugin_frame)}"
        )
    else:
        verdict = (
            f"environment/library ({_owner(innermost['file'])}) at {_where(innermost)}: no plugin "
            "frame on the crashing thread's stack"
        )
    return {
        "in_plugin": plugin_frame is innermost,
        "innermost": innermost,
        "innermost_plugin_frame": plugin_frame,
        "verdict": verdict,
    }
