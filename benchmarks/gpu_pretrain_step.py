"""One prepared GPU check of DupMAE pre-training: speed against the plain peer, CUDA paths against the
CPU reference, `dupmae pretrain` against the isolated step, and two processes against one.

Everything is written to one JSON file after every measurement, so a run cut short keeps what it had.

1. **Steps** (`steps`): for bert-base L = 512 x 32, bert-base L = 128 x 128 and MiniLM-L6 L = 512 x 64
   (random weights from a config, synthetic token ids with whole words of 1-3 pieces), bf16 autocast,
   fused AdamW, dropout on: the plain Hugging Face peer (benchmarks/plain_dupmae.py: full-vocabulary
   logits everywhere, eager attention) and dupmae in each variant of `VARIANTS` (the settings that only
   a GPU can settle: BoW max-pool chunked or materialised, loss chunk size, Liger's fused
   cross-entropy, compiled layers). Per measurement: tokens/s, ratio to the peer, MFU (the FLOPs of the
   objective as the released code computes it, `pretrain_step.executed_matmul_flops("plain", ...)`,
   over step time and the measured bf16 matmul peak) and peak GPU memory, with its ratio to the peer's.
2. **Agreement** (`agreement`): every CUDA path's losses and gradients on one batch against the CPU
   reference path (fp32, dupmae's chunked kernels, SDPA), dropout off, same weights: relative errors
   per loss term and the worst relative gradient error over parameters, within bf16 tolerance.
3. **`dupmae pretrain`** (`pretrain`): the real command on prepared data at bert-base 512 x 32; its
   logged tokens/s against the isolated step of part 1.
4. **Two processes** (`distributed`): `torchrun --nproc_per_node 2` of `dupmae pretrain` for 10 steps
   (both on the one GPU: NCCL where it allows that, else gloo), against one process on the same global
   batch, fp32 without TF32: per-step losses and final weights.
5. **Profile** (`profile`): torch.profiler over 3 steps of the default at bert-base 512 x 32: the top
   operators by device time, and how busy the device was — where the step goes, for the next fix.
6. **Encoding** (`encode`): benchmarks/encode.py on this device (dupmae's `Retriever` vs
   sentence-transformers' `encode`, bf16 both, MiniLM shape with random weights, SciFact texts).

    python benchmarks/gpu_pretrain_step.py --stage            # here: wheels, tokenizer, data into .gpu/
    python benchmarks/gpu_pretrain_step.py --output out.json   # on the GPU machine (docs/benchmarks.md)
    python benchmarks/gpu_pretrain_step.py --quick             # tiny, on the CPU, ~1 minute (a test runs it)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "src"))
from common import adamw, median  # noqa: E402
from pretrain_step import SIZES, executed_matmul_flops  # noqa: E402

STAGE = ROOT / ".gpu"  # ignored by git; what the GPU machine needs travels here (`run --carry .gpu`)
WHEELS = {"datasets": "4.4.1", "dill": "0.4.0", "multiprocess": "0.70.18", "xxhash": "3.6.0", "liger-kernel": "0.8.5"}
CONFIGS = [("base", 512, 32), ("base", 128, 128), ("minilm", 512, 64)]
QUICK_SIZE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
# dupmae variants: Accelerations / PretrainingOptions settings. The first is the shipped default.
VARIANTS = {
    "dupmae": {},
    "bow-materialised": {"bow_pool": "materialised"},
    "chunk-8192": {"loss_chunk_size": 8192},
    "liger": {"vocab_loss": "liger"},
    "liger+materialised": {"vocab_loss": "liger", "bow_pool": "materialised"},
    "compiled": {"compile_layers": True},
    "compiled+liger+materialised": {"compile_layers": True, "vocab_loss": "liger", "bow_pool": "materialised"},
}
MASK_ID, PAD_ID, CLS_ID, SEP_ID = 103, 0, 101, 102  # bert-base-uncased


class Report:
    """The JSON file, rewritten after every measurement."""

    def __init__(self, path: Path, quick: bool) -> None:
        self.path = path
        self.data = {"quick": quick, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "environment": environment(),
                     "steps": [], "agreement": [], "pretrain": None, "distributed": None, "profile": None,
                     "encode": None}
        self.write()

    def add(self, section: str, record) -> None:
        if isinstance(self.data[section], list):
            self.data[section].append(record)
        else:
            self.data[section] = record
        self.write()
        print(json.dumps(record), flush=True)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(temporary, self.path)


def environment() -> dict:
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    try:
        import liger_kernel  # noqa: F401

        info["liger_kernel"] = getattr(liger_kernel, "__version__", "installed")
    except Exception as error:  # noqa: BLE001 - a broken install must not stop the run
        info["liger_kernel"] = None if isinstance(error, ImportError) else f"unusable: {type(error).__name__}: {error}"
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, size: int) -> float:
    """Best bf16 FLOP/s of a square matmul: the MFU denominator."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    best = 0.0
    for _ in range(12):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def synthetic_examples(length: int, count: int, vocab: int, seed: int = 0) -> list[dict]:
    """`count` examples of `length` tokens ([CLS] ... [SEP]), words of 1-3 word pieces, as `dupmae prepare` stores them."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for example_id in range(count):
        body = torch.randint(1000, vocab, (length - 2,), generator=generator).tolist()
        pieces = torch.randint(1, 4, (length,), generator=generator).tolist()
        words, word, left = [], 0, pieces[0]
        for position in range(length - 2):
            words.append(word)
            left -= 1
            if left == 0:
                word += 1
                left = pieces[word % length]
        examples.append({"input_ids": [CLS_ID, *body, SEP_ID], "word_ids": [-1, *words, -1], "example_id": example_id})
    return examples


def encoder_config(size: str, quick: bool, dropout: float = 0.1):
    from transformers import BertConfig

    shape = QUICK_SIZE if quick else SIZES[size]
    return BertConfig(vocab_size=1000 + 24 if quick else 30522, max_position_embeddings=512, **shape,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def build_ours(config, settings: dict, device: torch.device, seed: int = 0):
    """dupmae's model prepared for `device` as `dupmae pretrain` prepares it; returns (model, loss of a batch)."""
    from transformers import BertForMaskedLM

    from dupmae.config import PretrainingOptions
    from dupmae.modeling.pretraining import DupMAEForPretraining, combine_losses, local_counts
    from dupmae.platform import Accelerations, prepare

    acceleration_names = set(Accelerations.field_names())
    options = PretrainingOptions(**{k: v for k, v in settings.items() if k not in acceleration_names})
    torch.manual_seed(seed)
    config = config.__class__(**{**config.to_dict(), "attn_implementation": "sdpa"})
    model = DupMAEForPretraining(BertForMaskedLM(config), options).to(device)
    prepare(model, device, Accelerations(**{k: v for k, v in settings.items() if k in acceleration_names}))

    def loss(batch):
        output = model(**batch)
        return combine_losses(output, options, local_counts(output))[0]

    return model, loss


