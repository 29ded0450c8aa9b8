"""The stages of `dupmae run` and the plan that chains them.

Each stage is a function of a `Context` (its own folder, the finished stages it depends on, the
resolved inputs) that calls the verbs' own functions — `BM25Index`, `dupmae mine`, `finetune`,
`prepare_corpus`, `pretrain`, `export_encoder`, `encode_corpus`, `search_index`, `evaluate` — and
returns its outputs (paths relative to its folder, plus small facts such as step counts). `settings`
holds everything that decides a stage's outputs; `run.py` hashes it with the hashes of the stages
it depends on to name the stage's folder.

The plan (systems in brackets):

    data ─┬─ bm25                                                     [bm25]
          ├─ zero-shot ── eval-zero-shot                              [zero-shot]
          ├─ mine ──┬─ finetune-R ── eval-finetune-R                         [ft-R]
          │         └───────────────┐
          └─ prepare ── pretrain ───┴─ dupmae-finetune-R ── eval-dupmae-finetune-R  [dupmae-ft-R]

(R: each fine-tuning representation of the config, e.g. cls.) With `hybrid.enabled` and BM25 among
the systems, every neural system S also gets a hybrid: bm25 + eval-S ── hybrid-S  [S+bm25].
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from dupmae.data.integrity import read_json_file, write_json_atomically
from dupmae.pipeline.config import NOT_HASHED, PipelineConfig
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


@dataclass
class Stage:
    name: str  # unique; the folder is stages/<name>-<hash12>
    title: str  # for the progress line
    settings: dict
    deps: tuple[str, ...]
    action: Callable[[Context], dict]


@dataclass
class System:
    """A retriever in the report: which stage evaluated it, and what it is compared with."""

    id: str
    label: str
    kind: str  # "baseline" or "dupmae"
    eval_stage: str
    representation: str | None = None
    without_dupmae: str | None = None  # for dupmae systems: the same fine-tuning from the starting model


@dataclass
class Plan:
    stages: list[Stage] = field(default_factory=list)
    systems: list[System] = field(default_factory=list)


def hashed(settings: dict) -> dict:
    """`settings` without the keys that only change logging or checkpointing (`NOT_HASHED`), recursively."""
    return {k: hashed(v) if isinstance(v, dict) else v for k, v in settings.items() if k not in NOT_HASHED}


# -- the plan ---------------------------------------------------------------------------------------


def plan(env: Environment) -> Plan:
    config = env.config
    result = Plan()
    add = result.stages.append
    eval_settings = {"top_k": config.top_k, "encode": vars(config.encode)}

    add(Stage("data", "collection: validate, carve the dev split",
              {"files": env.collection_fingerprint, "train_split": config.train_split,
               "test_split": config.test_split, "dev_fraction": config.dev_fraction}, (), run_data))

    if "bm25" in config.systems:
        add(Stage("bm25", "BM25: index and retrieve",
                  {"k1": config.bm25.k1, "b": config.bm25.b, "top_k": config.top_k},
                  ("data",), run_bm25))
        result.systems.append(System("bm25", "BM25", "baseline", "bm25"))

    if "zero-shot" in config.systems:
        add(Stage("zero-shot", f"zero-shot: wrap {env.model_label} as a retriever",
                  {"model": env.model_fingerprint, "representation": config.zero_shot, "seed": config.seed},
                  (), run_wrap))
        add(Stage("eval-zero-shot", f"zero-shot {env.model_label}: encode and search",
                  eval_settings, ("data", "zero-shot"), partial(run_eval, model_stage="zero-shot")))
        result.systems.append(System("zero-shot", f"{env.model_label} zero-shot", "baseline", "eval-zero-shot"))

    if {"finetune", "dupmae"} & set(config.systems):
        depth = int(config.finetune.get("negative_depth", 200))
        add(Stage("mine", "BM25 hard negatives for the train queries",
                  {"k1": config.bm25.k1, "b": config.bm25.b, "depth": depth}, ("data",), run_mine))

    def finetune_stages(prefix: str, start: str | None, start_label: str) -> None:
        for name in config.representations:
            stage = f"{prefix}-{name}"
            deps = ("data", "mine") + ((start,) if start else ())
            add(Stage(stage, f"fine-tune {start_label} ({name} representation)",
                      {"start": start or env.model_fingerprint, "finetune": config.finetune,
                       "representation": config.representation[name], "seed": config.seed,
                       "train_split": config.train_split, "dev_fraction": config.dev_fraction},
                      deps, partial(run_finetune, representation=name)))
            add(Stage(f"eval-{stage}", f"fine-tuned {start_label} ({name}): encode and search",
                      eval_settings, ("data", stage), partial(run_eval, model_stage=stage)))

    if "finetune" in config.systems:
        finetune_stages("finetune", None, env.model_label)
        for name in config.representations:
            result.systems.append(System(f"ft-{name}", f"{env.model_label} fine-tuned ({name})", "baseline",
                                         f"eval-finetune-{name}", representation=name))

    if "dupmae" in config.systems:
        add(Stage("prepare", "DupMAE: tokenize the corpus",
                  {"tokenizer": env.model_fingerprint, "prepare": vars(config.prepare)}, ("data",), run_prepare))
        # The ablation objectives (mlm, retromae, bow_only) run through the same stages; name them.
        objective = str(config.pretrain.get("objective", "dupmae"))
        method = "DupMAE" if objective == "dupmae" else f"objective {objective}"
        add(Stage("pretrain", f"{method}: continued pre-training of {env.model_label} on the corpus, export",
                  {"model": env.model_fingerprint, "pretrain": config.pretrain, "seed": config.seed},
                  ("prepare",), run_pretrain))
        finetune_stages("dupmae-finetune", "pretrain", f"the {method} export")
        for name in config.representations:
            baseline = f"ft-{name}" if "finetune" in config.systems else None
            result.systems.append(System(f"dupmae-ft-{name}", f"{method} + fine-tuned ({name})", "dupmae",
                                         f"eval-dupmae-finetune-{name}", representation=name,
                                         without_dupmae=baseline))

    if config.hybrids_wanted():
        settings = {**fusion_options(config), "weight": config.hybrid.weight, "metric": config.primary_metric,
                    "top_k": config.top_k}
        for system in [s for s in result.systems if s.id != "bm25"]:
            add(Stage(f"hybrid-{system.id}", f"{system.label} + BM25: fuse the runs", settings,
                      ("data", "bm25", system.eval_stage), partial(run_hybrid, neural_stage=system.eval_stage)))
            result.systems.append(System(
                f"{system.id}+bm25", f"{system.label} + BM25", system.kind, f"hybrid-{system.id}",
                representation=system.representation,
                without_dupmae=f"{system.without_dupmae}+bm25" if system.without_dupmae else None))
    return result


# -- helpers ----------------------------------------------------------------------------------------


def _write_yaml(path: Path, values: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(values, sort_keys=True))
    return path


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("checkpoint-*"))


def _fresh_or_resume(folder: Path) -> bool:
    """True when `folder` holds a checkpoint to resume from; otherwise clear what an earlier start left."""
    if _has_checkpoint(folder):
        return True
    if folder.exists():  # started but never reached a checkpoint: nothing worth keeping, but say so
        logger.warning("removing %s: an earlier start of this stage reached no checkpoint; training starts again",
                       folder)
        shutil.rmtree(folder)
    return False


def _drop_checkpoints(folder: Path, keep: bool) -> None:
    if not keep:
        for checkpoint in folder.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)


def evaluation_splits(env: Environment, data: Finished) -> list[tuple[str, Path]]:
    """(split name, qrels file) every system is searched and evaluated on: test, and dev if there is one."""
    splits = [("test", env.collection.test_qrels)]
    if data.outputs.get("dev_qrels"):
        splits.append(("dev", data.path("dev_qrels")))
    return splits


def _splits(context: Context) -> list[tuple[str, Path]]:
    return evaluation_splits(context.env, context.inputs["data"])


def _write_runs(context: Context, results_by_split: dict[str, dict]) -> dict:
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


# -- the stages -------------------------------------------------------------------------------------


def run_data(context: Context) -> dict:
    """Read and cross-check both splits; write the dev split's qrels (the split `finetune` holds out)."""
    from dupmae.data.beir import dev_split, load_beir

    config, collection = context.env.config, context.env.collection
    train = load_beir(str(collection.folder), config.train_split)
    test = load_beir(str(collection.folder), config.test_split)
    overlap = sorted(set(train.qrels) & set(test.qrels))
    if overlap:
        raise ValueError(f"{len(overlap)} queries are judged in both {config.train_split} and {config.test_split} "
                         f"(e.g. {overlap[0]!r}): fine-tuning would see test queries")
    counts = {"documents": len(train.corpus), "train_queries": len(train.qrels), "test_queries": len(test.qrels)}
    outputs = {"dev_qrels": None, "counts": counts}
    if config.dev_fraction:
        train_qrels, dev_qrels = dev_split(train.qrels, config.dev_fraction)
        write_qrels(context.folder / "dev_qrels.tsv", dev_qrels)
        outputs["dev_qrels"] = "dev_qrels.tsv"
        counts.update(train_queries=len(train_qrels), dev_queries=len(dev_qrels))
    return outputs


