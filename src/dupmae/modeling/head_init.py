"""Loading a masked-LM whose checkpoint has no MLM head (e.g. sentence-transformers' all-MiniLM-L6-v2).

`AutoModelForMaskedLM.from_pretrained` then ties the vocabulary projection to the word embeddings
(good) but starts the head's transform (dense -> GELU -> LayerNorm) at random (bad for DupMAE): the
vocabulary vector `mu = max_i Head(H)_i` becomes a random, non-lexical function of the text.
Measured on 40 SciFact abstracts with all-MiniLM-L6-v2: the random transform puts 0.5 % of a
document's own tokens among its top-|doc| vocabulary entries; the identity transform below puts 56 %
there (72 % of the top-64 entries are the document's own tokens), before any training — because the
last hidden state of a token still points towards its input embedding.

`missing_head_init`:
- `identity`: dense = identity, LayerNorm = (1, 0), vocabulary bias = 0, so
  `Head(h) = LayerNorm(GELU(h)) @ E^T`: logits are similarities to the word embeddings;
- `random`: keep the library's random initialisation (what plain `from_pretrained` does).
A checkpoint that has its head is never changed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from dupmae.modeling.heads import mlm_head_name

logger = logging.getLogger(__name__)
MISSING_HEAD_INITS = ("identity", "random")


def head_transform_parts(head: nn.Module) -> tuple[nn.Linear, nn.LayerNorm]:
    """The transform's dense layer and LayerNorm: BERT (`predictions.transform`) or RoBERTa-style (`lm_head`)."""
    transform = getattr(getattr(head, "predictions", None), "transform", None)
    if transform is not None:
        return transform.dense, transform.LayerNorm
    return head.dense, head.layer_norm


def set_identity_transform(head: nn.Module) -> None:
    """Make `Head(h) = LayerNorm(GELU(h)) @ E^T + 0` (see the module docstring)."""
    dense, norm = head_transform_parts(head)
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.weight.shape[0], dense.weight.shape[1], dtype=dense.weight.dtype))
        dense.bias.zero_()
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        bias = getattr(getattr(head, "predictions", head), "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.zero_()


def override_config(config, overrides: dict, source: str):
    """Set existing attributes of a model config; an attribute the architecture lacks is an error
    (it would otherwise be stored and silently ignored by the model)."""
    for name, value in overrides.items():
        if not hasattr(config, name):
            raise ValueError(f"{source}: the {config.model_type} config has no setting {name!r}")
        setattr(config, name, value)
    return config


def load_masked_lm(path: str | Path, missing_head_init: str = "identity",
                   config_overrides: dict | None = None) -> PreTrainedModel:
    """`AutoModelForMaskedLM.from_pretrained(path)`, initialising a head the checkpoint lacks.

    `config_overrides`: config attributes to change before the model is built (each must exist)."""
    if missing_head_init not in MISSING_HEAD_INITS:
        raise ValueError(f"missing_head_init must be one of {MISSING_HEAD_INITS}, got {missing_head_init!r}")
    config = override_config(AutoConfig.from_pretrained(path), config_overrides or {}, str(path))
    # transformers reports an encoder checkpoint without an MLM head (e.g. all-MiniLM-L6-v2) as
    # "corrupted", with a load report of every missing key; the head is expected to be missing and is
    # handled below, so its report is replaced by one line, and only other missing weights are listed.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(path, config=config, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    head_name = mlm_head_name(model)
    outside_head = sorted(key for key in info["missing_keys"] if not key.startswith(head_name + "."))
    if outside_head:
        logger.warning("%s lacks %d weight(s) outside the MLM head, which start random: %s", path, len(outside_head),
                       ", ".join(outside_head[:10]) + (" ..." if len(outside_head) > 10 else ""))
    if info["unexpected_keys"]:
        logger.info("%s: weights not used by %s: %s", path, type(model).__name__, ", ".join(sorted(info["unexpected_keys"])))
    dense, _ = head_transform_parts(getattr(model, head_name))
    dense_keys = {f"{head_name}.{name}" for name, parameter in getattr(model, head_name).named_parameters()
                  if parameter is dense.weight}
    if dense_keys & set(info["missing_keys"]):
        logger.warning("%s has no MLM head transform; starting it as %s (missing_head_init)", path, missing_head_init)
        if missing_head_init == "identity":
            set_identity_transform(getattr(model, head_name))
    return model
