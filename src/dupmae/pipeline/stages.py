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

(R: each fine-tuning representation of the config, e.g. cls.) Rounds 2 and 3 and the cross-encoder
teacher (`dupmae.pipeline.refinement`) hang off these when asked for:

    eval-F ── mine-r2-F ── F-r2 ── eval-F-r2                                  [ft-r2-R, dupmae-ft-r2-R]
    mine ── teacher ─┬─ rerank (with bm25)                                     [rerank]
                     └─ teacher-scores-N ── F-distill ── eval-F-distill        [ft-distill-R, ...]

(F: a round-1 fine-tuning stage; N: its round-2 negatives, or `mine`.) With `hybrid.enabled` and BM25
among the systems, every neural system S also gets a hybrid: bm25 + eval-S ── hybrid-S  [S+bm25].
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from dupmae.pipeline import refinement
from dupmae.pipeline.config import NOT_HASHED, PipelineConfig
from dupmae.pipeline.context import (  # noqa: F401 (Finished: imported from here by run.py)
    Context,
    Environment,
    Finished,
    PipelineError,
    context_splits,
    drop_checkpoints,
    train_once,
    write_qrels,
    write_runs,
    write_yaml,
)

logger = logging.getLogger(__name__)


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
    kind: str  # "baseline", "dupmae", or "reference" (BM25 + rerank: compared, never the best baseline)
    eval_stage: str
    representation: str | None = None
    without_dupmae: str | None = None  # for dupmae systems: the same fine-tuning from the starting model
    previous: str | None = None  # for round 2 / distilled systems: the system of the stage before (same start)


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

    systems = set(config.systems)
    teacher_wanted = bool({"rerank", "finetune-distill", "dupmae-distill"} & systems)
    if {"finetune", "dupmae"} & systems or (teacher_wanted and not config.teacher.path):
        depth = int(config.finetune.get("negative_depth", 200))
        add(Stage("mine", "BM25 hard negatives for the train queries",
                  {"k1": config.bm25.k1, "b": config.bm25.b, "depth": depth}, ("data",), run_mine))
    if teacher_wanted:
        add(teacher_stage(env))

    def finetune_stages(family: str, start: str | None, start_label: str, label: str, kind: str) -> None:
        """Stage 1 of every representation, then (when asked for) its stage 2 and stage 3, and their systems."""
        prefix, short = ("finetune", "ft") if family == "finetune" else ("dupmae-finetune", "dupmae-ft")
        base = {"start": start or env.model_fingerprint, "finetune": config.finetune, "seed": config.seed,
                "train_split": config.train_split, "dev_fraction": config.dev_fraction}
        deps = ("data",) + ((start,) if start else ())
        for name in config.representations:
            settings = {**base, "representation": config.representation[name]}
            stage1 = f"{prefix}-{name}"

            def finetune(stage: str, title: str, extra: dict, negatives: str, scores: str | None = None) -> None:
                add(Stage(stage, f"fine-tune {start_label} ({name} representation{title})", {**settings, **extra},
                          deps + (negatives,) + ((scores,) if scores else ()),
                          partial(run_finetune, representation=name, negatives_stage=negatives, scores_stage=scores)))
                add(Stage(f"eval-{stage}", f"fine-tuned {start_label} ({name}{title}): encode and search",
                          eval_settings, ("data", stage), partial(run_eval, model_stage=stage)))

            def system(suffix: str, title: str, previous: str | None) -> None:
                without = f"ft{suffix}-{name}" if family == "dupmae" and f"finetune{suffix}" in systems else None
                result.systems.append(System(f"{short}{suffix}-{name}", f"{label} ({name}{title})", kind,
                                             f"eval-{prefix}{suffix}-{name}", representation=name,
                                             without_dupmae=without, previous=previous))

            finetune(stage1, "", {}, "mine")
            system("", "", None)
            mined = f"mine-r2-{stage1}"
            round2_needed = f"{family}-r2" in systems or (f"{family}-distill" in systems
                                                          and config.distill.negatives == "round2")
            if round2_needed:
                add(Stage(mined, f"round 2: negatives mined by the fine-tuned {start_label} ({name})",
                          {"depth": config.round2.depth, "encode": vars(config.encode)},
                          ("data", stage1, f"eval-{stage1}"),
                          partial(refinement.run_mine_round2, model_stage=stage1, eval_stage=f"eval-{stage1}")))
            if f"{family}-r2" in systems:
                finetune(f"{prefix}-r2-{name}", ", round 2", {"round": 2}, mined)
                system("-r2", ", round 2", f"{short}-{name}")
            if f"{family}-distill" in systems:
                negatives = mined if config.distill.negatives == "round2" else "mine"
                scores = f"teacher-scores-{negatives}"
                if scores not in {stage.name for stage in result.stages}:
                    add(Stage(scores, f"teacher: score the train queries' pairs ({negatives} negatives)",
                              {"depth": config.distill.depth, "max_length": config.teacher.max_length,
                               "bf16": config.teacher.bf16, "batch_size": config.teacher.batch_size,
                               "train_split": config.train_split, "dev_fraction": config.dev_fraction},
                              ("teacher", negatives), partial(refinement.run_teacher_scores, negatives_stage=negatives)))
                round2 = config.distill.negatives == "round2"
                title = ", round 2 + distilled" if round2 else ", distilled"
                distill = {"weight": config.distill.weight, "temperature": config.distill.temperature}
                if config.distill.interpolate_with_start is not None:  # hashed only when set: caches stay valid
                    distill["interpolate_with_start"] = config.distill.interpolate_with_start
                finetune(f"{prefix}-distill-{name}", title, {"round": 2 if round2 else 1, "distill": distill},
                         negatives, scores)
                previous = f"{short}-r2-{name}" if round2 and f"{family}-r2" in systems else f"{short}-{name}"
                system("-distill", title, previous)

    if "finetune" in systems:
        finetune_stages("finetune", None, env.model_label, f"{env.model_label} fine-tuned", "baseline")

    if "dupmae" in systems:
        add(Stage("prepare", "DupMAE: tokenize the corpus",
                  {"tokenizer": env.model_fingerprint, "prepare": vars(config.prepare)}, ("data",), run_prepare))
        # The ablation objectives (mlm, retromae, bow_only) run through the same stages; name them.
        objective = str(config.pretrain.get("objective", "dupmae"))
        method = "DupMAE" if objective == "dupmae" else f"objective {objective}"
        add(Stage("pretrain", f"{method}: continued pre-training of {env.model_label} on the corpus, export",
                  {"model": env.model_fingerprint, "pretrain": config.pretrain, "seed": config.seed},
                  ("prepare",), run_pretrain))
        finetune_stages("dupmae", "pretrain", f"the {method} export", f"{method} + fine-tuned", "dupmae")

    if "rerank" in systems:
        add(Stage("rerank", f"BM25 + rerank: the teacher re-orders BM25's top {config.rerank.top_k}",
                  {"top_k": config.rerank.top_k, "max_length": config.teacher.max_length, "bf16": config.teacher.bf16,
                   "batch_size": config.teacher.batch_size}, ("data", "bm25", "teacher"), refinement.run_rerank))
        # a re-ranker, not a retriever: shown and tested against the best baseline, never chosen as it
        result.systems.append(System("rerank", f"BM25 + rerank (cross-encoder, top {config.rerank.top_k})",
                                     "reference", "rerank"))

    if config.hybrids_wanted():
        settings = {**fusion_options(config), "weight": config.hybrid.weight, "metric": config.primary_metric,
                    "top_k": config.top_k}
        for system in [s for s in result.systems if s.id != "bm25" and s.kind != "reference"]:
            add(Stage(f"hybrid-{system.id}", f"{system.label} + BM25: fuse the runs", settings,
                      ("data", "bm25", system.eval_stage), partial(run_hybrid, neural_stage=system.eval_stage)))
            result.systems.append(System(
                f"{system.id}+bm25", f"{system.label} + BM25", system.kind, f"hybrid-{system.id}",
                representation=system.representation,
                without_dupmae=f"{system.without_dupmae}+bm25" if system.without_dupmae else None,
                previous=f"{system.previous}+bm25" if system.previous else None))
    return result


