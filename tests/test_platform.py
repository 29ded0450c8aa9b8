"""The platform layer: precision per device (the probe faked both ways), the oneDNN probe's fallback,
`prepare` applying each path where it fits, the vocabulary kernels and compiled layers giving the same
losses, and the method code free of device branches."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dupmae.platform.cpu.onednn as onednn
import dupmae.platform.precision as precision
from dupmae.config import PretrainingOptions
from dupmae.modeling.pretraining import DupMAEForPretraining
from dupmae.platform import Accelerations, prepare
from dupmae.platform.cpu.fast_dropout import FastDropout
from dupmae.platform.precision import native_bf16, parse_bf16, resolve_bf16
from test_lean_losses import forward_backward
from test_masking import TEXTS, collate

SRC = Path(__file__).resolve().parents[1] / "src" / "dupmae"


@pytest.fixture()
def fake_cpu(monkeypatch):
    """Set the CPU's flags: `fake_cpu("avx2 avx512f")`."""
    def set_flags(flags: str, machine: str = "x86_64"):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags.split()))
        monkeypatch.setattr(precision.platform, "machine", lambda: machine)
    return set_flags


@pytest.fixture()
def fake_gpu(monkeypatch):
    def set_capability(major: int, minor: int = 0, name: str = "Fake GPU"):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return set_capability


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx2 avx512f avx512bw", False),          # AVX-512 without its bf16 extension
    ("fpu sse avx2", False),                           # Zen 2, most laptops
    ("fpu avx2 avx512f avx512_bf16", True),             # Zen 4/5, Cooper Lake
    ("fpu avx2 avx512f amx_tile amx_bf16", True),       # Sapphire Rapids
])
def test_cpu_bf16_probe_reads_the_flags(fake_cpu, flags, native):
    fake_cpu(flags)
    verdict, reason = native_bf16("cpu")
    assert verdict is native
    assert ("avx512_bf16" in reason or "amx_bf16" in reason)


def test_cpu_bf16_probe_says_no_where_it_cannot_tell(fake_cpu):
    fake_cpu("", machine="x86_64")
    assert native_bf16("cpu") == (False, "the CPU's flags could not be read from /proc/cpuinfo")
    fake_cpu("fp asimd bf16", machine="aarch64")
    verdict, reason = native_bf16("cpu")
    assert not verdict and "aarch64" in reason


@pytest.mark.parametrize("capability, native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_cuda_bf16_probe_reads_the_compute_capability(fake_gpu, capability, native):
    fake_gpu(*capability, name="NVIDIA Test")
    verdict, reason = native_bf16("cuda")
    assert verdict is native
    assert f"compute capability {capability[0]}.{capability[1]}" in reason and "NVIDIA Test" in reason


def test_real_cpu_flags_parse():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset)
    if Path("/proc/cpuinfo").is_file() and "flags" in Path("/proc/cpuinfo").read_text():
        assert "fpu" in flags or "sse2" in flags


def test_auto_follows_the_hardware_and_says_why(fake_cpu, caplog):
    fake_cpu("avx2")
    with caplog.at_level(logging.INFO, logger="dupmae.platform.precision"):
        assert resolve_bf16("auto", "cpu", "training") is False
    assert "precision: fp32 for training on cpu, because the CPU has neither avx512_bf16 nor amx_bf16" in caplog.text
    fake_cpu("avx2 avx512_bf16")
    assert resolve_bf16(None, "cpu") is True


def test_explicit_bf16_without_native_support_runs_with_a_warning_of_the_cost(fake_cpu, caplog):
    fake_cpu("avx2")
    with caplog.at_level(logging.WARNING, logger="dupmae.platform.precision"):
        assert resolve_bf16(True, "cpu", "fine-tuning") is True
    assert "bf16=true on a device without native bf16" in caplog.text and "40x slower" in caplog.text
    caplog.clear()
    fake_cpu("avx512_bf16")
    with caplog.at_level(logging.WARNING, logger="dupmae.platform.precision"):
        assert resolve_bf16("true", "cpu") is True and resolve_bf16("false", "cpu") is False
    assert caplog.text == ""


