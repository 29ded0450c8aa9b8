"""What `dupmae run` writes at the end: results.json, per_query.json, report.md, metrics.png, loss_curves.png.

Every system's TREC runs (one per split, written by its stage) are evaluated here with
`dupmae.evaluation.metrics.evaluate` (pytrec_eval; mean over all judged queries), so changing the
metrics reruns no stage. Significance: `dupmae.evaluation.significance` over the per-query values of
the primary metric.
The best baseline (per split) is the baseline system with the highest primary metric on that split —
the strongest thing the other systems are compared with.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

from dupmae.evaluation.significance import paired_test
from dupmae.pipeline.context import Environment, Finished, evaluation_splits
from dupmae.pipeline.stages import Plan

logger = logging.getLogger(__name__)

_FAMILY_NAMES = {"ndcg": "nDCG", "mrr": "MRR", "recall": "Recall", "precision": "P", "map": "MAP"}


def metric_label(name: str) -> str:
    """'ndcg@10' -> 'nDCG@10', 'recall@100' -> 'Recall@100'."""
    family, _, cutoff = name.partition("@")
    return _FAMILY_NAMES.get(family, family) + (f"@{cutoff}" if cutoff else "")


def format_p(p: float | None) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def evaluate_systems(env: Environment, the_plan: Plan, finished: dict[str, Finished]) -> dict[str, dict[str, dict]]:
    """`{system id: {split: evaluate() summary with per_query}}` from each system's run files."""
    from dupmae.data.beir import load_qrels
    from dupmae.evaluation.metrics import evaluate
    from dupmae.retrieval.trec import read_run

    splits = evaluation_splits(env, finished["data"])
    qrels = {split: load_qrels(str(path)) for split, path in splits}
    return {system.id: {split: evaluate(read_run(str(finished[system.eval_stage].path_of("runs", split))),
                                        qrels[split], env.config.metrics, per_query=True)
                        for split, _ in splits}
            for system in the_plan.systems}


def _compare(a: dict[str, float], b: dict[str, float], method: str, seed: int) -> dict:
    if set(a) != set(b):
        raise ValueError("per-query values of two systems cover different queries")
    queries = sorted(a)
    if len(queries) < 2:  # no test on a single query
        return {"method": None, "n": len(queries), "mean_difference": None, "statistic": None, "p_value": None}
    return paired_test([a[q] for q in queries], [b[q] for q in queries], method, seed=seed).as_dict()


def _paired_effects(the_plan: Plan, systems: dict, split: str, link: str, per_query, config) -> dict:
    """Each system whose `link` (`without_dupmae` or `previous`) names another system, compared with that one:
    metric deltas and the paired test of the primary metric's per-query values."""
    effects = {}
    for system in the_plan.systems:
        other = getattr(system, link)
        if other:
            effects[system.id] = {
                "against": other, "metric": config.primary_metric,
                "deltas": {m: systems[system.id][split][m] - systems[other][split][m] for m in config.metrics},
                **_compare(per_query(system.id, split), per_query(other, split), config.significance, config.seed),
            }
    return effects


