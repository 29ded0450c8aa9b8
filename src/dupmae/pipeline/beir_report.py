"""The report of `dupmae beir`: every stored run evaluated (pytrec_eval, as `dupmae evaluate`), a table per
metric with one row per system and one column per collection plus their average (the paper's BEIR
table), a plot, per-query values, and `results.json`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from dupmae.data.beir import load_qrels
from dupmae.evaluation.metrics import evaluate
from dupmae.retrieval.trec import read_run

logger = logging.getLogger(__name__)


def metric_label(name: str) -> str:
    return name.replace("ndcg", "NDCG").replace("mrr", "MRR").replace("recall", "Recall").replace("map", "MAP")


def average(values: list[float]) -> float:
    return sum(values) / len(values)


def evaluate_records(collections, records: dict, metrics) -> tuple[dict, dict]:
    """(means, per-query): ``{system: {collection: {metric: value}}}`` and the same per judged query."""
    qrels = {collection.name: load_qrels(str(collection.qrels)) for collection in collections}
    means, per_query = {}, {}
    for system, by_collection in records.items():
        for collection, record in by_collection.items():
            summary = evaluate(read_run(str(Path(record["folder"]) / record["run"])), qrels[collection], metrics,
                               per_query=True)
            means.setdefault(system, {})[collection] = summary["metrics"]
            per_query.setdefault(system, {})[collection] = summary["per_query"]
    return means, per_query


def write_per_query(folder: Path, per_query: dict, metrics) -> None:
    """``per_query/<collection>/<system>.tsv``: query id, then one column per metric."""
    for system, by_collection in per_query.items():
        for collection, values in by_collection.items():
            target = folder / collection
            target.mkdir(parents=True, exist_ok=True)
            lines = ["query-id\t" + "\t".join(metrics)]
            lines += [query_id + "\t" + "\t".join(f"{values[query_id][m]:.6f}" for m in metrics)
                      for query_id in sorted(values)]
            (target / f"{system.replace(' + ', '+')}.tsv").write_text("\n".join(lines) + "\n")


def _table(results: dict, metric: str) -> list[str]:
    collections = list(results["collections"])
    best = {c: max(results["systems"][s]["collections"][c][metric] for s in results["systems"]) for c in collections}
    best_average = max(system["average"][metric] for system in results["systems"].values())
    lines = [f"### {metric_label(metric)}", "",
             "| system | " + " | ".join(collections) + " | average |",
             "| --- | " + " | ".join("---:" for _ in collections) + " | ---: |"]
    for name, system in results["systems"].items():
        cells = [_cell(system["collections"][c][metric], best[c]) for c in collections]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_cell(system['average'][metric], best_average)} |")
    return lines + [""]


def _cell(value: float, best: float) -> str:
    return f"**{value:.4f}**" if abs(value - best) < 5e-5 else f"{value:.4f}"


def render(results: dict) -> str:
    """report.md."""
    lines = ["# Zero-shot evaluation across collections (`dupmae beir`)", "",
             f"{len(results['systems'])} systems on {len(results['collections'])} collections "
             f"(`qrels/{results['split']}.tsv`), top {results['settings']['top_k']} per query; the best value of "
             "each column is in bold. The average is the unweighted mean over collections, as in the BEIR "
             "tables of the DupMAE paper. Metrics are pytrec_eval's (trec_eval), averaged over every judged "
             "query; a judged query that retrieved nothing (an empty one) scores 0.", ""]
    for metric in results["metrics"]:
        lines += _table(results, metric)
    if results.get("plot"):
        lines += [f"![{metric_label(results['metrics'][0])} per collection]({results['plot']})", ""]
    lines += ["## Collections", "",
              "| collection | documents | empty documents | queries | judged | searched | judged empty | "
              "judgements | judged without a relevant one | unknown judged documents |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, info in results["collections"].items():
        lines.append(f"| {name} | {info['documents']} | {info['empty_documents']} | {info['queries']} | "
                     f"{info['judged_queries']} | {info['searched_queries']} | {info['judged_empty_queries']} | "
                     f"{info['judgements']} | {info['judged_without_relevant']} | {info['unknown_judged_documents']} |")
    lines += ["", "## Systems", ""]
    lines += [f"- **{name}**: {system['label']}" for name, system in results["systems"].items()]
    if any(" + " in name for name in results["systems"]):
        lines.append("- `+ BM25`: weight x the system + (1 - weight) x BM25 over min-max-normalised scores, a "
                     "fixed weight per system: a zero-shot collection has no dev split to choose it on")
    lines += ["", "## Time", "", "| system | " + " | ".join(results["collections"]) + " |",
              "| --- | " + " | ".join("---:" for _ in results["collections"]) + " |"]
    for name, system in results["systems"].items():
        cells = [("cached " if system["runs"][c]["cached"] else "") + f"{system['runs'][c]['seconds']:.1f}s"
                 for c in results["collections"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Per-query values: `per_query/<collection>/<system>.tsv`; runs: `collections/<collection>/"
              "<system>/run.trec`.", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    """Grouped bars of the first metric: one group per collection (and the average), one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["metrics"][0]
    groups = list(results["collections"]) + ["average"]
    systems = results["systems"]
    figure, axis = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) * max(1, len(systems)) / 2 + 3), 4.2))
    width = 0.8 / max(len(systems), 1)
    for index, (name, system) in enumerate(systems.items()):
        values = [system["collections"][c][metric] for c in results["collections"]] + [system["average"][metric]]
        positions = [g + (index - (len(systems) - 1) / 2) * width for g in range(len(groups))]
        bars = axis.bar(positions, values, width, label=name)
        axis.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
    axis.set_xticks(range(len(groups)), groups)
    axis.set(ylim=(0, 1.1), ylabel=metric_label(metric), title=f"{metric_label(metric)} per collection")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, ncol=min(len(systems), 3), frameon=False, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(output: Path, collections, info: dict, records: dict, labels: dict, settings,
                 seconds: float) -> dict:
    """Evaluate the stored runs; write results.json, report.md, the plot and per_query/."""
    import dataclasses

    metrics = list(settings.metrics)
    means, per_query = evaluate_records(collections, records, metrics)
    systems = {}
    for system, by_collection in means.items():
        systems[system] = {
            "label": labels[system],
            "collections": by_collection,
            "average": {m: average([by_collection[c.name][m] for c in collections]) for m in metrics},
            "runs": {c: {k: v for k, v in record.items()} for c, record in records[system].items()},
        }
    results = {"split": collections[0].split if collections else "test", "metrics": metrics,
               "settings": dataclasses.asdict(settings), "collections": info, "systems": systems,
               "seconds": seconds}
    write_per_query(output / "per_query", per_query, metrics)
    try:
        results["plot"] = plot(results, output / f"{metrics[0].replace('@', '')}.png").name
    except ImportError as error:  # matplotlib is optional ([plot] extra)
        logger.warning("no plot: %s", error)
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "report.md").write_text(render(results))
    return results
