"""Memory-lean vocabulary losses: the `[B, L, V]` / `[T, V]` logits are never held whole.

DupMAE scores every position against the whole vocabulary twice (DUPMAE.md §1, cost note): the
BoW loss max-pools `Head(H)` `[B, L, V]` over positions, and the decoder loss is a cross-entropy
over all `T` ordinary tokens. Done naively, autograd keeps those logits (2 GB in fp32 at
32 x 512 x 30522) and their gradient. Both functions here take the head *transformed* states
`x = transform(H)` (`dupmae.modeling.heads.SplitMLMHead`) and the vocabulary projection
`weight` `[V, d]`, `bias` `[V]`, and compute the logits a chunk at a time:

- `chunked_max_pool_logits`: `mu[b, v] = max over allowed l of (x[b, l] @ weight[v] + bias[v])`
  with the arg-max position kept; the backward routes `dmu[b, v]` to that position only, in
  O(B·V·d) (a sparse routing matrix) instead of O(B·L·V·d);
- `fused_linear_cross_entropy`: the summed cross-entropy of `x @ weight.T + bias` against
  targets, whose gradient (`softmax - onehot`, then through the projection) is computed in the
  forward pass chunk by chunk and only scaled in the backward pass.

Both follow `torch.autocast`: the projection runs in the autocast dtype (as `nn.Linear` would
under autocast); loss sums run in float32, and the cross-entropy's softmax runs in float32
inside one kernel whose output is rounded once to the compute dtype. `tests/test_lean_losses.py` checks values
and gradients against the naive computations, and `gradcheck`s both functions in float64.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from dupmae.platform.precision import autocast_dtype
from dupmae.platform.reductions import max_over_positions


def _compute_dtype(*tensors: torch.Tensor) -> tuple[torch.dtype, contextlib.AbstractContextManager]:
    """The dtype autocast would run a `nn.Linear` of these inputs in (their promoted dtype when
    autocast is off), and a context that turns autocast off inside the Function.

    The Functions take the inputs as they are (float32 master weights) and cast inside their
    forward: the weight is cast once per call and the gradients are returned in the inputs' own
    dtypes, where letting autocast cast outside would add a cast of every gradient back
    (`[V, d]` twice per call) to autograd's graph."""
    device_type = tensors[0].device.type
    dtype = autocast_dtype(device_type)
    promoted = tensors[0].dtype
    for tensor in tensors[1:]:
        promoted = torch.promote_types(promoted, tensor.dtype)
    if dtype is None or promoted == torch.float64:
        return promoted, contextlib.nullcontext()
    return dtype, torch.autocast(device_type, enabled=False)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for sums and softmax (float64 stays float64, for gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


# -- BoW: max over positions of the vocabulary logits --------------------------------------------------


class _ChunkedMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, transformed, weight, bias, pool_mask, chunk_size, compute_dtype):
        batch, length, _ = transformed.shape
        states, low_weight, low_bias = (t.to(compute_dtype) for t in (transformed, weight, bias))
        pooled = states.new_full((batch, weight.shape[0]), float("-inf"))  # [B, V]
        argmax = torch.zeros(pooled.shape, dtype=torch.long, device=pooled.device)  # [B, V] position of the max
        for start in range(0, length, chunk_size):
            stop = min(start + chunk_size, length)
            chunk = states[:, start:stop].reshape(-1, states.shape[-1])  # [B*C, d]: 2-D, so one GEMM (a
            # strided 3-D input can make F.linear broadcast the weight into a [B, d, V] batched product)
            logits = F.linear(chunk, low_weight, low_bias).view(batch, stop - start, -1)  # [B, C, V]: the only big tensor
            logits.masked_fill_(~pool_mask[:, start:stop, None], float("-inf"))
            chunk_max, chunk_argmax = max_over_positions(logits)  # [B, V]
            del logits
            better = chunk_max > pooled  # strict: a tie keeps the earlier position
            pooled = torch.where(better, chunk_max, pooled)
            argmax = torch.where(better, chunk_argmax + start, argmax)
        has_position = pool_mask.any(dim=1)  # [B]; a row with nothing to pool gets -inf and no gradient
        ctx.save_for_backward(transformed, weight, argmax, has_position)
        ctx.bias_dtype = bias.dtype
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pooled):
        transformed, weight, argmax, has_position = ctx.saved_tensors
        need_transformed, need_weight, need_bias = ctx.needs_input_grad[:3]
        accumulate = _accumulation_dtype(grad_pooled.dtype)
        grad = grad_pooled.to(accumulate).masked_fill(~has_position[:, None], 0.0)  # [B, V]
        grad_transformed = grad_weight = grad_bias = None
        if need_bias:
            grad_bias = grad.sum(dim=0).to(ctx.bias_dtype)  # [V]
        if need_transformed or need_weight:
            # The routing as a sparse matrix R [V, B*L] with one entry per (v, b):
            # R[v, b*L + argmax[b, v]] = dmu[b, v]; then dW = R @ x and dx = R^T @ W, O(B·V·d).
            # (A per-sequence gather / index_add loop is 3-5x slower on CPU.)
            batch, length, width = transformed.shape
            vocab = weight.shape[0]
            flat_positions = argmax.T + torch.arange(batch, device=argmax.device) * length  # [V, B], v-major
            rows = torch.arange(vocab, device=argmax.device).repeat_interleave(batch)  # [V*B]
            routing = torch.sparse_coo_tensor(  # (v, b*L + l) pairs already sorted and unique
                torch.stack([rows, flat_positions.reshape(-1)]), grad.T.reshape(-1), (vocab, batch * length),
                is_coalesced=True, check_invariants=False,
            )
            if need_weight:
                flat = transformed.reshape(batch * length, width).to(accumulate)  # [B*L, d]
                grad_weight = torch.sparse.mm(routing, flat).to(weight.dtype)  # [V, d]
            if need_transformed:
                grad_flat = torch.sparse.mm(routing.t(), weight.to(accumulate))  # [B*L, d]
                grad_transformed = grad_flat.view(batch, length, width).to(transformed.dtype)
        return grad_transformed, grad_weight, grad_bias, None, None, None


