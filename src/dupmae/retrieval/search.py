"""`dupmae search`: exact DupMAE scoring of queries over every part of an index, to a TREC run.

    dupmae search --model DIR --index INDEX --queries queries.jsonl [--qrels F] --top-k 1000 --output run.trec

Parts are scored one at a time (`dupmae.retrieval.index`) and only the best `top_k` hits per query
are kept, so memory stays `queries x (top_k + part size)` however large the corpus.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dupmae.config import positive_int
from dupmae.platform.accelerations import add_arguments
from dupmae.retrieval.approximate import build_faiss_index, candidate_scores, concatenate
from dupmae.retrieval.encode import INDEX_MANIFEST, index_document_ids, index_parts, load_part, read_manifest
from dupmae.retrieval.index import HybridScorer, TopK


def search_index(retriever, index: str | Path, queries: dict[str, str], top_k: int = 1000,
                 exclude_self: bool = False, dense_index: str = "Flat", candidates: int | None = None,
                 threads: int = 1) -> dict[str, list[tuple[str, float]]]:
    """Exact search over every part (`dense_index="Flat"`), or FAISS candidates from another
    factory string re-scored exactly (see `dupmae.retrieval.approximate`)."""
    index = Path(index)
    manifest_path = index / INDEX_MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{index} is not a dupmae index (no {INDEX_MANIFEST}); build one with `dupmae encode`")
    manifest = read_manifest(index)
    if manifest["representation"] != dataclasses.asdict(retriever.config):
        raise ValueError(f"the index {index} was encoded with other representation settings than this model")
    parts = index_parts(index)
    if not parts:
        raise FileNotFoundError(f"{index} holds no encoded parts")
    query_ids = list(queries)
    encoded = retriever.encode_queries([queries[q] for q in query_ids], query_ids)
    if dense_index == "Flat":
        results, seen = _exact(encoded, parts, top_k, exclude_self, retriever.show_progress)
    else:
        if encoded.dense is None:
            raise ValueError(f"--dense-index {dense_index}: the {retriever.config.representation!r} "
                             "representation has no dense part")
        results, seen = _approximate(encoded, parts, top_k, exclude_self, dense_index, candidates or top_k, threads)
    if seen != manifest["corpus"]["documents"]:
        raise ValueError(f"{index}: parts hold {seen} documents but the corpus has {manifest['corpus']['documents']}"
                         " (a shard is missing or still being encoded)")
    return results


def search_blocks(encoded, blocks, top_k: int, exclude_self: bool = False) -> TopK:
    """Exact hybrid scores of the queries `encoded` against every block of the iterable `blocks`
    (loaded one at a time), keeping the best `top_k` per query."""
    scorer, best = HybridScorer(encoded), TopK(len(encoded.ids), top_k)
    exclude = [{q} for q in encoded.ids] if exclude_self else None
    for block in blocks:
        best.add_by_document(scorer(block), block.ids, exclude=exclude)
    return best


def _exact(encoded, parts, top_k, exclude_self, show_progress):
    with tqdm(parts, desc="searching", unit="part", disable=not show_progress) as progress:  # closed on an error too
        best = search_blocks(encoded, (load_part(part) for part in progress), top_k, exclude_self)
    return best.results(encoded.ids), best.seen


def _approximate(encoded, parts, top_k, exclude_self, factory, candidates, threads):
    documents = concatenate([load_part(part) for part in parts])
    faiss_index = build_faiss_index(documents.dense, factory, threads)
    if hasattr(faiss_index, "hnsw"):  # search at least as wide as the candidate list
        faiss_index.hnsw.efSearch = max(faiss_index.hnsw.efSearch, candidates)
    _, nearest = faiss_index.search(np.ascontiguousarray(encoded.dense), min(candidates, len(documents.ids)))
    scores = candidate_scores(encoded, documents, nearest)  # [Q, C]
    results = {}
    for q, query_id in enumerate(encoded.ids):
        hits = [(documents.ids[j], float(score)) for j, score in zip(nearest[q], scores[q])
                if j >= 0 and not (exclude_self and documents.ids[j] == query_id)]
        results[query_id] = sorted(hits, key=lambda hit: (-hit[1], hit[0]))[:top_k]
    return results, len(documents.ids)


def main(argv: list[str]) -> int:
    from dupmae.data.beir import load_qrels, load_queries, searchable_queries, warn_unknown_judged_documents
    from dupmae.modeling.retriever import Retriever
    from dupmae.retrieval.trec import write_run

    parser = argparse.ArgumentParser(prog="dupmae search", description="Search a dupmae index.")
    parser.add_argument("--model", required=True, help="the retriever folder the index was encoded with")
    parser.add_argument("--index", required=True, help="folder written by `dupmae encode`")
    parser.add_argument("--queries", required=True, help="queries.jsonl")
    parser.add_argument("--qrels", help="only search the queries judged in this qrels file")
    parser.add_argument("--top-k", type=positive_int, default=1000)
    parser.add_argument("--output", required=True, help="TREC run file to write")
    parser.add_argument("--remove-self-hits", action="store_true", help="drop hits whose doc id equals the query id")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    add_arguments(parser, ())
    parser.add_argument("--tag", default="dupmae")
    parser.add_argument("--dense-index", default="Flat",
                        help="FAISS factory string for the dense part: Flat (default) = exact scoring of every "
                             "document; e.g. HNSW32 or IVF256,Flat = approximate candidates, re-scored exactly")
    parser.add_argument("--candidates", type=positive_int, default=None,
                        help="with an approximate --dense-index: candidates per query (default: --top-k)")
    parser.add_argument("--threads", type=positive_int, default=1, help="FAISS threads")
    args = parser.parse_args(argv)
    try:
        queries = load_queries(args.queries)
        if not args.qrels:
            queries = searchable_queries(queries, None, args.queries)
        else:
            judged = load_qrels(args.qrels)
            missing = sorted(set(judged) - set(queries))
            if missing:
                raise ValueError(f"{args.qrels}: query ids not in {args.queries}: {missing[:5]}")
            queries = searchable_queries(queries, judged, args.qrels)
            warn_unknown_judged_documents(judged, index_document_ids(args.index), args.qrels, f"the index {args.index}")
        retriever = Retriever.from_pretrained(args.model, batch_size=args.batch_size, bf16=args.bf16)
        results = search_index(retriever, args.index, queries, args.top_k, args.remove_self_hits,
                               args.dense_index, args.candidates, args.threads)
        lines = write_run(args.output, results, args.tag)
    except (ValueError, FileNotFoundError, ImportError) as error:
        print(f"dupmae search: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(results)} queries, {lines} hits -> {args.output}")
    return 0
