"""The memory-lean losses against the naive full-logits computations: values, gradients, the model."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

import dupmae.modeling.pretraining as pretraining
from dupmae.config import PretrainingOptions
from dupmae.modeling.heads import mlm_head_matches_split, split_mlm_head
from dupmae.modeling.lean_losses import chunked_max_pool_logits, fused_linear_cross_entropy, max_over_positions
from dupmae.modeling.pretraining import DupMAEForPretraining, bow_pool, combine_losses, local_counts
from test_masking import TEXTS, collate

OBJECTIVES = ("dupmae", "retromae", "bow_only", "mlm")


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


# -- the split head --------------------------------------------------------------------------------


def tiny_encoder(family, tokenizer, vocab_size=None):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size or len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "bert":
        encoder = BertForMaskedLM(BertConfig(max_position_embeddings=64, **common))
    else:
        encoder = RobertaForMaskedLM(RobertaConfig(max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id,
                                                   bos_token_id=tokenizer.cls_token_id,
                                                   eos_token_id=tokenizer.sep_token_id, **common))
    for parameter in encoder.parameters():  # make the fresh head (bias, LayerNorm) non-trivial
        parameter.data.add_(0.02 * torch.randn_like(parameter))
    return encoder.eval()


@pytest.fixture(params=["bert", "roberta"])
def family_and_tokenizer(request, wordpiece_tokenizer, bpe_tokenizer):
    return request.param, wordpiece_tokenizer if request.param == "bert" else bpe_tokenizer


def test_split_head_reproduces_the_head_exactly(family_and_tokenizer):
    family, tokenizer = family_and_tokenizer
    encoder = tiny_encoder(family, tokenizer)
    head = encoder.cls if family == "bert" else encoder.lm_head
    split = split_mlm_head(head)
    assert split is not None and mlm_head_matches_split(head, split)
    assert split.weight is encoder.get_input_embeddings().weight  # tied: [V, d]
    assert split.bias.shape == (len(tokenizer),)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        assert split.transform(x).shape == (2, 5, 32)
        assert torch.equal(split(x), head(x))
        assert torch.equal(F.linear(split.transform(x), split.weight, split.bias), head(x))


class OpaqueHead(torch.nn.Module):
    """A head whose structure the split does not know (same function)."""

    def __init__(self, head):
        super().__init__()
        self.inner = head

    def forward(self, x):
        return self.inner(x)


def test_unknown_head_falls_back_to_the_naive_path_with_one_warning(wordpiece_tokenizer):
    reference = DupMAEForPretraining(tiny_encoder("bert", wordpiece_tokenizer), PretrainingOptions())
    encoder = tiny_encoder("bert", wordpiece_tokenizer)  # same seed: same weights, same decoder below
    encoder.cls = OpaqueHead(encoder.cls)
    model = DupMAEForPretraining(encoder, PretrainingOptions())
    batch, _ = collate(wordpiece_tokenizer, TEXTS, model.options)
    with pytest.warns(UserWarning, match="does not split"):
        output = model(**batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        model(**batch)
    expected = reference(**batch)
    for name in ("encoder_mlm_sum", "decoder_sum", "bow_sum"):
        assert torch.allclose(getattr(output, name), getattr(expected, name), rtol=1e-5), name


def test_a_head_that_computes_something_else_is_not_split(bpe_tokenizer):
    head = tiny_encoder("roberta", bpe_tokenizer).lm_head

    class TanhGeluHead(type(head)):  # same attributes, other activation
        def forward(self, x):
            return self.decoder(self.layer_norm(F.gelu(self.dense(x), approximate="tanh")))

    head.__class__ = TanhGeluHead
    split = split_mlm_head(head)
    assert split is not None and not mlm_head_matches_split(head, split)


# -- the chunked max-pool --------------------------------------------------------------------------


def random_pool_case(batch=3, length=10, width=6, vocab=13, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    transformed = torch.randn(batch, length, width, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, width, generator=generator, dtype=dtype, requires_grad=True)
    bias = torch.randn(vocab, generator=generator, dtype=dtype, requires_grad=True)
    pool_mask = torch.rand(batch, length, generator=generator) > 0.3
    pool_mask[:, 0] = False  # like [CLS]
    pool_mask[0, 7:] = False  # padding at the end of sequence 0
    pool_mask[:, 1] = True
    return transformed, weight, bias, pool_mask


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 64])  # 3, 4 do not divide L = 10; 10 and 64 >= L
def test_chunked_max_pool_matches_naive_values_and_gradients(chunk_size):
    transformed, weight, bias, pool_mask = random_pool_case()
    upstream = torch.randn(3, 13, generator=torch.Generator().manual_seed(1))
    lean = chunked_max_pool_logits(transformed, weight, bias, pool_mask, chunk_size)  # [B, V]
    naive = bow_pool(F.linear(transformed, weight, bias), pool_mask)  # [B, L, V] -> [B, V]
    assert lean.shape == (3, 13)
    assert torch.allclose(lean, naive, atol=1e-5, rtol=1e-5)
    lean_grads = grads((lean * upstream).sum(), (transformed, weight, bias))
    naive_grads = grads((naive * upstream).sum(), (transformed, weight, bias))
    for name, ours, expected in zip(("transformed", "weight", "bias"), lean_grads, naive_grads):
        assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_max_over_positions_equals_max_with_ties_infinities_and_nan(dtype):
    """The pooling-kernel max equals `max(dim=1)` element by element: values, and indices where
    several positions tie (the first wins), where a column is all -inf, and where a NaN sits."""
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(0)).to(dtype)
    logits[0, 4:] = logits[0, 2]  # ties between positions 2, 4, 5, 6 (and bf16 rounding makes more)
    logits[1] = float("-inf")  # a sequence with nothing to pool
    logits[2, :, :5] = float("-inf")
    logits[2, 3, 7] = float("nan")
    values, indices = max_over_positions(logits)
    expected_values, expected_indices = logits.max(dim=1)
    assert values.shape == indices.shape == (3, 50) and values.dtype == dtype
    assert torch.equal(values.isnan(), expected_values.isnan()) and values.isnan().sum() == 1
    finite = ~expected_values.isnan()
    assert torch.equal(values[finite], expected_values[finite])
    assert torch.equal(indices, expected_indices)
    assert (indices[0] <= 3).all()  # the first of the tied positions
    single = logits[:, :1]  # one position: itself, index 0
    assert torch.equal(max_over_positions(single)[1], torch.zeros(3, 50, dtype=torch.long))


def test_chunked_max_pool_row_without_positions_gets_minus_infinity_and_no_gradient():
    transformed, weight, bias, pool_mask = random_pool_case()
    pool_mask[2] = False
    lean = chunked_max_pool_logits(transformed, weight, bias, pool_mask, 4)
    assert torch.isinf(lean[2]).all() and (lean[2] < 0).all() and torch.isfinite(lean[:2]).all()
    grad_transformed, grad_weight, grad_bias = grads(lean[:2].sum() + 0 * lean[2].clamp(min=0).sum(),
                                                     (transformed, weight, bias))
    assert not grad_transformed[2].any()
    naive = bow_pool(F.linear(transformed, weight, bias), pool_mask)
    expected = grads(naive[:2].sum(), (transformed, weight, bias))
    assert torch.allclose(grad_weight, expected[1], atol=1e-5) and torch.allclose(grad_bias, expected[2], atol=1e-5)


def test_chunked_max_pool_gradcheck_float64():
    transformed, weight, bias, pool_mask = random_pool_case(batch=2, length=5, width=3, vocab=4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, b: chunked_max_pool_logits(x, w, b, pool_mask, 2),
                                    (transformed, weight, bias))


def test_chunked_max_pool_under_bfloat16_autocast_matches_naive():
    transformed, weight, bias, pool_mask = random_pool_case(batch=2, length=9, width=16, vocab=40)
    upstream = torch.randn(2, 40, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lean = chunked_max_pool_logits(transformed, weight, bias, pool_mask, 4)
        naive = bow_pool(F.linear(transformed, weight, bias), pool_mask)
    assert lean.dtype == naive.dtype == torch.bfloat16
    assert torch.allclose(lean.float(), naive.float(), atol=2e-2, rtol=1e-2)
    lean_grads = grads((lean.float() * upstream).sum(), (transformed, weight, bias))
    naive_grads = grads((naive.float() * upstream).sum(), (transformed, weight, bias))
    for name, ours, expected in zip(("transformed", "weight", "bias"), lean_grads, naive_grads):
        assert ours.dtype == torch.float32, name
        assert torch.allclose(ours, expected, atol=5e-2, rtol=2e-2), name


# -- the fused cross-entropy -----------------------------------------------------------------------


def random_ce_case(rows=11, width=6, vocab=13, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(vocab, width, generator=generator, dtype=dtype, requires_grad=True)
    bias = torch.randn(vocab, generator=generator, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    with torch.no_grad():
        targets[::2] = F.linear(x[::2], weight, bias).argmax(-1)  # some rows predicted right
    return x, weight, bias, targets


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 100])
def test_fused_cross_entropy_matches_naive_values_and_gradients(chunk_size):
    x, weight, bias, targets = random_ce_case()
    loss, correct = fused_linear_cross_entropy(x, weight, bias, targets, chunk_size)
    logits = F.linear(x, weight, bias)  # [T, V]
    naive = F.cross_entropy(logits, targets, reduction="sum")
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert torch.allclose(loss, naive, rtol=1e-6)
    assert correct.item() == (logits.argmax(-1) == targets).sum().item() > 0
    for name, ours, expected in zip(("x", "weight", "bias"), grads(3.0 * loss, (x, weight, bias)),
                                    grads(3.0 * naive, (x, weight, bias))):
        assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5), name


def test_fused_cross_entropy_without_grad_and_without_rows():
    x, weight, bias, targets = random_ce_case()
    with torch.no_grad():
        loss, _ = fused_linear_cross_entropy(x, weight, bias, targets, 4)
    assert not loss.requires_grad
    assert torch.allclose(loss, F.cross_entropy(F.linear(x, weight, bias), targets, reduction="sum"))
    loss, correct = fused_linear_cross_entropy(x[:0], weight, bias, targets[:0], 4)
    assert loss.item() == 0 and correct.item() == 0
    assert not any(g.any() for g in grads(loss, (weight, bias)))


def test_fused_cross_entropy_gradcheck_float64():
    x, weight, bias, targets = random_ce_case(rows=5, width=3, vocab=4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, w, b: fused_linear_cross_entropy(a, w, b, targets, 2)[0],
                                    (x, weight, bias))


def test_fused_cross_entropy_under_bfloat16_autocast_matches_naive():
    x, weight, bias, targets = random_ce_case(rows=20, width=16, vocab=40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, correct = fused_linear_cross_entropy(x, weight, bias, targets, 8)
        logits = F.linear(x, weight, bias)
        naive = F.cross_entropy(logits.float(), targets, reduction="sum")
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.allclose(loss, naive, rtol=1e-4)  # the same bf16 logits, summed in float32
    assert correct.item() == (logits.argmax(-1) == targets).sum().item()
    for name, ours, expected in zip(("x", "weight", "bias"), grads(loss, (x, weight, bias)),
                                    grads(naive, (x, weight, bias))):
        assert ours.dtype == torch.float32, name
        assert torch.allclose(ours, expected, atol=5e-2, rtol=2e-2), name


# -- the whole model: lean vs naive ----------------------------------------------------------------


def model_pair(family, tokenizer, objective, vocab_size=None, **settings):
    """The same weights twice: lean losses (small chunks, several per batch) and the naive path."""
    lean = DupMAEForPretraining(tiny_encoder(family, tokenizer, vocab_size),
                                PretrainingOptions(objective=objective, loss_chunk_size=7, **settings))
    naive = DupMAEForPretraining(tiny_encoder(family, tokenizer, vocab_size),
                                 PretrainingOptions(objective=objective, lean_losses=False, **settings))
    naive.load_state_dict(lean.state_dict())
    return lean, naive


def forward_backward(model, batch):
    model.zero_grad()
    output = model(**batch)
    loss, _ = combine_losses(output, model.options, local_counts(output))
    loss.backward()
    return output, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_model_lean_and_naive_losses_agree(family_and_tokenizer, objective):
    family, tokenizer = family_and_tokenizer
    lean, naive = model_pair(family, tokenizer, objective)
    assert lean.lean_head() is not None and naive.lean_head() is None
    batch, _ = collate(tokenizer, TEXTS, lean.options)
    lean_output, lean_grads = forward_backward(lean, batch)
    naive_output, naive_grads = forward_backward(naive, batch)
    for name in ("encoder_mlm", "decoder", "bow"):
        assert torch.allclose(getattr(lean_output, f"{name}_sum"), getattr(naive_output, f"{name}_sum"),
                              rtol=1e-5, atol=1e-6), name
        assert torch.equal(getattr(lean_output, f"{name}_count"), getattr(naive_output, f"{name}_count")), name
    assert lean_output.encoder_mlm_correct.item() == naive_output.encoder_mlm_correct.item()
    assert lean_output.decoder_correct.item() == naive_output.decoder_correct.item()
    assert lean_grads.keys() == naive_grads.keys() and len(lean_grads) > 10
    for name, gradient in lean_grads.items():
        assert torch.allclose(gradient, naive_grads[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("settings", [{"bow_pool_exclude_special": True, "bow_pool_exclude_masked": True},
                                      {"bow_loss_reduction": "sum"}])
def test_model_lean_and_naive_agree_with_pooling_options(wordpiece_tokenizer, settings):
    lean, naive = model_pair("bert", wordpiece_tokenizer, "dupmae", **settings)
    batch, _ = collate(wordpiece_tokenizer, TEXTS, lean.options)
    lean_output, lean_grads = forward_backward(lean, batch)
    naive_output, naive_grads = forward_backward(naive, batch)
    assert torch.allclose(lean_output.bow_sum, naive_output.bow_sum, rtol=1e-5)
    for name, gradient in lean_grads.items():
        assert torch.allclose(gradient, naive_grads[name], rtol=1e-4, atol=1e-6), name


def largest_allocation(function) -> int:
    """Bytes of the largest block any single op allocated while `function` ran (forward and backward)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        function()
    return max(event.self_cpu_memory_usage for event in prof.events())


