"""`dupmae pretrain`: DupMAE (or RetroMAE / BoW-only / MLM) pre-training with the HF Trainer.

Settings come from three dataclasses — `RunArguments` (what to train on), `PretrainingOptions`
(the objective, DUPMAE.md §1), `Accelerations` (the speed paths, dupmae.platform) and transformers' `TrainingArguments` (batch size, lr, bf16 (`auto` by default),
save steps, seed, ...) — given as flags, or in a YAML/JSON file (`--config`) that flags override.
The same command runs under `torchrun --nproc_per_node N` with DDP.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
    TrainingArguments,
    set_seed,
)

from dupmae.data.integrity import read_json_file
from dupmae.config import PretrainingOptions, parse_with_config_file
from dupmae.data.collator import PretrainingCollator
from dupmae.modeling.head_init import MISSING_HEAD_INITS, load_masked_lm, override_config
from dupmae.modeling.pretraining import DupMAEForPretraining
from dupmae.platform import Accelerations, prepare
from dupmae.platform.accelerations import resolve_vocabulary_kernels
from dupmae.platform.precision import training_device
from dupmae.training.distributed import accelerator_available, check_world_size, shutdown
from dupmae.training.trainer import (
    CheckpointMarkerCallback,
    CollatorEpochCallback,
    FreezeEncoderCallback,
    JsonlLogCallback,
    PretrainingTrainer,
    checkpoint_to_resume,
    train_or_finish,
)

logger = logging.getLogger(__name__)
RUN_CONFIG_FILE = "dupmae_run_config.json"

# Our defaults for TrainingArguments fields (the released code's recipe where it applies);
# a config file or a flag overrides them.
TRAINING_DEFAULTS = {
    "learning_rate": 1e-4,
    "weight_decay": 0.01,
    "warmup_steps": 0.1,  # a float < 1 is a ratio of the total steps
    "per_device_train_batch_size": 32,
    "logging_steps": 10,
    "save_steps": 500,
    "save_total_limit": 3,
    "report_to": "tensorboard",
    "remove_unused_columns": False,  # the collator needs word_ids and example_id
    "average_tokens_across_devices": False,  # we normalise across devices ourselves (see trainer.py)
    "ddp_find_unused_parameters": False,
}


@dataclass
class RunArguments:
    """What to pre-train, on what."""

    data: str | None = field(default=None, metadata={"help": "Folder written by `dupmae prepare` (required)."})
    model: str | None = field(
        default=None,
        metadata={"help": "Local Hugging Face masked-LM checkpoint or encoder folder to start from. An encoder "
                          "without an MLM head gets one tied to its word embeddings."},
    )
    model_config: str | None = field(
        default=None, metadata={"help": "config.json of a model to train from scratch (needs --tokenizer)."}
    )
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer folder (default: --model)."})
    resume: bool = field(
        default=False, metadata={"help": "Continue from the last checkpoint in --output (weights, decoder, "
                                         "optimizer, scheduler, RNG and data position)."}
    )
    pad_to_multiple_of: int = field(default=8, metadata={"help": "Pad batch length to a multiple of this."})
    missing_head_init: str = field(default="identity", metadata={
        "help": "How to start an MLM head transform --model lacks (e.g. all-MiniLM-L6-v2): identity (logits = "
                "similarity to the word embeddings) or random (the library default).",
        "choices": list(MISSING_HEAD_INITS)})
    attention_dropout: float | None = field(default=None, metadata={
        "help": "Override the encoder's attention-probability dropout (BERT: 0.1; the decoder layer follows). "
                "0 lets PyTorch run its fused flash attention on the CPU too, whose memory grows with L "
                "instead of L^2 (with dropout the CPU materialises [B, heads, L, L] probabilities and masks; "
                "GPUs run flash attention with dropout). Default: the model's own setting."})
    freeze_encoder_steps: int = field(default=0, metadata={
        "help": "Train only the parts the encoder does not have yet — the MLM head's transform and bias and the "
                "decoder layer — for the first N steps, keeping the encoder (and the word embeddings, tied to "
                "the head's projection) unchanged. For starting models without a trained MLM head, such as "
                "sentence encoders: their first gradients mostly fix the head, at the encoder's expense."})

    def __post_init__(self) -> None:
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"--pad-to-multiple-of must be >= 1, got {self.pad_to_multiple_of}")
        if self.freeze_encoder_steps < 0:
            raise ValueError(f"--freeze-encoder-steps must be >= 0, got {self.freeze_encoder_steps}")
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError(f"--attention-dropout must be in [0, 1), got {self.attention_dropout}")
        if not self.data:
            raise ValueError("--data is required: a folder written by `dupmae prepare`")
        if bool(self.model) == bool(self.model_config):
            raise ValueError("give exactly one of --model (start from a checkpoint) or --model-config (from scratch)")
        if self.model_config and not self.tokenizer:
            raise ValueError("--model-config needs --tokenizer")
        for name in ("data", "model", "model_config", "tokenizer"):
            value = getattr(self, name)
            if value and not Path(value).exists():
                raise FileNotFoundError(f"--{name.replace('_', '-')}: {value} does not exist")


def parse_arguments(argv: list[str]) -> tuple[RunArguments, PretrainingOptions, Accelerations, TrainingArguments]:
    """Flags > config file > our defaults > library defaults.

    An unknown flag or an invalid choice exits through argparse (usage + message, status 2);
    an inconsistent setting raises ValueError.
    """
    accelerator = accelerator_available()
    # Data-loader workers keep a GPU fed; on a CPU they would take cores from the model (the collator
    # costs milliseconds per batch), so none there.
    defaults = {**TRAINING_DEFAULTS, "use_cpu": not accelerator, "dataloader_num_workers": 2 if accelerator else 0}
    return parse_with_config_file((RunArguments, PretrainingOptions, Accelerations, TrainingArguments), argv,
                                  defaults, "dupmae pretrain")


def load_encoder(run_args: RunArguments, tokenizer):
    overrides = {} if run_args.attention_dropout is None else {"attention_probs_dropout_prob": run_args.attention_dropout}
    if run_args.model:
        encoder = load_masked_lm(run_args.model, run_args.missing_head_init, overrides)
    else:
        values = read_json_file(run_args.model_config, "model config")
        if "model_type" not in values:
            raise ValueError(f"{run_args.model_config}: a config needs 'model_type' (e.g. \"bert\")")
        config = override_config(AutoConfig.for_model(**values), overrides, run_args.model_config)
        encoder = AutoModelForMaskedLM.from_config(config)
    if encoder.config.vocab_size < len(tokenizer):
        raise ValueError(f"model vocab_size {encoder.config.vocab_size} < tokenizer size {len(tokenizer)}")
    return encoder


def check_data(manifest: dict, tokenizer, encoder) -> None:
    from dupmae.data.prepare import vocab_fingerprint

    expected = manifest.get("tokenizer", {}).get("vocab_sha256")
    if expected and expected != vocab_fingerprint(tokenizer):
        raise ValueError(
            "the data was tokenized with a different vocabulary than this model's tokenizer "
            f"({manifest['tokenizer'].get('path')}); run `dupmae prepare` with --tokenizer matching the model"
        )
    max_positions = getattr(encoder.config, "max_position_embeddings", None)
    if max_positions and manifest.get("max_length", 0) > max_positions:
        raise ValueError(f"data max_length {manifest['max_length']} exceeds the model's {max_positions} positions")


def pretrain(run_args: RunArguments, options: PretrainingOptions, accelerations: Accelerations,
             training_args: TrainingArguments, callbacks=()):
    """Run pre-training; returns the trainer (its state holds the log history)."""
    from dupmae.data.prepare import load_prepared

    output_dir = Path(training_args.output_dir)
    if training_args.dataloader_persistent_workers and training_args.dataloader_num_workers > 0:
        raise ValueError("dataloader_persistent_workers would keep the collator of the first epoch in the workers, "
                         "so every epoch would repeat its masks; leave it false (workers restart each epoch)")
    device = training_device(training_args.use_cpu)
    resolve_vocabulary_kernels(accelerations, device)  # a kernel this device lacks fails here, before anything moves
    checkpoint = checkpoint_to_resume(output_dir, run_args.resume)

    set_seed(training_args.seed)  # before building the model: the decoder and a fresh head are initialised here
    tokenizer = AutoTokenizer.from_pretrained(run_args.tokenizer or run_args.model)
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs a mask token and a pad token for masked-LM pre-training")
    dataset, manifest = load_prepared(run_args.data)
    encoder = load_encoder(run_args, tokenizer)
    check_data(manifest, tokenizer, encoder)
    model = DupMAEForPretraining(encoder, options)
    prepare(model, device, accelerations, training=True, tf32=training_args.tf32)

    collator = PretrainingCollator(
        options, tokenizer.pad_token_id, tokenizer.mask_token_id, vocab_size=len(tokenizer),
        seed=training_args.seed, pad_to_multiple_of=run_args.pad_to_multiple_of,
    )
    trainer = PretrainingTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[JsonlLogCallback(), CollatorEpochCallback(collator), CheckpointMarkerCallback(), *callbacks],
    )
    if run_args.freeze_encoder_steps:
        trainer.add_callback(FreezeEncoderCallback(encoder.base_model.parameters(), run_args.freeze_encoder_steps))
    check_world_size(training_args)
    global_batch = (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                    * training_args.world_size)
    logger.info(
        "objective=%s sequences=%d global batch=%d (per device %d x accumulation %d x %d processes) max_steps=%s",
        options.objective, len(dataset), global_batch, training_args.per_device_train_batch_size,
        training_args.gradient_accumulation_steps, training_args.world_size, training_args.max_steps,
    )
    if training_args.should_save:
        output_dir.mkdir(parents=True, exist_ok=True)
        resolved = {"run": dataclasses.asdict(run_args), "pretraining": options.to_dict(),
                    "accelerations": dataclasses.asdict(accelerations),
                    "training": json.loads(training_args.to_json_string()), "data_manifest": manifest}
        (output_dir / RUN_CONFIG_FILE).write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n")
    train_or_finish(trainer, checkpoint)
    trainer.save_model(str(output_dir))
    return trainer


def main(argv: list[str]) -> int:
    try:
        trainer = pretrain(*parse_arguments(argv))
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"dupmae pretrain: error: {error}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    if trainer.args.should_save:
        last = [r for r in trainer.state.log_history if "loss_encoder_mlm" in r]
        if last:
            terms = {k: v for k, v in last[-1].items() if k.startswith(("loss_", "acc_"))}
            print(f"final step {trainer.state.global_step}: " + "  ".join(f"{k}={v:.4f}" for k, v in terms.items()))
        print(f"saved pre-training state to {trainer.args.output_dir}; export the encoder with "
              f"`dupmae export {trainer.args.output_dir} OUT`")
    return 0
