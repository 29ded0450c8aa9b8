"""`Accelerations` (the speed settings, declared once) and `prepare` (the one function applying them).

Every setting here changes how fast a result is computed, never which result (beyond rounding, and
the drop probability of fast dropout rounded to a multiple of 2^-15). `auto` means: what was measured
fastest on that kind of device (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from dupmae.platform.precision import BF16_CHOICES, FALSE_WORDS, TRUE_WORDS

logger = logging.getLogger(__name__)

VOCAB_LOSSES = ("auto", "chunked", "liger")
BOW_POOLS = ("auto", "chunked", "materialised")


@dataclass
class Accelerations:
    """How fast, not what: the device-specific speed paths (platform/__init__.py has the table)."""

    lean_attention: bool = field(default=True, metadata={
        "help": "On the CPU, run attention with dropout block by block, keeping O(L) floats per query row plus a "
                "1-byte dropout mask for backward instead of the math path's [B, heads, L, L] tensors "
                "(platform/cpu/lean_attention.py; encoder and decoder). Elsewhere, and without dropout, attention "
                "is PyTorch's SDPA (flash / memory-efficient kernels on CUDA) either way."})
    fast_dropout: bool = field(default=True, metadata={
        "help": "On the CPU, draw dropout masks four elements per random number instead of one "
                "(platform/cpu/fast_dropout.py; the drop probability is rounded to a multiple of 2^-15, "
                "0.1 -> 0.100006). Other devices keep PyTorch's dropout."})
    keep_freed_memory: bool = field(default=True, metadata={
        "help": "On a CPU under Linux with glibc, keep freed memory in the process for the next step instead of "
                "returning large blocks to the system at once (platform/cpu/allocator.py): steps stop "
                "page-faulting their large temporaries anew; resident memory stays at its high-water mark."})
    compile_layers: bool = field(default=False, metadata={
        "help": "Compile every transformer layer of the encoder, and the decoder layer, with torch.compile "
                "(same losses; the first steps pay the compile time, minutes on a CPU)."})
    vocab_loss: str = field(default="auto", metadata={
        "help": "Kernel of the pre-training vocabulary cross-entropies (encoder MLM, decoder): chunked = "
                "dupmae's own, loss_chunk_size rows of logits at a time, gradient made in the forward; liger = "
                "Liger-Kernel's fused Triton kernel (CUDA, pip install liger-kernel); auto = chunked (until a "
                "GPU measurement says otherwise: benchmarks/gpu_pretrain_step.py measures both).",
        "choices": list(VOCAB_LOSSES)})
    bow_pool: str = field(default="auto", metadata={
        "help": "How the BoW max-pool over positions gets its [B, L, V] vocabulary logits: chunked = a chunk of "
                "positions at a time, gradient routed to the arg-max only; materialised = all at once and "
                "autograd's max (1 GB in bf16 at 32 x 512 x 30522, which a GPU holds easily); auto = chunked "
                "on a CPU, chunked on CUDA until benchmarks/gpu_pretrain_step.py settles it.",
        "choices": list(BOW_POOLS)})

    def __post_init__(self) -> None:
        if self.vocab_loss not in VOCAB_LOSSES:
            raise ValueError(f"vocab_loss must be one of {VOCAB_LOSSES}, got {self.vocab_loss!r}")
        if self.bow_pool not in BOW_POOLS:
            raise ValueError(f"bow_pool must be one of {BOW_POOLS}, got {self.bow_pool!r}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class Prepared:
    """What `prepare` did: the paths applied (for the log line) and, for inference, a context to encode in."""

    device: torch.device
    applied: list[str]
    onednn_linears: bool = False

    def inference(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """The context to run `model`'s inference in (oneDNN linears on a CPU; nothing elsewhere)."""
        if not self.onednn_linears:
            return contextlib.nullcontext()
        from dupmae.platform.cpu.onednn import onednn_linears

        return onednn_linears(model)


