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
on or a tensor is not a CPU tensor of the expected type — so it can never change training.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F
from torch import nn


def onednn_available() -> bool:
    """oneDNN is built in and exposes the fused linear op this module calls."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The CPU autocast dtype in force, or None."""
    try:
        enabled = torch.is_autocast_enabled("cpu")
        dtype = torch.get_autocast_dtype("cpu") if enabled else None
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_cpu_enabled()
        dtype = torch.get_autocast_cpu_dtype() if enabled else None
    return dtype


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
        autocast = _cpu_autocast_dtype()
        if autocast is None and inputs.dtype is torch.float32:
            return torch.ops.mkldnn._linear_pointwise(inputs, self.weight, self.bias, "none", [], "")
        if autocast is torch.bfloat16 and inputs.dtype in (torch.float32, torch.bfloat16):
            return torch.ops.mkldnn._linear_pointwise(bf16_inputs(inputs), weight_bf16, bias_bf16, "none", [], "")
        return F.linear(inputs, self.weight, self.bias)

    return forward


@contextlib.contextmanager
def onednn_linears(module: nn.Module, enabled: bool = True):
    """Within the block, every plain `nn.Linear` of `module` runs inference through oneDNN: fp32
    as fp32, and under CPU bf16 autocast with weights cast once (subclasses, e.g. quantised or
    adapter layers, keep their own forward). Yields the number of layers swapped."""
    patched = []
    if enabled and onednn_available():
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
            and onednn_available()):
        return torch.ops.mkldnn._linear_pointwise(left, right, None, "none", [], "")
    return left @ right.T
