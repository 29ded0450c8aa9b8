"""Lean attention with dropout against the plain computation with the same dropout mask: values and gradients."""

import pytest
import torch

from dupmae.platform.cpu.fast_dropout import keep_mask, rounded_drop_probability
from dupmae.platform.cpu.lean_attention import lean_dropout_attention, use_lean_attention


def reference(q, k, v, mask, keep, dropout_p, scale, fast_masks=False):
    """softmax(q kᵀ scale + mask) ⊙ keep / (1 - p') @ v, the math path written out (p' = the drop
    probability the mask realises: p, or p rounded to 2⁻¹⁵ with fast masks)."""
    dropout_p = rounded_drop_probability(dropout_p) if fast_masks else dropout_p
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return (torch.softmax(scores, dim=-1) * keep / (1 - dropout_p)) @ v


def same_mask_run(q, k, v, mask, dropout_p, chunk, seed=0, fast_masks=False):
    """Run the lean function and recover the dropout mask it drew (same global RNG state)."""
    torch.manual_seed(seed)
    out = lean_dropout_attention(q, k, v, mask, dropout_p, chunk=chunk, fast_masks=fast_masks)
    torch.manual_seed(seed)
    keep, _ = keep_mask((*q.shape[:-1], k.shape[-2]), dropout_p, fast=fast_masks)
    return out, keep


@pytest.mark.parametrize("fast_masks", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "bool-rows", "float-keys"])
def test_values_and_gradients_match_the_math_path_with_the_same_mask(mask_kind, fast_masks):
    torch.manual_seed(1)
    batch, heads, length, dim = 2, 3, 7, 4
    q, k, v = (torch.randn(batch, heads, length, dim, dtype=torch.float64, requires_grad=True) for _ in range(3))
    if mask_kind == "bool-rows":  # per-row masks as the decoder uses, every row sees column 0
        mask = torch.rand(batch, 1, length, length) < 0.6
        mask[..., 0] = True
    elif mask_kind == "float-keys":  # additive padding mask over keys, as a transformers encoder passes
        mask = torch.zeros(batch, 1, 1, length, dtype=torch.float64)
        mask[1, ..., -2:] = torch.finfo(torch.float64).min
    else:
        mask = None
    grad = torch.randn(batch, heads, length, dim, dtype=torch.float64)
    out, keep = same_mask_run(q, k, v, mask, 0.3, chunk=3, fast_masks=fast_masks)  # chunks of 3 rows: 3 + 3 + 1
    lean_grads = torch.autograd.grad(out, (q, k, v), grad)
    expected = reference(q, k, v, mask, keep, 0.3, dim**-0.5, fast_masks)
    assert torch.allclose(out, expected, atol=1e-12)
    for lean, plain in zip(lean_grads, torch.autograd.grad(expected, (q, k, v), grad)):
        assert torch.allclose(lean, plain, atol=1e-10)
    assert (~keep).any() and keep.any()  # the test exercised both kept and dropped scores


def test_bf16_close_to_float32_and_no_dropout_is_sdpa():
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 2, 16, 8) for _ in range(3))
    out, keep = same_mask_run(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, 0.1, chunk=5)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), reference(q, k, v, None, keep, 0.1, 8**-0.5), atol=3e-2)
    no_dropout = lean_dropout_attention(q, k, v, None, 0.0)
    assert torch.equal(no_dropout, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    with pytest.raises(ValueError, match="dropout_p"):
        lean_dropout_attention(q, k, v, None, 1.0)


def test_a_row_that_sees_nothing_gets_zeros_not_nan():
    q, k, v = (torch.randn(1, 1, 3, 2, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, True, False], [False, False, False], [True, False, True]])
    out = lean_dropout_attention(q, k, v, mask, 0.5)
    out.sum().backward()
    assert torch.equal(out[0, 0, 1], torch.zeros(2)) and torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_bert_encoder_switched_to_lean_attention_equals_sdpa():
    from transformers import BertConfig, BertModel

    torch.manual_seed(3)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, attn_implementation="sdpa")
    model = BertModel(config).eval()
    ids = torch.randint(5, config.vocab_size, (2, 9))
    attention = torch.ones(2, 9, dtype=torch.long)
    attention[1, 6:] = 0
    expected = model(input_ids=ids, attention_mask=attention).last_hidden_state
    assert use_lean_attention(model)
    assert torch.allclose(model(input_ids=ids, attention_mask=attention).last_hidden_state, expected, atol=1e-6)
    model.train()  # dropout on: the lean path runs, padding keys still masked, gradients flow
    hidden = model(input_ids=ids, attention_mask=attention).last_hidden_state
    hidden.sum().backward()
    assert torch.isfinite(hidden).all() and model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
