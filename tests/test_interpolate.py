"""`dupmae interpolate`: alpha x fine-tuned + (1 - alpha) x start, parameter by parameter."""

import pytest
import torch
from transformers import AutoTokenizer

from dupmae.cli import main as cli
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig
from dupmae.modeling.retriever import Retriever
from dupmae.training.interpolate import interpolate
from test_finetune import tiny_encoder_dir

TEXTS = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]


@pytest.fixture()
def models(tmp_path, wordpiece_dir):
    """A start and a 'fine-tuned' retriever: the start with every float parameter moved by a known amount."""
    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    config = RepresentationConfig(representation="dupmae", dense_dim=8, sparse_top_k=5, sparse_activation="relu")
    tuned = DupMAEEncoder.from_pretrained(start, config)
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in tuned.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    tuned.save_pretrained(tmp_path / "tuned", AutoTokenizer.from_pretrained(start))
    return start, tmp_path / "tuned", config


def test_every_parameter_is_the_weighted_mean_but_the_dense_projection(models):
    start, tuned_dir, config = models
    tuned = DupMAEEncoder.from_pretrained(tuned_dir).state_dict()
    original = DupMAEEncoder.from_pretrained(start, config).state_dict()
    mixed = interpolate(start, tuned_dir, 0.25).state_dict()
    for name, value in mixed.items():
        if name.startswith("dense_projection."):
            assert torch.equal(value, tuned[name])
        else:
            assert torch.allclose(value, 0.25 * tuned[name] + 0.75 * original[name], atol=1e-6), name
    # Tied weights stay tied: the MLM projection is the word embedding matrix.
    encoder = interpolate(start, tuned_dir, 0.25)
    assert encoder.model.get_output_embeddings().weight.data_ptr() == encoder.model.get_input_embeddings().weight.data_ptr()


def test_alpha_one_encodes_as_the_finetuned_model(tmp_path, models):
    start, tuned_dir, _ = models
    assert cli(["interpolate", "--start", start, "--finetuned", str(tuned_dir), "--alpha", "1",
                "--output", str(tmp_path / "mixed")]) == 0
    expected = Retriever.from_pretrained(tuned_dir, bf16=False).encode_corpus(TEXTS)
    actual = Retriever.from_pretrained(tmp_path / "mixed", bf16=False).encode_corpus(TEXTS)
    assert torch.allclose(torch.as_tensor(actual.dense), torch.as_tensor(expected.dense), atol=1e-6)
    assert (actual.sparse_indices == expected.sparse_indices).all()


@pytest.mark.parametrize("arguments, message", [
    (["--alpha", "1.5"], "alpha must be in [0, 1]"),
    (["--alpha", "0.5", "--finetuned", "{start}"], "is not a retriever folder"),
    (["--alpha", "0.5", "--output", "{tuned}"], "--output must differ"),
])
def test_bad_input_is_a_clear_error(tmp_path, models, capsys, arguments, message):
    start, tuned_dir, _ = models
    defaults = {"--start": start, "--finetuned": str(tuned_dir), "--output": str(tmp_path / "out")}
    given = dict(zip(arguments[::2], (a.format(start=start, tuned=tuned_dir) for a in arguments[1::2])))
    flags = [item for key, value in {**defaults, **given}.items() for item in (key, value)]
    assert cli(["interpolate", *flags]) == 2
    assert message in capsys.readouterr().err


def test_another_start_is_refused(tmp_path, models, wordpiece_dir):
    _, tuned_dir, _ = models
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(wordpiece_dir)
    other = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    other.save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="different parameters"):
        interpolate(tmp_path / "other", tuned_dir, 0.5)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_finetune_interpolate_with_start_equals_the_verb(tmp_path, wordpiece_dir, alpha):
    """`finetune --interpolate-with-start A` = `finetune` then `interpolate --alpha A` (0: the start itself)."""
    from test_finetune import write_beir

    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    beir = write_beir(tmp_path / "beir")
    common = ["--model", start, "--data", str(beir), "--negatives", str(beir / "negs.jsonl"), "--group-size", "3",
              "--per-device-train-batch-size", "4", "--max-steps", "2", "--representation", "cls", "--dense-dim", "0",
              "--dense-pooling", "mean", "--normalize-dense", "true", "--temperature", "0.05", "--learning-rate", "1e-2",
              "--report-to", "none", "--disable-tqdm", "true", "--bf16", "false", "--save-strategy", "no"]
    assert cli(["finetune", *common, "--output", str(tmp_path / "plain")]) == 0
    assert cli(["finetune", *common, "--output", str(tmp_path / "mixed"), "--interpolate-with-start", str(alpha)]) == 0
    assert cli(["interpolate", "--start", start, "--finetuned", str(tmp_path / "plain"), "--alpha", str(alpha),
                "--output", str(tmp_path / "verb")]) == 0
    encode = lambda folder: Retriever.from_pretrained(folder, bf16=False).encode_corpus(TEXTS).dense  # noqa: E731
    assert torch.allclose(torch.as_tensor(encode(tmp_path / "mixed")), torch.as_tensor(encode(tmp_path / "verb")),
                          atol=1e-6)
    assert not torch.allclose(torch.as_tensor(encode(tmp_path / "plain")), torch.as_tensor(encode(tmp_path / "mixed")),
                              atol=1e-4)  # the training moved the weights: the interpolation undoes part of it
    if alpha == 0.0:
        wrapped = DupMAEEncoder.from_pretrained(start, RepresentationConfig(
            representation="cls", dense_dim=0, dense_pooling="mean", normalize_dense=True))
        wrapped.save_pretrained(tmp_path / "wrapped", AutoTokenizer.from_pretrained(start))
        assert torch.allclose(torch.as_tensor(encode(tmp_path / "mixed")),
                              torch.as_tensor(encode(tmp_path / "wrapped")), atol=1e-6)


def test_finetune_refuses_an_alpha_outside_0_1(tmp_path, wordpiece_dir, capsys):
    from test_finetune import write_beir

    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    beir = write_beir(tmp_path / "beir")
    assert cli(["finetune", "--model", start, "--data", str(beir), "--output", str(tmp_path / "out"),
                "--interpolate-with-start", "1.5"]) == 2
    assert "--interpolate-with-start must be in [0, 1]" in capsys.readouterr().err
