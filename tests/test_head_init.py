"""Starting a missing MLM head: identity transform (lexical logits) vs the library's random start."""

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel, RobertaConfig, RobertaModel

from dupmae.modeling.head_init import load_masked_lm, set_identity_transform

SMALL = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=40)


def test_encoder_without_head_gets_identity_transform(tmp_path):
    torch.manual_seed(0)
    BertModel(BertConfig(**SMALL)).save_pretrained(tmp_path)  # an encoder checkpoint: no `cls.*` weights
    model = load_masked_lm(tmp_path, "identity")
    transform = model.cls.predictions.transform
    assert torch.equal(transform.dense.weight, torch.eye(16))
    assert torch.equal(transform.dense.bias, torch.zeros(16))
    assert torch.equal(transform.LayerNorm.weight, torch.ones(16)) and torch.equal(transform.LayerNorm.bias, torch.zeros(16))
    assert torch.equal(model.cls.predictions.bias, torch.zeros(50))
    # logits are LayerNorm(GELU(h)) . E^T: similarity to the (tied) word embeddings, computed by hand
    hidden = torch.randn(3, 16)
    expected = torch.nn.functional.layer_norm(torch.nn.functional.gelu(hidden), (16,), eps=model.config.layer_norm_eps)
    expected = expected @ model.get_input_embeddings().weight.T
    torch.testing.assert_close(model.cls(hidden), expected)


def test_random_keeps_library_initialisation(tmp_path):
    BertModel(BertConfig(**SMALL)).save_pretrained(tmp_path)
    model = load_masked_lm(tmp_path, "random")
    assert not torch.equal(model.cls.predictions.transform.dense.weight, torch.eye(16))


def test_checkpoint_with_head_is_untouched(tmp_path):
    torch.manual_seed(0)
    original = BertForMaskedLM(BertConfig(**SMALL))
    original.save_pretrained(tmp_path)
    model = load_masked_lm(tmp_path, "identity")
    for name, parameter in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], parameter, msg=name)


def test_roberta_encoder_gets_identity(tmp_path):
    RobertaModel(RobertaConfig(**SMALL, pad_token_id=1)).save_pretrained(tmp_path)
    model = load_masked_lm(tmp_path, "identity")
    assert torch.equal(model.lm_head.dense.weight, torch.eye(16))
    assert torch.equal(model.lm_head.layer_norm.weight, torch.ones(16))


def test_unknown_choice_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="missing_head_init"):
        load_masked_lm(tmp_path, "zeros")


def test_set_identity_transform_on_a_fresh_head():
    model = BertForMaskedLM(BertConfig(**SMALL))
    set_identity_transform(model.cls)
    assert torch.equal(model.cls.predictions.transform.dense.weight, torch.eye(16))


def test_config_overrides_reach_the_built_model(tmp_path):
    BertForMaskedLM(BertConfig(**SMALL, attention_probs_dropout_prob=0.1)).save_pretrained(tmp_path)
    model = load_masked_lm(tmp_path, "identity", {"attention_probs_dropout_prob": 0.0})
    assert model.config.attention_probs_dropout_prob == 0.0
    assert model.bert.encoder.layer[0].attention.self.dropout.p == 0.0  # built with it, not patched after
    with pytest.raises(ValueError, match="no setting 'attention_dropout_typo'"):
        load_masked_lm(tmp_path, "identity", {"attention_dropout_typo": 0.0})


def test_missing_weights_outside_the_head_are_named_and_the_expected_head_gap_is_one_line(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    BertModel(BertConfig(**SMALL)).save_pretrained(tmp_path)
    with caplog.at_level("WARNING"):
        load_masked_lm(tmp_path, "identity")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path} has no MLM head transform; starting it as identity (missing_head_init)"]
    weights = load_file(tmp_path / "model.safetensors")
    missing = next(name for name in weights if "layer.0.output.dense.weight" in name)
    save_file({k: v for k, v in weights.items() if k != missing}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_masked_lm(tmp_path, "identity")
    outside = [r.getMessage() for r in caplog.records if "outside the MLM head" in r.getMessage()]
    assert outside == [f"{tmp_path} lacks 1 weight(s) outside the MLM head, which start random: "
                       "bert.encoder.layer.0.output.dense.weight"]