def build_plain(config, device: torch.device, seed: int = 0):
    from plain_dupmae import PlainDupMAE
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    config = config.__class__(**{**config.to_dict(), "attn_implementation": "eager"})
    model = PlainDupMAE(BertForMaskedLM(config)).to(device)
    return model, lambda batch: model(**batch)


def collate(impl: str, examples: list[dict], vocab: int, device: torch.device) -> dict:
    if impl == "plain":
        from plain_dupmae import PlainCollator

        batch = PlainCollator(vocab, MASK_ID, PAD_ID)(examples)
    else:
        from dupmae.config import PretrainingOptions
        from dupmae.data.collator import PretrainingCollator

        batch = PretrainingCollator(PretrainingOptions(), PAD_ID, MASK_ID, vocab)(examples)
    return {key: value.to(device) for key, value in batch.items()}


def time_steps(model, loss_of, batch, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """Median seconds per step (forward + backward + fused AdamW, bf16 autocast) and peak memory in bytes."""
    model.train()
    optimizer = adamw(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    times = []
    for step in range(warmup + steps):
        if step == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        start = time.perf_counter()
        with autocast:
            loss = loss_of(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return median(times), peak


def variants_for(args, device: torch.device) -> dict:
    """The `VARIANTS` this run measures: Liger's Triton kernel only on CUDA, compiled layers in --quick only
    with --compile (a compile costs minutes on a CPU)."""
    return {name: settings for name, settings in VARIANTS.items()
            if (device.type == "cuda" or "liger" not in name)
            and (not args.quick or args.compile or "compiled" not in name)}


def measure_steps(report: Report, args, device: torch.device, peak_flops: float, deadline: float) -> dict:
    """Part 1; returns {(model, length, batch): dupmae default tokens/s} for part 3.

    The plain peer and the eager variants of every configuration come first, the compiled variants
    (a minute of compiling each) after them, so a spent time budget drops those first."""
    isolated, plain = {}, {}
    configs = [("minilm", 32, 4)] if args.quick else CONFIGS
    variants = variants_for(args, device)
    eager = [(c, name) for c in configs for name in ["plain", *variants] if "compiled" not in name]
    compiled = [(c, name) for name in variants if "compiled" in name for c in configs]
    for (size, length, batch_size), name in eager + compiled:
        settings = variants.get(name)
        label = {"model": size, "length": length, "batch": batch_size, "impl": name}
        if time.monotonic() > deadline:
            report.add("steps", {**label, "skipped": "time budget spent (--budget-s)"})
            continue
        config = encoder_config(size, args.quick)
        model = loss_of = batch = None
        try:
            batch = collate("plain" if name == "plain" else "ours", synthetic_examples(length, batch_size,
                            config.vocab_size), config.vocab_size, device)
            model, loss_of = build_plain(config, device) if name == "plain" else build_ours(config, settings, device)
            seconds, peak = time_steps(model, loss_of, batch, device, args.warmup, args.steps)
            tokens = batch_size * length / seconds
            masked = int((batch["labels"] != -100).sum())
            flops = executed_matmul_flops("plain", size, length, batch_size, masked, batch_size * (length - 2),
                                          shape=QUICK_SIZE if args.quick else None, vocab=config.vocab_size)
            record = {**label, "step_s": round(seconds, 5), "tokens_per_s": round(tokens),
                      "mfu": round(flops / seconds / peak_flops, 4) if peak_flops else None,
                      "peak_memory_gb": round(peak / 1e9, 2)}
            key = (size, length, batch_size)
            if name == "plain":
                plain[key] = (tokens, peak)
            elif key in plain:
                record["vs_plain"] = round(tokens / plain[key][0], 3)
                if plain[key][1]:
                    record["memory_vs_plain"] = round(peak / plain[key][1], 3)
            if name == "dupmae":
                isolated[key] = tokens
            report.add("steps", record)
        except Exception as error:  # noqa: BLE001 - one failing path must not lose the others
            report.add("steps", {**label, "error": f"{type(error).__name__}: {error}"[:500]})
        finally:
            model = loss_of = batch = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return isolated


def measure_agreement(report: Report, args, device: torch.device) -> None:
    """Part 2: each path on `device` (bf16 autocast) against the CPU reference path (fp32), same batch and weights."""
    from dupmae.modeling.pretraining import combine_losses, local_counts

    config = encoder_config("minilm", args.quick, dropout=0.0)
    length, batch_size = (32, 4) if args.quick else (128, 8)
    examples = synthetic_examples(length, batch_size, config.vocab_size, seed=1)
    cpu = torch.device("cpu")
    reference, _ = build_ours(config, {"keep_freed_memory": False, "lean_attention": False, "fast_dropout": False}, cpu)
    cpu_batch = collate("ours", examples, config.vocab_size, cpu)

    def losses_and_gradients(model, batch, precision):
        model.train()
        model.zero_grad()
        context = torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16) if precision == "bf16" \
            else contextlib.nullcontext()
        with context:
            output = model(**batch)
            total, terms = combine_losses(output, model.options, local_counts(output))
        total.backward()
        gradients = {name: p.grad.detach().float().cpu() for name, p in model.named_parameters() if p.grad is not None}
        return {name: float(value) for name, value in terms.items()}, gradients

    expected_terms, expected_gradients = losses_and_gradients(reference, cpu_batch, "fp32")
    variants = variants_for(args, device)
    for precision in ("bf16", "fp32"):
        for name, settings in variants.items():
            if precision == "fp32" and "compiled" in name and not args.quick:
                continue  # a compile costs a minute on the GPU; the bf16 check covers the path
            label = {"impl": name, "precision": precision, "device": device.type}
            try:
                model, _ = build_ours(config, {**settings, "keep_freed_memory": False}, device)
                model.load_state_dict(reference.state_dict())
                if device.type == "cuda" and precision == "fp32":
                    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 comparison is exact fp32
                terms, gradients = losses_and_gradients(model, collate("ours", examples, config.vocab_size, device),
                                                        precision)
                term_errors = {k: abs(terms[k] - v) / max(abs(v), 1e-12) for k, v in expected_terms.items()}
                # Tensors whose exact gradient is zero (attention key biases: softmax ignores a constant
                # per row) hold rounding noise only; they are compared against the largest gradient instead.
                scale = max(v.norm() for v in expected_gradients.values())
                gradient_errors = {k: float((gradients[k] - v).norm() / max(v.norm(), 1e-3 * scale))
                                   for k, v in expected_gradients.items()}
                worst = max(gradient_errors, key=gradient_errors.get)
                tolerance = 3e-2 if precision == "bf16" else 1e-3
                # loss terms within tolerance; gradients: every tensor, with a looser bound for bf16 (it
                # rounds every activation) — a wrong kernel is off by O(1), not by percent
                gradient_tolerance = 1e-1 if precision == "bf16" else 5e-3
                report.add("agreement", {
                    **label, "loss_relative_errors": {k: round(v, 6) for k, v in term_errors.items()},
                    "worst_gradient": worst, "worst_gradient_relative_error": round(gradient_errors[worst], 6),
                    "missing_gradients": sorted(set(expected_gradients) - set(gradients)),
                    "ok": max(term_errors.values()) <= tolerance and gradient_errors[worst] <= gradient_tolerance
                          and set(gradients) == set(expected_gradients)})
            except Exception as error:  # noqa: BLE001
                report.add("agreement", {**label, "error": f"{type(error).__name__}: {error}"[:500], "ok": False})
            finally:
                if device.type == "cuda":
                    torch.backends.cuda.matmul.allow_tf32 = True


def write_corpus(path: Path, documents: int) -> Path:
    words = ("protein gene cell cancer study brain immune virus blood mouse human response expression data "
             "analysis method model result effect treatment patient clinical trial risk disease").split()
    generator = torch.Generator().manual_seed(0)
    with open(path, "w") as handle:
        for index in range(documents):
            picks = torch.randint(0, len(words), (int(torch.randint(40, 120, (1,), generator=generator)),),
                                  generator=generator)
            handle.write(json.dumps({"_id": str(index), "title": "", "text": " ".join(words[i] for i in picks)}) + "\n")
    return path


def tokenizer_path() -> str:
    if (STAGE / "tokenizer").is_dir():
        return str(STAGE / "tokenizer")
    from common import minilm_path

    return minilm_path()


def prepared_data(args, work: Path) -> Path:
    """`.gpu/scifact-512` (staged) or, in --quick, a small synthetic corpus through `dupmae prepare`."""
    if not args.quick and (STAGE / "scifact-512").is_dir():
        return STAGE / "scifact-512"
    from dupmae.data.prepare import prepare_corpus

    corpus = write_corpus(work / "corpus.jsonl", 60 if args.quick else 3000)
    output = work / "prepared"
    prepare_corpus([str(corpus)], tokenizer_path(), str(output), max_length=32 if args.quick else 512,
                   strategy="pack", num_proc=1, overwrite=True)
    return output


def model_config_file(work: Path, args, size: str, dropout: float = 0.1) -> Path:
    values = {"model_type": "bert", **encoder_config(size, args.quick, dropout).to_dict()}
    values = {k: values[k] for k in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                                     "num_attention_heads", "intermediate_size", "max_position_embeddings",
                                     "hidden_dropout_prob", "attention_probs_dropout_prob")}
    if args.quick:
        values["vocab_size"] = 30522  # the tokenizer's vocabulary
    path = work / f"{size}-dropout{dropout}.json"
    path.write_text(json.dumps(values))
    return path


def pretrain_command(config: Path, data: Path, output: Path, steps: int, batch: int, extra=()) -> list[str]:
    return ["-m", "dupmae.cli", "pretrain", "--model-config", str(config), "--tokenizer", tokenizer_path(),
            "--data", str(data), "--output", str(output), "--max-steps", str(steps),
            "--per-device-train-batch-size", str(batch), "--logging-steps", "1" if steps <= 10 else "10",
            "--save-steps", "100000", "--report-to", "none", "--disable-tqdm", "true", "--seed", "5", *extra]


def child_environment() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def error_lines(stderr: str) -> list[str]:
    """The lines of a child's stderr that say what went wrong (the launcher's own traceback says little)."""
    lines = [line for line in stderr.splitlines() if "error" in line.lower() and "ChildFailedError" not in line]
    return lines[:12] or stderr.splitlines()[-12:]


def read_log(output: Path) -> list[dict]:
    path = output / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def measure_pretrain(report: Report, args, work: Path, data: Path, isolated: dict) -> None:
    """Part 3: `dupmae pretrain` itself; tokens/s of its log against the isolated step."""
    size, length, batch = ("minilm", 32, 4) if args.quick else ("base", 512, 32)
    output = work / "pretrain"
    steps = 4 if args.quick else 60
    started = time.monotonic()
    result = subprocess.run([sys.executable, *pretrain_command(model_config_file(work, args, size), data, output,
                                                               steps, batch)],
                            env=child_environment(), capture_output=True, text=True)
    rates = [r["tokens_per_second"] for r in read_log(output) if "tokens_per_second" in r]
    record = {"model": size, "length": length, "batch": batch, "steps": steps, "exit": result.returncode,
              "wall_s": round(time.monotonic() - started, 1),
              "tokens_per_s_logged": rates, "errors": error_lines(result.stderr) if result.returncode else []}
    settled = rates[1:] or rates  # the first window holds the start-up
    if settled:
        record["tokens_per_s"] = round(median(settled))
        step_rate = isolated.get((size, length, batch))
        if step_rate:
            record["vs_isolated_step"] = round(record["tokens_per_s"] / step_rate, 3)
    report.add("pretrain", record)


def measure_distributed(report: Report, args, work: Path, data: Path, device: torch.device) -> None:
    """Part 4: two processes (`torchrun`, both on this one device) against one process on the same global batch."""
    size = "minilm"
    config = model_config_file(work, args, size, dropout=0.0)  # dropout draws differ per process
    steps, global_batch = (3, 4) if args.quick else (10, 16)
    exact = ["--bf16", "false", "--dataloader-num-workers", "0", "--learning-rate", "1e-3", "--warmup-steps", "0"]
    if device.type == "cuda":
        exact += ["--tf32", "false"]
    single = work / "single"
    one = subprocess.run([sys.executable, *pretrain_command(config, data, single, steps, global_batch, exact)],
                         env=child_environment(), capture_output=True, text=True)
    record = {"steps": steps, "global_batch": global_batch, "single_exit": one.returncode}
    backends = ["nccl", "gloo"] if device.type == "cuda" else ["gloo"]
    for port, backend in enumerate(backends, start=29511):
        double = work / f"double-{backend}"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                    str(port), str(HERE / "one_device_rank.py")]
        flags = pretrain_command(config, data, double, steps, global_batch // 2, exact)[3:]  # the flags only
        extra = ["--ddp-backend", backend] if device.type == "cuda" else []
        two = subprocess.run([*launcher, *flags, *extra], env=child_environment(), capture_output=True, text=True,
                             timeout=600)
        record[f"{backend}_exit"] = two.returncode
        if two.returncode == 0:
            record["backend"] = backend
            record.update(compare_runs(single, double))
            break
        record[f"{backend}_errors"] = error_lines(two.stderr)
    report.add("distributed", record)


def compare_runs(single: Path, double: Path) -> dict:
    from safetensors.torch import load_file

    one = [r for r in read_log(single) if "loss_bow" in r]
    two = [r for r in read_log(double) if "loss_bow" in r]
    losses = [max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in ("loss_encoder_mlm", "loss_decoder", "loss_bow"))
              for a, b in zip(one, two)]
    a, b = load_file(str(single / "model.safetensors")), load_file(str(double / "model.safetensors"))
    weights = max(float((a[k] - b[k]).abs().max()) for k in a)
    ok = len(one) == len(two) > 0 and max(losses) <= 1e-3 and weights <= 1e-3
    return {"logged_steps": [len(one), len(two)], "worst_loss_relative_error": max(losses, default=None),
            "worst_weight_difference": weights, "ok": ok}


