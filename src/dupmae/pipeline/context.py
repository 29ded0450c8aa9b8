"""What every stage of `dupmae run` works with: the environment, finished stages, a stage's context,
and the small helpers the stage functions share (runs per split, training once, checkpoints).

`dupmae.pipeline.stages` (the first-round stages and the plan) and `dupmae.pipeline.refinement`
(round 2, the cross-encoder teacher, distillation) both build on this module.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dupmae.data.integrity import read_json_file, write_json_atomically
from dupmae.pipeline.config import PipelineConfig
from dupmae.pipeline.data import CollectionPaths

logger = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A stage found something wrong with its inputs or outputs (the message says what)."""


@dataclass
class Environment:
    """What every stage may read: the config and the resolved inputs."""

    config: PipelineConfig
    collection: CollectionPaths
    model_path: Path
    model_label: str
    model_fingerprint: str
    collection_fingerprint: dict[str, str]  # file (relative to the collection folder) -> sha256


@dataclass
class Finished:
    """A stage whose outputs exist (run now, resumed now, or found in the cache)."""

    name: str
    key: str
    folder: Path
    outputs: dict
    seconds: float  # how long the stage took when it ran
    status: str  # "ran" | "resumed" | "cached"

    def path(self, output: str) -> Path:
        return self.folder / self.outputs[output]

    def path_of(self, output: str, key: str) -> Path:
        """For outputs keyed by split: `path_of("per_query", "test")`."""
        return self.folder / self.outputs[output][key]


@dataclass
class Context:
    folder: Path
    inputs: dict[str, Finished]
    env: Environment
    resuming: bool  # the folder exists without a finished marker: an interrupted earlier attempt


def write_yaml(path: Path, values: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(values, sort_keys=True))
    return path


def has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("checkpoint-*"))


def fresh_or_resume(folder: Path) -> bool:
    """True when `folder` holds a checkpoint to resume from; otherwise clear what an earlier start left."""
    if has_checkpoint(folder):
        return True
    if folder.exists():  # started but never reached a checkpoint: nothing worth keeping, but say so
        logger.warning("removing %s: an earlier start of this stage reached no checkpoint; training starts again",
                       folder)
        shutil.rmtree(folder)
    return False


def drop_checkpoints(folder: Path, keep: bool) -> None:
    if not keep:
        for checkpoint in folder.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)


def evaluation_splits(env: Environment, data: Finished) -> list[tuple[str, Path]]:
    """(split name, qrels file) every system is searched and evaluated on: test, and dev if there is one."""
    splits = [("test", env.collection.test_qrels)]
    if data.outputs.get("dev_qrels"):
        splits.append(("dev", data.path("dev_qrels")))
    return splits


def context_splits(context: Context) -> list[tuple[str, Path]]:
    return evaluation_splits(context.env, context.inputs["data"])


def write_runs(context: Context, results_by_split: dict[str, dict]) -> dict:
    """One TREC run per split; the report evaluates them (so changing the metrics reruns no stage)."""
    from dupmae.retrieval.trec import write_run

    for split, results in results_by_split.items():
        write_run(str(context.folder / f"{split}.trec"), results, "dupmae-run")
    return {"runs": {split: f"{split}.trec" for split in results_by_split},
            "queries": {split: len(results) for split, results in results_by_split.items()}}


def write_qrels(path: Path, qrels: dict[str, dict[str, int]]) -> None:
    """BEIR layout, sorted — the same bytes `dupmae finetune --dev-fraction` writes to dev_qrels.tsv."""
    with open(path, "w") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines(f"{q}\t{d}\t{r}\n" for q, docs in sorted(qrels.items()) for d, r in sorted(docs.items()))


def train_once(context: Context, name: str, output: Path, train: Callable[[bool], int]) -> tuple[int, bool]:
    """Run `train(resume)` unless an earlier attempt of this stage finished it; returns (global step, resumed).

    `NAME.done.json` records a finished training, so a stage interrupted after training (while
    exporting, say) does not resume the Trainer from its final checkpoint — which in transformers
    5.24 trains one step beyond max_steps.
    """
    done = context.folder / f"{name}.done.json"
    if done.is_file():
        return read_json_file(done, "training record", f"remove it to train {name} again")["global_step"], True
    resume = fresh_or_resume(output)
    step = train(resume)
    write_json_atomically(done, {"global_step": step})
    return step, resume
