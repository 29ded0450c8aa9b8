"""Access to an encoder's embedding module and MLM head through public attributes.

DupMAE applies the encoder's *own* MLM head (`Head`) to the decoder output and
to every encoder position (BoW), and the encoder's own embedding module (`Emb`)
to the decoder streams. Hugging Face masked-LM classes expose these as public
attributes whose names differ by family; this file is the one place that knows
the names, and how a head splits into its transform and its vocabulary projection
(`split_mlm_head`), which the memory-lean losses need.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import gelu  # what RobertaLMHead.forward applies

# masked-LM attribute holding the head, per model_type family
_HEAD_ATTRIBUTES = {
    "bert": "cls",
    "roberta": "lm_head",
    "xlm-roberta": "lm_head",
    "camembert": "lm_head",
    "ernie": "cls",
}


def mlm_head_name(model: PreTrainedModel) -> str:
    """Name of the attribute of `model` that maps hidden states `[..., d]` to vocabulary logits `[..., V]`."""
    model_type = getattr(model.config, "model_type", None)
    name = _HEAD_ATTRIBUTES.get(model_type)
    if name is None or not isinstance(getattr(model, name, None), nn.Module):
        raise ValueError(
            f"model type {model_type!r} is not supported for DupMAE pre-training yet; supported: "
            f"{sorted(_HEAD_ATTRIBUTES)} (BERT-style encoders with a masked-LM head)"
        )
    return name


def embedding_module(model: PreTrainedModel) -> nn.Module:
    """The encoder's full embedding module (word + position + type, LayerNorm, dropout)."""
    embeddings = getattr(model.base_model, "embeddings", None)
    if embeddings is None or not hasattr(embeddings, "position_embeddings"):
        raise ValueError(f"{type(model).__name__} has no BERT-style `embeddings` module with position embeddings")
    return embeddings


@dataclass(frozen=True)
class SplitMLMHead:
    """An MLM head as two steps: `Head(x) = projection(transform(x))`.

    `transform`: `[..., d] -> [..., d]` (dense -> GELU -> LayerNorm); `projection`: the vocabulary
    layer, `weight` `[V, d]` (tied to the word embeddings) and `bias` `[V]`. The lean losses
    (`dupmae.modeling.lean_losses`) take `transform(x)`, `weight` and `bias` separately so that they
    can compute the `[.., V]` logits a chunk at a time.
    """

    transform: Callable[[torch.Tensor], torch.Tensor]
    projection: nn.Linear

    @property
    def weight(self) -> torch.Tensor:
        return self.projection.weight  # [V, d]

    @property
    def bias(self) -> torch.Tensor:
        bias = self.projection.bias
        return bias if bias is not None else self.weight.new_zeros(self.weight.shape[0])  # [V]

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.projection(self.transform(hidden))  # [..., V]


def split_mlm_head(head: nn.Module) -> SplitMLMHead | None:
    """Split an MLM head into transform and projection, or None for a structure this file does not know.

    BERT / ERNIE (`cls`): `cls.predictions.transform`, then `cls.predictions.decoder`.
    RoBERTa family (`lm_head`): `dense` -> `gelu` -> `layer_norm`, then `decoder` — what
    `RobertaLMHead.forward` does. `mlm_head_matches_split` checks the split numerically.
    """
    predictions = getattr(head, "predictions", None)
    transform = getattr(predictions, "transform", None)
    decoder = getattr(predictions, "decoder", None)
    if isinstance(transform, nn.Module) and isinstance(decoder, nn.Linear):
        return SplitMLMHead(transform=transform, projection=decoder)
    dense, layer_norm, decoder = (getattr(head, name, None) for name in ("dense", "layer_norm", "decoder"))
    if isinstance(dense, nn.Linear) and isinstance(layer_norm, nn.LayerNorm) and isinstance(decoder, nn.Linear):
        return SplitMLMHead(transform=lambda x: layer_norm(gelu(dense(x))), projection=decoder)
    return None


@torch.no_grad()
def mlm_head_matches_split(head: nn.Module, split: SplitMLMHead) -> bool:
    """Whether `split(x)` reproduces `head(x)` on a small random input (catches a head whose
    forward does more or other than the known structure, e.g. a different activation)."""
    weight = split.weight
    generator = torch.Generator(device=weight.device).manual_seed(0)
    x = 3 * torch.randn(4, weight.shape[1], device=weight.device, dtype=weight.dtype, generator=generator)
    with torch.autocast(weight.device.type, enabled=False):
        expected, actual = head(x).float(), split(x).float()  # [4, V]
    if expected.shape != actual.shape:
        return False
    # The same operations give the same numbers; the slack only absorbs kernel differences. (In
    # float32 it still tells tanh-GELU from erf-GELU; in 16-bit it checks the structure only.)
    relative = 1e-6 if weight.dtype in (torch.float32, torch.float64) else 1e-2
    return bool((actual - expected).abs().max() <= relative * expected.abs().max())


def split_if_exact(head: nn.Module, verdict: bool | None) -> tuple[SplitMLMHead | None, bool]:
    """The split head when it reproduces `head` (`mlm_head_matches_split`), else None, and the
    verdict for the caller to cache: the numeric check runs only while `verdict` is None (it costs
    a device synchronisation)."""
    split = split_mlm_head(head)
    if verdict is None:
        verdict = split is not None and mlm_head_matches_split(head, split)
    return (split if verdict else None), verdict