def measure_profile(report: Report, args, device: torch.device) -> None:
    """Part 5: where a step of the default goes (torch.profiler), as the top operators by device time."""
    from torch.profiler import ProfilerActivity, profile

    size, length, batch_size = ("minilm", 32, 4) if args.quick else ("base", 512, 32)
    config = encoder_config(size, args.quick)
    batch = collate("ours", synthetic_examples(length, batch_size, config.vocab_size), config.vocab_size, device)
    model, loss_of = build_ours(config, {}, device)
    time_steps(model, loss_of, batch, device, warmup=2, steps=1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    started = time.perf_counter()
    with profile(activities=activities) as profiler:
        time_steps(model, loss_of, batch, device, warmup=0, steps=3)
    wall_us = (time.perf_counter() - started) * 1e6
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = profiler.key_averages()

    def self_time(event) -> float:
        value = getattr(event, key, None)
        if value is None and key == "self_device_time_total":
            value = getattr(event, "self_cuda_time_total", 0.0)
        return float(value or 0.0)

    ranked = sorted(events, key=self_time, reverse=True)
    total = sum(self_time(e) for e in events)
    top = [{"op": e.key, "calls": e.count, "self_ms": round(self_time(e) / 1e3, 3),
            "share": round(self_time(e) / max(total, 1e-9), 4)} for e in ranked[:30]]
    syncs = sum(e.count for e in events if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                     "aten::item", "aten::_local_scalar_dense", "aten::nonzero"))
    report.add("profile", {"model": size, "length": length, "batch": batch_size, "steps": 3,
                           "wall_ms": round(wall_us / 1e3, 1), "device_busy": round(total / wall_us, 3),
                           "host_syncs_or_nonzero": syncs, "top": top})