def build_results(env: Environment, the_plan: Plan, finished: dict[str, Finished], evaluations: dict,
                  started: float, config_file: str | None = None) -> dict:
    """Everything the report shows, as one JSON-able dict (`evaluations`: from `evaluate_systems`)."""
    import torch

    from dupmae import __version__

    config = env.config
    primary = config.primary_metric
    data = finished["data"]
    splits = [split for split, _ in evaluation_splits(env, data)]
    systems = {}
    for system in the_plan.systems:
        stage = finished[system.eval_stage]
        systems[system.id] = {
            "label": system.label, "kind": system.kind, "representation": system.representation,
            "stage": stage.folder.name, **{split: evaluations[system.id][split]["metrics"] for split in splits},
        }
        if "weight" in stage.outputs:  # a hybrid: how its runs were fused
            systems[system.id]["fusion"] = {key: stage.outputs[key] for key in ("weight", "chosen_on", "method",
                                                                                 "dev_by_weight")}

    def per_query(system_id: str, split: str) -> dict[str, float]:
        return {q: values[primary] for q, values in evaluations[system_id][split]["per_query"].items()}

    comparisons, dupmae_effect, stage_effect, best = {}, {}, {}, {}
    for split in splits:
        baselines = [s for s in the_plan.systems if s.kind == "baseline"]
        if baselines:
            reference = max(baselines, key=lambda s: systems[s.id][split][primary])
            best[split] = reference.id
            reference_values = per_query(reference.id, split)
            comparisons[split] = {}
            for system in the_plan.systems:
                if system.id == reference.id:
                    continue
                values = per_query(system.id, split)
                comparisons[split][system.id] = {
                    "against": reference.id, "metric": primary,
                    "deltas": {m: systems[system.id][split][m] - systems[reference.id][split][m] for m in config.metrics},
                    **_compare(values, reference_values, config.significance, config.seed),
                }
        dupmae_effect[split] = _paired_effects(the_plan, systems, split, "without_dupmae", per_query, config)
        stage_effect[split] = _paired_effects(the_plan, systems, split, "previous", per_query, config)
    pretraining = {}
    if "pretrain" in finished:
        stage = finished["pretrain"]
        pretraining = {"stage": stage.folder.name, "global_step": stage.outputs.get("global_step"),
                       "loss_terms_first_last": stage.outputs.get("loss_terms", {})}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_file": config_file,
        "config": config.to_dict(),
        "config_hash": config.config_hash(),
        "collection": {"name": config.collection, "folder": str(env.collection.folder),
                       "files_sha256": env.collection_fingerprint, **data.outputs["counts"]},
        "model": {"label": env.model_label, "path": str(env.model_path), "sha256": env.model_fingerprint},
        "primary_metric": primary,
        "metrics": config.metrics,
        "splits": splits,
        "systems": systems,
        "best_baseline": best,
        "comparisons": comparisons,
        "dupmae_vs_same_finetuning": dupmae_effect,
        "stage_vs_previous": stage_effect,
        "pretraining": pretraining,
        "timings": {
            "stages": [{"stage": name, "folder": item.folder.name, "status": item.status, "seconds": item.seconds}
                       for name, item in finished.items()],
            "stages_run": [name for name, item in finished.items() if item.status in ("ran", "resumed")],
            "this_run_seconds": time.monotonic() - started,
            "all_stages_seconds": sum(item.seconds for item in finished.values()),
        },
        "environment": {"dupmae": __version__, "torch": torch.__version__, "python": platform.python_version(),
                        "cpus": os.cpu_count(),
                        "device": "cuda" if torch.cuda.is_available() else "cpu"},
    }


# -- report.md ---------------------------------------------------------------------------------------


def _table(results: dict, split: str) -> list[str]:
    metrics, primary = results["metrics"], results["primary_metric"]
    level = results["config"]["significance_level"]
    best = results["best_baseline"].get(split)
    comparisons = results["comparisons"].get(split, {})
    header = ["system"]
    for metric in metrics:
        header += [metric_label(metric), "Δ"]
    header.append(f"p ({metric_label(primary)})")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system_id, system in results["systems"].items():
        label = system["label"] + (" (best baseline)" if system_id == best else "")
        row = [label]
        comparison = comparisons.get(system_id)
        for metric in metrics:
            row.append(f"{system[split][metric]:.4f}")
            row.append(f"{comparison['deltas'][metric]:+.4f}" if comparison else "—")
        if comparison:
            mark = " *" if comparison["p_value"] is not None and comparison["p_value"] < level else ""
            row.append(format_p(comparison["p_value"]) + mark)
        else:
            row.append("—")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _test_note(results: dict, split: str) -> str:
    comparisons = results["comparisons"].get(split)
    if not comparisons:
        return ""
    any_test = next(iter(comparisons.values()))
    method = {"t-test": "two-sided paired t-test (scipy.stats.ttest_rel)",
              "permutation": "two-sided paired sign-flip permutation test (10,000 rounds, fixed seed; exact up to "
                             "16 queries)"}.get(any_test["method"], "no test (fewer than 2 queries)")
    best = results["systems"][results["best_baseline"][split]]["label"]
    references = [system["label"] for system in results["systems"].values() if system["kind"] == "reference"]
    note = (f" {', '.join(references)}: a re-ranker (the cross-encoder teacher over BM25's top k, far costlier per "
            "query than a retriever), compared with the best baseline but never chosen as it." if references else "")
    return (f"Δ: difference to the best baseline on this split ({best}, the baseline with the highest "
            f"{metric_label(results['primary_metric'])}). p: {method} over the {any_test['n']} per-query "
            f"{metric_label(results['primary_metric'])} values against it; * marks p < "
            f"{results['config']['significance_level']}.{note}")


