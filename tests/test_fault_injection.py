"""scripts/fault_injection.py, one trial of each kind per command (slow: about 5 minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_interruption_and_damage_is_survived_with_nothing_lost(tmp_path):
    output = tmp_path / "faults.json"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_injection.py"), "--trials", "1",
                             "--write-trials", "1", "--seed", "1", "--output", str(output)],
                            capture_output=True, text=True, timeout=3000)
    report = json.loads(output.read_text())
    trials = [t for t in report["trials"] if "survived" in t]
    assert {t["command"] for t in trials} == {"pretrain", "finetune", "encode", "run"}
    assert {t["kind"] for t in trials} == {"random", "write", "damage"}
    assert all(t["survived"] and t["identical"] for t in trials), json.dumps(trials, indent=1)
    assert result.returncode == 0, result.stderr[-3000:]
