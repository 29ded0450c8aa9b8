"""Dropout masks drawn four to a random number on the CPU.

PyTorch's CPU dropout draws one random number per element (`bernoulli_`): about 6 ns each on this
2-core machine, which is 10 % of a bf16 DupMAE pre-training step at L = 128 (docs/benchmarks.md),
mostly the `[B, heads, L, L]` attention masks. `keep_mask` draws one 64-bit number per four
elements instead (`random_` on int64; the engine gives 63 uniform bits) and compares the low 15
bits of each 16-bit field with a threshold: ~5x faster for the same distribution, with the drop
probability rounded to a multiple of 2⁻¹⁵ (0.1 → 3277/32768 = 0.100006). The scale is
1 / (1 − that rounded p), so the output's expectation is exactly the input.

Other devices draw their masks with `bernoulli_` (fast there). Masks come from the global (or
given) CPU generator, so `torch.manual_seed` makes them reproducible, as with `nn.Dropout`.
`use_fast_dropout` swaps a model's `nn.Dropout` modules for `FastDropout` (public module API).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FIELD_BITS = 15  # uniform bits used per element: each int64 draw holds four 16-bit fields, top bit 0
LEVELS = 1 << FIELD_BITS


def rounded_drop_probability(p: float) -> float:
    """The drop probability `keep_mask` realises on the CPU: `p` rounded to a multiple of 2⁻¹⁵."""
    return _threshold(p) / LEVELS


def _threshold(p: float) -> int:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return min(round(p * LEVELS), LEVELS - 1)


def keep_mask(
    shape: tuple[int, ...] | torch.Size,
    p: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    fast: bool = True,
) -> tuple[torch.Tensor, float]:
    """A dropout keep-mask and its scale.

    Returns `(keep, scale)`: `keep` is bool `[*shape]`, True with probability 1 − p' independently
    per element, and `scale` = 1 / (1 − p'), where p' is p rounded to a multiple of 2⁻¹⁵ on the
    CPU (`rounded_drop_probability`), and p itself on accelerators or with `fast=False` (then the
    mask is `bernoulli_`'s, as `nn.Dropout` draws it).
    """
    threshold = _threshold(p)  # also checks 0 <= p < 1
    device = torch.device(device)
    if device.type != "cpu" or not fast:
        keep = torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p, generator=generator)
        return keep, 1.0 / (1.0 - p)
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64).random_(generator=generator)
    fields = words.view(torch.int16)[:count]  # four per word, each with 15 uniform low bits
    keep = fields.bitwise_and_(LEVELS - 1) >= threshold
    return keep.view(shape), LEVELS / (LEVELS - threshold)


class _ScaleByMask(torch.autograd.Function):
    """`x * keep * scale`, saving only the 1-byte mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


class FastDropout(nn.Dropout):
    """`nn.Dropout` whose CPU training masks come from `keep_mask` (same `p` attribute, so code
    that reads `dropout.p`, as transformers' attention does, sees the configured value). On other
    devices, in eval mode and at p = 0 it is `F.dropout`. `inplace` is not honoured on the CPU path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training, self.inplace)
        keep, scale = keep_mask(x.shape, self.p)
        return _ScaleByMask.apply(x, keep, scale)


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every `nn.Dropout` (exactly that class) inside `model` by a `FastDropout` with the
    same `p` and train/eval mode; returns how many were replaced. Parameters and state dict are
    untouched."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p).train(child.training))
                replaced += 1
    return replaced
