"""Keep freed CPU memory in the process for reuse (glibc malloc), for the tools' CPU runs.

Why: glibc serves each allocation above its mmap threshold (128 KiB, rising with use to at most
32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. A detector's feature maps are larger
(P2 of one 800x1344 image: 256 x 200 x 336 float32 values), so every forward maps them anew and
the kernel zero-fills them page by page; kept for reuse, they are not faulted in again (the
measured effect on both detectors is in docs/performance.md). The arithmetic is unchanged:
outputs are identical.

The cost: memory freed by PyTorch stays in the process (resident at its high-water mark) instead
of going back to the operating system. That is a whole-process policy, so the library never sets
it on import; the command-line tools do, for CPU runs, unless the user chose otherwise (an
allocator in ``LD_PRELOAD``, glibc ``MALLOC_*_`` variables or ``GLIBC_TUNABLES``) or passed
``--system-malloc``. The same effect without this module: ``MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment, or tcmalloc in ``LD_PRELOAD`` (jemalloc
with ``MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1``; see docs/performance.md).
"""

import ctypes
import os
import platform
from typing import Mapping, Optional

__all__ = [
    "keep_freed_cpu_memory",
    "allocator_choice",
    "add_system_malloc_argument",
    "keep_freed_memory_for_tool",
]

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to 1 GiB come from the heap (and are reused); the heap's free top is returned to the
# system only beyond 2 GiB - 1 (the largest value mallopt's int argument takes).
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = 2**31 - 1

_USER_ENV = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)


def allocator_choice(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The allocator setting the user made in the environment (a short description), or None."""
    environ = os.environ if environ is None else environ
    preload = environ.get("LD_PRELOAD", "")
    if "malloc" in preload:  # libtcmalloc*, libjemalloc, libmimalloc
        return f"LD_PRELOAD={preload}"
    chosen = [f"{k}={environ[k]}" for k in _USER_ENV if k in environ]
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        chosen.append(f"GLIBC_TUNABLES={environ['GLIBC_TUNABLES']}")
    return " ".join(chosen) or None


def add_system_malloc_argument(parser) -> None:
    """The tools' opt-out flag, ``--system-malloc`` (an ``argparse`` parser)."""
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="on CPU, leave glibc malloc's defaults (by default the tool keeps freed memory for "
        "reuse: faster, but the process does not shrink; see fpn_plugin/accel/cpu_allocator.py)",
    )


def keep_freed_memory_for_tool(args, device: str) -> Optional[str]:
    """What the tools call once at start-up: on ``device`` "cpu" and without ``--system-malloc``
    (``args.system_malloc``), :func:`keep_freed_cpu_memory`; returns its line to show, else None."""
    if str(device) != "cpu" or args.system_malloc:
        return None
    return keep_freed_cpu_memory()


def keep_freed_cpu_memory(
    environ: Optional[Mapping[str, str]] = None, libc: Optional[ctypes.CDLL] = None
) -> str:
    """Make glibc malloc keep freed blocks of up to 1 GiB for reuse (``mallopt``); process-wide.

    Does nothing where the user chose an allocator setting (:func:`allocator_choice`) or the C
    library is not glibc. Returns what happened, in one line (the tools log it).
    """
    choice = allocator_choice(environ)
    if choice is not None:
        return f"memory allocator: left as set in the environment ({choice})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "memory allocator: left as it is (not glibc)"
    libc = ctypes.CDLL(None) if libc is None else libc  # the process's malloc, as PyTorch calls it
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return "memory allocator: left as it is (no mallopt)"
    # mallopt returns 1 on success, 0 for a value it refuses (that setting keeps glibc's default).
    refused = [
        name
        for name, param, value in (
            ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
        if not mallopt(param, value)
    ]
    if refused:
        return (
            f"memory allocator: glibc refused mallopt {', '.join(refused)}; freed memory may not "
            "be kept"
        )
    return (
        "memory allocator: glibc keeps freed blocks of up to 1 GiB for reuse (no page faults to "
        "re-map them)"
    )
