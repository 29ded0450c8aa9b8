"""Attention with dropout that keeps O(L) floats per query row for the backward pass, for CPUs.

PyTorch's CPU `scaled_dot_product_attention` runs its fused flash kernel only without dropout;
with dropout (BERT's 0.1) it takes the math path, which keeps the `[B, heads, L, L]` softmax
output, the dropped-out probabilities and the dropout mask of every layer alive until backward —
most of a step's activation memory at L = 512 (docs/benchmarks.md). `lean_dropout_attention`
computes the same function block by block over the query rows and keeps only the inputs, the
output, each row's log-normaliser and the dropout mask (bool, 1 byte per score); backward
recomputes each block's probabilities from `q`, `k` and the log-normaliser, as flash attention does.
With `fast_masks` (a model whose dropout modules `use_fast_dropout` swapped) the mask comes from
`fast_dropout.keep_mask`'s four-per-draw method instead of `bernoulli_`.

Used where the math path would be: on CPU, in training, with dropout > 0. Everywhere else (GPU
kernels support dropout; no dropout; eval) it is `F.scaled_dot_product_attention` itself.
Registered with transformers' public `AttentionInterface` as "dupmae_lean" for the encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dupmae.platform.cpu.fast_dropout import FastDropout, keep_mask

ATTENTION_NAME = "dupmae_lean"
QUERY_CHUNK = 128  # query rows per block: [B, heads, 128, L] float32 temporaries


def _scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Scaled, masked scores of one block in float32 (float64 for float64 inputs): `[B, H, c, Lk]`;
    -inf where `mask` is False."""
    scores = torch.matmul(q * scale, k.transpose(-1, -2)).to(_accumulation(q.dtype))  # scale the small side
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill_(~mask, float("-inf"))
    return scores.add_(mask)


def _accumulation(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _rows(mask: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    """The mask's block of query rows (a mask broadcast over queries has size 1 there)."""
    if mask is None or mask.shape[-2] == 1:
        return mask
    return mask[..., rows, :]


class _LeanDropoutAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, dropout_p: float, scale: float, chunk: int, fast_masks: bool):
        batch, heads, length, _ = q.shape
        out = torch.empty_like(q)
        log_norm = torch.empty(batch, heads, length, dtype=_accumulation(q.dtype), device=q.device)
        keep, inverse_keep = keep_mask((*q.shape[:-1], k.shape[-2]), dropout_p, q.device, fast=fast_masks)  # 1 byte/score
        for start in range(0, length, chunk):
            rows = slice(start, start + chunk)
            scores = _scores(q[..., rows, :], k, _rows(mask, rows), scale)  # [B, H, c, Lk]
            probs = torch.softmax(scores, dim=-1)
            # log-normaliser without another exp pass: max - log p(arg-max) (p(arg-max) >= 1 / Lk)
            top, top_index = scores.max(dim=-1, keepdim=True)
            block_norm = (top - probs.gather(-1, top_index).log()).squeeze(-1)  # [B, H, c]
            seen = torch.isfinite(block_norm)  # a row that may attend to nothing gets output 0
            if not bool(seen.all()):
                probs = probs.masked_fill(~seen[..., None], 0.0)
                block_norm = block_norm.masked_fill(~seen, 0.0)
            dropped = probs.mul_(keep[..., rows, :]).mul_(inverse_keep).to(v.dtype)
            out[..., rows, :] = torch.matmul(dropped, v)
            log_norm[..., rows] = block_norm
        ctx.save_for_backward(q, k, v, mask, out, log_norm, keep)
        ctx.inverse_keep, ctx.scale, ctx.chunk = inverse_keep, scale, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask, out, log_norm, keep = ctx.saved_tensors
        scale, chunk, inverse_keep = ctx.scale, ctx.chunk, ctx.inverse_keep
        grad_out = grad_out.contiguous()
        # rowsum(dO * O) = rowsum(P * dP): the softmax backward's correction term, [B, H, L]
        accumulation = _accumulation(q.dtype)
        correction = (grad_out.to(accumulation) * out.to(accumulation)).sum(dim=-1)
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros(k.shape, dtype=accumulation, device=k.device)
        grad_v = torch.zeros(v.shape, dtype=accumulation, device=v.device)
        for start in range(0, q.shape[-2], chunk):
            rows = slice(start, start + chunk)
            kept = keep[..., rows, :].to(accumulation).mul_(inverse_keep)  # [B, H, c, Lk]: 0 or 1 / (1 - p)
            probs = _scores(q[..., rows, :], k, _rows(mask, rows), scale).sub_(log_norm[..., rows, None]).exp_()
            grad_v += torch.matmul((probs * kept).to(v.dtype).transpose(-1, -2), grad_out[..., rows, :])
            grad_probs = torch.matmul(grad_out[..., rows, :], v.transpose(-1, -2)).to(accumulation).mul_(kept)
            grad_scores = probs.mul_(grad_probs.sub_(correction[..., rows, None])).to(q.dtype)  # unscaled
            grad_q[..., rows, :] = torch.matmul(grad_scores, k).mul_(scale)
            grad_k += torch.matmul(grad_scores.transpose(-1, -2), q[..., rows, :])
        grad_k.mul_(scale)
        return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype), None, None, None, None, None