def run_bm25(context: Context) -> dict:
    from dupmae.data.beir import load_corpus, load_qrels, load_queries, searchable_queries
    from dupmae.retrieval.bm25 import BM25Index

    config, collection = context.env.config, context.env.collection
    corpus = load_corpus(str(collection.corpus))
    queries = load_queries(str(collection.queries))
    index = BM25Index.build(corpus, k1=config.bm25.k1, b=config.bm25.b, show_progress=False)
    results = {split: index.search(searchable_queries(queries, load_qrels(str(qrels)), str(qrels)), config.top_k)
               for split, qrels in _splits(context)}
    return _write_runs(context, results)


def run_mine(context: Context) -> dict:
    """`dupmae mine --model bm25` on the train qrels (dev queries included; fine-tuning skips them)."""
    from dupmae.retrieval import mine

    collection, settings = context.env.collection, context.env.config
    output = context.folder / "negatives.jsonl"
    depth = int(settings.finetune.get("negative_depth", 200))
    status = mine.main(["--model", "bm25", "--corpus", str(collection.folder), "--qrels", str(collection.train_qrels),
                        "--depth", str(depth), "--output", str(output)])
    if status != 0:
        raise PipelineError("dupmae mine failed (its message is above)")
    return {"negatives": "negatives.jsonl"}


