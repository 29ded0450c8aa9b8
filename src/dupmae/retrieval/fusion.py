"""Hybrid retrieval: fuse two runs of the same queries (e.g. a neural retriever's and BM25's).

Two fusion functions, both a convex combination per document of the two runs' per-query scores
(`weight` for the first run, `1 - weight` for the second; a document missing from one run's top
`depth` gets 0 from it):

- ``minmax``: each run's top-`depth` scores rescaled to [0, 1] per query, (s - min) / (max - min).
  Scores on different scales (cosines, BM25) become comparable without any training.
- ``rrf``: reciprocal rank, 1 / (k + rank) with rank 1 for the best hit (k = 60 by default); only
  the order of each run counts.

The weight is a setting or is chosen on held-out queries (`choose_weight`): the grid value with the
best mean metric, so the dev metric of a chosen weight is optimistic and only the test metric
reports. A query in only one run keeps that run's (weighted) scores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence

from dupmae.retrieval.trec import Results, ranked

logger = logging.getLogger(__name__)

METHODS = ("minmax", "rrf")
WEIGHT_GRID = tuple(round(0.1 * step, 1) for step in range(11))  # 0.0, 0.1, ..., 1.0

Normalised = dict[str, dict[str, float]]  # {query_id: {doc_id: normalised score}}


def _check(method: str, depth: int, rrf_k: float) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown fusion method {method!r}; choose one of {', '.join(METHODS)}")
    if depth < 1:
        raise ValueError(f"fusion depth must be >= 1, got {depth}")
    if rrf_k < 0:
        raise ValueError(f"rrf k must be >= 0, got {rrf_k}")


def normalise(run: Results, method: str = "minmax", depth: int = 1000, rrf_k: float = 60.0) -> Normalised:
    """Each query's top `depth` hits (dupmae ranking rule: score desc, doc id asc) with fusion scores.

    minmax: (s - min) / (max - min) over those hits; when they all score the same (one hit, or a
    tie), every one gets 1.0. rrf: 1 / (rrf_k + rank), rank 1..depth.
    """
    _check(method, depth, rrf_k)
    normalised: Normalised = {}
    for query_id, hits in run.items():
        top = ranked(hits)[:depth]
        if not top:
            normalised[query_id] = {}
        elif method == "rrf":
            normalised[query_id] = {doc_id: 1.0 / (rrf_k + rank) for rank, (doc_id, _) in enumerate(top, start=1)}
        else:
            high, low = top[0][1], top[-1][1]
            spread = high - low
            normalised[query_id] = {doc_id: (score - low) / spread if spread > 0 else 1.0 for doc_id, score in top}
    return normalised


def combine(first: Normalised, second: Normalised, weight: float) -> dict[str, dict[str, float]]:
    """``weight * first + (1 - weight) * second`` per (query, document), over the union of both."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    fused = {}
    for query_id in first.keys() | second.keys():
        a, b = first.get(query_id, {}), second.get(query_id, {})
        fused[query_id] = {doc_id: weight * a.get(doc_id, 0.0) + (1.0 - weight) * b.get(doc_id, 0.0)
                           for doc_id in a.keys() | b.keys()}
    return fused


def fuse(first: Results, second: Results, weight: float, method: str = "minmax", depth: int = 1000,
         rrf_k: float = 60.0) -> dict[str, dict[str, float]]:
    """The hybrid run ``{query_id: {doc_id: score}}`` of two runs (see the module docstring)."""
    return combine(normalise(first, method, depth, rrf_k), normalise(second, method, depth, rrf_k), weight)


