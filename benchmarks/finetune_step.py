"""Contrastive fine-tuning step: PyTorch's SDPA and dropout vs lean attention and fast dropout masks.

all-MiniLM-L6-v2, `cls` representation (mean pooling), 8 queries x 64 tokens + 32 passages x 128
tokens (groups of 4), AdamW, dropout on, 2 threads; median step time of 5 steps after a warm-up.
Variants: `sdpa` (PyTorch's SDPA and `nn.Dropout`), `lean` (lean attention), `+fast` (the dropout
modules swapped by `use_fast_dropout`, so lean attention draws fast masks too), `+keep` (glibc keeps
freed memory, platform/cpu/allocator.py): `lean+fast+keep` is what `dupmae finetune` does on a CPU by
default. Each variant and precision runs in its own subprocess.

    python benchmarks/finetune_step.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import adamw, median, minilm_path, training_step  # noqa: E402


def batch(rows: int, length: int, generator: torch.Generator):
    """Random token ids framed by [CLS] ... [SEP]: `[rows, length]` ids, mask, special-tokens mask."""
    ids = torch.randint(1000, 29000, (rows, length), generator=generator)
    ids[:, 0], ids[:, -1] = 101, 102
    special = torch.zeros(rows, length, dtype=torch.long)
    special[:, 0] = special[:, -1] = 1
    return ids, torch.ones(rows, length, dtype=torch.long), special


VARIANTS = ("sdpa", "sdpa+fast", "lean", "lean+fast", "lean+fast+keep")
DEFAULT = VARIANTS[-1]  # `dupmae finetune`'s CPU defaults


def worker(variant: str, precision: str, steps: int) -> dict:
    from dupmae.platform.cpu.fast_dropout import use_fast_dropout
    from dupmae.platform.cpu.lean_attention import use_lean_attention
    from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig
    from dupmae.platform.cpu.allocator import keep_freed_memory
    from dupmae.training.contrastive import contrastive_loss

    parts = variant.split("+")
    torch.set_num_threads(2)
    if "keep" in parts:
        keep_freed_memory()
    torch.manual_seed(0)
    encoder = DupMAEEncoder.from_pretrained(
        minilm_path(), RepresentationConfig(representation="cls", dense_dim=0, dense_pooling="mean"), "identity")
    if parts[0] == "lean" and not use_lean_attention(encoder.model):
        raise SystemExit("this encoder cannot switch to lean attention")
    if "fast" in parts:
        use_fast_dropout(encoder)
    encoder.train()
    optimizer = adamw(encoder.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    queries, passages = batch(8, 64, generator), batch(32, 128, generator)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        training_step(lambda: contrastive_loss(encoder(*queries), encoder(*passages), 4, 1.0, False)[0],
                      optimizer, precision)
        times.append(time.perf_counter() - start)
    return {"variant": variant, "precision": precision, "step_s": median(times[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps)))
        return
    print("| precision | " + " | ".join(f"{variant} s/step" for variant in VARIANTS) + f" | sdpa / {DEFAULT} time |")
    print("|" + " --- |" * (len(VARIANTS) + 2))
    for precision in ("bf16", "fp32"):
        measured = {}
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--worker", variant, precision, "--steps", str(args.steps)]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            measured[variant] = json.loads(output.strip().splitlines()[-1])["step_s"]
        cells = " | ".join(f"{measured[variant]:.2f}" for variant in VARIANTS)
        print(f"| {precision} | {cells} | {measured['sdpa'] / measured[DEFAULT]:.2f}x |")


if __name__ == "__main__":
    main()
