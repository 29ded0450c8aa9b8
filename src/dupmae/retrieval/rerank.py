"""`dupmae rerank`: re-score the top k of a TREC run with a cross-encoder.

    dupmae rerank --cross-encoder DIR --run bm25.trec --corpus BEIR_DIR [--queries queries.jsonl] \
        --top-k 100 --output reranked.trec

Per query, the run's top `--top-k` documents (dupmae's ranking rule: score descending, doc id
ascending) are ordered by the cross-encoder's logit; the rest of the run follows in its own order,
below them (scores `lowest logit - 1, - 2, ...`), so recall at depths past k is the first run's.
The logits are kept in `OUTPUT.scores.jsonl`; an interrupted run resumes from its `.partial`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from dupmae.config import positive_int
from dupmae.data.beir import load_corpus, load_queries, searchable_queries
from dupmae.data.formats import CorpusFormatError
from dupmae.modeling.cross_encoder import add_scoring_arguments, load_cross_encoder, score_groups
from dupmae.modeling.retriever import document_text
from dupmae.retrieval.mine import input_paths
from dupmae.retrieval.trec import Results, ranked, read_run, write_run

logger = logging.getLogger(__name__)


def rerank_run(model, run: Results, queries: Mapping[str, str], corpus: Mapping[str, dict], top_k: int,
               scores_file: str | Path, batch_size: int = 32, bf16="auto",
               reuse_output: bool = False) -> dict[str, list[tuple[str, float]]]:
    """`run` with each query's top `top_k` re-ordered by `model` (a `CrossEncoder`); the rest kept below.

    Queries of `run` without a text in `queries` keep their hits unchanged. `scores_file` caches the
    logits (`dupmae.modeling.cross_encoder.score_groups`: resumable; `reuse_output` as there).
    """
    if top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {top_k}")
    hits = {query_id: ranked(results) for query_id, results in run.items()}
    missing = sorted({d for query_id, ranking in hits.items() if query_id in queries
                      for d, _ in ranking[:top_k] if d not in corpus})
    if missing:
        raise ValueError(f"the run retrieves {len(missing)} documents that are not in the corpus (e.g. {missing[0]!r})")
    groups = ((query_id, queries[query_id], [(d, document_text(corpus[d])) for d, _ in ranking[:top_k]])
              for query_id, ranking in hits.items() if query_id in queries)
    logits = score_groups(model, groups, scores_file, batch_size, bf16, reuse_output=reuse_output)
    reranked = {}
    for query_id, ranking in hits.items():
        if query_id not in logits:
            reranked[query_id] = ranking
            continue
        top = ranked(logits[query_id])
        floor = min(score for _, score in top) if top else 0.0
        rest = [(d, floor - rank) for rank, (d, _) in enumerate(ranking[top_k:], start=1)]
        reranked[query_id] = top + rest
    return reranked


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dupmae rerank", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cross-encoder", required=True, help="local cross-encoder folder (e.g. from train-reranker)")
    parser.add_argument("--run", required=True, help="TREC run to re-rank (e.g. BM25's)")
    parser.add_argument("--corpus", required=True, help="BEIR folder (corpus.jsonl inside) or a corpus.jsonl file")
    parser.add_argument("--queries", help="queries.jsonl (default: queries.jsonl next to the corpus)")
    parser.add_argument("--top-k", type=positive_int, default=100, help="documents re-scored per query (default: 100)")
    add_scoring_arguments(parser)
    parser.add_argument("--tag", default="dupmae-rerank", help="run tag (default: dupmae-rerank)")
    parser.add_argument("--output", required=True, help="TREC run to write (logits in OUTPUT.scores.jsonl)")
    return parser


def main(argv: list[str]) -> int:
    arguments = build_parser().parse_args(argv)
    started = time.monotonic()
    try:
        corpus_path, queries_path = input_paths(arguments.corpus, arguments.queries)
        run = read_run(arguments.run)
        queries = searchable_queries(load_queries(queries_path), run.keys(), arguments.run)
        model = load_cross_encoder(arguments.cross_encoder, arguments.max_length)
        results = rerank_run(model, run, queries, load_corpus(corpus_path), arguments.top_k,
                             f"{arguments.output}.scores.jsonl", arguments.batch_size, arguments.bf16)
        write_run(arguments.output, results, arguments.tag)
    except (CorpusFormatError, OSError, ValueError) as error:
        print(f"dupmae rerank: error: {error}", file=sys.stderr)
        return 2
    logger.info("re-ranked the top %d of %d queries in %.1f s -> %s", arguments.top_k, len(results),
                time.monotonic() - started, arguments.output)
    return 0
