"""Dropout masks four to a random draw (`platform/cpu/fast_dropout.py`) vs PyTorch's `bernoulli_`.

1. The mask alone: one `[16, 12, L, L]` attention mask (BERT-base heads), median of 20 draws.
2. Our pre-training step with each (benchmarks/pretrain_step.py's model, data and settings: random
   MiniLM size, SciFact sequences, AdamW, dropout 0.1, lean attention and losses). Two models with
   the same initial weights, one with `use_fast_dropout`, stepped alternately (ABAB...) in one
   process so that drifts of the machine hit both alike; median step time of each.

    python benchmarks/dropout_masks.py --configs minilm:128:16:bf16,minilm:128:16:fp32,minilm:512:4:bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_step  # noqa: E402
from common import adamw, median, minilm_path, packed_examples, training_step  # noqa: E402


def mask_times(length: int, repeats: int = 20) -> tuple[float, float]:
    """Milliseconds per `[16, 12, L, L]` keep-mask: (bernoulli_, keep_mask)."""
    from dupmae.platform.cpu.fast_dropout import keep_mask

    shape = (16, 12, length, length)
    timings = []
    for draw in (lambda: torch.empty(shape, dtype=torch.bool).bernoulli_(0.9), lambda: keep_mask(shape, 0.1)):
        draw()
        start = time.perf_counter()
        for _ in range(repeats):
            draw()
        timings.append((time.perf_counter() - start) / repeats * 1e3)
    return timings[0], timings[1]


def step_times(size: str, length: int, batch: int, precision: str, rounds: int) -> tuple[float, float]:
    """Median seconds per pre-training step: (PyTorch dropout, fast dropout), stepped alternately."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    examples = packed_examples(tokenizer, length, batch * 2)
    runs = []
    for fast in (False, True):
        model, collator, loss_of = pretrain_step.build("ours", size, tokenizer, fast_dropout=fast)
        model.train()
        optimizer = adamw(model.parameters(), lr=1e-4)
        batches = [collator(examples[i * batch:(i + 1) * batch]) for i in range(2)]
        runs.append((loss_of, optimizer, batches, []))

    def step(loss_of, optimizer, batches, times, index: int) -> None:
        start = time.perf_counter()
        training_step(lambda: loss_of(batches[index % 2]), optimizer, precision)
        times.append(time.perf_counter() - start)

    for index in range(rounds + 1):  # round 0 warms up (lazy kernels, optimizer state)
        for run in runs:
            step(*run, index)
    return median(runs[0][3][1:]), median(runs[1][3][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="minilm:128:16:bf16,minilm:128:16:fp32,minilm:512:4:bf16",
                        help="comma-separated size:length:batch:precision")
    parser.add_argument("--rounds", type=int, default=4, help="timed steps of each model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| size | L | batch | precision | mask ms bernoulli_ / ours | step s PyTorch dropout | step s fast dropout | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for config in args.configs.split(","):
        size, length, batch, precision = config.split(":")
        bernoulli_ms, fast_ms = mask_times(int(length))
        plain, fast = step_times(size, int(length), int(batch), precision, args.rounds)
        print(f"| {size} | {length} | {batch} | {precision} | {bernoulli_ms:.1f} / {fast_ms:.1f} "
              f"| {plain:.2f} | {fast:.2f} | {plain / fast:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
