"""fpn_plugin/accel/cpu_allocator.py: the tools keep freed CPU memory for reuse (glibc malloc)."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from fpn_plugin.accel import cpu_allocator
from fpn_plugin.accel.cpu_allocator import allocator_choice, keep_freed_cpu_memory
from tests.conftest import REPO

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Five rounds of a conv, a ReLU and a sum on 64 x 400 x 400 float32 maps (41 MB each, above
# glibc's largest automatic mmap threshold, 32 MiB): the minor page faults of each round.
_ROUNDS = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    sys.path.insert(0, {repo!r})
    from fpn_plugin.accel.cpu_allocator import keep_freed_cpu_memory
    message = keep_freed_cpu_memory() if {keep} else None
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x, w = torch.ones(1, 64, 400, 400), torch.randn(64, 64, 3, 3)
    counts = []
    with torch.no_grad():
        for _ in range(5):
            before = faults()
            y = torch.nn.functional.conv2d(x, w, padding=1)
            z = torch.relu(y) + y
            del y, z
            counts.append(faults() - before)
    print(json.dumps({{"message": message, "faults": counts}}))
    """
)


def env_without_allocator_settings(environ) -> dict:
    """A copy of ``environ`` without the user's allocator settings, which keep_freed_cpu_memory
    respects."""
    return {
        k: v
        for k, v in environ.items()
        if k not in ("LD_PRELOAD", "GLIBC_TUNABLES") and not k.startswith("MALLOC_")
    }


def _rounds(keep: bool):
    env = dict(env_without_allocator_settings(os.environ), OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", _ROUNDS.format(repo=REPO, keep=keep)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt tuning applies to glibc's malloc only")
def test_kept_memory_is_reused_without_page_faults():
    map_pages = 64 * 400 * 400 * 4 // 4096  # pages of one 41 MB map
    default = _rounds(keep=False)["faults"]
    # glibc's defaults: every round maps its large blocks anew (zero-filled page by page).
    assert all(n >= map_pages for n in default[2:]), default
    kept = _rounds(keep=True)
    assert "keeps freed blocks" in kept["message"]
    # Kept: the first round faults its pages in (the second sometimes one more block, as glibc's
    # free lists settle); from the third on the rounds reuse them.
    assert kept["faults"][0] >= map_pages and sum(kept["faults"][2:]) < map_pages // 10, kept[
        "faults"
    ]


class _FakeLibc:
    def __init__(self, result: int):
        self.result, self.calls = result, []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.result


@pytest.fixture
def on_glibc(monkeypatch):
    monkeypatch.setattr(cpu_allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cpu_allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))


@pytest.mark.parametrize(
    "environ, named",
    [
        (
            {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"},
            "libtcmalloc_minimal",
        ),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "libjemalloc"),
        ({"MALLOC_MMAP_THRESHOLD_": "131072"}, "MALLOC_MMAP_THRESHOLD_=131072"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "glibc.malloc.trim_threshold=0"),
    ],
)
def test_the_users_allocator_settings_are_left_alone(on_glibc, environ, named):
    libc = _FakeLibc(1)
    message = keep_freed_cpu_memory(environ=environ, libc=libc)
    assert libc.calls == [] and "left as set in the environment" in message and named in message
    assert named in allocator_choice(environ)


def test_settings_that_are_not_the_allocators_do_not_count(on_glibc):
    environ = {
        "LD_PRELOAD": "/usr/lib/libfoo.so",
        "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F",
        "PATH": "/bin",
    }
    assert allocator_choice(environ) is None
    libc = _FakeLibc(1)
    message = keep_freed_cpu_memory(environ=environ, libc=libc)
    assert libc.calls == [(-3, 1 << 30), (-1, 2**31 - 1)] and "keeps freed blocks" in message


def test_refused_values_are_reported(on_glibc):
    message = keep_freed_cpu_memory(environ={}, libc=_FakeLibc(0))
    assert "refused" in message and "M_MMAP_THRESHOLD" in message and "M_TRIM_THRESHOLD" in message


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(cpu_allocator.platform, "system", lambda: "Darwin")
    libc = _FakeLibc(1)
    assert "not glibc" in keep_freed_cpu_memory(environ={}, libc=libc) and libc.calls == []
