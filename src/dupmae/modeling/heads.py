"""Access to an encoder's embedding module and MLM head through public attributes.

DupMAE applies the encoder's *own* MLM head (`Head`) to the decoder output and
to every encoder position (BoW), and the encoder's own embedding module (`Emb`)
to the decoder streams. Hugging Face masked-LM classes expose these as public
attributes whose names differ by family; this file is the one place that knows
the names.
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

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