def _dupmae_table(results: dict, split: str, key: str = "dupmae_vs_same_finetuning") -> list[str]:
    effect = results.get(key, {}).get(split) or {}
    if not effect:
        return []
    primary = results["primary_metric"]
    lines = [f"| system | compared with | " + " | ".join(f"Δ {metric_label(m)}" for m in results["metrics"])
             + f" | p ({metric_label(primary)}) |", "|" + "---|" * (3 + len(results["metrics"]))]
    for system_id, item in effect.items():
        deltas = " | ".join(f"{item['deltas'][m]:+.4f}" for m in results["metrics"])
        lines.append(f"| {results['systems'][system_id]['label']} | {results['systems'][item['against']]['label']} | "
                     f"{deltas} | {format_p(item['p_value'])} |")
    return lines


def _hybrid_lines(results: dict) -> list[str]:
    """How each '<system> + BM25' was fused (weight of the neural run, and where it came from)."""
    hybrids = {system_id: system for system_id, system in results["systems"].items() if "fusion" in system}
    if not hybrids:
        return []
    primary = metric_label(results["primary_metric"])
    lines = ["## Hybrids", "",
             "Each `+ BM25` system fuses the neural system's run with BM25's per query (`dupmae fuse`): "
             "weight × neural + (1 − weight) × BM25 after normalising each run's scores. A weight chosen on the "
             f"dev split (the best dev {primary} of 0, 0.1, …, 1) makes that system's dev row optimistic; its "
             "test row is a fair report.", "", "| system | method | weight of the neural run | chosen on |",
             "|---|---|---|---|"]
    lines += [f"| {system['label']} | {system['fusion']['method']} | {system['fusion']['weight']:.2f} | "
              f"{system['fusion']['chosen_on']} |" for system in hybrids.values()]
    return lines + [""]


def render_report(results: dict, plots: dict[str, str]) -> str:
    import yaml

    from dupmae.pipeline.run import format_duration

    collection, model = results["collection"], results["model"]
    ran = len(results["timings"]["stages_run"])
    lines = [f"# dupmae run: {collection['name']} — does DupMAE help?", ""]
    counts = [f"{collection['documents']:,} documents", f"{collection['test_queries']} test queries"]
    if "dev_queries" in collection:
        counts.append(f"{collection['dev_queries']} dev queries held out from the {results['config']['train_split']} "
                      f"split ({collection['train_queries']} left for fine-tuning)")
    lines += [
        f"Collection `{collection['folder']}`: " + ", ".join(counts) + ".",
        f"Starting model: {model['label']} (`{model['path']}`).",
        f"Config: `{results['config_file'] or '(defaults)'}`, hash `{results['config_hash'][:12]}`; "
        f"written {results['created']}; this run took {format_duration(results['timings']['this_run_seconds'])} "
        f"({ran} of {len(results['timings']['stages'])} stages ran now, {len(results['timings']['stages']) - ran} "
        f"were cached); all stages together took {format_duration(results['timings']['all_stages_seconds'])} "
        "when they ran.",
        "",
    ]
    for split in results["splits"]:
        queries = collection["test_queries"] if split == "test" else collection.get("dev_queries")
        title = "Test" if split == "test" else "Dev (for choices; fine-tuning never saw these queries)"
        lines += [f"## {title}: {queries} queries", ""] + _table(results, split) + [""]
        note = _test_note(results, split)
        lines += [note, ""] if note else []
        effect = _dupmae_table(results, split)
        if effect:
            lines += [f"DupMAE continued pre-training vs the same fine-tuning from the starting model ({split}):", ""]
            lines += effect + [""]
        rounds = _dupmae_table(results, split, "stage_vs_previous")
        if rounds:
            lines += [f"Each fine-tuning round vs the round before it, from the same start ({split}; round 2: "
                      "negatives mined by the round-1 model; distilled: + KL to the cross-encoder teacher):", ""]
            lines += rounds + [""]
    lines += _hybrid_lines(results)
    if results.get("transfer"):
        from dupmae.pipeline.transfer import transfer_section

        primary = results["config"]["primary_metric"]
        lines += transfer_section(results["transfer"], primary,
                                  {system_id: system["test"][primary] for system_id, system in results["systems"].items()
                                   if "test" in system and primary in system["test"]})
    if plots:
        lines += ["## Plots", ""]
        if "metrics" in plots:
            lines += [f"![metrics per system]({plots['metrics']})", ""]
        if "loss_curves" in plots:
            lines += [f"![DupMAE pre-training loss terms]({plots['loss_curves']})", ""]
    pretraining = results.get("pretraining")
    if pretraining and pretraining.get("loss_terms_first_last"):
        lines += [f"## Pre-training ({pretraining['global_step']} steps)", "", "| term | first logged | last logged |",
                  "|---|---|---|"]
        lines += [f"| {name} | {first:.4f} | {last:.4f} |"
                  for name, (first, last) in pretraining["loss_terms_first_last"].items()]
        lines.append("")
    lines += ["## Timings", "", "| stage | status | time | folder |", "|---|---|---|---|"]
    for item in results["timings"]["stages"]:
        status = {"cached": "cached (time when it ran)", "resumed": "resumed now", "ran": "ran now"}[item["status"]]
        lines.append(f"| {item['stage']} | {status} | {format_duration(item['seconds'])} | `stages/{item['folder']}` |")
    environment = results["environment"]
    lines += ["", f"dupmae {environment['dupmae']}, torch {environment['torch']}, Python {environment['python']}, "
                  f"{environment['cpus']} CPUs, device {environment['device']}.", "",
              "## Config (resolved)", "", "```yaml", yaml.safe_dump(results["config"], sort_keys=False).rstrip(), "```",
              ""]
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------------


