"""`nn.Linear` layers through oneDNN for CPU inference: same arithmetic, faster kernels, fewer casts.

fp32: PyTorch's CPU `nn.Linear` calls MKL's sgemm. On AMD CPUs MKL takes a generic AVX2 code path,
while oneDNN — which PyTorch also ships, and already uses for bf16 — JIT-compiles kernels for the
instruction set it finds (AVX-512 here). On the 2-core AMD EPYC (Zen 5) of docs/benchmarks.md an
fp32 `[8192, 384] x [384, 1536]` product ran at ~55-85 GFLOP/s through MKL and ~90-150 GFLOP/s
through oneDNN, and a whole all-MiniLM-L6-v2 forward (32 x 256 tokens) took 4.1 s vs 2.3 s, hidden
states equal to 1e-5. Still fp32 in, fp32 accumulation, fp32 out (oneDNN's reduced-precision
modes are opt-in and left off).

bf16 autocast: autocast casts every weight to bf16 on every call, and the input of the query, key
and value projections three times. Here the weights are cast once per `with` block and the last
input's cast is reused, so the products are the ones autocast computes (bf16 operands, fp32
accumulation, bf16 result) with a third of the casts. (On a busy 2-core machine each cast is a
thread-synchronised op: they took 40 % of a bf16 forward.)

`onednn_linears(module)` swaps the forward of every plain `nn.Linear` inside `module` for the
duration of a `with` block. The swapped forward falls back to `F.linear` whenever gradients are
on or a tensor is not a CPU tensor of the expected type — so it can never change training — and
whenever the private oneDNN op is not known to work on this CPU in that dtype (`onednn_supports`
probes it once per dtype; a later failure also falls back) — so it can never crash a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types

import torch
import torch.nn.functional as F
from torch import nn

from dupmae.platform.precision import autocast_dtype

logger = logging.getLogger(__name__)


def onednn_available() -> bool:
    """oneDNN is built in and its fused linear op runs fp32 here (see `onednn_supports`)."""
    return onednn_supports(torch.float32)


def _private_linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The one private op of this module (`inputs @ weight.T + bias` through oneDNN)."""
    return torch.ops.mkldnn._linear_pointwise(inputs, weight, bias, "none", [], "")


@functools.lru_cache(maxsize=None)
def onednn_supports(dtype: torch.dtype) -> bool:
    """Whether oneDNN's linear op runs in `dtype` on this CPU and agrees with `F.linear`.

    `torch.ops.mkldnn._linear_pointwise` is a private op (no public API reaches oneDNN's linear),
    so it is used only behind this probe: it runs once on a small product per dtype, and any error
    or disagreement means "no" and the public `F.linear` is used instead. (On an AMD EPYC Zen 2
    without AVX512_BF16 the bf16 op raises "could not create a primitive descriptor".)"""
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return False
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(5, 48, generator=generator).to(dtype)
        weight = torch.randn(24, 48, generator=generator).to(dtype)
        bias = torch.randn(24, generator=generator).to(dtype)
        # The probe may first run inside a forward under autocast: its reference must stay in fp32.
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            got = _private_linear(inputs, weight, bias)
            expected = F.linear(inputs.float(), weight.float(), bias.float())
        tolerance = 1e-4 if dtype is torch.float32 else 5e-2
        return bool(torch.allclose(got.float(), expected.float(), rtol=tolerance, atol=tolerance * 10))
    except Exception as error:  # noqa: BLE001 - any failure of a private op means: do not use it
        logger.info("oneDNN linear in %s unavailable on this CPU (%s: %s); using F.linear", dtype,
                    type(error).__name__, error)
        return False


def _onednn_linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's linear, or `F.linear` should the op fail on a shape the probe did not meet."""
    try:
        return _private_linear(inputs, weight, bias)
    except RuntimeError as error:
        logger.warning("oneDNN linear failed (%s); falling back to F.linear for this process", error)
        _FAILED.add(weight.dtype)
        return F.linear(inputs, weight, bias)


_FAILED: set[torch.dtype] = set()  # dtypes whose op failed after passing the probe


def _usable(dtype: torch.dtype) -> bool:
    return dtype not in _FAILED and onednn_supports(dtype)


class _Bf16Inputs:
    """The bf16 cast of the last fp32 input (q, k and v projections share one input)."""

    def __init__(self) -> None:
        self.source: torch.Tensor | None = None
        self.cast: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dtype is torch.bfloat16:
            return inputs
        if inputs is not self.source:  # `source` is held, so its id cannot be reused by another tensor
            self.source, self.cast = inputs, inputs.to(torch.bfloat16)
        return self.cast


def _make_forward(weight_bf16: torch.Tensor, bias_bf16: torch.Tensor | None, bf16_inputs: _Bf16Inputs):
    def forward(self: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or inputs.device.type != "cpu" or self.weight.dtype is not torch.float32:
            return F.linear(inputs, self.weight, self.bias)
        autocast = autocast_dtype("cpu")
        if autocast is None and inputs.dtype is torch.float32 and _usable(torch.float32):
            return _onednn_linear(inputs, self.weight, self.bias)
        if autocast is torch.bfloat16 and inputs.dtype in (torch.float32, torch.bfloat16) and _usable(torch.bfloat16):
            return _onednn_linear(bf16_inputs(inputs), weight_bf16, bias_bf16)
        return F.linear(inputs, self.weight, self.bias)

    return forward


@contextlib.contextmanager
def onednn_linears(module: nn.Module, enabled: bool = True):
    """Within the block, every plain `nn.Linear` of `module` runs inference through oneDNN: fp32
    as fp32, and under CPU bf16 autocast with weights cast once (subclasses, e.g. quantised or
    adapter layers, keep their own forward). Yields the number of layers swapped."""
    patched = []
    if enabled and onednn_available():  # the bf16 path is probed separately, on its first call
        bf16_inputs = _Bf16Inputs()
        with torch.no_grad():
            for layer in module.modules():
                if type(layer) is nn.Linear and "forward" not in layer.__dict__ and layer.weight.device.type == "cpu":
                    bias = None if layer.bias is None else layer.bias.to(torch.bfloat16)
                    layer.forward = types.MethodType(_make_forward(layer.weight.to(torch.bfloat16), bias, bf16_inputs),
                                                     layer)
                    patched.append(layer)
    try:
        yield len(patched)
    finally:
        for layer in patched:
            del layer.forward


def matmul_transposed(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`left @ right.T` (`[M, D] x [N, D] -> [M, N]`); fp32 CPU tensors go through oneDNN (see above)."""
    if (left.dtype is torch.float32 and right.dtype is torch.float32 and left.device.type == "cpu"
            and right.device.type == "cpu" and left.numel() and right.numel() and not torch.is_grad_enabled()
            and _usable(torch.float32)):
        return _onednn_linear(left, right, None)
    return left @ right.T
