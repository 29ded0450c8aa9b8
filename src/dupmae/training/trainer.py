"""The HF `Trainer`, taught the DupMAE losses through public hooks only.

- `compute_loss`: normalises each loss term by its count summed over all processes, so the DDP
  gradient equals a single process's gradient on the whole global batch.
- `log`: adds every loss term, the MLM accuracies and tokens/s to the logs (console,
  TensorBoard and `train_log.jsonl`).
- `save_model`: writes the whole pre-training state (encoder, head, decoder, options) in safetensors.
- `FreezeEncoderCallback`: `dupmae pretrain --freeze-encoder-steps N` (train the new parts first).
- `CheckpointMarkerCallback` + `checkpoint_to_resume`: a checkpoint is marked complete last (file
  names and sizes), and `--resume` takes the newest one that is complete and whose safetensors
  headers read; a damaged or unfinished newer one is named in a warning and moved aside.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from dupmae.data.integrity import DamagedFileError, read_json_file, verify_safetensors, write_json_atomically
from dupmae.modeling.pretraining import TERMS, combine_losses, local_counts
from dupmae.modeling.persistence import load_weights
from dupmae.training.distributed import all_reduce_sum, world_size

logger = logging.getLogger(__name__)
CHECKPOINT_MARKER = "dupmae_checkpoint.json"  # written last: the checkpoint's files, names and sizes
DAMAGED_FOLDER = "damaged"  # where --resume moves checkpoints it cannot use (never deleted)
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

LOG_FILE = "train_log.jsonl"


class PretrainingTrainer(Trainer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._logged_totals: dict[str, torch.Tensor] = {}
        self._logged_batches = 0
        self._tokens_since_log: torch.Tensor | int = 0  # a device tensor between logs: no host sync per step
        self._last_log_time: float | None = None  # set by the first batch, so start-up is not counted

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self._last_log_time is None:
            self._last_log_time = time.perf_counter()
        output = model(**inputs)
        counts = local_counts(output)
        if world_size() > 1:
            summed = all_reduce_sum(torch.stack([counts[name] for name in TERMS]))
            counts = dict(zip(TERMS, summed))
        options = self.accelerator.unwrap_model(model).options
        loss, logged = combine_losses(output, options, counts, scale=float(world_size()))
        if model.training:
            for name, value in logged.items():
                self._logged_totals[name] = self._logged_totals.get(name, 0.0) + value
            self._logged_batches += 1
            self._tokens_since_log = self._tokens_since_log + inputs["attention_mask"].sum()
        return (loss, output) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._logged_batches:
            names = sorted(self._logged_totals)
            values = torch.stack([torch.as_tensor(self._logged_totals[n], dtype=torch.float32).cpu() for n in names])
            # Each process holds sum/global_count * world_size; the mean over processes is the global value.
            values = all_reduce_sum(values.to(self.args.device)).cpu() / (self._logged_batches * world_size())
            tokens = int(all_reduce_sum(torch.as_tensor(self._tokens_since_log, device=self.args.device)))
            elapsed = time.perf_counter() - (self._last_log_time or time.perf_counter())
            logs.update({n: round(float(v), 5) for n, v in zip(names, values)})
            logs["tokens_per_second"] = round(tokens / max(elapsed, 1e-9), 1)
            self._logged_totals, self._logged_batches, self._tokens_since_log = {}, 0, 0
            self._last_log_time = time.perf_counter()
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)


class JsonlLogCallback(TrainerCallback):
    """Appends every log record (step, epoch, loss terms, accuracies, lr, tokens/s) to `train_log.jsonl`."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with open(Path(args.output_dir) / LOG_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class CollatorEpochCallback(TrainerCallback):
    """Tells the collator which epoch is starting, so masks differ between epochs but not between runs."""

    def __init__(self, collator) -> None:
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.collator.epoch = int(state.epoch or 0)


