"""Plots of a pre-training run's per-step log (`train_log.jsonl`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LOSS_TERMS = ("loss_encoder_mlm", "loss_decoder", "loss_bow")
ACCURACIES = ("acc_encoder_mlm", "acc_decoder")


def read_training_log(path: str | Path) -> list[dict]:
    """Records of `train_log.jsonl` that carry loss terms, in step order."""
    path = Path(path)
    if path.is_dir():
        path = path / "train_log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no training log at {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from error
        if "loss_encoder_mlm" in record:
            records.append(record)
    return sorted(records, key=lambda r: r["step"])


def summarize(records: list[dict]) -> dict[str, tuple[float, float]]:
    """First and last value of every loss term and accuracy present."""
    return {name: (records[0][name], records[-1][name])
            for name in LOSS_TERMS + ACCURACIES if records and name in records[0]}


def plot_training_log(log: str | Path, output: str | Path, title: str | None = None) -> Path:
    """Two panels — loss terms and MLM accuracies over steps — saved as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # optional dependency
        raise ImportError("plotting needs matplotlib: pip install 'dupmae[plot]'") from error
    records = read_training_log(log)
    if not records:
        raise ValueError(f"{log}: no records with loss terms to plot")
    steps = [r["step"] for r in records]
    figure, (losses, accuracies) = plt.subplots(1, 2, figsize=(11, 4))
    for name in LOSS_TERMS:
        if name in records[0]:
            losses.plot(steps, [r[name] for r in records], label=name.removeprefix("loss_"))
    for name in ACCURACIES:
        if name in records[0]:
            accuracies.plot(steps, [r[name] for r in records], label=name.removeprefix("acc_"))
    losses.set(xlabel="step", ylabel="loss", title="loss terms")
    accuracies.set(xlabel="step", ylabel="accuracy", title="MLM accuracies", ylim=(0, 1))
    for axis in (losses, accuracies):
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dupmae plot", description="Plot a pre-training run's loss terms.")
    parser.add_argument("run", help="pre-training output folder (or its train_log.jsonl)")
    parser.add_argument("--output", help="PNG to write (default: RUN/loss_curves.png)")
    parser.add_argument("--title", help="figure title")
    args = parser.parse_args(argv)
    run = Path(args.run)
    output = Path(args.output) if args.output else (run if run.is_dir() else run.parent) / "loss_curves.png"
    try:
        path = plot_training_log(run, output, args.title)
        records = read_training_log(run)
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"dupmae plot: error: {error}", file=sys.stderr)
        return 2
    for name, (first, last) in summarize(records).items():
        print(f"{name:<18} step {records[0]['step']:>6}: {first:.4f}   step {records[-1]['step']:>6}: {last:.4f}")
    print(f"wrote {path}")
    return 0
