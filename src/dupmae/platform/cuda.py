"""CUDA speed paths: TF32 for fp32 matmuls, and a fused linear cross-entropy from Liger-Kernel.

Nothing here runs on a machine without CUDA: `prepare` (platform/__init__.py) picks these only for
CUDA devices, and each import of an optional library is guarded, so a CPU install never needs them.
"""

from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)


def set_tf32(enabled: bool) -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (Ampere and newer): ~8x the fp32 rate,
    10-bit mantissa products with fp32 accumulation. No effect on bf16 autocast."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def tf32_supported(device: torch.device) -> bool:
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 8


@functools.lru_cache(maxsize=1)
def liger_cross_entropy_class():
    """Liger-Kernel's `LigerFusedLinearCrossEntropyLoss`, or None when it is not installed."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except Exception as error:  # noqa: BLE001 - missing, or installed against another torch / triton
        if not isinstance(error, ImportError):
            logger.warning("Liger-Kernel is installed but cannot be imported (%s: %s)", type(error).__name__, error)
        return None
    return LigerFusedLinearCrossEntropyLoss


def liger_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               targets: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(sum of cross-entropy(x @ weight.T + bias, targets), number of arg-max hits)` through Liger's fused
    Triton kernel: logits made and turned into gradients one block at a time on the GPU, never `[T, V]`.

    Same contract as `dupmae.modeling.lean_losses.fused_linear_cross_entropy` (x `[T, d]`, weight
    `[V, d]`, bias `[V]`, targets `[T]`). Liger returns no accuracy, so the hits are counted apart,
    without gradients, `chunk_size` rows at a time (a forward product only: a third of the loss's FLOPs)."""
    loss_class = liger_cross_entropy_class()
    if loss_class is None:
        raise RuntimeError("vocab_loss=liger needs Liger-Kernel: pip install liger-kernel")
    if x.shape[0] == 0:
        return x.new_zeros((), dtype=torch.float32) + 0 * x.sum(), torch.zeros((), dtype=torch.long, device=x.device)
    low_weight = weight.to(x.dtype)  # under autocast x is bf16 and the master weight fp32; the cast is differentiable
    low_bias = None if bias is None else bias.to(x.dtype)
    loss = loss_class(reduction="sum")(low_weight, x, targets, low_bias)
    if isinstance(loss, tuple):  # versions that return (loss, z_loss, ...) or an output record
        loss = loss[0]
    loss = getattr(loss, "loss", loss)
    with torch.no_grad():
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        for start in range(0, x.shape[0], chunk_size):
            logits = torch.nn.functional.linear(x[start:start + chunk_size], low_weight, low_bias)
            correct += (logits.argmax(-1) == targets[start:start + chunk_size]).sum()
    return loss.float(), correct
