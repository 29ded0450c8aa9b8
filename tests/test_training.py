"""Pre-training end to end on a tiny BERT: CLI smoke run, config files, resume, and DDP (2 gloo processes)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, TrainerCallback

from tiny import WORDS, run_two_gloo_processes
from dupmae.cli import main as cli
from dupmae.data.prepare import prepare_corpus
from dupmae.modeling.pretraining import DupMAEForPretraining
from dupmae.training.pretrain import parse_arguments, pretrain

TERMS = ("loss_encoder_mlm", "loss_decoder", "loss_bow", "acc_encoder_mlm", "acc_decoder")


def write_corpus(path: Path, documents: int = 24, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = [json.dumps({"title": " ".join(rng.choices(WORDS, k=3)), "text": " ".join(rng.choices(WORDS, k=rng.randint(10, 40)))})
             for _ in range(documents)]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_model(directory: Path, tokenizer_dir: str, dropout: float) -> str:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertForMaskedLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, wordpiece_dir):
    root = tmp_path_factory.mktemp("pretrain")
    corpus = write_corpus(root / "corpus.jsonl")
    data = root / "data"
    manifest = prepare_corpus([str(corpus)], wordpiece_dir, str(data), max_length=32, num_proc=1)
    return {
        "root": root, "corpus": str(corpus), "data": str(data), "sequences": manifest["counts"]["sequences"],
        "model": make_model(root / "model", wordpiece_dir, dropout=0.1),
        "model_no_dropout": make_model(root / "model0", wordpiece_dir, dropout=0.0),
    }


def read_log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path / "model.safetensors"))


def base_flags(setup, output, model_key="model", steps=4, batch=4):
    return ["--model", setup[model_key], "--data", setup["data"], "--output", str(output),
            "--max-steps", str(steps), "--per-device-train-batch-size", str(batch), "--logging-steps", "1",
            "--save-steps", "2", "--learning-rate", "1e-3", "--warmup-steps", "0", "--seed", "7",
            "--report-to", "none", "--disable-tqdm", "true", "--bf16", "false"]  # exact fp32 comparisons


def test_cli_prepare_pretrain_export_reload(setup, tmp_path, wordpiece_dir, allocator_calls):
    data = tmp_path / "data"
    assert cli(["prepare", "--corpus", setup["corpus"], "--tokenizer", wordpiece_dir, "--max-length", "32",
                "--output", str(data), "--num-proc", "1"]) == 0
    output = tmp_path / "run"
    flags = base_flags(setup, output)
    flags[flags.index("--data") + 1] = str(data)
    flags[flags.index("--report-to") + 1] = "tensorboard"
    assert cli(["pretrain", *flags]) == 0
    assert allocator_calls == [1]  # --keep-freed-memory is on by default

    records = [r for r in read_log(output) if "loss_encoder_mlm" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        assert all(name in record for name in TERMS) and record["tokens_per_second"] > 0
        assert 0 <= record["acc_encoder_mlm"] <= 1 and record["loss_decoder"] > 0
    assert list(output.glob("runs/**/events.out.tfevents*")), "TensorBoard scalars were not written"
    assert (output / "checkpoint-2").is_dir() and (output / "dupmae_run_config.json").is_file()

    exported = tmp_path / "exported"
    assert cli(["export", str(output), str(exported)]) == 0
    reloaded = AutoModelForMaskedLM.from_pretrained(exported).eval()
    state = weights(output)
    tied = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}  # stored once in the checkpoint
    for name, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, state[f"encoder.{tied.get(name, name)}"]), name
    # the exported folder encodes exactly like the pre-training model's encoder
    pretraining = DupMAEForPretraining.from_checkpoint(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    batch = tokenizer(["the protein increased in mouse cells"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, pretraining.encoder(**batch).logits)
    assert cli(["export", str(output), str(exported)]) == 2  # refuses to overwrite silently


def test_config_file_and_flag_precedence(setup, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("objective: retromae\nbow_loss_weight: 0.5\nlearning_rate: 0.002\nmax_steps: 9\n")
    run, options, _accelerations, training = parse_arguments(
        ["--config", str(config), "--model", setup["model"], "--data", setup["data"], "--output", str(tmp_path / "o"),
         "--max-steps", "3"])
    assert options.objective == "retromae" and options.bow_loss_weight == 0.5
    assert training.learning_rate == 0.002 and training.max_steps == 3  # the flag wins
    assert training.weight_decay == 0.01 and not training.remove_unused_columns  # our defaults
    assert options.encoder_mask_ratio == 0.30 and options.decoder_query == "embedding"
    config.write_text("objectiv: dupmae\n")
    with pytest.raises(ValueError, match="objectiv"):
        parse_arguments(["--config", str(config), "--model", setup["model"], "--data", setup["data"], "--output", "x"])
    with pytest.raises(SystemExit):  # argparse: "invalid choice", status 2
        parse_arguments(["--model", setup["model"], "--data", setup["data"], "--output", "x", "--objective", "mae"])


def test_pretrain_rejects_bad_input(setup, tmp_path, capsys):
    assert cli(["pretrain", "--model", setup["model"], "--data", str(tmp_path / "nope"), "--output", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


class StopAt(TrainerCallback):
    """Simulates an interruption right after step `step` (its checkpoint is written first)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_reaches_the_same_state_as_an_uninterrupted_run(setup, tmp_path):
    steps_per_epoch = -(-setup["sequences"] // 4)
    total = steps_per_epoch + 3  # crosses an epoch boundary after the interruption
    straight = tmp_path / "straight"
    pretrain(*parse_arguments(base_flags(setup, straight, steps=total)))

    interrupted = tmp_path / "interrupted"
    flags = base_flags(setup, interrupted, steps=total)
    pretrain(*parse_arguments(flags), callbacks=[StopAt(4)])
    assert (interrupted / "checkpoint-4").is_dir() and not (interrupted / f"checkpoint-{total}").exists()
    pretrain(*parse_arguments([*flags, "--resume"]))

    a, b = weights(straight), weights(interrupted)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    losses = lambda path: [(r["step"], r["loss_encoder_mlm"], r["loss_decoder"], r["loss_bow"])
                           for r in read_log(path) if "loss_bow" in r]
    assert losses(straight) == losses(interrupted)


def test_resuming_a_finished_run_takes_no_extra_step(setup, tmp_path):
    output = tmp_path / "finished"
    flags = base_flags(setup, output, steps=4)  # saves checkpoint-2 and checkpoint-4
    pretrain(*parse_arguments(flags))
    before, log_before = weights(output), read_log(output)
    (output / "model.safetensors").unlink()  # as if interrupted after the last checkpoint, before the final save
    pretrain(*parse_arguments([*flags, "--resume"]))
    assert not (output / "checkpoint-5").exists()
    assert read_log(output) == log_before
    after = weights(output)
    for name in before:
        assert torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("extra", [[], ["--freeze-encoder-steps", "2"]], ids=["plain", "frozen-encoder-start"])
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(setup, tmp_path, extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    single, double = tmp_path / "single", tmp_path / "double"
    common = ["--model", setup["model_no_dropout"], "--data", setup["data"], "--max-steps", "3", "--logging-steps", "1",
              "--save-steps", "100", "--learning-rate", "1e-3", "--warmup-steps", "0", "--seed", "3",
              "--report-to", "none", "--disable-tqdm", "true", "--dataloader-num-workers", "0", "--bf16", "false",
              *extra]
    subprocess.run([sys.executable, "-m", "dupmae.cli", "pretrain", *common, "--output", str(single),
                    "--per-device-train-batch-size", "4"], check=True, env=env)
    run_two_gloo_processes(["-m", "dupmae.cli", "pretrain", *common, "--output", str(double),
                            "--per-device-train-batch-size", "2"], env, output=double)
    one = [r for r in read_log(single) if "loss_bow" in r]
    two = [r for r in read_log(double) if "loss_bow" in r]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for name in TERMS + ("loss",):
            assert a[name] == pytest.approx(b[name], rel=2e-4, abs=1e-5), (a["step"], name)
    a, b = weights(single), weights(double)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=2e-5), name


def test_from_scratch_roberta_with_bpe_tokenizer(tmp_path, bpe_dir):
    """--model-config + --tokenizer: a byte-level BPE RoBERTa trains (no '##' word pieces anywhere)."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", documents=12)
    data = tmp_path / "data"
    prepare_corpus([str(corpus)], bpe_dir, str(data), max_length=32, num_proc=1)
    tokenizer = AutoTokenizer.from_pretrained(bpe_dir)
    config = tmp_path / "roberta.json"
    config.write_text(json.dumps({
        "model_type": "roberta", "vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 40,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id}))
    for query in ("embedding", "plain"):
        output = tmp_path / f"run-{query}"
        assert cli(["pretrain", "--model-config", str(config), "--tokenizer", bpe_dir, "--data", str(data),
                    "--output", str(output), "--decoder-query", query, "--max-steps", "2", "--logging-steps", "1",
                    "--per-device-train-batch-size", "4", "--report-to", "none", "--disable-tqdm", "true"]) == 0
        records = [r for r in read_log(output) if "loss_decoder" in r]
        assert len(records) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
        assert json.loads((output / "dupmae_pretraining.json").read_text())["decoder_query"] == query


def test_data_from_another_tokenizer_is_refused(setup, tmp_path, bpe_dir, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", documents=4)
    data = tmp_path / "bpe-data"
    prepare_corpus([str(corpus)], bpe_dir, str(data), max_length=32, num_proc=1)
    assert cli(["pretrain", "--model", setup["model"], "--data", str(data), "--output", str(tmp_path / "o")]) == 2
    assert "different vocabulary" in capsys.readouterr().err


def test_activation_checkpointing_gives_the_same_training(setup, tmp_path):
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    pretrain(*parse_arguments(base_flags(setup, plain, model_key="model_no_dropout", steps=2)))
    # `--gradient-checkpointing` is the flag's name in every supported transformers 5.x (later an alias)
    trainer = pretrain(*parse_arguments([*base_flags(setup, checkpointed, model_key="model_no_dropout", steps=2),
                                         "--gradient-checkpointing", "true"]))
    assert trainer.model.encoder.is_gradient_checkpointing
    a, b = weights(plain), weights(checkpointed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_data_loader_workers_give_the_same_training_across_an_epoch_boundary(setup, tmp_path):
    # Workers get a copy of the collator: the epoch it draws masks for must still reach them.
    steps = -(-setup["sequences"] // 4) + 2
    inline, workers = tmp_path / "inline", tmp_path / "workers"
    pretrain(*parse_arguments(base_flags(setup, inline, steps=steps)))
    pretrain(*parse_arguments([*base_flags(setup, workers, steps=steps), "--dataloader-num-workers", "2"]))
    a, b = weights(inline), weights(workers)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)

    with pytest.raises(ValueError, match="persistent_workers"):
        pretrain(*parse_arguments([*base_flags(setup, tmp_path / "persistent", steps=steps), "--dataloader-num-workers",
                                   "2", "--dataloader-persistent-workers", "true"]))


def test_attention_dropout_override_reaches_encoder_and_decoder(setup, tmp_path):
    from dupmae.training.pretrain import load_encoder

    run_args, options, _, _ = parse_arguments(["--model", setup["model"], "--data", setup["data"], "--output",
                                            str(tmp_path), "--attention-dropout", "0"])
    tokenizer = AutoTokenizer.from_pretrained(setup["model"])
    encoder = load_encoder(run_args, tokenizer)
    assert encoder.config.attention_probs_dropout_prob == 0.0  # the saved model has 0.1
    assert DupMAEForPretraining(encoder, options).decoder.attention_dropout == 0.0
    with pytest.raises(ValueError, match="attention-dropout"):
        parse_arguments(["--model", setup["model"], "--data", setup["data"], "--output", "x", "--attention-dropout", "1.5"])


def test_freeze_encoder_steps_keep_the_encoder_then_release_it(setup, tmp_path):
    output = tmp_path / "frozen"
    pretrain(*parse_arguments([*base_flags(setup, output, steps=3), "--save-steps", "1", "--freeze-encoder-steps", "2"]))
    start = {f"encoder.{name}": value for name, value in weights(Path(setup["model"])).items()}
    step = {n: weights(output / f"checkpoint-{n}") for n in (1, 2, 3)}
    body = [name for name in step[1] if name.startswith("encoder.bert.")]
    trained = [name for name in step[1] if name.startswith(("encoder.cls.", "decoder."))]
    assert body and trained
    for name in body:  # steps 1-2: the encoder body (word embeddings, tied to the head, included) is untouched
        assert torch.equal(step[1][name], start[name]) and torch.equal(step[2][name], start[name]), name
    # meanwhile the head's transform and bias and the decoder train
    assert all(not torch.equal(step[1][name], step[2][name]) for name in trained)
    assert all(not torch.equal(step[3][name], start[name]) for name in body)  # step 3: the encoder trains again


def test_freeze_encoder_callback_hides_the_encoder_from_clipping_and_the_optimizer():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from dupmae.training.trainer import FreezeEncoderCallback

    torch.manual_seed(0)
    encoder, head = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)
    callback = FreezeEncoderCallback(encoder.parameters(), steps=1)
    args, state, control = TrainingArguments(output_dir="unused", report_to="none"), TrainerState(), TrainerControl()
    callback.on_step_begin(args, state, control)
    head(encoder(torch.randn(4, 3))).square().sum().backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in encoder.parameters())  # clipping sees zeros
    assert all(p.grad.abs().sum() > 0 for p in head.parameters())
    callback.on_pre_optimizer_step(args, state, control)
    assert all(p.grad is None for p in encoder.parameters())  # AdamW skips them: no update, no decay
    state.global_step = 1
    callback.on_step_begin(args, state, control)  # released
    encoder.zero_grad(), head.zero_grad()
    head(encoder(torch.randn(4, 3))).square().sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in encoder.parameters())
    callback.on_pre_optimizer_step(args, state, control)
    assert all(p.grad is not None for p in encoder.parameters())


def test_freeze_encoder_steps_resume_like_an_uninterrupted_run(setup, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    extra = ["--freeze-encoder-steps", "3"]
    pretrain(*parse_arguments([*base_flags(setup, straight, steps=4), *extra]))
    flags = [*base_flags(setup, interrupted, steps=4), *extra]
    pretrain(*parse_arguments(flags), callbacks=[StopAt(2)])
    pretrain(*parse_arguments([*flags, "--resume"]))
    a, b = weights(straight), weights(interrupted)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
