"""CPU dropout masks four to a random draw: their distribution, the module's values and gradients,
and the swap inside a transformers model."""

import pytest
import torch
from torch import nn

from dupmae.platform.cpu.fast_dropout import FastDropout, keep_mask, rounded_drop_probability, use_fast_dropout


def test_rounded_probability_and_scale():
    assert rounded_drop_probability(0.1) == 3277 / 32768
    assert rounded_drop_probability(0.0) == 0.0
    keep, scale = keep_mask((5,), 0.1)
    assert scale == pytest.approx(32768 / (32768 - 3277), rel=1e-15)
    assert keep.dtype == torch.bool and keep.shape == (5,)
    assert keep_mask((3, 4), 0.0)[0].all()
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout probability"):
            keep_mask((3,), bad)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_rate_is_p_in_every_field_and_neighbours_are_independent(p):
    """Each int64 draw feeds four elements; the top field's sign bit is always 0, so a mask that
    used it would keep position 3 of every 4 at another rate. 4M elements: 6 standard errors."""
    torch.manual_seed(0)
    count = 4_000_000
    keep = keep_mask((count,), p)[0].double()
    kept = 1 - rounded_drop_probability(p)
    tolerance = 6 * (kept * (1 - kept) / (count / 4)) ** 0.5
    for field in range(4):
        assert keep[field::4].mean().item() == pytest.approx(kept, abs=tolerance)
    both = (keep[:-1] * keep[1:]).mean().item()  # P(neighbours both kept) = kept² if independent
    assert both == pytest.approx(kept * kept, abs=2 * tolerance)


def test_masks_follow_the_global_seed_and_an_explicit_generator():
    torch.manual_seed(7)
    first = keep_mask((3, 50), 0.2)[0]
    torch.manual_seed(7)
    assert torch.equal(first, keep_mask((3, 50), 0.2)[0])
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(first, keep_mask((3, 50), 0.2, generator=generator)[0])
    assert not torch.equal(first, keep_mask((3, 50), 0.2)[0])  # the stream moves on


def test_fast_dropout_values_and_gradients_element_by_element():
    dropout = FastDropout(0.25)
    x = torch.randn(4, 6, 8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x)
    torch.manual_seed(3)
    keep, scale = keep_mask(x.shape, 0.25)
    assert 0 < keep.sum() < keep.numel()
    torch.testing.assert_close(y, torch.where(keep, x * scale, torch.zeros_like(x)), rtol=0, atol=0)
    upstream = torch.randn_like(x)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, torch.where(keep, upstream * scale, torch.zeros_like(x)), rtol=0, atol=0)
    # dtype is kept (bf16 under autocast) and eval mode is the identity
    assert dropout(x.detach().bfloat16()).dtype == torch.bfloat16
    dropout.eval()
    assert dropout(x) is x


def test_fast_dropout_mean_is_the_input():
    torch.manual_seed(0)
    ones = torch.ones(2_000_000)
    assert FastDropout(0.1)(ones).mean().item() == pytest.approx(1.0, abs=2e-3)


def test_use_fast_dropout_swaps_every_dropout_of_a_bert_and_keeps_its_outputs():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = BertForMaskedLM(config).eval()
    dropouts = [m for m in model.modules() if type(m) is nn.Dropout]
    ids = torch.randint(0, 50, (2, 9))
    before = model(input_ids=ids).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_fast_dropout(model) == len(dropouts) > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert all(m.p == 0.1 for m in model.modules() if isinstance(m, FastDropout))
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    trained = model(input_ids=ids).logits
    assert not torch.allclose(trained, before)  # dropout is active in training
    assert use_fast_dropout(model) == 0  # already swapped


def test_lean_attention_draws_fast_masks_once_the_dropouts_are_swapped(monkeypatch):
    """Encoder (via transformers' attention interface) and decoder attention follow the swap."""
    from transformers import BertConfig, BertForMaskedLM

    import dupmae.platform.cpu.lean_attention as lean_attention
    from dupmae.config import PretrainingOptions
    from dupmae.modeling.pretraining import DupMAEForPretraining
    from dupmae.platform import Accelerations, prepare

    drawn = []

    def spy(*args, fast=True, **kwargs):
        drawn.append(fast)
        return keep_mask(*args, fast=fast, **kwargs)

    monkeypatch.setattr(lean_attention, "keep_mask", spy)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = DupMAEForPretraining(BertForMaskedLM(config), PretrainingOptions())
    prepare(model, "cpu", Accelerations(fast_dropout=False, keep_freed_memory=False))
    model.train()
    ids = torch.randint(5, 50, (2, 9))

    def attention_masks_drawn():
        drawn.clear()
        model.encoder.bert(input_ids=ids)
        stream = torch.randn(2, 9, 16)
        model.decoder(stream, stream, torch.ones(2, 9, 9, dtype=torch.bool))
        return list(drawn)

    assert attention_masks_drawn() == [False, False, False]  # 2 encoder layers + the decoder
    prepare(model, "cpu", Accelerations(keep_freed_memory=False))  # the defaults: fast dropout, lean attention
    assert attention_masks_drawn() == [True, True, True]
    assert isinstance(model.decoder.dropout, FastDropout)