def lean_dropout_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
    chunk: int = QUERY_CHUNK,
    fast_masks: bool = False,
) -> torch.Tensor:
    """`softmax(q kᵀ · scale + mask)` with dropout on the probabilities, times `v`.

    Args:
        q: `[B, H, Lq, D]`; k, v: `[B, H, Lk, D]` (one dtype; bf16 under autocast).
        mask: broadcastable to `[B, H, Lq, Lk]`: bool (True = may attend) or additive float; None = all.
        dropout_p: dropout probability of the attention probabilities (0 <= p < 1).
        scale: score scale (default `1 / sqrt(D)`).
        chunk: query rows per block.
        fast_masks: draw the dropout mask with `fast_dropout.keep_mask`'s four-per-draw method (p
            rounded to a multiple of 2⁻¹⁵) instead of `bernoulli_`.
    Returns:
        `[B, H, Lq, D]`. A query row that may attend to nothing gets 0 (SDPA would give NaN).
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if dropout_p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    with torch.autocast(q.device.type, enabled=False):  # dtypes are handled explicitly inside
        return _LeanDropoutAttention.apply(q, k.to(q.dtype), v.to(q.dtype), mask, float(dropout_p), float(scale), chunk,
                                           fast_masks)


def _transformers_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature (`AttentionInterface`): `[B, H, L, D]` in,
    `([B, L, H, D], None)` out, as its own SDPA function returns."""
    is_causal = kwargs.get("is_causal")
    if is_causal if is_causal is not None else getattr(module, "is_causal", False):
        raise ValueError(f"{ATTENTION_NAME} attention is for bidirectional encoders; it has no causal masking")
    fast_masks = isinstance(getattr(module, "dropout", None), FastDropout)  # follows `use_fast_dropout`
    output = lean_dropout_attention(query, key, value, attention_mask, dropout, scaling, fast_masks=fast_masks)
    return output.transpose(1, 2).contiguous(), None


def use_lean_attention(model) -> bool:
    """Switch a transformers model's attention to `lean_dropout_attention` (public APIs:
    `AttentionInterface` / `AttentionMaskInterface.register`, `set_attn_implementation`); the masks
    it gets are the ones SDPA gets (`sdpa_mask`: bool, or None when nothing is masked). Returns
    False, changing nothing, when the model cannot switch (an architecture without the interface)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _transformers_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    try:
        model.set_attn_implementation(ATTENTION_NAME)
    except (ValueError, AttributeError, NotImplementedError):
        return False
    return True