def chunked_max_pool_logits(transformed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            pool_mask: torch.Tensor, chunk_size: int = 64) -> torch.Tensor:
    """`bow_pool(F.linear(transformed, weight, bias), pool_mask)` without the `[B, L, V]` logits.

    Args:
        transformed: `[B, L, d]` head-transformed hidden states.
        weight: `[V, d]` vocabulary projection (tied word embeddings); bias: `[V]`.
        pool_mask: `[B, L]` bool, True at the positions the max runs over.
        chunk_size: positions per step; memory `B x chunk_size x V` logits.
    Returns:
        `[B, V]` max-pooled logits `mu` (`-inf`, and no gradient, for a row with no allowed position).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    compute_dtype, autocast_off = _compute_dtype(transformed, weight, bias)
    with autocast_off:
        return _ChunkedMaxPool.apply(transformed, weight, bias, pool_mask.bool(), chunk_size, compute_dtype)


# -- cross-entropy through the vocabulary projection ----------------------------------------------


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, targets, chunk_size, with_grad, compute_dtype):
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype)
        x, weight, bias = (t.to(compute_dtype) for t in (x, weight, bias))  # the weight: one cast per call
        rows = x.shape[0]
        accumulate = _accumulation_dtype(compute_dtype)
        loss = torch.zeros((), dtype=accumulate, device=x.device)
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        if with_grad:
            grad_x = torch.empty(x.shape, dtype=accumulate, device=x.device)  # [T, d]
            grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=x.device)  # [V, d]
            grad_bias = torch.zeros(weight.shape[0], dtype=accumulate, device=x.device)  # [V]
        for start in range(0, rows, chunk_size):
            stop = min(start + chunk_size, rows)
            x_chunk, target = x[start:stop], targets[start:stop]  # [C, d], [C]
            logits = F.linear(x_chunk, weight, bias)  # [C, V] in the compute dtype: the only big tensors
            row_max, predicted = logits.max(dim=-1)  # [C]
            # One softmax pass in the compute dtype (float32 arithmetic inside, one rounding), not a cast
            # to float32 followed by logsumexp, subtract and exp: each pass over [C, V] costs about as
            # much as the matmul that made it. The log-normaliser comes from the arg-max's probability,
            # log Z = max - log p_max, which never underflows (p_max >= 1/V); in bf16 p_max carries 8
            # significant bits, so a row's loss is within 2^-8 of the float32 value (its gradient is
            # the softmax rounded once to bf16, as autograd's cast would give).
            probs = torch.softmax(logits, dim=-1)  # [C, V]
            log_normaliser = row_max.to(accumulate) - probs.gather(1, predicted[:, None]).squeeze(1).to(accumulate).log()
            loss += (log_normaliser - logits.gather(1, target[:, None]).squeeze(1).to(accumulate)).sum()
            correct += (predicted == target).sum()
            del logits
            if with_grad:
                grad_logits = probs  # [C, V], becomes softmax - onehot in place
                grad_logits[torch.arange(stop - start, device=x.device), target] -= 1.0
                grad_bias += grad_logits.sum(dim=0)  # summed in the compute dtype, as autograd would
                grad_x[start:stop] = grad_logits @ weight  # [C, d]
                if grad_logits.dtype == grad_weight.dtype:
                    grad_weight.addmm_(grad_logits.T, x_chunk)  # [V, d], no temporary
                else:
                    grad_weight += grad_logits.T @ x_chunk  # [V, d] in the low dtype, summed in float32
            del probs
        if with_grad:
            ctx.save_for_backward(grad_x, grad_weight, grad_bias)
        ctx.with_grad = with_grad
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_correct):
        if not ctx.with_grad:
            raise RuntimeError("fused_linear_cross_entropy ran without gradients (grad mode was off)")
        grad_x, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_loss.to(grad_x.dtype)
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        return ((grad_x * scale).to(x_dtype), (grad_weight * scale).to(weight_dtype),
                (grad_bias * scale).to(bias_dtype), None, None, None, None)


def fused_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                               chunk_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of `F.linear(x, weight, bias)` `[T, V]` against `targets`, without the logits.

    The gradient is computed during the forward pass, `chunk_size` rows at a time, and kept until
    backward: `[T, d] + [V, d] + [V]` float32 instead of the `[T, V]` logits and their gradient.
    Under `torch.no_grad()` only the loss is computed.

    Args:
        x: `[T, d]` head-transformed states; weight: `[V, d]`; bias: `[V]`.
        targets: `[T]` token ids in `[0, V)` (no ignore index: select the scored rows beforehand).
        chunk_size: rows per step; memory `chunk_size x V` logits (float32).
    Returns:
        (loss sum, float32 scalar with gradient; number of rows whose arg-max is the target, long).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias))
    compute_dtype, autocast_off = _compute_dtype(x, weight, bias)
    with autocast_off:
        return _FusedLinearCrossEntropy.apply(x, weight, bias, targets, chunk_size, with_grad, compute_dtype)
