"""`transfer:` of `dupmae run`: every system of the run also evaluated zero-shot on other collections.

Fine-tuning on one collection's labels can make a retriever worse everywhere else (issue 16: the quick
preset's fine-tuned all-MiniLM-L6-v2 lost 0.04 mean NDCG@10 on the four transfer collections). The
report says so next to the in-domain numbers. The work is `dupmae beir`'s (`evaluate_collections`), in
``OUTPUT/transfer/`` with its own report, cached per (system, collection) by model and collection
fingerprints: a rerun of the pipeline re-evaluates nothing that did not change. Each system's work folder
is named by the stage that made its model (``collections/<collection>/ft-cls.<stage hash>``), so runs of
other settings in the same output (``--set seed=1``) add their own instead of replacing it.

Each `+ BM25` hybrid keeps the weight the run chose on its own dev split (there is none on a transfer
collection). BM25 + rerank is left out: it would run the cross-encoder on every transfer collection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dupmae.pipeline.beir import BM25_NAME, BeirCollection, Settings, collection_names, evaluate_collections
from dupmae.pipeline.data import MissingDataError


def transfer_folders(entries: list[str], root: Path) -> list[Path]:
    """Each entry is a BEIR folder's path, or a collection's name under the data root."""
    folders = []
    for entry in entries:
        for candidate in (Path(entry).expanduser(), Path(root) / entry):
            if candidate.is_dir():
                folders.append(candidate.absolute())
                break
        else:
            raise MissingDataError(f"transfer: {entry!r} is neither a folder nor a collection under {root}")
    return folders


def transfer_collections(config, root: Path) -> list[BeirCollection]:
    folders = transfer_folders(config.transfer, root)
    collections = [BeirCollection(name, folder, config.transfer_split)
                   for name, folder in zip(collection_names(folders), folders)]
    for collection in collections:
        collection.check()
    return collections


def _model_stage(the_plan, eval_stage: str) -> str | None:
    """The stage whose `model` output an evaluation stage encoded with (its one dependency besides `data`)."""
    for stage in the_plan.stages:
        if stage.name == eval_stage:
            models = [name for name in stage.deps if name != "data"]
            return models[0] if len(models) == 1 else None
    return None


@dataclass
class TransferSystems:
    """The run's systems as `evaluate_collections` takes them, by system id."""

    models: dict[str, str] = field(default_factory=dict)  # id -> the model folder of the stage that made it
    folders: dict[str, str] = field(default_factory=dict)  # id -> 'ID.STAGEHASH': work folders per model, so
    # runs of other settings (another seed) in the same output keep their cache instead of replacing it
    weights: dict[str, float] = field(default_factory=dict)  # id -> the hybrid weight chosen on dev
    labels: dict[str, str] = field(default_factory=dict)  # id (or 'ID + BM25') -> the report's label
    bm25: bool = False


def transfer_systems(the_plan, finished) -> TransferSystems:
    """The run's retrievers, their hybrids' weights and labels, and whether BM25 is among the systems."""
    found = TransferSystems()
    evaluated_by = {system.eval_stage: system for system in the_plan.systems}
    for system in the_plan.systems:
        if system.id == "bm25":
            found.bm25, found.labels[BM25_NAME] = True, system.label
            continue
        if system.eval_stage.startswith("hybrid-"):
            continue
        model_stage = _model_stage(the_plan, system.eval_stage)
        if model_stage is None or "model" not in finished[model_stage].outputs:
            continue  # not a retriever of its own (BM25 + rerank)
        found.models[system.id] = str(finished[model_stage].path("model"))
        found.folders[system.id] = f"{system.id}.{finished[model_stage].key[:12]}"  # as in stages/NAME-HASH
        found.labels[system.id] = system.label
    for system in the_plan.systems:
        stage = finished.get(system.eval_stage)
        if system.eval_stage.startswith("hybrid-") and stage is not None and "weight" in stage.outputs:
            neural = next((evaluated_by[d] for d in _deps(the_plan, system.eval_stage) if d in evaluated_by
                           and evaluated_by[d].id in found.models), None)
            if neural is not None:
                found.weights[neural.id] = float(stage.outputs["weight"])
                found.labels[f"{neural.id} + {BM25_NAME}"] = f"{system.label} (weight {stage.outputs['weight']}, chosen on dev)"
    return found


def _deps(the_plan, name: str) -> tuple[str, ...]:
    return next((stage.deps for stage in the_plan.stages if stage.name == name), ())


def run_transfer(env, the_plan, finished, output: Path, root: Path, stream) -> dict | None:
    """Evaluate the run's systems on `config.transfer`; None when there is none."""
    config = env.config
    if not config.transfer:
        return None
    systems = transfer_systems(the_plan, finished)
    settings = Settings(top_k=config.top_k, batch_size=config.encode.batch_size, bf16=str(config.encode.bf16),
                        part_size=config.encode.part_size, bm25_k1=config.bm25.k1, bm25_b=config.bm25.b,
                        metrics=tuple(config.metrics))
    return evaluate_collections(systems.models, transfer_collections(config, root), output / "transfer", settings,
                                bm25=systems.bm25, progress=stream, hybrid_weights=systems.weights if systems.bm25 else {},
                                labels=systems.labels, folders=systems.folders)


def pipeline_id(name: str) -> str:
    """A transfer system's name -> the id of the same system in `dupmae run`'s results ('X + BM25' -> 'X+bm25')."""
    if name == BM25_NAME:
        return "bm25"
    return name.replace(f" + {BM25_NAME}", "+bm25")


def transfer_section(transfer: dict | None, primary_metric: str, in_domain: dict | None = None) -> list[str]:
    """The report's section: the primary metric per system and transfer collection, their average, and the
    system's in-domain test value beside it (`in_domain`: ``{system id: value}``)."""
    if not transfer:
        return []
    collections = list(transfer["collections"])
    metric = primary_metric if primary_metric in transfer["metrics"] else transfer["metrics"][0]
    lines = ["## Zero-shot transfer", "",
             f"Every system also searched {len(collections)} other collections it never saw (`transfer`), "
             f"{metric}; the average is the plain mean over them. Full tables, plot and per-query values: "
             "[transfer/report.md](transfer/report.md).", "",
             "| system | " + " | ".join(collections) + " | transfer average | in-domain test |",
             "| --- | " + " | ".join("---:" for _ in collections) + " | ---: | ---: |"]
    for name, system in transfer["systems"].items():
        test = (in_domain or {}).get(pipeline_id(name))
        cells = [f"{system['collections'][c][metric]:.4f}" for c in collections]
        lines.append(f"| {system['label']} | " + " | ".join(cells) + f" | {system['average'][metric]:.4f} | "
                     + (f"{test:.4f}" if test is not None else "—") + " |")
    return lines + [""]
