"""Pieces of a CPU pre-training step, each against the way it was done before (docs/benchmarks.md, session 7).

- `maxpool`: the BoW max over positions of one `[B, C, V]` logits chunk: `max(dim=1)` (values and
  arg-max) vs `lean_losses.max_over_positions` (`max_pool1d` on the `[B, V, C]` view), plus `amax`
  and a plain copy of the chunk for scale; best of 3 x 10 calls, ms per call.
- `adamw`: one AdamW update of bert-base-size parameters with gradients: `foreach` (PyTorch's
  default) vs `fused` (the Trainer's `adamw_torch_fused`); ms per update.
- `rss`: resident memory after each of N MiniLM pre-training steps (ours, as benchmarks/pretrain_step.py
  builds it), with glibc's defaults and with `keep_freed_memory`, each in its own subprocess; MB
  per step and seconds per step.

    python benchmarks/step_pieces.py maxpool adamw
    python benchmarks/step_pieces.py rss --steps 25
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import adamw  # noqa: E402


def best_ms(call, calls: int = 10, rounds: int = 3) -> float:
    call()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls * 1000)
    return best


def maxpool(batch: int = 16, chunk: int = 64, vocab: int = 30522) -> None:
    from dupmae.modeling.lean_losses import max_over_positions

    logits = torch.randn(batch, chunk, vocab).to(torch.bfloat16)
    copy = torch.empty_like(logits)
    values, indices = max_over_positions(logits)
    expected_values, expected_indices = logits.max(dim=1)
    assert torch.equal(values, expected_values) and torch.equal(indices, expected_indices)
    print(f"[{batch}, {chunk}, {vocab}] bf16 chunk, ms per call:")
    print(f"  max(dim=1)          {best_ms(lambda: logits.max(dim=1)):7.1f}")
    print(f"  max_over_positions  {best_ms(lambda: max_over_positions(logits)):7.1f}")
    print(f"  amax(dim=1)         {best_ms(lambda: logits.amax(dim=1)):7.1f}   (values only)")
    print(f"  copy_               {best_ms(lambda: copy.copy_(logits)):7.1f}   (memory traffic for scale)")


def adamw_update() -> None:
    sizes = [30522 * 768] + [768 * 768] * 48 + [768 * 3072] * 24 + [768] * 100  # ~ bert-base
    parameters = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    foreach = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.01, foreach=True)
    fused = adamw(parameters, lr=1e-4)
    print(f"AdamW update of {sum(sizes) / 1e6:.0f}M parameters, ms: foreach {best_ms(foreach.step, 3):.0f}, "
          f"{'fused' if fused.defaults.get('fused') else 'foreach (no fused CPU kernel)'} {best_ms(fused.step, 3):.0f}")


def rss_worker(keep: bool, steps: int, precision: str) -> dict:
    import pretrain_step
    from common import minilm_path, packed_examples, training_step
    from transformers import AutoTokenizer

    from dupmae.platform.cpu.allocator import keep_freed_memory

    torch.set_num_threads(2)
    if keep:
        keep_freed_memory()

    def rss_mb() -> int:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) // 1024 for line in handle if line.startswith("VmRSS:"))

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    examples = packed_examples(tokenizer, 128, 16 * 4)
    model, collator, loss_of = pretrain_step.build("ours", "minilm", tokenizer)
    model.train()
    optimizer = adamw(model.parameters(), lr=1e-4)
    resident = []
    start = time.perf_counter()
    for step in range(steps):
        batch = collator(examples[(step % 4) * 16:(step % 4 + 1) * 16])
        training_step(lambda: loss_of(batch), optimizer, precision)
        resident.append(rss_mb())
    return {"keep": keep, "rss_mb": resident, "step_s": (time.perf_counter() - start) / steps}


def rss(steps: int, precision: str) -> None:
    print(f"MiniLM, L = 128, batch 16, {precision}: RSS (MB) after each of {steps} steps")
    for keep in (False, True):
        command = [sys.executable, __file__, "--rss-worker", "keep" if keep else "default", "--steps", str(steps),
                   "--precision", precision]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        label = "keep_freed_memory" if keep else "glibc defaults  "
        print(f"  {label}  max {max(result['rss_mb'])}, last {result['rss_mb'][-1]}, {result['step_s']:.2f} s/step: "
              f"{result['rss_mb']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pieces", nargs="*", help="maxpool, adamw, rss (default: maxpool adamw)")
    parser.add_argument("--steps", type=int, default=25, help="rss: pre-training steps per run")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="rss: step precision")
    parser.add_argument("--rss-worker", choices=["keep", "default"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_worker:
        print(json.dumps(rss_worker(args.rss_worker == "keep", args.steps, args.precision)))
        return
    pieces = {"maxpool": maxpool, "adamw": adamw_update, "rss": lambda: rss(args.steps, args.precision)}
    unknown = set(args.pieces) - set(pieces)
    if unknown:
        parser.error(f"unknown pieces {sorted(unknown)}; choose from {sorted(pieces)}")
    torch.set_num_threads(2)
    for piece in args.pieces or ["maxpool", "adamw"]:
        pieces[piece]()


if __name__ == "__main__":
    main()
