"""Where a DupMAE pre-training step's time goes: one step of ours under `torch.profiler`.

Same model, data and settings as benchmarks/pretrain_step.py (random-initialised MiniLM or
bert-base size, SciFact sequences, AdamW, dropout 0.1, lean attention and losses); two warm-up
steps, then one profiled step; ops sorted by self CPU time.

    python benchmarks/profile_step.py --precision bf16 --length 128 --batch 16
    python benchmarks/profile_step.py --by-shape   # ops split by input shapes (which copy_ is which)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pretrain_step  # noqa: E402
from common import adamw, minilm_path, packed_examples, training_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(pretrain_step.SIZES), default="minilm")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--rows", type=int, default=20, help="ops to list")
    parser.add_argument("--return-freed-memory", action="store_true",
                        help="leave glibc's defaults (large freed blocks go back to the system at once)")
    parser.add_argument("--by-shape", action="store_true", help="list ops per input shapes (records shapes)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    torch.set_num_threads(2)
    if not args.return_freed_memory:  # as `dupmae pretrain` does by default
        from dupmae.platform.cpu.allocator import keep_freed_memory

        keep_freed_memory()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    examples = packed_examples(tokenizer, args.length, args.batch * 3)
    model, collator, loss_of = pretrain_step.build("ours", args.size, tokenizer)
    model.train()
    optimizer = adamw(model.parameters(), lr=1e-4)

    def step(index: int) -> None:
        batch = collator(examples[index * args.batch:(index + 1) * args.batch])
        training_step(lambda: loss_of(batch), optimizer, args.precision)

    step(0), step(1)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as profiler:
        step(2)
    averages = profiler.key_averages(group_by_input_shape=args.by_shape)
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=45,
                         max_shapes_column_width=70))


if __name__ == "__main__":
    main()
