"""Keep freed memory in the process for reuse: glibc malloc settings for CPU training.

A CPU training step allocates and frees the same large tensors every step: at MiniLM size a
[30522, 384] fp32 gradient is 45 MiB, a [1024, 30522] chunk of vocabulary logits 119 MiB.
glibc's malloc serves every block above its mmap threshold (at most 32 MiB, 128 KiB until the
dynamic threshold grows) with a fresh `mmap` and returns it with `munmap` when freed, so each
step page-faults every large temporary anew — the kernel zeroes and maps every 4 KiB page on
first touch. On the 2-core machine of docs/benchmarks.md that cost a MiniLM bf16 pre-training
step (16 x 128 tokens) a tenth to a fifth of its time: zero-fills, casts and copies of [V, d]
tensors ran at a few GB/s, page faults rather than memory bandwidth.

`keep_freed_memory()` tells glibc to serve every block from its heap (`M_MMAP_MAX = 0`) and never
to give the top of the heap back (`M_TRIM_THRESHOLD = -1`, as mallopt(3) documents), so the
second step reuses the pages of the first. The process's resident memory then stays at its
high-water mark instead of falling between steps, and settles above the default's peak (a
MiniLM bf16 run: 1.50 vs 1.19 GB after 25 steps, docs/benchmarks.md). This is what tcmalloc or jemalloc, preloaded, do for PyTorch CPU
training, with nothing to install. It changes no number, only
where memory comes from, and only on Linux with glibc; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
NEVER_TRIM = -1  # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"


def glibc():
    """The C library as a ctypes handle when it is glibc, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of any size for reuse (see the module docstring).

    Returns True when the settings were applied, False where they do not apply (not glibc, or
    glibc refused them). Process-wide and lasting: call it once, before training.
    """
    libc = glibc()
    if libc is None:
        logger.debug("not glibc: keep_freed_memory does nothing")
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
    if not applied:
        logger.warning("glibc refused the malloc settings of keep_freed_memory; large blocks stay mmap-served")
    return applied
