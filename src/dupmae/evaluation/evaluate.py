"""`dupmae evaluate`: score a TREC run file against qrels, print a table, optionally write JSON;
with `--baseline`, also the paired per-query test of the run against a baseline run."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dupmae.data.beir import load_corpus, load_qrels, warn_unknown_judged_documents
from dupmae.data.formats import CorpusFormatError
from dupmae.evaluation.metrics import DEFAULT_METRICS, evaluate, format_table
from dupmae.retrieval.trec import read_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dupmae evaluate",
        description="Evaluate a TREC run with pytrec_eval; the mean is over all judged queries "
        "(a judged query missing from the run scores 0).",
    )
    parser.add_argument("--run", required=True, help="TREC run file (query_id Q0 doc_id rank score tag)")
    parser.add_argument("--qrels", required=True, help="qrels: BEIR .tsv with header, or TREC 'qid 0 docid rel'")
    parser.add_argument(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        help="comma-separated: ndcg@k, ndcg, mrr@k, mrr, recall@k, precision@k, map@k, map "
        "(default: %(default)s)",
    )
    parser.add_argument("--per-query", action="store_true", help="include every query's values in the JSON output")
    parser.add_argument("--corpus", help="corpus.jsonl (or BEIR folder) the run searched: judged document ids that "
                        "are not in it are counted in a warning (they can never be retrieved)")
    parser.add_argument(
        "--baseline",
        help="a second TREC run to compare with: per metric its mean, the difference (run - baseline) and "
        "a paired test over the judged queries (see --significance)",
    )
    parser.add_argument(
        "--significance",
        default="auto",
        choices=["auto", "t-test", "permutation"],
        help="paired test for --baseline: t-test (scipy), permutation (sign flips, fixed seed), or auto "
        "(t-test when scipy is installed) (default: %(default)s)",
    )
    parser.add_argument("--output", help="write the summary as JSON here")
    return parser


def compare(summary: dict, baseline: dict, method: str = "auto") -> dict:
    """Per metric: the baseline's mean and the paired test of run vs baseline over the judged queries.

    Both summaries must come from `evaluate(..., per_query=True)` with the same qrels, so both cover
    every judged query (a query missing from a run scores 0). Returns `{"metrics": {name: mean},
    "paired": {name: PairedTest.as_dict()}}`; `mean_difference` is run minus baseline.
    """
    from dupmae.evaluation.significance import paired_test

    queries = sorted(summary["per_query"])
    paired = {}
    for name in summary["metrics"]:
        ours = [summary["per_query"][query][name] for query in queries]
        theirs = [baseline["per_query"][query][name] for query in queries]
        paired[name] = paired_test(ours, theirs, method).as_dict()
    return {"metrics": baseline["metrics"], "paired": paired}


def format_comparison(summary: dict) -> str:
    """The table of a run against its baseline: mean, baseline mean, difference, paired p."""
    names = list(summary["metrics"])
    width = max(len(name) for name in names + ["metric"])
    baseline = summary["baseline"]
    method = next(iter(baseline["paired"].values()))["method"] if names else ""
    lines = [f"{'metric':<{width}}  run     baseline  diff     p ({method})", f"{'-' * width}  ------  --------  -------  ------"]
    for name in names:
        test = baseline["paired"][name]
        lines.append(f"{name:<{width}}  {summary['metrics'][name]:.4f}  {baseline['metrics'][name]:.4f}    "
                     f"{test['mean_difference']:+.4f}  {test['p_value']:.4f}")
    lines.append(f"{summary['num_queries']} judged queries, paired")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    arguments = build_parser().parse_args(argv)  # usage errors exit 2 through argparse
    try:
        run = read_run(arguments.run)
        qrels = load_qrels(arguments.qrels)
        if arguments.corpus:
            corpus_path = os.path.join(arguments.corpus, "corpus.jsonl") if os.path.isdir(arguments.corpus) \
                else arguments.corpus
            warn_unknown_judged_documents(qrels, load_corpus(corpus_path), arguments.qrels, corpus_path)
        summary = evaluate(run, qrels, arguments.metrics, per_query=arguments.per_query or bool(arguments.baseline))
        if arguments.baseline:
            comparison = compare(summary, evaluate(read_run(arguments.baseline), qrels, arguments.metrics,
                                                   per_query=True), arguments.significance)
    except (CorpusFormatError, OSError, ValueError) as error:
        print(f"dupmae evaluate: error: {error}", file=sys.stderr)
        return 2
    if arguments.baseline:
        if not arguments.per_query:
            del summary["per_query"]
        summary["baseline"] = {"run": os.path.abspath(arguments.baseline), **comparison}
        print(format_comparison(summary))
    else:
        print(format_table(summary))
    if arguments.output:
        record = {"run": os.path.abspath(arguments.run), "qrels": os.path.abspath(arguments.qrels), **summary}
        try:
            with open(arguments.output, "w", encoding="utf-8") as handle:
                json.dump(record, handle, indent=2)
                handle.write("\n")
        except OSError as error:
            print(f"dupmae evaluate: error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {arguments.output}")
    return 0
