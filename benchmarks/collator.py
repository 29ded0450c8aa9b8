"""Collator: dupmae's vectorised masks vs a per-row Python loop (benchmarks/plain_dupmae.py).

Both build the same batch for the full DupMAE objective from the same SciFact sequences: whole-word
encoder masking with 80/10/10, and the decoder's position-specific `[B, L, L]` masks from a pool
of `min(L, 256)` whole-word masks per sequence (one per row). Time per example: each round runs
`--calls` batches of one implementation back to back, then of the other; median over rounds.

    python benchmarks/collator.py                # L = 128 and 512, batch 16
    python benchmarks/collator.py --quick
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, minilm_path, packed_examples  # noqa: E402
from plain_dupmae import PlainCollator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=4, help="back-to-back batches per implementation and round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (data-loader workers use 1)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.lengths, args.batch, args.repeats, args.calls = "128", 4, 2, 1
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from dupmae.config import PretrainingOptions
    from dupmae.data.collator import PretrainingCollator

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    ours = PretrainingCollator(PretrainingOptions(), tokenizer.pad_token_id, tokenizer.mask_token_id, len(tokenizer))
    plain = PlainCollator(len(tokenizer), tokenizer.mask_token_id, tokenizer.pad_token_id)
    print("| L | batch | dupmae ms/example | plain (per-row loop) ms/example | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for length in map(int, args.lengths.split(",")):
        examples = packed_examples(tokenizer, length, args.batch)
        timings = {"ours": [], "plain": []}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, collator in (("plain", plain), ("ours", ours)):
                # back to back, as in a data-loader worker: the other implementation's garbage and
                # cache traffic stay off this one's clock
                gc.collect()
                start = time.perf_counter()
                for _ in range(args.calls):
                    batch = collator(examples)
                timings[name].append((time.perf_counter() - start) / args.calls / len(examples))
            assert batch["decoder_attention_mask"].shape == (len(examples), length, length)
        ours_ms, plain_ms = (1000 * median(timings[k][1:]) for k in ("ours", "plain"))
        print(f"| {length} | {args.batch} | {ours_ms:.2f} | {plain_ms:.1f} | {plain_ms / ours_ms:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
