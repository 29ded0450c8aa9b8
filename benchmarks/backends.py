"""Search backends side by side on one synthetic corpus: exact DupMAE scoring, FAISS HNSW + the
in-process sparse inverted index (`union`), and Milvus (embedded Milvus Lite, HNSW + sparse inverted
index in one collection) — indexing time, queries/s, memory per document, and the overlap of each
approximate backend's top-k with the exact top-k; ratios against exact.

Synthetic data as `benchmarks/search.py` makes it (dense 384 random normal; 384 distinct Zipf-drawn
sparse terms per document, positive values; queries' vocabulary vectors non-negative with every one
of the 30,522 terms non-zero, as a fine-tuned DupMAE query's nearly are). Random dense vectors and
random queries make the approximate backends' overlap a worst case (no structure for HNSW to use);
the real-data quality comparison is `benchmarks/backend_quality.py`.

Backends: `exact`, `union`, `milvus` (engine candidates re-scored from the local arrays, as
`dupmae search --backend milvus --index DIR` does) and `milvus-fetch` (re-scored from vectors fetched
back from the engine, as without `--index`).

Indexing: exact = nothing to build (the arrays as `dupmae encode` writes them); union = FAISS HNSW
build + posting lists + the arrays kept for re-scoring; milvus = create + insert + flush + index
build, until the collection answers a search (`insert_s`: the inserts alone). Memory: growth of this
process's resident memory (Milvus Lite runs inside it), plus the database folder on disk.

    python benchmarks/backends.py --documents 100000            # ~10 minutes on 2 busy cores
    python benchmarks/backends.py --documents 1000000           # the 1M case (needs ~25 GB and hours here)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import top_k_overlap  # noqa: E402
from search import machine, rss_bytes, synthetic_parts, synthetic_queries  # noqa: E402  (benchmarks/search.py)


def children_rss() -> int:
    """Resident memory of this process's descendants (the Milvus Lite server)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    total = 0
    for pid in mine:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def timed_search(backend, queries, top_k: int, repeats: int):
    backend.search(queries, top_k)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        hits = backend.search(queries, top_k)
        times.append(time.perf_counter() - start)
    return hits, float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    from dupmae.retrieval.backends import make_backend

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=100, help="dense and sparse candidates per query")
    parser.add_argument("--sparse-query-terms", type=int, default=64)
    parser.add_argument("--dense-index", default="HNSW32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part-size", type=int, default=10_000)
    parser.add_argument("--dense-dim", type=int, default=384)
    parser.add_argument("--sparse-top-k", type=int, default=384)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--backends", default="exact,union,milvus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.backends.split(",")
    print(machine(str(args.threads)))
    print(f"{args.documents:,d} documents, {args.queries} queries, top-{args.top_k}, {args.candidates} dense + "
          f"{args.candidates} sparse candidates ({args.sparse_query_terms} query terms), {args.dense_index}", flush=True)
    queries = synthetic_queries(args.queries, args.dense_dim, args.vocab, args.vocab, args.seed)
    gc.collect()
    before = rss_bytes()
    parts = synthetic_parts(args.documents, args.part_size, args.dense_dim, args.sparse_top_k, args.vocab, args.seed)
    arrays_rss = rss_bytes() - before
    rows, exact_results = [], None
    for name in names:
        gc.collect()
        before, children_before = rss_bytes(), children_rss()
        folder = Path(tempfile.mkdtemp(prefix="dupmae-bench-"))
        start = time.perf_counter()
        engine = name.startswith("milvus")
        if engine:
            from dupmae.retrieval.backends.milvus import MilvusBackend

            backend = MilvusBackend(str(folder / "bench.db"), candidates=args.candidates,
                                    sparse_query_terms=args.sparse_query_terms)
            backend.create({"benchmark": True}, args.dense_dim, True)
        else:
            backend = make_backend(name, dense_index=args.dense_index, candidates=args.candidates,
                                   sparse_query_terms=args.sparse_query_terms, threads=args.threads)
        insert_start = time.perf_counter()  # after connecting and creating: the inserts alone
        for part in parts:
            backend.add(part)
        insert_s = time.perf_counter() - insert_start
        if engine:
            backend.finish()
            if name == "milvus":
                from dupmae.retrieval.approximate import concatenate

                backend.use_local(concatenate(parts))
        elif hasattr(backend, "build"):
            backend.build()
        backend.search(QueryBlockSlice.first(queries), 1)  # ready to answer
        build_s = time.perf_counter() - start
        gc.collect()
        memory = rss_bytes() - before + (arrays_rss if name != "milvus-fetch" else 0)  # the others keep the arrays
        engine_rss = children_rss() - children_before if engine else 0
        disk = folder_bytes(folder)
        hits, search_s = timed_search(backend, queries, args.top_k, args.repeats)
        results = hits.results(queries.ids)
        if name == "exact":
            exact_results = results
        row = {"backend": name, "documents": args.documents, "build_s": build_s, "insert_s": insert_s,
               "insert_ms_per_doc": 1e3 * insert_s / args.documents, "search_s": search_s,
               "qps": args.queries / search_s, "bytes_per_doc": (memory + engine_rss) / args.documents,
               "process_bytes_per_doc": memory / args.documents, "engine_rss_bytes_per_doc": engine_rss / args.documents,
               "disk_bytes_per_doc": disk / args.documents,
               "overlap_at_k": top_k_overlap(results, exact_results) if exact_results else None,
               "candidates_per_query": getattr(backend, "last_candidates", None), "load": os.getloadavg()[0]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del backend, hits
        gc.collect()
        shutil.rmtree(folder, ignore_errors=True)
    base = next((r for r in rows if r["backend"] == "exact"), rows[0])
    print()
    print(f"| backend | index build (s) | insert ms/doc | queries/s | × exact q/s | memory bytes/doc (process + engine) "
          f"| × exact memory | disk bytes/doc | top-{args.top_k} overlap with exact | candidates/query |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backend']} | {r['build_s']:.1f} | {r['insert_ms_per_doc']:.3f} | {r['qps']:.1f} | "
              f"{r['qps'] / base['qps']:.2f} | "
              f"{r['bytes_per_doc']:.0f} | {r['bytes_per_doc'] / base['bytes_per_doc']:.2f} | {r['disk_bytes_per_doc']:.0f} | "
              f"{fmt(r['overlap_at_k'], '.3f')} | {fmt(r['candidates_per_query'], '.0f')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


class QueryBlockSlice:
    @staticmethod
    def first(queries):
        from dupmae.retrieval.index import QueryBlock

        return QueryBlock(queries.ids[:1], None if queries.dense is None else queries.dense[:1],
                          None if queries.sparse is None else queries.sparse[:1])


if __name__ == "__main__":
    sys.exit(main())