def outermost_pretrained_models(model: nn.Module) -> list[nn.Module]:
    """The transformers models inside `model` (itself included) not nested in another one."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return [model]
    found: list[nn.Module] = []
    for child in model.children():
        found += outermost_pretrained_models(child)
    return found


def _decoders(model: nn.Module) -> list[nn.Module]:
    """Modules that take their attention function as an attribute (`EnhancedDecoderLayer`)."""
    return [module for module in model.modules() if hasattr(module, "attention_function")]


def resolve_vocabulary_kernels(accelerations: Accelerations, device: torch.device) -> tuple[str, str]:
    """(`vocab_loss`, `bow_pool`) with `auto` made concrete for `device`."""
    cross_entropy, max_pool = accelerations.vocab_loss, accelerations.bow_pool
    if cross_entropy == "auto":
        cross_entropy = "chunked"
    if max_pool == "auto":
        max_pool = "chunked"
    if cross_entropy == "liger":
        from dupmae.platform.cuda import liger_cross_entropy_class

        if device.type != "cuda":
            raise ValueError("vocab_loss=liger runs Triton kernels: it needs a CUDA device")
        if liger_cross_entropy_class() is None:
            raise ValueError("vocab_loss=liger needs Liger-Kernel: pip install liger-kernel")
    return cross_entropy, max_pool


def prepare(model: nn.Module, device: torch.device | str, accelerations: Accelerations | None = None,
            training: bool = True, tf32: bool | None = None, onednn_linears: bool = True) -> Prepared:
    """Apply the speed paths that fit `device` to `model` (in place) and say which, in one log line.

    Args:
        model: a `DupMAEForPretraining`, a `DupMAEEncoder`, or any module holding transformers models
            and decoder layers (found by type and by their `attention_function` attribute).
        device: where it will run.
        training: training paths (lean attention, fast dropout) or inference paths (oneDNN linears).
        tf32: TF32 for fp32 CUDA matmuls; None = on for training, off for inference (embeddings stay exact fp32).
        onednn_linears: for inference on a CPU, run linear layers through oneDNN (`Prepared.inference`).
    Returns:
        `Prepared`, whose `inference(model)` context an encoder runs in.
    """
    accelerations = accelerations or Accelerations()
    device = torch.device(device)
    applied: list[str] = []
    on_cpu, on_cuda = device.type == "cpu", device.type == "cuda"

    if on_cpu and accelerations.keep_freed_memory:
        from dupmae.platform.cpu.allocator import keep_freed_memory

        if keep_freed_memory():
            applied.append("freed memory kept")
    if on_cpu and training:
        from dupmae.platform.cpu.fast_dropout import use_fast_dropout
        from dupmae.platform.cpu.lean_attention import lean_dropout_attention, use_lean_attention

        if accelerations.fast_dropout and use_fast_dropout(model):
            applied.append("fast dropout")
        if accelerations.lean_attention:
            switched = [use_lean_attention(encoder) for encoder in outermost_pretrained_models(model)]
            if not all(switched):
                logger.warning("an encoder cannot switch its attention implementation; lean attention applies "
                               "to the decoder only")
            attention = functools.partial(lean_dropout_attention, fast_masks=accelerations.fast_dropout)
            for decoder in _decoders(model):
                decoder.attention_function = attention
            applied.append("lean attention")
    if on_cuda:
        from dupmae.platform.cuda import set_tf32, tf32_supported

        use_tf32 = training if tf32 is None else tf32
        if use_tf32 and tf32_supported(device):
            set_tf32(True)
            applied.append("TF32 for fp32 matmuls")
        elif tf32 is False:
            set_tf32(False)

    cross_entropy, max_pool = resolve_vocabulary_kernels(accelerations, device)
    kernel = None
    if cross_entropy == "liger":
        from dupmae.platform.cuda import liger_linear_cross_entropy as kernel
    takers = [module for module in model.modules() if hasattr(module, "set_vocabulary_kernels")]
    for module in takers:
        module.set_vocabulary_kernels(linear_cross_entropy=kernel, materialise_bow=max_pool == "materialised")
    if takers:
        applied.append(f"vocabulary: {cross_entropy} cross-entropy, {max_pool} BoW max-pool")

    if accelerations.compile_layers:
        count = compile_layers(model)
        applied.append(f"{count} layers compiled")

    onednn = False
    if on_cpu and not training and onednn_linears:
        from dupmae.platform.cpu.onednn import onednn_available

        onednn = onednn_available()
        if onednn:
            applied.append("oneDNN linears")
    logger.info("platform: %s — %s", device.type, ", ".join(applied) or "nothing to apply")
    return Prepared(device=device, applied=applied, onednn_linears=onednn)


def compile_layers(model: nn.Module) -> int:
    """`torch.compile` every layer of each transformer model's layer list, and every decoder layer, in
    place (`nn.Module.compile`: the module keeps its parameters and state dict keys). Returns how many."""
    compiled = 0
    for encoder in outermost_pretrained_models(model):
        for module in encoder.modules():
            if isinstance(module, nn.ModuleList):
                for layer in module:
                    layer.compile()
                    compiled += 1
    for decoder in _decoders(model):
        decoder.compile()
        compiled += 1
    return compiled


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in TRUE_WORDS or value in FALSE_WORDS:
        return value in TRUE_WORDS
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """Add `--bf16 {auto,true,false}` and the `Accelerations` fields `names` as flags of an argparse verb
    (help and defaults from the one declaration above). Read them back with `from_arguments`."""
    parser.add_argument("--bf16", nargs="?", const="true", default="auto", choices=BF16_CHOICES,
                        help="bf16 autocast: auto (default) = where the device multiplies bf16 natively "
                             "(CUDA >= 8.0; CPUs with AVX512_BF16 or AMX), fp32 elsewhere; true warns on other devices")
    for spec in fields(Accelerations):
        if spec.name not in names:
            continue
        flag = "--" + spec.name.replace("_", "-")
        if spec.type in (bool, "bool"):
            parser.add_argument(flag, type=_on_off, default=spec.default, metavar="{true,false}",
                                help=f"{spec.metadata['help']} (default: {str(spec.default).lower()})")
        else:
            parser.add_argument(flag, default=spec.default, choices=spec.metadata.get("choices"),
                                help=spec.metadata["help"])


def from_arguments(args: argparse.Namespace) -> Accelerations:
    """The `Accelerations` given as flags by `add_arguments` (the others at their defaults)."""
    return Accelerations(**{name: getattr(args, name) for name in Accelerations.field_names() if hasattr(args, name)})