def run_wrap(context: Context) -> dict:
    """The starting model as a retriever without training (what scripts/make_retriever.py does)."""
    from transformers import set_seed

    from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig, load_tokenizer

    env = context.env
    set_seed(env.config.seed)  # a dense projection (dense_dim > 0) starts random
    encoder = DupMAEEncoder.from_pretrained(env.model_path, RepresentationConfig(**env.config.zero_shot))
    encoder.save_pretrained(context.folder / "model", load_tokenizer(env.model_path))
    return {"model": "model"}


def _train_once(context: Context, name: str, output: Path, train: Callable[[bool], int]) -> tuple[int, bool]:
    """Run `train(resume)` unless an earlier attempt of this stage finished it; returns (global step, resumed).

    `NAME.done.json` records a finished training, so a stage interrupted after training (while
    exporting, say) does not resume the Trainer from its final checkpoint — which in transformers
    5.24 trains one step beyond max_steps.
    """
    done = context.folder / f"{name}.done.json"
    if done.is_file():
        return read_json_file(done, "training record", f"remove it to train {name} again")["global_step"], True
    resume = _fresh_or_resume(output)
    step = train(resume)
    write_json_atomically(done, {"global_step": step})
    return step, resume


def run_finetune(context: Context, representation: str) -> dict:
    """`dupmae finetune` from the starting model or the DupMAE export, resuming its last checkpoint."""
    from dupmae.training.finetune import finetune, parse_arguments

    env, config = context.env, context.env.config
    start = context.inputs["pretrain"].path("encoder") if "pretrain" in context.inputs else env.model_path
    output = context.folder / "model"
    settings = {**config.finetune, **config.representation[representation], "split": config.train_split,
                "dev_fraction": config.dev_fraction, "seed": config.seed}
    settings_file = _write_yaml(context.folder / "finetune.yaml", settings)
    argv = ["--config", str(settings_file), "--model", str(start), "--data", str(env.collection.folder),
            "--negatives", str(context.inputs["mine"].path("negatives")), "--output", str(output)]

    def train(resume: bool) -> int:
        return finetune(*parse_arguments(argv + (["--resume"] if resume else []))).state.global_step

    step, resumed = _train_once(context, "finetune", output, train)
    data = context.inputs["data"]
    if data.outputs.get("dev_qrels") and (output / "dev_qrels.tsv").read_text() != data.path("dev_qrels").read_text():
        raise PipelineError(f"{output}/dev_qrels.tsv differs from the pipeline's dev split {data.path('dev_qrels')}")
    _drop_checkpoints(output, config.keep_checkpoints)
    return {"model": "model", "resumed": resumed, "global_step": step}


def run_prepare(context: Context) -> dict:
    from dupmae.data.prepare import prepare_corpus

    env = context.env
    settings = env.config.prepare
    manifest = prepare_corpus([str(env.collection.corpus)], str(env.model_path), str(context.folder / "data"),
                              max_length=settings.max_length, strategy=settings.strategy,
                              num_proc=settings.num_proc, min_tokens=settings.min_tokens, overwrite=True)
    return {"data": "data", "counts": manifest["counts"]}


