"""The objective ablation table from `dupmae run` results (scripts/objective_ablation.sh).

    python scripts/ablation_table.py runs/ablation/results-*.json [--split test]

One row per (continued pre-training objective, fine-tuning representation): `none` is the model
fine-tuned without continued pre-training (the `ft-R` systems), the others the `dupmae-ft-R`
system of a run whose `pretrain.objective` was that objective. Values are `mean ± sample std (n)`
over the seeds found; with one seed, the paired test against `none` (same seed, same fine-tuning)
stored by the run is shown. BM25 and the zero-shot model head the table. When the runs differ in
the continued pre-training's learning rate or frozen-encoder steps, or in the fine-tuning epochs (the
`lr`, `freeze` and `epochs` phases), the rows name them. Hybrid systems (`<system> + BM25`, the
`hybrid` phase) get rows of their own, after the plain ones of their representation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict

OBJECTIVES = ("none", "mlm", "retromae", "bow_only", "dupmae")
HYBRID = "+bm25"  # system id suffix of a hybrid (`dupmae run` fuses each neural system with BM25)


VARIED = (("pretrain", "learning_rate", "lr {:g}"), ("pretrain", "freeze_encoder_steps", "encoder frozen {:g} steps"),
          ("finetune", "num_train_epochs", "fine-tuning epochs {:g}"))
DEFAULTS = {"freeze_encoder_steps": 0}  # settings older runs did not record


def setting(run: dict, section: str, key: str):
    return run["config"].get(section, {}).get(key, DEFAULTS.get(key))


def labeller(runs: list[dict]):
    """`label(run, objective)`: the objective, plus the settings of VARIED that differ between runs
    (pre-training settings only for pre-trained rows: "none" has no pre-training)."""
    varied = [(section, key, form) for section, key, form in VARIED
              if len({json.dumps(setting(run, section, key)) for run in runs}) > 1]

    def label(run: dict, objective: str) -> str:
        parts = [form.format(setting(run, section, key)) for section, key, form in varied
                 if objective != "none" or section != "pretrain"]
        return ", ".join([objective, *parts])
    return label


def collect(runs: list[dict], split: str) -> tuple[dict, dict]:
    """`{(label, representation): {seed: metrics}}` and `{(label, representation): p}` (one seed)."""
    rows: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    p_values: dict[tuple[str, str], list[float]] = defaultdict(list)
    label = labeller(runs)
    for run in runs:
        objective = run["config"]["pretrain"].get("objective", "dupmae")
        seed = run["config"]["seed"]
        for system_id, system in run["systems"].items():
            representation = system.get("representation")
            base = system_id.removesuffix(HYBRID)
            suffix = " + BM25" if base != system_id else ""
            if base in ("bm25", "zero-shot"):
                key = (system["label"], "")
            elif base.startswith("dupmae-ft-"):
                key = (label(run, objective) + suffix, representation)
                effect = run["dupmae_vs_same_finetuning"].get(split, {}).get(system_id)
                if effect and effect.get("p_value") is not None:
                    p_values[key].append(effect["p_value"])
            elif base.startswith("ft-"):
                key = (label(run, "none") + suffix, representation)
            else:
                continue
            rows[key][seed] = system[split]  # a system shared by several runs of one seed counts once
    return rows, p_values


def order(key: tuple[str, str]) -> tuple:
    label, representation = key
    hybrid = label.endswith(" + BM25")
    if not representation:  # baselines first
        return (0, label, hybrid, 0, label)
    objective = label.removesuffix(" + BM25").split(",")[0]
    return (1, representation, hybrid, OBJECTIVES.index(objective) if objective in OBJECTIVES else len(OBJECTIVES),
            label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="results.json files of the ablation runs")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    runs = [json.load(open(path)) for path in args.results]
    metrics = runs[0]["metrics"]
    rows, p_values = collect(runs, args.split)
    print(f"| pre-training ({args.split}) | representation | seeds | " + " | ".join(metrics)
          + f" | p vs none ({metrics[0]}, 1 seed) |")
    print("|" + " --- |" * (len(metrics) + 4))
    for key in sorted(rows, key=order):
        by_seed = rows[key]
        cells = []
        for metric in metrics:
            values = [by_seed[seed][metric] for seed in sorted(by_seed)]
            spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.4f}{spread}")
        p = p_values.get(key, [])
        p_cell = f"{p[0]:.3f}" if len(by_seed) == 1 and len(p) == 1 else ""
        print(f"| {key[0]} | {key[1] or '—'} | {len(by_seed)} | " + " | ".join(cells) + f" | {p_cell} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