# -- helpers ----------------------------------------------------------------------------------------



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
               for split, qrels in context_splits(context)}
    return write_runs(context, results)


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


def teacher_stage(env: Environment) -> Stage:
    """The cross-encoder teacher: a given folder (fingerprinted) or `dupmae train-reranker` on BM25 negatives."""
    from dupmae.pipeline.data import folder_fingerprint

    config, teacher = env.config, env.config.teacher
    if teacher.path:
        folder = Path(teacher.path).absolute()
        if not (folder / "config.json").is_file():
            raise PipelineError(f"teacher.path: {folder} is not a local cross-encoder folder (no config.json)")
        return Stage("teacher", f"teacher: the cross-encoder {folder.name}",
                     {"path": folder_fingerprint(folder), "max_length": teacher.max_length}, (), refinement.run_teacher)
    start = refinement.teacher_start(env)
    label = start.name if teacher.model else env.model_label
    return Stage("teacher", f"teacher: train a cross-encoder from {label}",
                 {**vars(teacher), "model": folder_fingerprint(start), "seed": config.seed,
                  "train_split": config.train_split, "dev_fraction": config.dev_fraction},
                 ("mine",), refinement.run_teacher)


def run_finetune(context: Context, representation: str, negatives_stage: str = "mine",
                 scores_stage: str | None = None) -> dict:
    """`dupmae finetune` from the starting model or the DupMAE export, resuming its last checkpoint.

    `negatives_stage`: `mine` (BM25, round 1) or a round-2 `mine-r2-*` stage; `scores_stage`: the
    teacher's scores (round 3: `--teacher-scores` with the `distill` weight and temperature)."""
    from dupmae.training.finetune import finetune, parse_arguments

    env, config = context.env, context.env.config
    start = context.inputs["pretrain"].path("encoder") if "pretrain" in context.inputs else env.model_path
    output = context.folder / "model"
    settings = {**config.finetune, **config.representation[representation], "split": config.train_split,
                "dev_fraction": config.dev_fraction, "seed": config.seed}
    if scores_stage:
        settings.update(teacher_scores=str(context.inputs[scores_stage].path("scores")),
                        distill_weight=config.distill.weight, distill_temperature=config.distill.temperature)
        if config.distill.interpolate_with_start is not None:
            settings["interpolate_with_start"] = config.distill.interpolate_with_start
    settings_file = write_yaml(context.folder / "finetune.yaml", settings)
    argv = ["--config", str(settings_file), "--model", str(start), "--data", str(env.collection.folder),
            "--negatives", str(context.inputs[negatives_stage].path("negatives")), "--output", str(output)]

    def train(resume: bool) -> int:
        return finetune(*parse_arguments(argv + (["--resume"] if resume else []))).state.global_step

    step, resumed = train_once(context, "finetune", output, train)
    data = context.inputs["data"]
    if data.outputs.get("dev_qrels") and (output / "dev_qrels.tsv").read_text() != data.path("dev_qrels").read_text():
        raise PipelineError(f"{output}/dev_qrels.tsv differs from the pipeline's dev split {data.path('dev_qrels')}")
    drop_checkpoints(output, config.keep_checkpoints)
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
    settings_file = write_yaml(context.folder / "pretrain.yaml", {**env.config.pretrain, "seed": env.config.seed})
    argv = ["--config", str(settings_file), "--model", str(env.model_path),
            "--data", str(context.inputs["prepare"].path("data")), "--output", str(training)]

    def train(resume: bool) -> int:
        return pretrain(*parse_arguments(argv + (["--resume"] if resume else []))).state.global_step

    step, resumed = train_once(context, "pretrain", training, train)
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
    drop_checkpoints(training, env.config.keep_checkpoints)
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
               for split, qrels in context_splits(context)}
    return {"index": "index", **write_runs(context, results)}


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
    splits = dict(context_splits(context))
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
    return {**write_runs(context, results), "weight": weight, "chosen_on": "dev" if by_weight else "config",
            "method": options["method"], "dev_by_weight": {str(w): value for w, value in by_weight.items()}}