def choose_weight(first: Results, second: Results, qrels: Mapping[str, Mapping[str, int]],
                  metric: str = "ndcg@10", weights: Sequence[float] = WEIGHT_GRID, method: str = "minmax",
                  depth: int = 1000, rrf_k: float = 60.0) -> tuple[float, dict[float, float]]:
    """The weight of `weights` whose fused run has the best mean `metric` on `qrels`.

    Returns ``(best weight, {weight: mean metric})``. Ties go to the weight listed first.
    """
    from dupmae.evaluation.metrics import evaluate, parse_metric

    if not weights:
        raise ValueError("no weights to choose from")
    name = parse_metric(metric).name
    a, b = normalise(first, method, depth, rrf_k), normalise(second, method, depth, rrf_k)
    values = {float(w): evaluate(combine(a, b, float(w)), qrels, [name])["metrics"][name] for w in weights}
    best = max(values, key=values.get)  # max keeps the first of equal values
    return best, values


# -- `dupmae fuse` ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dupmae fuse",
        description="Fuse two TREC runs of the same queries into a hybrid run: weight * FIRST + (1 - weight) * "
                    "SECOND per document, after min-max or reciprocal-rank normalisation per query. The weight is "
                    "given (--weight) or chosen on held-out queries (--dev-runs + --dev-qrels).")
    parser.add_argument("--runs", nargs=2, required=True, metavar=("FIRST", "SECOND"),
                        help="the two TREC runs, e.g. a neural retriever's and BM25's")
    parser.add_argument("--output", required=True, help="the fused TREC run to write")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--weight", type=float, help="weight of FIRST in [0, 1] (SECOND gets 1 - weight)")
    choice.add_argument("--dev-runs", nargs=2, metavar=("FIRST_DEV", "SECOND_DEV"),
                        help="the same two systems' runs of held-out queries, to choose the weight on")
    parser.add_argument("--dev-qrels", help="qrels of the held-out queries (with --dev-runs)")
    parser.add_argument("--metric", default="ndcg@10", help="metric the weight is chosen by (default: %(default)s)")
    parser.add_argument("--weights", default=",".join(map(str, WEIGHT_GRID)),
                        help="comma-separated weights to choose from (default: %(default)s)")
    parser.add_argument("--method", default="minmax", choices=METHODS, help="score normalisation (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=1000, help="hits of each run that enter the fusion, per query "
                                                               "(default: %(default)s)")
    parser.add_argument("--rrf-k", type=float, default=60.0, help="k of 1 / (k + rank) for --method rrf "
                                                                 "(default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="keep the best K fused hits per query (default: all, up to 2 x depth)")
    parser.add_argument("--tag", default="dupmae-fuse", help="run tag written in the last column")
    return parser


def main(argv: list[str]) -> int:
    from dupmae.data.beir import load_qrels
    from dupmae.retrieval.trec import read_run, write_run

    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.dev_runs and not arguments.dev_qrels:
        parser.error("--dev-runs needs --dev-qrels")
    if arguments.dev_qrels and not arguments.dev_runs:
        parser.error("--dev-qrels only goes with --dev-runs")
    try:
        options = {"method": arguments.method, "depth": arguments.depth, "rrf_k": arguments.rrf_k}
        _check(**options)
        if arguments.top_k is not None and arguments.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {arguments.top_k}")
        weight, values = arguments.weight, None
        if arguments.dev_runs:
            grid = [float(part) for part in arguments.weights.split(",") if part.strip()]
            weight, values = choose_weight(read_run(arguments.dev_runs[0]), read_run(arguments.dev_runs[1]),
                                           load_qrels(arguments.dev_qrels), arguments.metric, grid, **options)
            print(json.dumps({"weight": weight, arguments.metric: values}), file=sys.stderr)
        fused = fuse(read_run(arguments.runs[0]), read_run(arguments.runs[1]), weight, **options)
        write_run(arguments.output, {query_id: ranked(hits)[:arguments.top_k] for query_id, hits in fused.items()},
                  arguments.tag)
    except (OSError, ValueError) as error:
        print(f"dupmae fuse: error: {error}", file=sys.stderr)
        return 2
    logger.info("fused with weight %s (%s) into %s", weight, arguments.method, arguments.output)
    return 0
