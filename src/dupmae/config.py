"""Dataclass configurations with help text and validation.

`PretrainingOptions` holds every choice of DUPMAE.md §1, with the stated
defaults (the released code's where paper and code differ). It is saved with
every checkpoint (`dupmae_pretraining.json`) so a resumed or exported run can
never disagree with the one that produced it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OBJECTIVES = ("dupmae", "retromae", "bow_only", "mlm")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a size or a count), else a usage error (exit 2)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _choice(default: str, choices: tuple[str, ...], help_text: str):
    return field(default=default, metadata={"help": help_text, "choices": list(choices)})


def _option(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class PretrainingOptions:
    """The DupMAE objective: which losses, how inputs are masked, how the BoW target is pooled and weighted."""

    objective: str = _choice(
        "dupmae", OBJECTIVES,
        "dupmae = encoder MLM + [CLS] decoding + BoW; retromae = no BoW; bow_only = no decoder; mlm = plain MLM.",
    )
    encoder_mask_ratio: float = _option(0.30, "Share of ordinary tokens masked (whole words) in the encoder input.")
    decoder_mask_ratio: float = _option(0.50, "Share of ordinary tokens each decoder row may not see (whole words).")
    mask_token_prob: float = _option(0.8, "Of the encoder-masked tokens: share replaced by the mask token (BERT 80/10/10).")
    random_token_prob: float = _option(0.1, "Of the encoder-masked tokens: share replaced by a random token; the rest stay.")
    decoder_mask_pool_size: int = _option(
        256, "Decoder masks drawn per sequence; each row picks one at random (released code: min(L, 256)).",
    )
    decoder_query: str = _choice(
        "embedding", ("embedding", "plain"),
        "Decoder query stream: 'embedding' = Emb(inputs_embeds=h) = LayerNorm(h + p_i + type_0) (released code); "
        "'plain' = h + p_i (paper).",
    )
    bow_pool_exclude_special: bool = _option(
        False, "Exclude special tokens ([SEP], inner separators) from the BoW max-pool (released code: included).",
    )
    bow_pool_exclude_masked: bool = _option(
        False, "Exclude encoder-masked positions from the BoW max-pool (paper: excluded; released code: included).",
    )
    bow_loss_reduction: str = _choice(
        "per_token", ("per_token", "sum"),
        "BoW weight per distinct target token: 'per_token' = 1/n ordinary tokens (released code); 'sum' = 1 (paper).",
    )
    bow_loss_weight: float = _option(0.1, "Multiplier of the BoW loss in the total (released code 0.1; paper 1).")
    lean_losses: bool = _option(
        True, "Compute the BoW max-pool and the MLM/decoder cross-entropies a chunk of vocabulary logits at a "
        "time, gradient routed to the arg-max position (same values, never the [B, L, V] logits); false = the "
        "naive full-logits path, for comparison.",
    )
    loss_chunk_size: int = _option(
        1024, "Rows of [rows, V] vocabulary logits computed at a time by the lean losses: the BoW max-pool takes "
        "loss_chunk_size // batch positions of every sequence per step, the cross-entropies loss_chunk_size tokens.",
    )

    def __post_init__(self) -> None:
        for name in ("encoder_mask_ratio", "decoder_mask_ratio", "mask_token_prob", "random_token_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.mask_token_prob + self.random_token_prob > 1.0:
            raise ValueError("mask_token_prob + random_token_prob must not exceed 1")
        if not 0.0 < self.encoder_mask_ratio:
            raise ValueError("encoder_mask_ratio must be > 0: the encoder MLM loss needs masked tokens")
        if self.decoder_mask_pool_size < 1:
            raise ValueError("decoder_mask_pool_size must be >= 1")
        if self.loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be >= 1, got {self.loss_chunk_size}")
        if self.bow_loss_weight < 0:
            raise ValueError("bow_loss_weight must be >= 0")
        if not isinstance(self.lean_losses, bool):
            raise ValueError(f"lean_losses must be true or false, got {self.lean_losses!r}")
        if self.loss_chunk_size < 1:
            raise ValueError("loss_chunk_size must be >= 1")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")

    @property
    def uses_decoder(self) -> bool:
        return self.objective in ("dupmae", "retromae")

    @property
    def uses_bow(self) -> bool:
        return self.objective in ("dupmae", "bow_only")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainingOptions":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown pre-training option(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> "PretrainingOptions":
        from dupmae.data.integrity import read_json_file

        return cls.from_dict(read_json_file(path, "pre-training options"))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or JSON config file into a flat dict of setting name -> value."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of setting -> value")
    return values


def parse_with_config_file(kinds: tuple, argv: list[str], defaults: dict[str, Any], prog: str) -> tuple:
    """Parse `argv` into one instance of each dataclass in `kinds` (the last one `TrainingArguments`).

    Precedence: flags > `--config FILE` (YAML/JSON) > `defaults` > the dataclasses' own defaults.
    `--output` is accepted for `--output_dir`. An unknown key in the file is an error (a setting
    that silently reaches nothing is the bug this project exists to avoid). `bf16` also takes
    `auto` (`dupmae.platform.precision`): bf16 where the training device multiplies bf16 natively.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(kinds, prog=prog)
    parser.add_argument("--config", default=None, help="YAML or JSON file of settings; flags override it.")
    argv = ["--output_dir" if arg == "--output" else arg for arg in argv]
    argv, bf16_flag = _take_bf16_flag(argv)
    defaults = dict(defaults)
    bf16_setting = defaults.pop("bf16", "auto")
    parser.set_defaults(**defaults)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        values = load_config_file(known.config)
        names = {f.name for kind in kinds for f in dataclasses.fields(kind)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{known.config}: unknown setting(s) {unknown}")
        values = dict(values)
        bf16_setting = values.pop("bf16", bf16_setting)
        parser.set_defaults(**values)
        known, _ = parser.parse_known_args(argv)
    if bf16_flag is not None:
        bf16_setting = bf16_flag
    parser.set_defaults(bf16=_resolve_training_bf16(bf16_setting, known.use_cpu))
    *parsed, _config_namespace = parser.parse_args_into_dataclasses(argv)
    if not parsed[-1].output_dir:
        raise ValueError("--output is required")
    check_training_arguments(parsed[-1])
    return tuple(parsed)


def check_training_arguments(training) -> None:
    """Refuse step counts and sizes that transformers would silently reinterpret (e.g. any
    `max_steps <= 0` means "train num_train_epochs", so `--max-steps -5` trained 3 epochs)."""
    problems = []
    if training.max_steps != -1 and training.max_steps < 1:
        problems.append(f"--max-steps must be a positive number of steps, or -1 to train --num-train-epochs "
                        f"(got {training.max_steps})")
    if training.max_steps == -1 and not training.num_train_epochs > 0:
        problems.append(f"--num-train-epochs must be > 0 (got {training.num_train_epochs})")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(training, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(training, name)})")
    for name in ("save_steps", "logging_steps", "warmup_steps", "learning_rate", "weight_decay",
                 "dataloader_num_workers"):
        value = getattr(training, name, 0)
        if value is not None and value < 0:
            problems.append(f"--{name.replace('_', '-')} must be >= 0 (got {value})")
    if training.save_total_limit is not None and training.save_total_limit < 1:
        problems.append(f"--save-total-limit must be >= 1 (got {training.save_total_limit})")
    if problems:
        raise ValueError("; ".join(problems))


def _take_bf16_flag(argv: list[str]) -> tuple[list[str], str | None]:
    """`argv` without its `--bf16 [VALUE]` / `--bf16=VALUE`, and that value ('true' for a bare flag;
    None when absent). HfArgumentParser's boolean type knows no `auto`, so bf16 is resolved apart."""
    rest, value, index = [], None, 0
    while index < len(argv):
        arg = argv[index]
        if arg.startswith("--bf16="):
            value = arg.split("=", 1)[1]
        elif arg == "--bf16":
            following = argv[index + 1] if index + 1 < len(argv) else None
            if following is not None and not following.startswith("--"):
                value, index = following, index + 1
            else:
                value = "true"
        else:
            rest.append(arg)
        index += 1
    return rest, value


def _resolve_training_bf16(setting, use_cpu: bool) -> bool:
    from dupmae.platform.precision import resolve_bf16, training_device

    return resolve_bf16(setting, training_device(use_cpu), "training")