def test_bf16_setting_values():
    assert [parse_bf16(v) for v in ("auto", "AUTO", "true", "yes", "1", "false", "off", True, False, None)] == [
        None, None, True, True, True, False, False, True, False, None]
    with pytest.raises(ValueError, match="bf16 must be auto, true or false"):
        parse_bf16("maybe")


@pytest.fixture()
def pretrain_args(tmp_path, wordpiece_dir):
    from test_training import write_corpus

    from dupmae.data.prepare import prepare_corpus

    corpus = write_corpus(tmp_path / "corpus.jsonl", documents=4)
    prepare_corpus([str(corpus)], wordpiece_dir, str(tmp_path / "data"), max_length=32, num_proc=1)
    return ["--model-config", str(Path(__file__).resolve().parents[1] / "configs" / "tiny-bert.json"),
            "--tokenizer", wordpiece_dir, "--data", str(tmp_path / "data"), "--output", str(tmp_path / "out")]


@pytest.mark.parametrize("flags, config_value, native, expected", [
    ([], None, False, False),                       # the default is auto
    ([], None, True, True),
    (["--bf16", "auto"], None, True, True),
    (["--bf16=auto"], None, False, False),
    (["--bf16"], None, False, True),                # explicit: kept (with the warning)
    (["--bf16", "false"], None, True, False),
    ([], "auto", True, True),
    ([], False, True, False),
    (["--bf16", "true"], "auto", False, True),      # the flag beats the file
])
def test_pretrain_and_finetune_parse_bf16_auto(tmp_path, pretrain_args, fake_cpu, flags, config_value, native,
                                               expected):
    from dupmae.training.pretrain import parse_arguments

    fake_cpu("avx512_bf16" if native else "avx2")
    extra = []
    if config_value is not None:
        (tmp_path / "c.yaml").write_text(f"bf16: {str(config_value).lower()}\nmax_steps: 3\n")
        extra = ["--config", str(tmp_path / "c.yaml")]
    *_, training = parse_arguments([*pretrain_args, *extra, *flags])
    assert training.bf16 is expected
    if config_value is not None:
        assert training.max_steps == 3  # the rest of the file still applies


def test_retriever_precision_follows_the_device(tmp_path, wordpiece_dir, fake_cpu, caplog):
    from test_finetune import tiny_encoder_dir

    from dupmae.modeling.retriever import Retriever

    start = tiny_encoder_dir(tmp_path / "start", wordpiece_dir)
    fake_cpu("avx2")
    assert Retriever.from_pretrained(start, show_progress=False).bf16 is False  # auto
    with caplog.at_level(logging.WARNING, logger="dupmae.platform.precision"):
        assert Retriever.from_pretrained(start, bf16=True, show_progress=False).bf16 is True
    assert "40x slower" in caplog.text
    fake_cpu("avx512_bf16")
    assert Retriever.from_pretrained(start, show_progress=False).bf16 is True


# -- the oneDNN probe -------------------------------------------------------------------------------


@pytest.fixture()
def fresh_probe():
    onednn.onednn_supports.cache_clear()
    onednn._FAILED.clear()
    yield
    onednn.onednn_supports.cache_clear()
    onednn._FAILED.clear()


def _linears():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 8)), torch.randn(3, 5, 24)


def test_a_private_op_that_fails_its_probe_is_never_used(fresh_probe, monkeypatch):
    """As on a Zen 2 CPU, where oneDNN's bf16 linear cannot be created: the probe says no, F.linear runs."""
    calls = []

    def broken(inputs, weight, bias):
        calls.append(weight.dtype)
        if weight.dtype is torch.bfloat16:
            raise RuntimeError("could not create a primitive descriptor for the inner product forward propagation primitive")
        return F.linear(inputs, weight, bias)

    monkeypatch.setattr(onednn, "_private_linear", broken)
    assert onednn.onednn_supports(torch.float32) and not onednn.onednn_supports(torch.bfloat16)
    model, inputs = _linears()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(inputs)
    calls.clear()
    with onednn.onednn_linears(model) as swapped, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert swapped == 2
        got = model(inputs)
    assert calls == []  # the bf16 op is never called after a failed probe
    torch.testing.assert_close(got.float(), expected.float())


