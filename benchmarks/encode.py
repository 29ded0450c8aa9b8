"""Encoding: dupmae's `Retriever` vs sentence-transformers' `SentenceTransformer.encode`, side by side.

Both encode the SciFact corpus (title + " " + text, at most 256 tokens) with all-MiniLM-L6-v2 the
sentence-transformers way (mean pooling over tokens, L2-normalised): ours is a `Retriever` over a
`cls` representation with `dense_dim=0, dense_pooling=mean, normalize_dense=true`; theirs is
`SentenceTransformer(path)` on the same local folder. Same texts, batch size and thread count; one
warm-up each, then the implementations alternate (the first in each repeat swaps), median of the
repeats. Ours runs in fp32 (same precision as theirs) and in bf16 autocast (the user-facing
setting); the vectors are compared row by row (cosine).

    python benchmarks/encode.py                    # full corpus (5,183 documents), 3 repeats
    python benchmarks/encode.py --quick            # 256 documents, 1 repeat
    pip install 'dupmae[bench]'                    # sentence-transformers, the peer

Both sort texts by length before batching; sentence-transformers by characters, ours by token
count (the padding each leaves is printed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import minilm_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DUPMAE_DATA", REPO / ".." / "shared" / "data"))


def load_texts(corpus: Path, limit: int | None) -> list[str]:
    from dupmae.modeling.retriever import document_text

    if not corpus.is_file():
        raise SystemExit(f"{corpus} not found: set DUPMAE_DATA or pass --corpus")
    texts = []
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            texts.append(document_text(json.loads(line)))
            if limit and len(texts) >= limit:
                break
    return texts


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def padding_fraction(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> float:
    """Pad tokens / real tokens when batches of `batch_size` follow `order`."""
    padded = sum(int(lengths[order[i : i + batch_size]].max()) * len(order[i : i + batch_size])
                 for i in range(0, len(order), batch_size))
    return padded / int(lengths.sum()) - 1


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="sentence-transformers model folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--corpus", default=str(DATA / "scifact" / "corpus.jsonl"))
    parser.add_argument("--documents", type=int, default=None, help="first N documents only (default: all)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-bf16", action="store_true", help="skip our bf16 run")
    parser.add_argument("--ablation", action="store_true",
                        help="also time ours with plain PyTorch linears (no oneDNN), to show what it buys")
    parser.add_argument("--quick", action="store_true", help="256 documents, 1 repeat")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed memory (as `dupmae encode` does by default), for both sides")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: on a GPU both sides also run in bf16 "
                                                            "autocast ('theirs bf16' is the peer at equal precision)")
    parser.add_argument("--json", default=None, help="write the numbers to this file too")
    args = parser.parse_args(argv)
    if args.quick:
        args.documents, args.repeats = args.documents or 256, 1
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from dupmae.platform.cpu.allocator import keep_freed_memory

        print(f"keep freed memory: {keep_freed_memory()}")
    model_path = args.model or minilm_path()
    texts = load_texts(Path(args.corpus), args.documents)

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise SystemExit("the peer needs sentence-transformers: pip install 'dupmae[bench]'") from None
    from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig
    from dupmae.modeling.retriever import Retriever
    from dupmae.platform.precision import native_bf16

    device = torch.device(args.device)
    theirs_model = SentenceTransformer(model_path, device=args.device)
    theirs_model.max_seq_length = args.max_length
    config = RepresentationConfig(representation="cls", dense_dim=0, dense_pooling="mean", normalize_dense=True,
                                  passage_max_length=args.max_length)
    encoder = DupMAEEncoder.from_pretrained(model_path, config)
    tokenizer = theirs_model.tokenizer

    def ours(bf16: bool, onednn: bool = True):
        retriever = Retriever(encoder, tokenizer, batch_size=args.batch_size, bf16=bf16, device=args.device,
                              show_progress=False, onednn=onednn)
        return lambda items: retriever.encode_corpus(items).dense

    def theirs(items, bf16: bool = False):
        context = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            return theirs_model.encode(items, batch_size=args.batch_size, convert_to_numpy=True,
                                       show_progress_bar=False)

    runs = {"theirs fp32": theirs, "ours fp32": ours(False)}
    if not args.no_bf16:
        if native_bf16(device)[0]:
            runs["ours bf16"] = ours(True)
            if device.type == "cuda":  # the peer at equal precision (its CPU bf16 was slower than its fp32)
                runs["theirs bf16"] = lambda items: theirs(items, bf16=True)
        else:
            print(f"{device} has no native bf16: the bf16 run is skipped")
    if args.ablation:
        runs["ours fp32, plain linears"] = ours(False, onednn=False)

    for run in runs.values():  # warm-up: first calls allocate, JIT oneDNN kernels, fill caches
        run(texts[: 2 * args.batch_size])
    seconds = {name: [] for name in runs}
    vectors = {}
    names = list(runs)
    for repeat in range(args.repeats):
        rotation = names[repeat % len(names):] + names[: repeat % len(names)]  # each goes first in turn
        for name in rotation:
            start = time.perf_counter()
            vectors[name] = runs[name](texts)
            seconds[name].append(time.perf_counter() - start)
            print(f"  repeat {repeat + 1}: {name:26s} {len(texts) / seconds[name][-1]:7.1f} docs/s", flush=True)

    lengths = np.array([len(ids) for ids in tokenizer(texts, max_length=args.max_length, truncation=True)["input_ids"]])
    by_chars = np.argsort([-len(t) for t in texts], kind="stable")
    by_tokens = np.argsort(-lengths, kind="stable")
    result = {
        "machine": machine(), "model": model_path, "documents": len(texts), "batch_size": args.batch_size,
        "max_length": args.max_length, "repeats": args.repeats,
        "padding": {"theirs (sorted by characters)": padding_fraction(lengths, by_chars, args.batch_size),
                    "ours (sorted by tokens)": padding_fraction(lengths, by_tokens, args.batch_size)},
        "docs_per_second": {name: len(texts) / statistics.median(times) for name, times in seconds.items()},
        "min_cosine_vs_theirs": {name: min_cosine(vectors[name], vectors["theirs fp32"])
                                 for name in runs if name != "theirs fp32"},
    }
    speed = result["docs_per_second"]
    result["ratio_vs_theirs_fp32"] = {name: speed[name] / speed["theirs fp32"] for name in runs if name != "theirs fp32"}
    if "theirs bf16" in speed:
        result["ours_bf16_vs_theirs_bf16"] = speed["ours bf16"] / speed["theirs bf16"]

    print(f"\n{result['machine']}")
    print(f"{len(texts)} documents, batch {args.batch_size}, max {args.max_length} tokens, median of {args.repeats}")
    print(f"padding: theirs {result['padding']['theirs (sorted by characters)']:.1%}, "
          f"ours {result['padding']['ours (sorted by tokens)']:.1%} of real tokens")
    print(f"{'':28s} {'docs/s':>8s} {'x theirs':>9s} {'min cos':>8s}")
    for name in runs:
        ratio = result["ratio_vs_theirs_fp32"].get(name, 1.0)
        cosine = result["min_cosine_vs_theirs"].get(name, 1.0)
        print(f"{name:28s} {speed[name]:8.1f} {ratio:8.2f}x {cosine:8.5f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    assert result["min_cosine_vs_theirs"]["ours fp32"] >= 0.999, "ours fp32 does not reproduce the peer's vectors"
    return 0


if __name__ == "__main__":
    sys.exit(main())
