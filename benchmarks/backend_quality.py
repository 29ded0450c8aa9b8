"""Retrieval quality of each search backend against exact search, on a BEIR collection: nDCG@10,
Recall@1000 and the overlap of each backend's top-100 with the exact top-100.

    python benchmarks/backend_quality.py --model RETRIEVER_DIR --beir ../shared/data/scifact \
        [--index INDEX_DIR] [--backends exact,faiss,sparse,union,milvus] [--candidates 1000]

Without `--index` the corpus is encoded first (into `--work`, default a temporary folder). The
backends go through `dupmae.retrieval.search.search_index`, the code path of `dupmae search`; the
milvus backend runs on embedded Milvus Lite (`dupmae index` into `--work/engine.db` first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import top_k_overlap  # noqa: E402

def main(argv: list[str] | None = None) -> int:
    from dupmae.data.beir import load_beir
    from dupmae.evaluation.metrics import evaluate
    from dupmae.modeling.retriever import Retriever
    from dupmae.retrieval.encode import encode_corpus
    from dupmae.retrieval.ingest import load_into_engine
    from dupmae.retrieval.search import search_index

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a retriever folder")
    parser.add_argument("--beir", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--index", default=None, help="an index of --beir's corpus encoded by --model")
    parser.add_argument("--work", default=None, help="folder for the encoded index and the Milvus database")
    parser.add_argument("--backends", default="exact,faiss,sparse,union,milvus")
    parser.add_argument("--top-k", type=int, default=1000)
    parser.add_argument("--candidates", type=int, default=1000, help="dense (and sparse) candidates per query")
    parser.add_argument("--sparse-query-terms", type=int, default=64)
    parser.add_argument("--dense-index", default="HNSW32")
    parser.add_argument("--overlap-depth", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="dupmae-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    collection = load_beir(args.beir, args.split)
    retriever = Retriever.from_pretrained(args.model, show_progress=False)
    index = args.index
    if index is None:
        index = work / "index"
        start = time.perf_counter()
        encode_corpus(args.model, str(Path(args.beir) / "corpus.jsonl"), index)
        print(f"encoded {len(collection.corpus)} documents in {time.perf_counter() - start:.0f} s", flush=True)
    config = retriever.config
    rows, exact = [], None
    for name in args.backends.split(","):
        if (name == "faiss" and not config.uses_dense) or (name == "sparse" and not config.uses_sparse):
            print(f"{name}: skipped (the {config.representation} representation has no such part)")
            continue
        uri = None
        start = time.perf_counter()
        if name == "milvus":
            uri = str(work / "engine.db")
            load_into_engine(index, "milvus", uri, replace=True)
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        results = search_index(retriever, None if name == "milvus" else index, collection.queries, args.top_k,
                               dense_index=None if name == "exact" else args.dense_index, candidates=args.candidates,
                               backend=name, uri=uri, sparse_query_terms=args.sparse_query_terms)
        searched = time.perf_counter() - start
        metrics = evaluate(results, collection.qrels, "ndcg@10,recall@1000")["metrics"]
        if name == "exact":
            exact = results
        depth = args.overlap_depth
        overlap = None if exact is None else top_k_overlap(results, exact, depth)
        row = {"backend": name, **metrics, f"top{depth}_overlap": overlap, "load_s": loaded, "search_s": searched,
               "queries": len(collection.queries)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    print(f"\n| backend | nDCG@10 | Recall@1000 | Δ nDCG@10 vs exact | top-{args.overlap_depth} overlap with exact "
          "| load (s) | search (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        overlap = r[f"top{args.overlap_depth}_overlap"]
        print(f"| {r['backend']} | {r['ndcg@10']:.4f} | {r['recall@1000']:.4f} | {r['ndcg@10'] - base['ndcg@10']:+.4f} | "
              f"{'' if overlap is None else format(overlap, '.3f')} | {r['load_s']:.1f} | {r['search_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