def test_a_private_op_that_fails_later_falls_back_with_a_warning(fresh_probe, monkeypatch, caplog):
    assert onednn.onednn_supports(torch.float32) or pytest.skip("this torch build has no oneDNN")

    def broken(inputs, weight, bias):
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(onednn, "_private_linear", broken)
    model, inputs = _linears()
    with torch.no_grad():
        expected = model(inputs)
    with caplog.at_level(logging.WARNING, logger="dupmae.platform.cpu.onednn"):
        with onednn.onednn_linears(model), torch.no_grad():
            got = model(inputs)
            again = model(inputs)
        left, right = torch.randn(4, 24), torch.randn(6, 24)
        with torch.no_grad():
            torch.testing.assert_close(onednn.matmul_transposed(left, right), left @ right.T)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(again, expected)
    assert caplog.text.count("oneDNN linear failed") == 1  # then marked failed for the process


def test_the_probe_answers_the_same_inside_autocast(fresh_probe):
    """It first runs lazily, inside a bf16 forward: autocast must not change its verdict (it once turned the
    fp32 reference into bf16, the comparison failed, and bf16 encoding silently lost oneDNN)."""
    outside = onednn.onednn_supports(torch.bfloat16)
    onednn.onednn_supports.cache_clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn.onednn_supports(torch.bfloat16) == outside
    if precision.native_bf16("cpu")[0] and onednn.onednn_available():
        assert outside  # a CPU with native bf16 runs oneDNN's bf16 linear


def test_probe_failing_with_any_error_means_no(fresh_probe, monkeypatch):
    def broken(inputs, weight, bias):
        raise NotImplementedError("no such kernel")

    monkeypatch.setattr(onednn, "_private_linear", broken)
    assert not onednn.onednn_supports(torch.float32) and not onednn.onednn_available()


# -- prepare --------------------------------------------------------------------------------------


