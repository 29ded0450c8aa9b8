"""`dupmae evaluate`: score a TREC run file against qrels, print a table, optionally write JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys

from dupmae.data.beir import load_qrels
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
    parser.add_argument("--output", help="write the summary as JSON here")
    return parser


def main(argv: list[str]) -> int:
    arguments = build_parser().parse_args(argv)  # usage errors exit 2 through argparse
    try:
        run = read_run(arguments.run)
        qrels = load_qrels(arguments.qrels)
        summary = evaluate(run, qrels, arguments.metrics, per_query=arguments.per_query)
    except (CorpusFormatError, OSError, ValueError) as error:
        print(f"dupmae evaluate: error: {error}", file=sys.stderr)
        return 2
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
