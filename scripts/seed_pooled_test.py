"""One paired test of two systems over several seeds: per query, each system's metric averaged
over the seeds, then the paired test over the queries.

    python scripts/seed_pooled_test.py runs/ablation/results-dupmae-s*-dupmae-lr1e-5-ep4-hybrid.json \
        --system dupmae-ft-dupmae+bm25 --against ft-dupmae+bm25 [--split test] [--metric ndcg@10]

Each results.json is one `dupmae run` (one seed). Per-query values come from the run's own
per-query file where one lies beside it (`per_query.json` for `results.json`, `per_query-sN.json`
for `results-sN.json`, as scripts/recipe_seeds.sh and scripts/gpu_recipe.py keep them); otherwise
the systems' TREC runs are read from the stage folders next to it
(`<folder of results.json>/stages/<stage>/<split>.trec`) and evaluated with
`dupmae.evaluation.metrics.evaluate`. Averaging over seeds before testing takes the seed noise out
of each query's value, so one p-value answers "is A ahead of B over these seeds", where per-seed
tests each see one draw of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def qrels_path(results: dict, results_file: Path, split: str) -> Path:
    """The qrels a run was evaluated on: the collection's test qrels, or the pipeline's dev split."""
    if split == "test":
        return Path(results["collection"]["folder"]) / "qrels" / f"{results['config']['test_split']}.tsv"
    data = next(item["folder"] for item in results["timings"]["stages"] if item["stage"] == "data")
    return results_file.parent / "stages" / data / "dev_qrels.tsv"


def per_query_file(results_file: Path) -> Path:
    """The pipeline's per-query metrics beside a results file: results[-sN].json -> per_query[-sN].json."""
    return results_file.with_name(results_file.name.replace("results", "per_query", 1))


def per_query(results: dict, results_file: Path, system: str, split: str, metric: str, qrels) -> dict[str, float]:
    """{query id: metric} of one system on one split. `qrels`: a callable giving the split's qrels,
    called only when the values must be computed from the TREC run."""
    from dupmae.evaluation.metrics import evaluate
    from dupmae.retrieval.trec import read_run

    if system not in results["systems"]:
        raise SystemExit(f"{results_file}: no system {system!r} (it has {', '.join(results['systems'])})")
    if per_query_file(results_file).is_file():
        values = json.loads(per_query_file(results_file).read_text())[system][split]
        return {query: metrics[metric] for query, metrics in values.items()}
    qrels = qrels()
    run = read_run(str(results_file.parent / "stages" / results["systems"][system]["stage"] / f"{split}.trec"))
    return {query: values[metric] for query, values in evaluate(run, qrels, [metric], per_query=True)["per_query"].items()}


def main(argv: list[str] | None = None) -> int:
    from dupmae.data.beir import load_qrels
    from dupmae.evaluation.metrics import parse_metric
    from dupmae.evaluation.significance import paired_test

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files of runs that differ in their seed")
    parser.add_argument("--system", required=True, help="system id, e.g. dupmae-ft-cls+bm25")
    parser.add_argument("--against", required=True, help="system id to compare with, e.g. ft-cls+bm25")
    parser.add_argument("--split", default="test", choices=["test", "dev"])
    parser.add_argument("--metric", default="ndcg@10")
    args = parser.parse_args(argv)
    metric = parse_metric(args.metric).name
    seeds, ours, theirs = [], [], []
    for name in args.results:
        path = Path(name)
        results = json.loads(path.read_text())
        def qrels(results=results, path=path):
            return load_qrels(str(qrels_path(results, path, args.split)))
        seeds.append(results["config"]["seed"])
        ours.append(per_query(results, path, args.system, args.split, metric, qrels))
        theirs.append(per_query(results, path, args.against, args.split, metric, qrels))
    queries = sorted(ours[0])
    if any(sorted(values) != queries for values in ours + theirs):
        raise SystemExit("the runs were evaluated on different queries: not the same split")
    for seed, a, b in zip(seeds, ours, theirs):
        print(f"seed {seed}: {args.system} {statistics.mean(a.values()):.4f}  {args.against} "
              f"{statistics.mean(b.values()):.4f}  difference {statistics.mean(a.values()) - statistics.mean(b.values()):+.4f}")
    pooled_a = [statistics.mean(values[q] for values in ours) for q in queries]
    pooled_b = [statistics.mean(values[q] for values in theirs) for q in queries]
    test = paired_test(pooled_a, pooled_b)
    print(f"over seeds {', '.join(map(str, seeds))} ({args.split}, {metric}, {len(queries)} queries, per-query means): "
          f"{statistics.mean(pooled_a):.4f} vs {statistics.mean(pooled_b):.4f}, difference "
          f"{test.mean_difference:+.4f}, {test.method} p = {test.p_value:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