def tiny_pretraining_model(wordpiece_tokenizer, dropout=0.1, **options):
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=len(wordpiece_tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    return DupMAEForPretraining(BertForMaskedLM(config), PretrainingOptions(**options))


def test_prepare_on_a_cpu_applies_the_cpu_training_paths(wordpiece_tokenizer, allocator_calls):
    from dupmae.platform.cpu.lean_attention import lean_dropout_attention

    model = tiny_pretraining_model(wordpiece_tokenizer)
    assert model.decoder.attention_function is F.scaled_dot_product_attention  # the method's own default
    prepared = prepare(model, "cpu", Accelerations())
    assert allocator_calls == [1]
    assert {"fast dropout", "lean attention", "freed memory kept"} <= set(prepared.applied)
    assert model.decoder.attention_function.func is lean_dropout_attention
    assert model.decoder.attention_function.keywords == {"fast_masks": True}
    assert model.encoder.config._attn_implementation == "dupmae_lean"
    assert isinstance(model.decoder.dropout, FastDropout)
    plain = tiny_pretraining_model(wordpiece_tokenizer)
    prepare(plain, "cpu", Accelerations(lean_attention=False, fast_dropout=False, keep_freed_memory=False))
    assert plain.decoder.attention_function is F.scaled_dot_product_attention
    assert not any(isinstance(m, FastDropout) for m in plain.modules()) and allocator_calls == [1]


def test_prepare_for_inference_uses_onednn_and_no_training_paths(wordpiece_tokenizer):
    model = tiny_pretraining_model(wordpiece_tokenizer)
    prepared = prepare(model, "cpu", Accelerations(keep_freed_memory=False), training=False)
    assert not any(isinstance(m, FastDropout) for m in model.modules())
    assert prepared.onednn_linears is onednn.onednn_available()
    assert not prepare(model, "cpu", Accelerations(keep_freed_memory=False), training=False,
                       onednn_linears=False).onednn_linears


def test_cuda_only_kernels_are_refused_on_a_cpu(wordpiece_tokenizer):
    with pytest.raises(ValueError, match="vocab_loss=liger"):
        prepare(tiny_pretraining_model(wordpiece_tokenizer), "cpu", Accelerations(vocab_loss="liger"))
    with pytest.raises(ValueError, match="bow_pool must be one of"):
        Accelerations(bow_pool="fast")


def test_materialised_bow_pool_gives_the_chunked_losses_and_gradients(wordpiece_tokenizer):
    chunked = tiny_pretraining_model(wordpiece_tokenizer, dropout=0.0, loss_chunk_size=7)
    materialised = tiny_pretraining_model(wordpiece_tokenizer, dropout=0.0, loss_chunk_size=7)
    prepare(materialised, "cpu", Accelerations(bow_pool="materialised", keep_freed_memory=False))
    prepare(chunked, "cpu", Accelerations(keep_freed_memory=False))
    assert materialised.materialise_bow and not chunked.materialise_bow
    batch, _ = collate(wordpiece_tokenizer, TEXTS, chunked.options)
    out_a, grads_a = forward_backward(chunked, batch)
    out_b, grads_b = forward_backward(materialised, batch)
    assert out_a.bow_sum.item() > 0
    torch.testing.assert_close(out_a.bow_sum, out_b.bow_sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_a.encoder_mlm_sum, out_b.encoder_mlm_sum)
    for name, gradient in grads_a.items():
        torch.testing.assert_close(gradient, grads_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_decoder_runs_the_attention_function_it_is_given(wordpiece_tokenizer):
    model = tiny_pretraining_model(wordpiece_tokenizer, dropout=0.0)
    seen = []

    def spy(q, k, v, mask, dropout_p=0.0):
        seen.append((tuple(q.shape), tuple(mask.shape), dropout_p))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)

    model.decoder.attention_function = spy
    stream = torch.randn(2, 9, 32)
    model.decoder(stream, stream, torch.ones(2, 9, 9, dtype=torch.bool))
    assert seen == [((2, 4, 9, 8), (2, 1, 9, 9), 0.0)]


def test_method_code_has_no_device_branches_and_imports_no_kernel():
    """modeling/ computes the same function everywhere: device choices live in platform/."""
    branch = re.compile(r"\bif\b[^\n]*device\.type|device\.type\s*(==|!=|in\b)")
    for path in (SRC / "modeling").glob("*.py"):
        text = path.read_text()
        assert not branch.search(text), f"{path.name} branches on the device"
        kernel_import = re.search(r"^\s*(from|import) dupmae\.platform\.(cpu|cuda)", text, re.MULTILINE)
        assert not kernel_import, f"{path.name} imports a kernel"


def test_compiled_layers_give_the_same_losses(wordpiece_tokenizer):
    """`compile_layers` on the CPU (inductor): the same losses and gradients as eager, to fp32 rounding."""
    eager = tiny_pretraining_model(wordpiece_tokenizer, dropout=0.0)
    compiled = tiny_pretraining_model(wordpiece_tokenizer, dropout=0.0)
    prepared = prepare(compiled, "cpu", Accelerations(compile_layers=True, keep_freed_memory=False))
    assert "3 layers compiled" in prepared.applied  # 2 encoder layers + the decoder
    prepare(eager, "cpu", Accelerations(keep_freed_memory=False))
    batch, _ = collate(wordpiece_tokenizer, TEXTS, eager.options)
    out_a, grads_a = forward_backward(eager, batch)
    out_b, grads_b = forward_backward(compiled, batch)
    for name in ("encoder_mlm_sum", "decoder_sum", "bow_sum"):
        torch.testing.assert_close(getattr(out_a, name), getattr(out_b, name), rtol=1e-4, atol=1e-5, msg=name)
    for name, gradient in grads_a.items():
        torch.testing.assert_close(gradient, grads_b[name], rtol=1e-3, atol=1e-5, msg=name)
