"""DupMAE pre-training step: dupmae vs a plain Hugging Face implementation (benchmarks/plain_dupmae.py).

Both sides train the same objective (encoder MLM + [CLS] decoding + 0.1 x BoW) on the same SciFact
sequences, from the same random initialisation, with fused AdamW (the Trainer's default), dropout
on, one process. A step is collate + forward + backward + optimizer step. Every configuration runs
in its own subprocess so that its peak memory is its own; the two implementations alternate.

Reported per configuration (model size, sequence length L, precision):
- tokens/s (median over the timed steps) and the ratio ours / plain at the same precision, and
  ours bf16 / plain fp32 (the user-facing figure);
- activation memory: peak RSS minus RSS once model, gradients and optimizer state exist, from a
  separate fp32 run with glibc returning freed memory at once (never timed: see run_worker);
- matmul FLOP/s actually executed by each implementation (every matmul counted, vocabulary
  projections included) as a share of this machine's square-matmul peak in the same dtype,
  measured in the same process.

    python benchmarks/pretrain_step.py                 # the full table (about 10 min on 2 cores)
    python benchmarks/pretrain_step.py --quick         # MiniLM size, L = 128, 2 steps
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (MALLOC_ENV, adamw, matmul_peak_flops, median, minilm_path, packed_examples, peak_rss_bytes,
                    reset_peak_rss, rss_bytes, training_step)  # noqa: E402

SIZES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
BATCH = {("minilm", 128): 16, ("minilm", 512): 4, ("base", 128): 8, ("base", 512): 2}


def executed_matmul_flops(impl: str, size: str, length: int, batch: int, masked: int, ordinary: int,
                          shape: dict | None = None, vocab: int = 30522) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3 x forward for dense layers); `shape`
    overrides `SIZES[size]`."""
    s = shape or SIZES[size]
    d, ff, layers = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    tokens = batch * length
    layer = 2 * 4 * d * d + 2 * 2 * d * ff + 2 * 2 * length * d  # per token: QKVO, FFN, QK^T and AV
    transform = 2 * d * d
    projection = 2 * d * vocab
    flops = 3 * tokens * layers * layer + 3 * tokens * layer  # encoder + decoder layer
    if impl == "plain":  # head on every position, for the encoder (shared with BoW) and the decoder
        flops += 2 * 3 * tokens * (transform + projection)
    else:  # BoW: every position forward, gradient only at arg-max rows (B x V x d); MLM at masked; decoder at ordinary
        flops += 3 * tokens * transform + tokens * projection + 2 * 2 * batch * vocab * d
        flops += 3 * masked * projection
        flops += 3 * ordinary * (transform + projection)
    return float(flops)


def build(impl: str, size: str, tokenizer, seed: int = 0, attention_dropout: float = 0.1, lean_attention: bool = True,
          fast_dropout: bool = True):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, max_position_embeddings=512, **SIZES[size],
                        attention_probs_dropout_prob=attention_dropout,
                        attn_implementation="sdpa" if impl == "ours" else "eager")
    encoder = BertForMaskedLM(config)
    if impl == "plain":
        from plain_dupmae import PlainCollator, PlainDupMAE

        model = PlainDupMAE(encoder)
        collator = PlainCollator(30522, tokenizer.mask_token_id, tokenizer.pad_token_id)
        return model, collator, lambda batch: model(**batch)
    from dupmae.config import PretrainingOptions
    from dupmae.data.collator import PretrainingCollator
    from dupmae.modeling.pretraining import DupMAEForPretraining, combine_losses, local_counts

    options = PretrainingOptions()
    from dupmae.platform import Accelerations, prepare

    model = DupMAEForPretraining(encoder, options)
    # as `dupmae pretrain` does (lean attention and fast dropout on by default); the allocator is the worker's
    prepare(model, "cpu", Accelerations(lean_attention=lean_attention, fast_dropout=fast_dropout,
                                        keep_freed_memory=False))
    collator = PretrainingCollator(options, tokenizer.pad_token_id, tokenizer.mask_token_id, 30522)

    def loss(batch):
        output = model(**batch)
        return combine_losses(output, options, local_counts(output))[0]

    return model, collator, loss


def worker(args) -> dict:
    from transformers import AutoTokenizer

    torch.set_num_threads(args.threads)
    if args.keep_freed_memory in ("both", args.impl):
        from dupmae.platform.cpu.allocator import keep_freed_memory

        keep_freed_memory()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    batch_size = args.batch or BATCH[(args.size, args.length)]
    examples = packed_examples(tokenizer, args.length, batch_size * (args.steps + 1))
    model, collator, loss_of = build(args.impl, args.size, tokenizer, attention_dropout=args.attention_dropout,
                                     lean_attention=not args.no_lean_attention, fast_dropout=not args.no_fast_dropout)
    model.train()
    if args.compile:  # every transformer layer through torch.compile (inductor); the losses stay eager
        for module in model.modules():
            if type(module).__name__ in ("BertLayer", "EnhancedDecoderLayer", "PlainDecoderLayer"):
                module.compile()
    optimizer = adamw(model.parameters(), lr=1e-4)
    for parameter in model.parameters():  # allocate gradients and optimizer state before the baseline
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    times, collate_times = [], []
    for step in range(args.steps + 1):
        chunk = examples[step * batch_size:(step + 1) * batch_size]
        start = time.perf_counter()
        batch = collator(chunk)
        collated = time.perf_counter()
        loss = training_step(lambda: loss_of(batch), optimizer, args.precision, keep_gradients=True)
        if not step:  # step 0 is the warm-up: lazily loaded kernels and workspaces join the baseline
            baseline = rss_bytes()
            reset_peak_rss()
        else:
            times.append(time.perf_counter() - start)
            collate_times.append(collated - start)
    peak = peak_rss_bytes()
    masked = int((batch["labels"] != -100).sum()) if "labels" in batch else 0
    ordinary = batch_size * (args.length - 2)
    flops = executed_matmul_flops(args.impl, args.size, args.length, batch_size, masked, ordinary)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    step_time = median(times)
    return {
        "impl": args.impl, "size": args.size, "length": args.length, "precision": args.precision, "batch": batch_size,
        "attention_dropout": args.attention_dropout,
        "step_s": step_time, "collate_s": median(collate_times), "tokens_per_s": batch_size * args.length / step_time,
        "activation_mb": (peak - baseline) / 2**20, "baseline_mb": baseline / 2**20, "loss": float(loss),
        "matmul_gflop_per_s": flops / step_time / 1e9, "peak_gflop_per_s": matmul_peak_flops(dtype) / 1e9,
    }


