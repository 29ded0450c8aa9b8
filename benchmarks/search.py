"""Search: exact DupMAE hybrid scoring (dense 384 + sparse top-384) vs FAISS `IndexFlatIP` over
768-d dense vectors — the same number of documents and the same "width" (384 + 384 vs 768),
top-1000 for 300 queries (SciFact's test queries), side by side.

Ours is the code path of `dupmae search` (`dupmae.retrieval.search.search_blocks`: `HybridScorer`
+ `TopK`, one part of `--part-size` documents at a time) over in-memory parts; theirs is
`faiss.IndexFlatIP(768).search(queries, 1000)`. Both are timed up to sorted `[Q, k]` score and
position arrays (what FAISS returns), with the same thread count, alternating, median of repeats
of warm calls (the ratio); one cold call each (memory handed back to the system first, so it pays
its page faults, as a one-shot `dupmae search` does) is reported beside, with its peak memory.

Synthetic data (the default): dense parts random normal; each document's 384 sparse indices are
distinct, drawn without replacement from a Zipf-like distribution over a 30,522-entry vocabulary
(weight 1/(rank + 10), ranks scattered over the ids), values positive (as log1p_relu top-k values
are); queries' vocabulary vectors are non-negative with `--query-nonzeros` entries (default: all
30,522 — what a DupMAE query is: SciFact's test queries under a fine-tuned log1p_relu model have
25,395-30,511 non-zeros, median 30,106). `--real MODEL_DIR` also runs the 5k case on a real index
(`MODEL_DIR/index`, from `dupmae encode`) with SciFact's real test queries.

    python benchmarks/search.py                       # 5,183 and 1,000,000 documents, 1 and 2 threads
    python benchmarks/search.py --quick               # 5,183 and 100,000 documents, 1 repeat
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DUPMAE_DATA", REPO / ".." / "shared" / "data"))


def rss_bytes() -> int:
    """Resident memory, after handing freed heap memory back (glibc keeps it otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:  # Linux: resets VmHWM to the current RSS
        handle.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))


def machine(threads: str) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    import faiss

    load = os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, faiss {faiss.__version__}, "
            f"threads {threads}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def zipf_indices(rng: np.random.Generator, count: int, k: int, vocab: int, offset: float = 10.0) -> np.ndarray:
    """`[count, k]` distinct-per-row vocabulary ranks, drawn without replacement with weight
    1/(rank + 1 + offset): draws with replacement, duplicates redrawn until none is left (the same
    distribution as drawing in sequence and skipping terms already drawn)."""
    weights = 1.0 / (np.arange(vocab) + 1 + offset)
    cdf = np.cumsum(weights) / weights.sum()
    draws = np.minimum(np.searchsorted(cdf, rng.random((count, k))), vocab - 1).astype(np.int32)
    draws.sort(axis=1)
    rows = np.arange(count)
    while len(rows):
        sub = draws[rows]
        duplicate = np.zeros(sub.shape, dtype=bool)
        duplicate[:, 1:] = sub[:, 1:] == sub[:, :-1]
        has = duplicate.any(axis=1)
        rows, sub, duplicate = rows[has], sub[has], duplicate[has]
        sub[duplicate] = np.minimum(np.searchsorted(cdf, rng.random(int(duplicate.sum()))), vocab - 1)
        sub.sort(axis=1)
        draws[rows] = sub
    return draws


def synthetic_parts(count: int, part_size: int, dense_dim: int, k: int, vocab: int, seed: int):
    from dupmae.retrieval.index import DocumentBlock

    rng = np.random.default_rng(seed)
    scatter = rng.permutation(vocab).astype(np.int32)  # frequent ranks are not the smallest ids
    parts = []
    for start in range(0, count, part_size):
        n = min(part_size, count - start)
        indices = scatter[zipf_indices(rng, n, k, vocab)]
        values = (1.6 + rng.exponential(0.1, size=(n, k))).astype(np.float32)
        dense = rng.standard_normal((n, dense_dim), dtype=np.float32)
        parts.append(DocumentBlock([f"doc{start + i}" for i in range(n)], dense, indices, values))
    return parts