def run_pretrain(context: Context) -> dict:
    """`dupmae pretrain` (resuming its last checkpoint), then `dupmae export` and `dupmae plot`."""
    from dupmae.evaluation.plots import plot_training_log, read_training_log, summarize
    from dupmae.training.export import export_encoder
    from dupmae.training.pretrain import parse_arguments, pretrain

    env = context.env
    training = context.folder / "train"
    settings_file = _write_yaml(context.folder / "pretrain.yaml", {**env.config.pretrain, "seed": env.config.seed})
    argv = ["--config", str(settings_file), "--model", str(env.model_path),
            "--data", str(context.inputs["prepare"].path("data")), "--output", str(training)]

    def train(resume: bool) -> int:
        return pretrain(*parse_arguments(argv + (["--resume"] if resume else []))).state.global_step

    step, resumed = _train_once(context, "pretrain", training, train)
    export_encoder(training, context.folder / "encoder", overwrite=True)
    outputs = {"training": "train", "encoder": "encoder", "log": "train/train_log.jsonl", "plot": None,
               "resumed": resumed, "global_step": step, "loss_terms": {}}
    try:
        records = read_training_log(training)
        outputs["loss_terms"] = {name: list(values) for name, values in summarize(records).items()}
        if records:
            plot_training_log(training, context.folder / "loss_curves.png",
                              f"DupMAE continued pre-training of {env.model_label}")
            outputs["plot"] = "loss_curves.png"
    except ImportError as error:  # matplotlib is optional
        logger.warning("no loss plot: %s", error)
    _drop_checkpoints(training, env.config.keep_checkpoints)
    return outputs


def run_eval(context: Context, model_stage: str) -> dict:
    """`dupmae encode` (resumable parts), then `dupmae search` for each split."""
    from dupmae.data.beir import load_qrels, load_queries, searchable_queries
    from dupmae.modeling.retriever import Retriever
    from dupmae.retrieval.encode import encode_corpus
    from dupmae.retrieval.search import search_index

    env, settings = context.env, context.env.config.encode
    model = context.inputs[model_stage].path("model")
    index = context.folder / "index"
    encode_corpus(str(model), str(env.collection.corpus), index, (0, 1), part_size=settings.part_size,
                  batch_size=settings.batch_size, bf16=settings.bf16)
    retriever = Retriever.from_pretrained(model, batch_size=settings.batch_size, bf16=settings.bf16)
    queries = load_queries(str(env.collection.queries))
    results = {split: search_index(retriever, index, searchable_queries(queries, load_qrels(str(qrels)), str(qrels)),
                                   env.config.top_k)
               for split, qrels in _splits(context)}
    return {"index": "index", **_write_runs(context, results)}


def fusion_options(config: PipelineConfig) -> dict:
    """The `dupmae.retrieval.fusion.fuse` keyword arguments of the `hybrid` section (depth null = top_k)."""
    return {"method": config.hybrid.method, "depth": config.hybrid.depth or config.top_k, "rrf_k": config.hybrid.rrf_k}


def run_hybrid(context: Context, neural_stage: str) -> dict:
    """`dupmae fuse` of a neural system's runs with BM25's; the weight is set or chosen on the dev split."""
    from dupmae.data.beir import load_qrels
    from dupmae.retrieval.fusion import choose_weight, fuse
    from dupmae.retrieval.trec import ranked, read_run

    config = context.env.config
    options = fusion_options(config)
    neural, bm25 = context.inputs[neural_stage], context.inputs["bm25"]
    splits = dict(_splits(context))
    runs = {split: (read_run(str(neural.path_of("runs", split))), read_run(str(bm25.path_of("runs", split))))
            for split in splits}
    weight, by_weight = config.hybrid.weight, {}
    if weight is None:  # the config check makes sure a dev split exists
        weight, by_weight = choose_weight(*runs["dev"], load_qrels(str(splits["dev"])), config.primary_metric,
                                          **options)
    results = {}
    for split, (first, second) in runs.items():
        fused = fuse(first, second, weight, **options)
        results[split] = {query_id: ranked(hits)[:config.top_k] for query_id, hits in fused.items()}
    return {**_write_runs(context, results), "weight": weight, "chosen_on": "dev" if by_weight else "config",
            "method": options["method"], "dev_by_weight": {str(w): value for w, value in by_weight.items()}}