def measure_encode(report: Report, args, work: Path, device: torch.device) -> None:
    """Part 6: benchmarks/encode.py on this device, on a MiniLM-shaped model with random weights."""
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        report.add("encode", {"skipped": "sentence-transformers is not installed (pip install 'dupmae[bench]')"})
        return
    from transformers import AutoTokenizer, BertModel

    folder = work / "minilm-random"
    config = encoder_config("minilm", False, dropout=0.0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_path()).save_pretrained(folder)
    corpus = STAGE / "scifact-corpus.jsonl"
    if not corpus.is_file():
        corpus = write_corpus(work / "encode-corpus.jsonl", 256)
    output = work / "encode.json"
    command = [sys.executable, str(HERE / "encode.py"), "--model", str(folder), "--corpus", str(corpus),
               "--device", device.type, "--json", str(output), "--batch-size", "128" if device.type == "cuda" else "32"]
    command += ["--quick"] if args.quick else ["--repeats", "2"]
    result = subprocess.run(command, env=child_environment(), capture_output=True, text=True, timeout=900)
    record = json.loads(output.read_text()) if output.is_file() else {}
    record["exit"] = result.returncode
    if result.returncode:
        record["errors"] = error_lines(result.stderr)
    report.add("encode", record)


def stage() -> None:
    """Here (with PyPI): what the GPU machine lacks, into .gpu/ (carry it: `run --carry .gpu`)."""
    from common import download_wheels, minilm_path

    from dupmae.data.prepare import prepare_corpus

    download_wheels(WHEELS, STAGE / "wheels")
    tokenizer = STAGE / "tokenizer"
    tokenizer.mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (Path(minilm_path()) / name).is_file():
            shutil.copy(Path(minilm_path()) / name, tokenizer / name)
    from common import DATA_ROOT

    prepare_corpus([str(DATA_ROOT / "scifact" / "corpus.jsonl")], str(tokenizer), str(STAGE / "scifact-512"),
                   max_length=512, strategy="pack", num_proc=1, overwrite=True)
    shutil.copy(DATA_ROOT / "scifact" / "corpus.jsonl", STAGE / "scifact-corpus.jsonl")  # texts for the encode part
    size = sum(f.stat().st_size for f in STAGE.rglob("*") if f.is_file())
    print(f"staged {size / 2**20:.1f} MiB in {STAGE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU (no timing worth reading)")
    parser.add_argument("--stage", action="store_true", help="prepare .gpu/ here and exit")
    parser.add_argument("--output", default=None, help="JSON file (default: out/gpu_pretrain_step[_quick].json)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 10; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; quick 1)")
    parser.add_argument("--budget-s", type=float, default=150,
                        help="seconds after which part 1 starts no more measurements (the other parts still run)")
    parser.add_argument("--compile", action="store_true", help="in --quick, also the compiled variants (slow on a CPU)")
    parser.add_argument("--parts", default="steps,agreement,pretrain,distributed,profile,encode",
                        help="which parts to run (comma-separated)")
    args = parser.parse_args()
    if args.stage:
        return stage()
    args.steps = args.steps or (2 if args.quick else 10)
    args.warmup = args.warmup or (1 if args.quick else 3)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if not args.quick and device.type != "cuda":
        raise SystemExit("no CUDA device: run with --quick for the CPU check of this script")
    output = Path(args.output or ROOT / "out" / ("gpu_pretrain_step_quick.json" if args.quick else "gpu_pretrain_step.json"))
    report = Report(output, args.quick)
    parts = set(args.parts.split(","))
    deadline = time.monotonic() + args.budget_s
    peak = matmul_peak(device, 256 if args.quick else 8192)
    report.data["environment"]["bf16_matmul_peak_tflops"] = round(peak / 1e12, 1)
    report.write()
    isolated = measure_steps(report, args, device, peak, deadline) if "steps" in parts else {}
    if "agreement" in parts:
        measure_agreement(report, args, device)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        data = prepared_data(args, work) if parts & {"pretrain", "distributed"} else None
        if "pretrain" in parts:
            measure_pretrain(report, args, work, data, isolated)
        if "distributed" in parts:
            measure_distributed(report, args, work, data, device)
        if "profile" in parts:
            measure_profile(report, args, device)
        if "encode" in parts:
            measure_encode(report, args, work, device)
    report.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    report.write()
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