def synthetic_queries(count: int, dense_dim: int, vocab: int, nonzeros: int, seed: int):
    from dupmae.retrieval.index import QueryBlock

    rng = np.random.default_rng(seed + 1)
    sparse = np.zeros((count, vocab), dtype=np.float32)
    for row in range(count):
        columns = rng.choice(vocab, size=nonzeros, replace=False) if nonzeros < vocab else slice(None)
        sparse[row, columns] = np.log1p(rng.exponential(0.5, size=nonzeros)).astype(np.float32)
    return QueryBlock([f"q{i}" for i in range(count)], rng.standard_normal((count, dense_dim), dtype=np.float32),
                      sparse)


def real_case(model_dir: str, part_size: int):
    """(parts, queries) from `model_dir/index` and SciFact's test queries encoded by that model."""
    from dupmae.data.beir import load_qrels, load_queries
    from dupmae.modeling.retriever import Retriever
    from dupmae.retrieval.encode import index_parts, load_part
    from dupmae.retrieval.index import DocumentBlock

    blocks = [load_part(path) for path in index_parts(Path(model_dir) / "index")]
    ids = [i for b in blocks for i in b.ids]
    dense, indices, values = (np.concatenate([getattr(b, name) for b in blocks])
                              for name in ("dense", "sparse_indices", "sparse_values"))
    parts = [DocumentBlock(ids[s : s + part_size], dense[s : s + part_size], indices[s : s + part_size],
                           values[s : s + part_size]) for s in range(0, len(ids), part_size)]
    queries = load_queries(str(DATA / "scifact" / "queries.jsonl"))
    test = sorted(load_qrels(str(DATA / "scifact" / "qrels" / "test.tsv")))
    encoded = Retriever.from_pretrained(model_dir, show_progress=False).encode_queries([queries[q] for q in test], test)
    return parts, encoded


def part_bytes(parts) -> int:
    return sum(a.nbytes for p in parts for a in (p.dense, p.sparse_indices, p.sparse_values) if a is not None)


