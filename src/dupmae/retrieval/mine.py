"""`dupmae mine`: hard negatives for fine-tuning, from BM25 or a fine-tuned dense/DupMAE retriever.

For every judged query: retrieve the top ``--depth`` documents, drop the judged
positives (relevance > 0), and keep the rest in rank order as negatives (DUPMAE.md §3:
first-round negatives from BM25, second round top-200 from the stage-1 model).
Output: one JSON object a line, ``{"query_id", "positives": [...], "negatives": [...]}``,
plus ``OUTPUT.manifest.json`` (inputs with sha256, settings, counts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

from dupmae.config import positive_int
from dupmae.data.beir import check_qrels, load_corpus, load_qrels, load_queries, searchable_queries
from dupmae.data.formats import CorpusFormatError, file_sha256
from dupmae.retrieval.trec import Results, ranked

logger = logging.getLogger(__name__)



def mine_negatives(
    results: Results, qrels: Mapping[str, Mapping[str, int]], depth: int
) -> list[dict[str, object]]:
    """Hard negatives from any retriever's results.

    Args:
        results: ``{query_id: [(doc_id, score), ...]}`` or ``{query_id: {doc_id: score}}``,
            from BM25 or any other model; re-ranked by score (ties: doc id ascending).
        qrels: ``{query_id: {doc_id: relevance}}``; only these queries are mined.
        depth: how many of the top results to consider; negatives are what is left of
            them once positives are removed, so there are at most `depth`.

    Returns:
        one record per judged query with at least one positive, in qrels order:
        ``{"query_id", "positives": [doc ids, qrels order], "negatives": [doc ids, rank order]}``.
        Judged non-relevant documents (relevance <= 0) may be negatives. A query absent
        from `results` gets no negatives (logged); a query without positives is skipped (logged).
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    records: list[dict[str, object]] = []
    no_positive, no_results = [], []
    for query_id, judged in qrels.items():
        positives = [doc_id for doc_id, relevance in judged.items() if relevance > 0]
        if not positives:
            no_positive.append(query_id)
            continue
        hits = ranked(results.get(query_id, ()))[:depth]
        if not hits:
            no_results.append(query_id)
        positive_set = set(positives)
        negatives = [doc_id for doc_id, _ in hits if doc_id not in positive_set]
        records.append({"query_id": query_id, "positives": positives, "negatives": negatives})
    if no_positive:
        logger.warning("skipped %d judged queries without a positive (e.g. %r)", len(no_positive), no_positive[0])
    if no_results:
        logger.warning("%d queries retrieved nothing and have no negatives (e.g. %r)", len(no_results), no_results[0])
    return records


def input_paths(corpus: str, queries: str | None) -> tuple[str, str]:
    """``(corpus.jsonl, queries.jsonl)`` paths: `corpus` is a BEIR folder or a corpus file;
    `queries` defaults to ``queries.jsonl`` in that folder (or next to the corpus file)."""
    if os.path.isdir(corpus):
        folder, corpus_path = corpus, os.path.join(corpus, "corpus.jsonl")
        if not os.path.isfile(corpus_path):
            raise FileNotFoundError(f"{corpus} is a folder without corpus.jsonl (a BEIR folder holds corpus.jsonl)")
    else:
        folder, corpus_path = os.path.dirname(corpus) or ".", corpus
    queries_path = queries or os.path.join(folder, "queries.jsonl")
    if not os.path.isfile(queries_path):
        raise FileNotFoundError(f"queries file {queries_path} not found (pass --queries)")
    return corpus_path, queries_path


def load_inputs(corpus: str, queries: str | None, qrels: str | None):
    """``(corpus, queries, qrels)`` read with `input_paths` and validated against each other.

    With `qrels`, only the judged queries are kept and every judged id must exist;
    without it, all queries are kept and qrels is None. Empty queries are left out (`searchable_queries`).
    """
    corpus_path, queries_path = input_paths(corpus, queries)
    documents = load_corpus(corpus_path)
    all_queries = load_queries(queries_path)
    if qrels is None:
        return documents, searchable_queries(all_queries, None, queries_path), None
    judgements = load_qrels(qrels)
    check_qrels(judgements, all_queries, documents, qrels)
    return documents, searchable_queries(all_queries, judgements, qrels), judgements


def retrieve(model: str, corpus, queries, depth: int, threads: int):
    """Top-`depth` results of `model` ("bm25" or a dense/DupMAE model folder) for `queries`."""
    if model.lower() == "bm25":
        from dupmae.retrieval.bm25 import BM25Index

        return BM25Index.build(corpus).search(queries, depth, threads=threads)
    from dupmae.modeling.retriever import Retriever

    return Retriever.from_pretrained(model).search(queries, corpus, top_k=depth)


def write_jsonl(path: str, records: Iterable[dict]) -> int:
    """Write records one a line via ``path + ".tmp"`` and a rename; returns the count."""
    count = 0
    with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    os.replace(f"{path}.tmp", path)
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dupmae mine", description="Mine hard negatives for fine-tuning.")
    parser.add_argument("--model", default="bm25", help="'bm25', or a dense/DupMAE model folder (default: bm25)")
    parser.add_argument("--corpus", required=True, help="BEIR folder (corpus.jsonl inside) or a corpus.jsonl file")
    parser.add_argument("--queries", help="queries.jsonl (default: queries.jsonl next to the corpus)")
    parser.add_argument("--qrels", required=True, help="qrels of the queries to mine (BEIR .tsv or TREC qrels)")
    parser.add_argument("--depth", type=positive_int, default=200, help="top results to take negatives from (default: 200)")
    parser.add_argument("--output", required=True, help="negatives .jsonl to write")
    parser.add_argument("--threads", type=positive_int, default=1, help="search threads (default: 1)")
    return parser


def main(argv: list[str]) -> int:
    arguments = build_parser().parse_args(argv)  # usage errors exit 2 through argparse
    started = time.monotonic()
    try:
        if arguments.depth < 1 or arguments.threads < 1:
            raise ValueError("--depth and --threads must be at least 1")
        corpus, queries, qrels = load_inputs(arguments.corpus, arguments.queries, arguments.qrels)
        results = retrieve(arguments.model, corpus, queries, arguments.depth, arguments.threads)
        records = mine_negatives(results, qrels, arguments.depth)
        count = write_jsonl(arguments.output, records)
    except (CorpusFormatError, OSError, ValueError, ImportError) as error:
        print(f"dupmae mine: error: {error}", file=sys.stderr)
        return 2
    negatives = sum(len(record["negatives"]) for record in records)
    manifest = {
        "produced_by": "dupmae mine",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": arguments.model,
        "depth": arguments.depth,
        "inputs": {
            name: {"path": os.path.abspath(path), "sha256": file_sha256(path)}
            for name, path in zip(
                ("corpus", "queries", "qrels"), (*input_paths(arguments.corpus, arguments.queries), arguments.qrels)
            )
        },
        "counts": {"queries": count, "negatives": negatives, "documents": len(corpus)},
    }
    with open(f"{arguments.output}.manifest.json", "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.write("\n")
    print(
        f"{count} queries, {negatives} negatives ({negatives / max(count, 1):.1f} a query) "
        f"in {time.monotonic() - started:.1f} s -> {arguments.output}"
    )
    return 0
