"""`keep_freed_memory`: glibc keeps freed large blocks in the process for later allocations.

Each check runs in a fresh interpreter, because the setting is process-wide and lasting. A 256 MiB
tensor is allocated, touched and freed, then a 192 MiB one. With glibc's defaults (both
mmap-served) resident memory falls back after each `del`; with `keep_freed_memory` the first block
stays resident and the second tensor is carved out of it. (A second tensor of the very same size
need not fit: PyTorch's 64-byte-aligned requests ask for a few bytes more than the block, and a
small allocation next to the freed block can take those bytes — in training the heap settles
after a few steps instead, docs/benchmarks.md.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dupmae.platform.cpu.allocator import glibc

pytestmark = pytest.mark.skipif(glibc() is None, reason="glibc malloc settings (Linux only)")

PROBE = """
import json, sys
import torch
from dupmae.platform.cpu.allocator import keep_freed_memory

def rss():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))

applied = keep_freed_memory() if sys.argv[1] == "keep" else None
before = rss()
block = torch.ones(64 * 2**20)  # 256 MiB of float32, every page touched
del block
kept = rss() - before
block = torch.ones(48 * 2**20)  # 192 MiB
grown = rss() - before - kept
del block
print(json.dumps({"applied": applied, "kept": kept, "grown": grown, "end": rss() - before}))
"""
MIB = 2**20


def probe(mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_defaults_return_large_blocks_at_once():
    measured = probe("default")
    assert measured["kept"] < 32 * MIB and measured["end"] < 32 * MIB, measured  # both went back at once


def test_keep_freed_memory_keeps_and_reuses_large_blocks():
    measured = probe("keep")
    assert measured["applied"] is True
    assert measured["kept"] > 240 * MIB, measured  # still resident after `del`
    assert measured["grown"] < 16 * MIB, measured  # the 192 MiB tensor reused those pages
    assert measured["end"] > 240 * MIB, measured