def run_case(name: str, parts, queries, args, results: list) -> None:
    import faiss

    from dupmae.retrieval.search import search_blocks

    count = sum(len(p.ids) for p in parts)
    width = parts[0].dense.shape[1] + parts[0].sparse_indices.shape[1]
    rng = np.random.default_rng(args.seed + 2)
    gc.collect()
    before = rss_bytes()
    faiss_index = faiss.IndexFlatIP(width)
    for start in range(0, count, args.part_size):  # added in parts: no [N, 768] temporary beside the index
        faiss_index.add(rng.standard_normal((min(args.part_size, count - start), width), dtype=np.float32))
    gc.collect()
    faiss_rss = rss_bytes() - before
    faiss_queries = rng.standard_normal((len(queries.ids), width), dtype=np.float32)

    def ours():
        return search_blocks(queries, parts, args.top_k).arrays()

    def theirs():
        return faiss_index.search(faiss_queries, args.top_k)

    for threads in args.threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        ours(), theirs()  # warm-up: kernels compiled (oneDNN JIT), code paths loaded
        # Cold: freed memory handed back to the system first, so the call pays for the page faults
        # of its working buffers (as a one-shot `dupmae search` does); also gives the peak memory.
        peaks, cold = {}, {}
        for label, run in (("ours", ours), ("faiss", theirs)):
            base = rss_bytes()
            reset_peak_rss()
            start = time.perf_counter()
            run()
            cold[label] = time.perf_counter() - start
            peaks[label] = peak_rss_bytes() - base
        # Warm (what the ratio uses): repeated calls in one process, as a search service makes them.
        times = {"ours": [], "faiss": []}
        for repeat in range(args.repeats):
            for label in (("ours", "faiss") if repeat % 2 == 0 else ("faiss", "ours")):
                start = time.perf_counter()
                (ours if label == "ours" else theirs)()
                times[label].append(time.perf_counter() - start)
        row = {"case": name, "documents": count, "threads": threads, "queries": len(queries.ids), "top_k": args.top_k,
               "ours_s": statistics.median(times["ours"]), "faiss_s": statistics.median(times["faiss"]),
               "ours_bytes_per_doc_arrays": part_bytes(parts) / count,
               "faiss_bytes_per_doc_arrays": faiss_index.ntotal * width * 4 / count,
               "ours_bytes_per_doc_rss": args.rss_ours[name] / count, "faiss_bytes_per_doc_rss": faiss_rss / count,
               "ours_search_peak_mb": peaks["ours"] / 2**20, "faiss_search_peak_mb": peaks["faiss"] / 2**20,
               "ours_cold_s": cold["ours"], "faiss_cold_s": cold["faiss"],
               "load": os.getloadavg()[0]}
        row["ratio"] = row["ours_s"] / row["faiss_s"]
        results.append(row)
        print(f"{name:>22s} {count:>9,d} docs {threads} thr: ours {row['ours_s']:7.3f} s  faiss {row['faiss_s']:7.3f} s  "
              f"ratio {row['ratio']:.2f}  (load {row['load']:.2f})", flush=True)
    del faiss_index
    gc.collect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", default="5183,1000000", help="comma-separated corpus sizes")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part-size", type=int, default=10_000, help="documents per part (dupmae encode's default)")
    parser.add_argument("--dense-dim", type=int, default=384)
    parser.add_argument("--sparse-top-k", type=int, default=384)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--query-nonzeros", type=int, default=None, help="non-zeros per query vocabulary vector (default: all)")
    parser.add_argument("--real", default=None, metavar="MODEL_DIR",
                        help="also the 5k case on MODEL_DIR/index with SciFact's test queries encoded by MODEL_DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5,183 and 100,000 documents, 1 repeat")
    parser.add_argument("--json", default=None, help="write the numbers to this file too")
    args = parser.parse_args(argv)
    if args.quick:
        args.documents, args.repeats = "5183,100000", 1
    args.threads = [int(t) for t in args.threads.split(",")]
    nonzeros = args.query_nonzeros or args.vocab
    print(machine(",".join(map(str, args.threads))))
    print(f"{args.queries} queries, top-{args.top_k}; ours: dense {args.dense_dim} + sparse top-{args.sparse_top_k} "
          f"(vocabulary {args.vocab}, {nonzeros} query non-zeros); FAISS: IndexFlatIP "
          f"{args.dense_dim + args.sparse_top_k}-d; median of {args.repeats}")
    results: list[dict] = []
    args.rss_ours = {}
    queries = synthetic_queries(args.queries, args.dense_dim, args.vocab, nonzeros, args.seed)
    if args.real:
        parts, real_queries = real_case(args.real, args.part_size)
        args.rss_ours["real SciFact"] = part_bytes(parts)  # loaded from disk: arrays only
        run_case("real SciFact", parts, real_queries, args, results)
        del parts
    for count in (int(c) for c in args.documents.split(",")):
        gc.collect()
        before = rss_bytes()
        parts = synthetic_parts(count, args.part_size, args.dense_dim, args.sparse_top_k, args.vocab, args.seed)
        gc.collect()
        name = f"synthetic {count:,d}"
        args.rss_ours[name] = rss_bytes() - before
        run_case(name, parts, queries, args, results)
        del parts
    print()
    print("| documents | threads | ours (s) | FAISS flat (s) | ours / FAISS | cold: ours / FAISS (s) | bytes/doc ours (arrays / RSS) | bytes/doc FAISS (arrays / RSS) | search peak MB ours / FAISS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['case']} | {r['threads']} | {r['ours_s']:.3f} | {r['faiss_s']:.3f} | {r['ratio']:.2f} | "
              f"{r['ours_cold_s']:.3f} / {r['faiss_cold_s']:.3f} | "
              f"{r['ours_bytes_per_doc_arrays']:.0f} / {r['ours_bytes_per_doc_rss']:.0f} | "
              f"{r['faiss_bytes_per_doc_arrays']:.0f} / {r['faiss_bytes_per_doc_rss']:.0f} | "
              f"{r['ours_search_peak_mb']:.0f} / {r['faiss_search_peak_mb']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
