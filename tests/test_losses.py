"""Every loss term against a hand or naive computation on tiny tensors and a tiny BERT."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM

from dupmae.config import PretrainingOptions
from dupmae.modeling.pretraining import (
    DupMAEForPretraining,
    PretrainingOutput,
    bow_loss_per_sequence,
    bow_pool,
    combine_losses,
    local_counts,
)
from test_masking import TEXTS, collate


def test_bow_loss_by_hand():
    mu = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    ids = torch.tensor([[0, 2, 3, 2, 1]])  # token 2 repeats
    ordinary = torch.tensor([[False, True, True, True, False]])
    lse = math.log(sum(math.exp(v) for v in (0.0, 1.0, 2.0, 3.0)))
    summed = -((2.0 - lse) + (3.0 - lse))  # distinct tokens {2, 3}, weight 1
    assert bow_loss_per_sequence(mu, ids, ordinary, "sum").item() == pytest.approx(summed, rel=1e-6)
    # released code: weight 1/n with n = 3 ordinary tokens (repeats counted)
    assert bow_loss_per_sequence(mu, ids, ordinary, "per_token").item() == pytest.approx(summed / 3, rel=1e-6)


def test_bow_pool_by_hand():
    logits = torch.tensor([[[9.0, 0.0], [1.0, 5.0], [3.0, 2.0], [7.0, 8.0]]])  # [1, L=4, V=2]
    mask = torch.tensor([[False, True, True, False]])
    assert bow_pool(logits, mask).tolist() == [[3.0, 5.0]]


def test_combine_losses_by_hand():
    t = torch.tensor
    output = PretrainingOutput(
        encoder_mlm_sum=t(6.0), encoder_mlm_count=t(3), encoder_mlm_correct=t(1),
        decoder_sum=t(10.0), decoder_count=t(4), decoder_correct=t(2),
        bow_sum=t(8.0), bow_count=t(2),
    )
    counts = local_counts(output)
    loss, logged = combine_losses(output, PretrainingOptions(), counts)
    assert loss.item() == pytest.approx(2.0 + 2.5 + 0.1 * 4.0)
    assert logged["acc_encoder_mlm"].item() == pytest.approx(1 / 3)
    assert logged["acc_decoder"].item() == pytest.approx(0.5)
    retromae, _ = combine_losses(output, PretrainingOptions(objective="retromae"), counts)
    assert retromae.item() == pytest.approx(4.5)
    bow_only, _ = combine_losses(output, PretrainingOptions(objective="bow_only", bow_loss_weight=1.0), counts)
    assert bow_only.item() == pytest.approx(6.0)
    mlm, terms = combine_losses(output, PretrainingOptions(objective="mlm"), counts)
    assert mlm.item() == pytest.approx(2.0) and set(terms) == {"loss_encoder_mlm", "acc_encoder_mlm"}
    # across 2 processes: global counts and scale 2 (DDP then averages the two halves)
    doubled = {name: 2 * count for name, count in counts.items()}
    half, _ = combine_losses(output, PretrainingOptions(), doubled, scale=2.0)
    assert half.item() == pytest.approx(loss.item())


def tiny_model(tokenizer, objective="dupmae", **options):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = DupMAEForPretraining(BertForMaskedLM(config), PretrainingOptions(objective=objective, **options))
    for parameter in model.parameters():  # make the fresh head non-trivial
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("objective", ["dupmae", "mlm"])
def test_encoder_mlm_matches_transformers_loss(wordpiece_tokenizer, objective):
    model = tiny_model(wordpiece_tokenizer, objective)
    batch, _ = collate(wordpiece_tokenizer, TEXTS, model.options)
    output = model(**batch)
    reference = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              labels=batch["labels"]).loss
    ours = output.encoder_mlm_sum / output.encoder_mlm_count
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def naive_bow(model, batch, exclude_special=False, exclude_masked=False, reduction="per_token"):
    logits = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    losses = []
    for b in range(logits.shape[0]):
        positions = [j for j in range(1, logits.shape[1]) if batch["attention_mask"][b, j]
                     and not (exclude_special and not batch["ordinary_mask"][b, j])
                     and not (exclude_masked and batch["labels"][b, j] != -100)]
        mu = torch.stack([logits[b, j] for j in positions]).max(dim=0).values
        log_probs = F.log_softmax(mu, dim=-1)
        ordinary_ids = [int(t) for t, o in zip(batch["original_input_ids"][b], batch["ordinary_mask"][b]) if o]
        loss = -sum(log_probs[t] for t in set(ordinary_ids))
        losses.append(loss / len(ordinary_ids) if reduction == "per_token" else loss)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("settings", [
    {}, {"bow_pool_exclude_special": True}, {"bow_pool_exclude_masked": True}, {"bow_loss_reduction": "sum"},
])
def test_bow_loss_matches_naive_computation(wordpiece_tokenizer, settings):
    model = tiny_model(wordpiece_tokenizer, "dupmae", **settings)
    batch, _ = collate(wordpiece_tokenizer, TEXTS, model.options)
    output = model(**batch)
    naive = naive_bow(model, batch, settings.get("bow_pool_exclude_special", False),
                      settings.get("bow_pool_exclude_masked", False), settings.get("bow_loss_reduction", "per_token"))
    assert (output.bow_sum / output.bow_count).item() == pytest.approx(naive.item(), rel=1e-5)


def naive_decoder_row(layer, query, content, visible):
    """One decoder row the slow way: `query` `[d]`, `content` `[L, d]`, `visible` `[L]` bool -> `[d]`."""
    heads, size = layer.num_heads, layer.head_dim
    keys, values = layer.key(content[visible]), layer.value(content[visible])  # [n, d]
    q = layer.query(query)
    parts = []
    for h in range(heads):
        sl = slice(h * size, (h + 1) * size)
        weights = torch.softmax(keys[:, sl] @ q[sl] / math.sqrt(size), dim=0)
        parts.append(weights @ values[:, sl])
    x = layer.attention_norm(query + layer.attention_output(torch.cat(parts)))
    return layer.output_norm(x + layer.output(layer.activation(layer.intermediate(x))))


@pytest.mark.parametrize("decoder_query", ["embedding", "plain"])
def test_decoder_loss_matches_row_by_row_computation(wordpiece_tokenizer, decoder_query):
    model = tiny_model(wordpiece_tokenizer, "retromae", decoder_query=decoder_query)
    batch, _ = collate(wordpiece_tokenizer, TEXTS, model.options)
    output = model(**batch)
    embeddings = model.encoder.bert.embeddings
    hidden = model.encoder.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    total, count = 0.0, 0
    for b in range(len(TEXTS)):
        h = hidden[b, 0]
        content = embeddings(input_ids=batch["original_input_ids"][b : b + 1])[0].clone()
        content[0] = h
        for i in range(batch["input_ids"].shape[1]):
            if not batch["ordinary_mask"][b, i]:
                continue
            position = embeddings.position_embeddings.weight[i]
            if decoder_query == "embedding":  # LayerNorm(h + p_i + type_0)
                query = embeddings.LayerNorm(h + position + embeddings.token_type_embeddings.weight[0])
            else:
                query = h + position
            row = naive_decoder_row(model.decoder, query, content, batch["decoder_attention_mask"][b, i])
            logits = model.encoder.cls(row)
            total += F.cross_entropy(logits[None], batch["original_input_ids"][b, i : i + 1]).item()
            count += 1
    assert output.decoder_count.item() == count
    assert (output.decoder_sum / output.decoder_count).item() == pytest.approx(total / count, rel=1e-5)


def test_decoder_row_ignores_hidden_positions_and_uses_visible_ones(wordpiece_tokenizer):
    model = tiny_model(wordpiece_tokenizer, "dupmae")
    torch.manual_seed(1)
    query, content = torch.randn(1, 6, 32), torch.randn(1, 6, 32)
    visible = torch.ones(1, 6, 6, dtype=torch.bool)
    visible[0, 2, 4] = visible[0, 2, 2] = False  # row 2 may not see position 4, nor itself
    base = model.decoder(query, content, visible)
    for position in (2, 4):  # perturbing a hidden position leaves row 2 unchanged ...
        perturbed = content.clone()
        perturbed[0, position] += 10.0
        out = model.decoder(query, perturbed, visible)
        assert torch.allclose(out[0, 2], base[0, 2], atol=1e-6)
        assert not torch.allclose(out[0, 1], base[0, 1], atol=1e-3)  # ... but changes a row that sees it
    perturbed = content.clone()
    perturbed[0, 3] += 10.0  # a visible position changes row 2
    assert not torch.allclose(model.decoder(query, perturbed, visible)[0, 2], base[0, 2], atol=1e-3)


def test_mlm_objective_has_no_decoder_and_zero_extra_terms(wordpiece_tokenizer):
    model = tiny_model(wordpiece_tokenizer, "mlm")
    assert model.decoder is None
    batch, _ = collate(wordpiece_tokenizer, TEXTS, model.options)
    output = model(**batch)
    assert output.decoder_count.item() == 0 and output.bow_count.item() == 0


def test_gradients_reach_encoder_decoder_and_head(wordpiece_tokenizer):
    model = tiny_model(wordpiece_tokenizer, "dupmae").train()
    batch, _ = collate(wordpiece_tokenizer, TEXTS, model.options)
    output = model(**batch)
    loss, _ = combine_losses(output, model.options, local_counts(output))
    loss.backward()
    for name, parameter in model.named_parameters():
        if "pooler" in name:
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
