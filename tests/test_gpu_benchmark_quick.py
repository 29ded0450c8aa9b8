"""benchmarks/gpu_pretrain_step.py --quick: the prepared GPU check runs end to end on the CPU, so it
cannot rot between GPU sessions. Its numbers are checked, its timings are not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_quick_mode_runs_every_part(tmp_path):
    output = tmp_path / "gpu.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_pretrain_step.py"), "--quick", "--output",
                    str(output)], check=True, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = json.loads(output.read_text())
    assert report["quick"] and report["finished"]
    steps = {record["impl"]: record for record in report["steps"]}
    assert {"plain", "dupmae", "bow-materialised", "chunk-8192"} <= set(steps)
    assert all("error" not in record and record["tokens_per_s"] > 0 for record in steps.values())
    assert all(record["vs_plain"] > 0 for name, record in steps.items() if name != "plain")
    agreement = report["agreement"]
    assert {(r["impl"], r["precision"]) for r in agreement} >= {("dupmae", "bf16"), ("bow-materialised", "fp32")}
    assert all(r["ok"] for r in agreement), agreement
    assert report["pretrain"]["exit"] == 0 and report["pretrain"]["tokens_per_s"] > 0
    distributed = report["distributed"]
    assert distributed["backend"] == "gloo" and distributed["ok"], distributed
    assert distributed["logged_steps"] == [3, 3]
