"""Mean ± standard deviation over seeds of `dupmae run` results.

    python scripts/aggregate_seeds.py runs/scifact-quick-seed*/results.json [--split test]

Prints a Markdown table: one row per system, `mean ± std` per metric over the seeds (sample std,
n-1); a system found in one run only (seed-free: BM25, zero-shot, rerank) shows its value alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files of runs that differ only in their seed")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    runs = [json.load(open(path)) for path in args.results]
    metrics = runs[0]["metrics"]
    print(f"| system ({args.split}, {len(runs)} seeds) | " + " | ".join(metrics) + " |")
    print("|" + " --- |" * (len(metrics) + 1))
    # Every system of every run, in first-seen order: a system missing from the first run (run for
    # a later seed only) is still a row.
    labels: dict[str, str] = {}
    for run in runs:
        for system_id, system in run["systems"].items():
            labels.setdefault(system_id, system["label"])
    for system_id, label in labels.items():
        cells = []
        for metric in metrics:
            values = [run["systems"][system_id][args.split][metric] for run in runs if system_id in run["systems"]]
            if len(values) > 1:
                cells.append(f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}")
            else:  # a seed-free system (BM25, zero-shot) or one seed: no spread to show
                cells.append(f"{values[0]:.4f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