class FreezeEncoderCallback(TrainerCallback):
    """Keep `parameters` (the encoder body) unchanged for the first `steps` optimizer steps.

    For starting models without a trained MLM head (sentence encoders such as all-MiniLM-L6-v2): the
    first gradients mostly fix the head and the fresh decoder, and would move the encoder to do it.
    While frozen, a hook zeroes these parameters' gradients as they are computed — so gradient
    clipping sees only the trainable parts, and DDP all-reduces zeros — and just before the
    optimizer step they are dropped (`grad = None`), so AdamW neither updates nor decays them nor
    counts a step for them. Decided per step from `state.global_step`, so a resumed run freezes
    exactly the same steps.
    """

    def __init__(self, parameters, steps: int) -> None:
        self.parameters, self.steps = list(parameters), steps
        self.handles: list = []

    def on_step_begin(self, args, state, control, **kwargs):
        frozen = state.global_step < self.steps
        if frozen and not self.handles:
            self.handles = [p.register_hook(torch.zeros_like) for p in self.parameters if p.requires_grad]
        elif not frozen and self.handles:
            self._release()
            logger.info("encoder unfrozen after %d steps", self.steps)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.handles:
            for parameter in self.parameters:
                parameter.grad = None

    def on_train_end(self, args, state, control, **kwargs):
        self._release()

    def _release(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class CheckpointMarkerCallback(TrainerCallback):
    """After the Trainer has written a checkpoint (weights, optimizer, scheduler, RNG, trainer state),
    mark it complete: `dupmae_checkpoint.json` with every file's size, renamed into place last."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.should_save and folder.is_dir():
            files = {path.name: path.stat().st_size for path in sorted(folder.iterdir())
                     if path.is_file() and path.name != CHECKPOINT_MARKER and not path.name.endswith(".tmp")}
            write_json_atomically(folder / CHECKPOINT_MARKER, {"global_step": state.global_step, "files": files})


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete, readable checkpoint; None when it is.

    Complete: marked by `CheckpointMarkerCallback` with every listed file present at its recorded size
    (a checkpoint of an older dupmae, without the marker, is accepted when its trainer state parses),
    every safetensors file whole, and `trainer_state.json` readable."""
    marker = folder / CHECKPOINT_MARKER
    try:
        if marker.is_file():
            for name, size in read_json_file(marker, "checkpoint marker")["files"].items():
                path = folder / name
                if not path.is_file():
                    return f"{name} is missing"
                if path.stat().st_size != size:
                    return f"{name} holds {path.stat().st_size} bytes, {size} when it was written"
        elif not (folder / "trainer_state.json").is_file():
            return "it was never completed (interrupted while being written)"
        for path in sorted(folder.glob("*.safetensors")):
            verify_safetensors(path)
        read_json_file(folder / "trainer_state.json", "trainer state")["global_step"]
    except (DamagedFileError, FileNotFoundError, KeyError, TypeError) as error:
        return str(error)
    return None


def _checkpoints_newest_first(output_dir: Path) -> list[Path]:
    found = [(int(match.group(1)), path) for path in output_dir.iterdir()
             if path.is_dir() and (match := _CHECKPOINT_NAME.match(path.name))]
    return [path for _, path in sorted(found, reverse=True)]


def checkpoint_to_resume(output_dir: str | Path, resume: bool) -> str | None:
    """The checkpoint `--resume` continues from (None without `--resume`): the newest complete one.

    Without `--resume`, an output folder that already holds checkpoints is refused rather than
    mixed into. With it, newer checkpoints that are damaged or unfinished are named in a warning and
    moved to `OUTPUT/damaged/` (so the Trainer rewrites them from scratch), and log records written
    after the chosen checkpoint are dropped, so `train_log.jsonl` reads as one uninterrupted run. When
    no checkpoint is complete (killed while writing the first), training starts again from step 0 (None).
    """
    output_dir = Path(output_dir)
    if not resume:
        if output_dir.is_dir() and any(output_dir.glob("checkpoint-*")):
            raise FileExistsError(f"{output_dir} already holds checkpoints: pass --resume to continue, or a new --output")
        return None
    checkpoints = _checkpoints_newest_first(output_dir) if output_dir.is_dir() else []
    if not checkpoints and (output_dir / DAMAGED_FOLDER).is_dir():
        logger.warning("--resume: %s holds no checkpoint but earlier damaged ones in %s/: training starts again "
                       "from step 0", output_dir, DAMAGED_FOLDER)
        checkpoints = []
    elif not checkpoints:
        raise FileNotFoundError(f"--resume: no checkpoint-* folder in {output_dir}")
    chosen, skipped = None, []
    for checkpoint in checkpoints:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            chosen = checkpoint
            break
        skipped.append((checkpoint, problem))
    for checkpoint, problem in skipped:
        aside = output_dir / DAMAGED_FOLDER / checkpoint.name
        if aside.exists():
            aside = aside.with_name(f"{checkpoint.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        aside.parent.mkdir(exist_ok=True)
        checkpoint.rename(aside)
        logger.warning("--resume: %s is not a complete checkpoint (%s): skipped, and moved to %s; %s",
                       checkpoint, problem, aside, f"resuming from {chosen.name}" if chosen else
                       "no complete checkpoint is left, so training starts again from step 0")
    step = read_json_file(chosen / "trainer_state.json", "trainer state")["global_step"] if chosen else 0
    log_path = output_dir / LOG_FILE
    if log_path.is_file():
        kept = [line for line in log_path.read_text().splitlines() if _complete_record(line, step)]
        log_path.write_text("".join(line + "\n" for line in kept))
    return str(chosen) if chosen else None


def _complete_record(line: str, step: int) -> bool:
    """A log line to keep on resuming: a whole JSON record of a step up to `step` (a line cut by a
    kill is dropped, as are records of steps after the checkpoint)."""
    try:
        return bool(line) and json.loads(line)["step"] <= step
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def train_or_finish(trainer, checkpoint: str | None) -> None:
    """`trainer.train(resume_from_checkpoint=checkpoint)`, except when `checkpoint` already reached the
    end of training: then its weights are loaded and no step is taken.

    Why: transformers 5.x checks `global_step >= max_steps` only after a step, so resuming a finished
    run trained one extra step (docs/bugs-and-fixes.md).
    """
    if checkpoint is not None:
        state = read_json_file(Path(checkpoint) / "trainer_state.json", "trainer state")
        args = trainer.args
        done = (state["global_step"] >= args.max_steps if args.max_steps > 0
                else state["global_step"] >= state.get("max_steps", float("inf"))
                and args.num_train_epochs <= state.get("num_train_epochs", 0))
        if done:
            logger.info("%s already finished training (step %d); not resuming", checkpoint, state["global_step"])
            load_weights(trainer.model, checkpoint)
            trainer.model.tie_weights()
            return
    trainer.train(resume_from_checkpoint=checkpoint)
