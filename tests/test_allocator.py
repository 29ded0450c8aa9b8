"""`keep_freed_memory`: glibc keeps a freed large block in the process and reuses it.

Each check runs in a fresh interpreter, because the setting is process-wide and lasting. A 256 MiB
tensor is allocated, touched and freed; with glibc's defaults (served by mmap) resident memory
falls back at once, with `keep_freed_memory` it stays, and the next allocation of the same size
reuses those pages (resident memory does not grow again)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dupmae.training.allocator import glibc

pytestmark = pytest.mark.skipif(glibc() is None, reason="glibc malloc settings (Linux only)")

PROBE = """
import json, sys
import torch
from dupmae.training.allocator import keep_freed_memory

def rss():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))

applied = keep_freed_memory() if sys.argv[1] == "keep" else None
before = rss()
block = torch.ones(64 * 2**20)  # 256 MiB of float32, every page touched
del block
after_free = rss()
block = torch.ones(64 * 2**20)
again = rss()
print(json.dumps({"applied": applied, "freed": before - after_free, "kept": after_free - before,
                  "regrown": again - after_free}))
"""
MIB = 2**20


def probe(mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_defaults_return_large_blocks_at_once():
    measured = probe("default")
    assert measured["kept"] < 32 * MIB, measured  # the 256 MiB went back to the system


def test_keep_freed_memory_keeps_and_reuses_large_blocks():
    measured = probe("keep")
    assert measured["applied"] is True
    assert measured["kept"] > 240 * MIB, measured  # still resident after `del`
    assert measured["regrown"] < 16 * MIB, measured  # the second tensor reused those pages