def plot_metrics(results: dict, path: Path) -> Path:
    """Grouped bars: each metric, one bar per system, one panel per split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits, metrics, systems = results["splits"], results["metrics"], results["systems"]
    figure, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4.2), squeeze=False)
    width = 0.8 / max(len(systems), 1)
    for axis, split in zip(axes[0], splits):
        for index, (system_id, system) in enumerate(systems.items()):
            positions = [m + (index - (len(systems) - 1) / 2) * width for m in range(len(metrics))]
            bars = axis.bar(positions, [system[split][m] for m in metrics], width, label=system["label"])
            axis.bar_label(bars, fmt="%.3f", fontsize=6, rotation=90, padding=2)
        axis.set_xticks(range(len(metrics)), [metric_label(m) for m in metrics])
        axis.set(ylim=(0, 1.1), title=f"{split} ({results['collection'].get(split + '_queries')} queries)")
        axis.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0.07 * ((len(labels) + 3) // 4), 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_outputs(output: Path, env: Environment, the_plan: Plan, finished: dict[str, Finished], started: float,
                  config_file: str | None = None, transfer: dict | None = None) -> dict:
    """results.json, per_query.json, metrics.png, loss_curves.png (copied from the pre-training stage), report.md."""
    import yaml

    evaluations = evaluate_systems(env, the_plan, finished)
    results = build_results(env, the_plan, finished, evaluations, started, config_file)
    plots = {}
    try:
        plots["metrics"] = plot_metrics(results, output / "metrics.png").name
    except ImportError as error:  # matplotlib is optional ([plot] extra)
        logger.warning("no plots: %s", error)
    pretrain = finished.get("pretrain")
    if pretrain and pretrain.outputs.get("plot"):
        shutil.copyfile(pretrain.path("plot"), output / "loss_curves.png")
        plots["loss_curves"] = "loss_curves.png"
    results["plots"] = plots
    if transfer:  # `dupmae.pipeline.transfer`: the averages here, everything else in transfer/results.json
        results["transfer"] = {"collections": list(transfer["collections"]), "metrics": transfer["metrics"],
                               "systems": {name: {"label": system["label"], "collections": system["collections"],
                                                  "average": system["average"]}
                                           for name, system in transfer["systems"].items()}}
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    per_query = {system: {split: summary["per_query"] for split, summary in by_split.items()}
                 for system, by_split in evaluations.items()}
    (output / "per_query.json").write_text(json.dumps(per_query, sort_keys=True) + "\n")
    (output / "config.yaml").write_text(yaml.safe_dump(results["config"], sort_keys=False))
    (output / "report.md").write_text(render_report(results, plots))
    return results