def run_worker(impl, size, length, precision, args, memory: bool = False) -> dict:
    """One measurement in its own process. Speed runs with the allocator's defaults (what a user
    gets); `memory` runs (1 timed step) make glibc return freed blocks at once, so that RSS after
    the warm-up step is the live memory and the peak above it the step's activations — that setting
    slows both implementations (every large temporary is page-faulted anew), so it is never timed."""
    command = [sys.executable, __file__, "--worker", "--impl", impl, "--size", size, "--length", str(length),
               "--precision", precision, "--steps", "1" if memory else str(args.steps), "--threads", str(args.threads),
               "--attention-dropout", str(args.attention_dropout),
               "--keep-freed-memory", "none" if memory else args.keep_freed_memory]
    if args.batch:
        command += ["--batch", str(args.batch)]
    if args.compile:
        command.append("--compile")
    if args.no_lean_attention:
        command.append("--no-lean-attention")
    if args.no_fast_dropout:
        command.append("--no-fast-dropout")
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(MALLOC_ENV if memory else {})})
    if result.returncode:
        raise SystemExit(f"worker failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "plain"])
    parser.add_argument("--size", choices=list(SIZES), default="minilm")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, help="sequences per step (default: per size and length, see BATCH)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attention-dropout", type=float, default=0.1,
                        help="attention-probability dropout of both models (BERT: 0.1). With 0, PyTorch runs "
                             "flash attention on the CPU (ours: SDPA); the plain eager attention still "
                             "materialises [B, heads, L, L]")
    parser.add_argument("--no-lean-attention", action="store_true",
                        help="ours with PyTorch's SDPA also under dropout (the CPU math path), as before lean attention")
    parser.add_argument("--no-fast-dropout", action="store_true",
                        help="ours with PyTorch's dropout masks (one random draw per element), as before fast dropout")
    parser.add_argument("--keep-freed-memory", choices=["ours", "both", "none"], default="ours",
                        help="which side runs with glibc keeping freed memory (platform/cpu/allocator.py; "
                             "`dupmae pretrain` does by default, the released code does not)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every transformer layer")
    parser.add_argument("--quick", action="store_true", help="MiniLM size at L = 128 only, 2 steps")
    parser.add_argument("--configs", default="minilm:128,minilm:512,base:128,base:512",
                        help="comma-separated size:length pairs")
    parser.add_argument("--output", help="also write every measurement as JSON here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.configs, args.steps = "minilm:128", 2
    rows = []
    header = ("| size | L | batch | ours fp32 tok/s | plain fp32 tok/s | fp32 ratio | ours bf16 tok/s | plain bf16 tok/s "
              "| bf16 ratio | ours bf16 / plain fp32 | activation MB ours / plain (fp32) | memory ratio "
              "| ours MFU fp32 / bf16 | plain MFU fp32 / bf16 |")
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for pair in args.configs.split(","):
        size, length = pair.split(":")
        length = int(length)
        measured = {}
        for precision in ("fp32", "bf16"):
            for impl in ("plain", "ours"):
                measured[impl, precision] = run_worker(impl, size, length, precision, args)
                rows.append(measured[impl, precision])
                print(f"  # {impl} {size} L={length} {precision}: {measured[impl, precision]['tokens_per_s']:.0f} tok/s",
                      file=sys.stderr, flush=True)
        for impl in ("plain", "ours"):
            measured[impl, "memory"] = run_worker(impl, size, length, "fp32", args, memory=True)
            rows.append({**measured[impl, "memory"], "memory_run": True})
        o32, p32, o16, p16 = (measured[k] for k in (("ours", "fp32"), ("plain", "fp32"), ("ours", "bf16"), ("plain", "bf16")))
        o_mem, p_mem = measured["ours", "memory"]["activation_mb"], measured["plain", "memory"]["activation_mb"]

        def mfu(m):
            return f"{100 * m['matmul_gflop_per_s'] / m['peak_gflop_per_s']:.0f} %"

        print(f"| {size} | {length} | {o32['batch']} | {o32['tokens_per_s']:.0f} | {p32['tokens_per_s']:.0f} "
              f"| {o32['tokens_per_s'] / p32['tokens_per_s']:.2f}x | {o16['tokens_per_s']:.0f} | {p16['tokens_per_s']:.0f} "
              f"| {o16['tokens_per_s'] / p16['tokens_per_s']:.2f}x | {o16['tokens_per_s'] / p32['tokens_per_s']:.2f}x "
              f"| {o_mem:.0f} / {p_mem:.0f} | {p_mem / max(o_mem, 1):.1f}x "
              f"| {mfu(o32)} / {mfu(o16)} | {mfu(p32)} / {mfu(p16)} |", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