def test_lean_model_never_builds_full_logits(wordpiece_tokenizer):
    vocab = 1024  # > the tokenizer's: the logits, not the model's other activations, dominate
    lean, naive = model_pair("bert", wordpiece_tokenizer, "dupmae", vocab_size=vocab)
    batch, _ = collate(wordpiece_tokenizer, TEXTS * 3, lean.options)
    batch_size, length = batch["input_ids"].shape  # B * L = 9 * 24 >> d = 32
    full = batch_size * length * vocab * 4  # [B, L, V] float32
    assert largest_allocation(lambda: forward_backward(naive, batch)) >= full  # the probe sees them
    # lean: chunks [7, V] and [B, 0..2, V], [V, d] gradients, a sparse routing of B*V entries
    assert largest_allocation(lambda: forward_backward(lean, batch)) < full / 5


# -- the options reach the model -------------------------------------------------------------------


def test_lean_loss_flags_and_config_keys_reach_the_model(tmp_path, wordpiece_tokenizer, monkeypatch):
    from dupmae.training.pretrain import parse_arguments

    (tmp_path / "data").mkdir()
    (tmp_path / "model").mkdir()
    required = ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--output", str(tmp_path / "o")]
    _, options, _, _ = parse_arguments(required)
    assert options.lean_losses is True and options.loss_chunk_size == 1024
    _, options, _, _ = parse_arguments([*required, "--lean-losses", "false", "--loss-chunk-size", "9"])
    assert options.lean_losses is False and options.loss_chunk_size == 9
    config = tmp_path / "run.yaml"
    config.write_text("lean_losses: false\nloss_chunk_size: 12\n")
    _, from_file, _, _ = parse_arguments([*required, "--config", str(config)])
    assert from_file.lean_losses is False and from_file.loss_chunk_size == 12
    with pytest.raises(ValueError, match="loss_chunk_size"):
        PretrainingOptions(loss_chunk_size=0)

    calls = []
    real_pool, real_ce = pretraining.chunked_max_pool_logits, pretraining.fused_linear_cross_entropy
    monkeypatch.setattr(pretraining, "chunked_max_pool_logits",
                        lambda *a: calls.append(("pool", a[-1])) or real_pool(*a))
    monkeypatch.setattr(pretraining, "fused_linear_cross_entropy",
                        lambda *a: calls.append(("ce", a[-1])) or real_ce(*a))
    batch, _ = collate(wordpiece_tokenizer, TEXTS, options)
    DupMAEForPretraining(tiny_encoder("bert", wordpiece_tokenizer), options)(**batch)
    assert calls == []  # lean_losses false: the naive path
    lean = PretrainingOptions(loss_chunk_size=9)
    DupMAEForPretraining(tiny_encoder("bert", wordpiece_tokenizer), lean)(**batch)
    assert calls == [("pool", 9 // len(TEXTS)), ("ce", 9), ("ce", 9)]  # BoW, encoder MLM, decoder


@pytest.mark.parametrize("activation", ["log1p_relu", "relu", "none"])
def test_encoder_sparse_vector_without_full_logits_matches_naive(activation):
    """DupMAEEncoder's sparse part through the chunked max-pool equals activate(max(Head(H))) over
    the [B, L, V] logits, in values and in the gradients of every parameter."""
    from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                       attention_probs_dropout_prob=0.0))
    encoder = DupMAEEncoder(model, RepresentationConfig(representation="sparse", sparse_activation=activation))
    input_ids = torch.randint(5, 40, (3, 9))
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0

    def run(lean: bool):
        encoder._head_splits = None if lean else False  # False = the head is treated as not splittable
        encoder.zero_grad()
        sparse = encoder(input_ids, attention_mask).sparse  # [3, 40]
        (sparse * torch.linspace(-1, 1, 40)).sum().backward()
        return sparse.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    lean, lean_grads = run(True)
    assert encoder._head_splits is True  # the lean path was taken
    naive, naive_grads = run(False)
    torch.testing.assert_close(lean, naive, rtol=1e-5, atol=1e-6)
    hidden = model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    logits = model.cls(hidden)[:, 1:].masked_fill(~attention_mask.bool()[:, 1:, None], float("-inf")).amax(dim=1)
    expected = {"relu": logits.relu(), "log1p_relu": logits.relu().log1p(), "none": logits}[activation]
    torch.testing.assert_close(lean, expected.detach(), rtol=1e-5, atol=1e-6)  # by hand
    assert lean_grads.keys() == naive_grads.keys()
    for name, gradient in lean_grads.items():
        torch.testing.assert_close(gradient, naive_grads[name], rtol=1e-4, atol=1e-6, msg=name)
