"""Retrieval metrics computed by pytrec_eval (trec_eval's own code), with its three traps handled.

1. ``recip_rank`` has no cutoff: for ``mrr@k`` the run is cut to each query's top k first.
2. A judged query that is absent from the run is silently left out of pytrec_eval's
   output; here the mean is taken over *all* judged queries, a missing one scoring 0.
3. pytrec_eval breaks score ties by document id in its own order; here documents are
   ranked by score descending then doc id ascending (the rule `dupmae.retrieval.trec`
   writes ranks by), and pytrec_eval is given strictly decreasing scores that encode that rank.

Metric names (case-insensitive): ``ndcg@k`` (trec_eval ``ndcg_cut.k``: linear gain = relevance,
log2 discount), ``ndcg`` (no cutoff), ``mrr@k`` / ``mrr``, ``recall@k``, ``precision@k`` or ``p@k``
(``P.k``), ``map@k`` (``map_cut.k``) and ``map``. A document counts as relevant when its
relevance is >= 1 (trec_eval's default). Only queries in the qrels count; queries in
the run without judgements are ignored (their number is returned).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dupmae.retrieval.trec import Results, ranked

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000")
_NAME = re.compile(r"^(ndcg|mrr|recall|precision|p|map)(?:@(\d+))?$")
# Our name -> (trec_eval measure, the key of its result); `{k}` is the cutoff.
_TREC_MEASURE = {
    "ndcg@": ("ndcg_cut.{k}", "ndcg_cut_{k}"),
    "ndcg": ("ndcg", "ndcg"),
    "recall@": ("recall.{k}", "recall_{k}"),
    "precision@": ("P.{k}", "P_{k}"),
    "map@": ("map_cut.{k}", "map_cut_{k}"),
    "map": ("map", "map"),
    "mrr@": ("recip_rank", "recip_rank"),
    "mrr": ("recip_rank", "recip_rank"),
}


@dataclass(frozen=True)
class Metric:
    """A parsed metric name: which trec_eval measure, and how deep the run is cut before it (None = not cut)."""

    name: str
    measure: str
    result_key: str
    run_depth: int | None


def parse_metric(name: str) -> Metric:
    """``"ndcg@10"`` -> Metric("ndcg@10", "ndcg_cut.10", "ndcg_cut_10", None); ValueError for unknown names."""
    match = _NAME.match(name.strip().lower())
    if not match:
        raise ValueError(
            f"unknown metric {name!r}; use ndcg@k, ndcg, mrr@k, mrr, recall@k, precision@k (p@k), map@k or map"
        )
    family, cutoff = match.group(1), match.group(2)
    family = "precision" if family == "p" else family
    if cutoff is not None and int(cutoff) <= 0:
        raise ValueError(f"metric {name!r}: the cutoff must be a positive integer")
    if cutoff is None and family in ("recall", "precision"):
        raise ValueError(f"metric {name!r} needs a cutoff, e.g. {family}@100")
    key = family + ("@" if cutoff is not None else "")
    measure, result_key = (text.format(k=cutoff) for text in _TREC_MEASURE[key])
    canonical = f"{family}@{cutoff}" if cutoff is not None else family
    # Only mrr needs the run cut: every other measure with a cutoff applies it itself.
    depth = int(cutoff) if family == "mrr" and cutoff is not None else None
    return Metric(canonical, measure, result_key, depth)


def _rank_encoded(hits, depth: int | None) -> dict[str, float]:
    """The top `depth` hits with scores n, n-1, ..., 1: strictly ordered, so pytrec_eval cannot re-break ties."""
    order = ranked(hits)[:depth]
    return {doc_id: float(len(order) - position) for position, (doc_id, _) in enumerate(order)}


def evaluate(
    run: Results,
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] | str = DEFAULT_METRICS,
    per_query: bool = False,
) -> dict:
    """Mean of each metric over all judged queries (those in `qrels`).

    Args:
        run: ``{query_id: {doc_id: score}}`` (as `read_run` returns) or
            ``{query_id: [(doc_id, score), ...]}`` (as retrievers return).
        qrels: ``{query_id: {doc_id: relevance}}``.
        metrics: names such as ``"ndcg@10"``, or one comma-separated string.
        per_query: also return every judged query's values.

    Returns:
        ``{"metrics": {name: mean}, "num_queries": judged queries,
        "num_queries_missing_from_run": judged queries with no retrieved document (scored 0),
        "num_unjudged_run_queries": run queries without qrels (ignored),
        "per_query": {query_id: {name: value}}`` (only when asked)}.
    """
    import pytrec_eval  # imported here so that `dupmae --help` does not pay for it

    names = [part for part in metrics.split(",") if part.strip()] if isinstance(metrics, str) else list(metrics)
    parsed = list({metric.name: metric for metric in map(parse_metric, names)}.values())
    if not parsed:
        raise ValueError("no metrics requested")
    if not qrels:
        raise ValueError("the qrels are empty: nothing to evaluate")
    judged = {query_id: {doc_id: int(rel) for doc_id, rel in docs.items()} for query_id, docs in qrels.items()}
    unjudged = [query_id for query_id in run if query_id not in judged]
    if unjudged:
        logger.info("ignoring %d run queries without qrels (e.g. %r)", len(unjudged), unjudged[0])
    without_relevant = [query_id for query_id, docs in judged.items() if not any(rel > 0 for rel in docs.values())]
    if without_relevant:
        logger.warning("%d judged queries have no relevant document; they score 0", len(without_relevant))

    values = {query_id: {metric.name: 0.0 for metric in parsed} for query_id in judged}
    retrieved = {query_id: hits for query_id, hits in run.items() if query_id in judged and len(hits) > 0}
    # One pytrec_eval pass per run depth (the uncut run, and one cut run per mrr@k).
    for depth in dict.fromkeys(metric.run_depth for metric in parsed):
        group = [metric for metric in parsed if metric.run_depth == depth]
        evaluator = pytrec_eval.RelevanceEvaluator(judged, {metric.measure for metric in group})
        cut_run = {query_id: _rank_encoded(hits, depth) for query_id, hits in retrieved.items()}
        for query_id, results in evaluator.evaluate(cut_run).items():
            for metric in group:
                values[query_id][metric.name] = float(results[metric.result_key])

    summary = {
        "metrics": {metric.name: sum(v[metric.name] for v in values.values()) / len(values) for metric in parsed},
        "num_queries": len(values),
        "num_queries_missing_from_run": len(judged) - len(retrieved),
        "num_unjudged_run_queries": len(unjudged),
    }
    if summary["num_queries_missing_from_run"]:
        logger.warning(
            "%d of %d judged queries retrieved nothing; they score 0",
            summary["num_queries_missing_from_run"],
            len(judged),
        )
    if per_query:
        summary["per_query"] = values
    return summary


def format_table(summary: dict, names: Iterable[str] | None = None) -> str:
    """A small fixed-width table of the means, with the query counts underneath."""
    names = list(names) if names is not None else list(summary["metrics"])
    width = max(len(name) for name in names + ["metric"])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {summary['metrics'][name]:.4f}" for name in names]
    lines.append(
        f"{summary['num_queries']} judged queries ({summary['num_queries_missing_from_run']} missing from the run, "
        f"scored 0); {summary['num_unjudged_run_queries']} unjudged run queries ignored"
    )
    return "\n".join(lines)
