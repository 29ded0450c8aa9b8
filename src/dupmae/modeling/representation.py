"""The DupMAE retrieval representation (DUPMAE.md §2): dense projection of [CLS] + top-k sparse vocabulary vector.

For a text, the encoder runs on the *unmasked* input:
- dense part: `W_cls h` — a linear projection of the [CLS] vector (`dense_dim`, default 384);
- sparse part: `mu` = max over the ordinary positions of `act(Head(H))` (a `V`-vector), kept at
  its top-`sparse_top_k` entries for documents;
- score: `s(q, d) = dense(q) . dense(d) + sum over i in topk(d) of mu_q[i] * mu_d[i]`.

`RepresentationConfig` is saved next to the weights (`dupmae_representation.json`), so encoding
can never disagree with training.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, PreTrainedModel

from dupmae.data.integrity import read_json_file
from dupmae.modeling.checkpointing import DelegatesCheckpointing
from dupmae.modeling.head_init import load_masked_lm
from dupmae.modeling.heads import mlm_head_name, split_if_exact
from dupmae.modeling.lean_losses import chunked_max_pool_logits
from dupmae.modeling.persistence import deduplicated_state_dict, load_weights, save_weights

CONFIG_FILE = "dupmae_representation.json"
REPRESENTATIONS = ("dupmae", "cls", "sparse")
SPARSE_ACTIVATIONS = ("none", "relu", "log1p_relu")


@dataclass
class RepresentationConfig:
    """How a text becomes a vector; every open choice of DUPMAE.md §2 is a named field."""

    representation: str = field(default="dupmae", metadata={
        "help": "dupmae = dense [CLS] projection + sparse top-k vocabulary vector; cls = [CLS] only; sparse = vocabulary vector only.",
        "choices": list(REPRESENTATIONS)})
    dense_dim: int = field(default=384, metadata={
        "help": "Width of the dense projection W_cls of [CLS]; 0 = the raw [CLS] vector (no projection)."})
    dense_bias: bool = field(default=False, metadata={"help": "Give W_cls a bias (the paper does not say)."})
    dense_pooling: str = field(default="cls", metadata={
        "help": "Dense input: cls = the [CLS] vector (DupMAE); mean = mean of the token vectors (how "
                "sentence-transformers models such as all-MiniLM-L6-v2 were trained).",
        "choices": ["cls", "mean"]})
    normalize_dense: bool = field(default=False, metadata={
        "help": "L2-normalise the dense part (cosine similarity, as sentence-transformers models use)."})
    sparse_top_k: int = field(default=384, metadata={
        "help": "Entries of a document's vocabulary vector kept in the index (paper: 384)."})
    sparse_top_k_in_training: bool = field(default=False, metadata={
        "help": "Also cut passages to their top-k entries during fine-tuning (train as you search)."})
    sparse_activation: str = field(default="none", metadata={
        "help": "Activation on vocabulary logits before the max-pool: none (raw logits, paper), relu, or "
                "log1p_relu (SPLADE-style; non-negative, as an inverted index needs).",
        "choices": list(SPARSE_ACTIVATIONS)})
    sparse_weight: float = field(default=1.0, metadata={
        "help": "Weight w of the sparse term: s = dense(q).dense(d) + w * sparse(q).sparse(d) (paper: 1). Both "
                "sides' sparse vectors are multiplied by sqrt(w), so indexes and search need no change."})
    sparse_exclude_special: bool = field(default=True, metadata={
        "help": "Leave special tokens ([SEP]) out of the max-pool: they would otherwise dominate it."})
    query_max_length: int = field(default=64, metadata={"help": "Tokens per query (released recipe: 32)."})
    passage_max_length: int = field(default=256, metadata={"help": "Tokens per passage (released recipe: 140)."})

    def __post_init__(self) -> None:
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {self.representation!r}")
        if self.sparse_activation not in SPARSE_ACTIVATIONS:
            raise ValueError(f"sparse_activation must be one of {SPARSE_ACTIVATIONS}, got {self.sparse_activation!r}")
        if self.dense_pooling not in ("cls", "mean"):
            raise ValueError(f"dense_pooling must be cls or mean, got {self.dense_pooling!r}")
        if not self.sparse_weight > 0:
            raise ValueError(f"sparse_weight must be > 0, got {self.sparse_weight!r}")
        if self.dense_dim < 0 or self.sparse_top_k < 1:
            raise ValueError("dense_dim must be >= 0 and sparse_top_k >= 1")
        if self.query_max_length < 2 or self.passage_max_length < 2:
            raise ValueError("query_max_length and passage_max_length must be >= 2")

    @property
    def uses_dense(self) -> bool:
        return self.representation in ("dupmae", "cls")

    @property
    def uses_sparse(self) -> bool:
        return self.representation in ("dupmae", "sparse")

    def save(self, directory: str | Path) -> None:
        (Path(directory) / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "RepresentationConfig":
        values = read_json_file(Path(directory) / CONFIG_FILE, "representation settings")
        known = {f.name for f in dataclasses.fields(cls)}
        if set(values) - known:
            raise ValueError(f"{Path(directory) / CONFIG_FILE}: unknown setting(s) {sorted(set(values) - known)}")
        return cls(**values)


@dataclass
class Representation:
    """A batch of encoded texts. `dense`: `[B, D]` or None; `sparse`: `[B, V]` (zeros outside the
    kept entries when cut to top-k) or None."""

    dense: torch.Tensor | None
    sparse: torch.Tensor | None


def activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return F.relu(logits)
    if activation == "log1p_relu":
        return torch.log1p(F.relu(logits))
    return logits


def keep_top_k(vectors: torch.Tensor, k: int) -> torch.Tensor:
    """Zero all but the `k` largest entries of each row: `[B, V]` -> `[B, V]` (gradient flows to the kept ones)."""
    if k >= vectors.shape[-1]:
        return vectors
    indices = vectors.topk(k, dim=-1).indices
    return torch.zeros_like(vectors).scatter(-1, indices, vectors.gather(-1, indices))


def score(queries: Representation, passages: Representation) -> torch.Tensor:
    """`s(q, d)` for every pair: `[Bq, Bd]` — dense inner product plus sparse inner product."""
    total = None
    if queries.dense is not None:
        total = queries.dense @ passages.dense.T
    if queries.sparse is not None:
        sparse = queries.sparse @ passages.sparse.T
        total = sparse if total is None else total + sparse
    return total


class DupMAEEncoder(DelegatesCheckpointing, nn.Module):
    """A masked-LM encoder (its head gives the vocabulary vector) plus the dense projection `W_cls`."""

    def __init__(self, model: PreTrainedModel, config: RepresentationConfig) -> None:
        super().__init__()
        self.model = model
        self.representation = config  # not `config`: the HF Trainer expects that to be a PretrainedConfig
        self._head_name = mlm_head_name(model) if config.uses_sparse else None
        self._head_splits: bool | None = None  # does the head split into transform + projection? (checked once)
        hidden = model.config.hidden_size
        self.dense_projection = (
            nn.Linear(hidden, config.dense_dim, bias=config.dense_bias)
            if config.uses_dense and config.dense_dim > 0 else None
        )
        if self.dense_projection is not None:
            # Start as a random orthogonal map: keeps [CLS] geometry (inner products up to the
            # discarded directions) instead of scrambling it with N(0, 0.02) noise.
            nn.init.orthogonal_(self.dense_projection.weight)
            if self.dense_projection.bias is not None:
                nn.init.zeros_(self.dense_projection.bias)

    def checkpointed_model(self) -> PreTrainedModel:
        return self.model

    @property
    def dense_dim(self) -> int:
        return self.representation.dense_dim or self.model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                special_tokens_mask: torch.Tensor | None = None, top_k: int | None = None) -> Representation:
        """
        Args:
            input_ids, attention_mask: `[B, L]`.
            special_tokens_mask: `[B, L]`, 1 at special tokens (left out of the max-pool when
                `sparse_exclude_special`); position 0 ([CLS]) is always left out.
            top_k: cut the sparse vectors to their top-k entries (documents at index time).
        """
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, d]
        dense = sparse = None
        if self.representation.uses_dense:
            if self.representation.dense_pooling == "cls":
                pooled = hidden[:, 0]  # [B, d]
            else:
                weights = attention_mask[:, :, None].to(hidden.dtype)  # [B, L, 1]
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # [B, d]
            dense = self.dense_projection(pooled) if self.dense_projection is not None else pooled  # [B, D]
            if self.representation.normalize_dense:
                dense = F.normalize(dense.float(), dim=-1)
        if self.representation.uses_sparse:
            pool = attention_mask.bool().clone()
            pool[:, 0] = False
            if self.representation.sparse_exclude_special and special_tokens_mask is not None:
                pool &= ~special_tokens_mask.bool()
            pool[:, 0] |= ~pool.any(dim=1)  # an empty text still gets a (CLS-position) vector
            sparse = activate(self._max_pooled_logits(hidden, pool), self.representation.sparse_activation)  # [B, V]
            if top_k:
                sparse = keep_top_k(sparse, top_k)
            if self.representation.sparse_weight != 1.0:
                sparse = sparse * self.representation.sparse_weight ** 0.5  # both sides: w * (mu_q . mu_d)
        return Representation(dense=None if dense is None else dense.float(), sparse=sparse)

    def _max_pooled_logits(self, hidden: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """`max over pooled positions of Head(hidden)`: `[B, L, d]`, `[B, L]` bool -> `[B, V]` float32.

        The activations (`relu`, `log1p_relu`, none) are non-decreasing, so activating the max equals
        max-pooling the activated logits. A head that splits into transform + projection is pooled a
        chunk of positions at a time (`chunked_max_pool_logits`, gradient to the arg-max) and never
        builds `[B, L, V]` — 500 MB in float32 for 32 passages of 128 tokens, plus its gradient."""
        head = getattr(self.model, self._head_name)
        split, self._head_splits = split_if_exact(head, self._head_splits)
        if split is None:
            return head(hidden).float().masked_fill(~pool[:, :, None], float("-inf")).max(dim=1).values
        positions_per_chunk = max(1, 1024 // hidden.shape[0])
        return chunked_max_pool_logits(split.transform(hidden), split.weight, split.bias, pool,
                                       positions_per_chunk).float()

    # -- persistence ------------------------------------------------------------------------------
    @property
    def _keys_to_ignore_on_save(self) -> list[str]:
        # Read by the HF Trainer when it reloads a checkpoint: these missing keys are tied, not lost.
        return deduplicated_state_dict(self)[1]

    def tie_weights(self) -> None:
        self.model.tie_weights()

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> None:
        """Weights of encoder, head and projection (one safetensors file), encoder config,
        representation config and tokenizer: everything encoding needs, nothing re-typed by hand."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_weights(self, directory)
        self.model.config.save_pretrained(directory)
        self.representation.save(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: RepresentationConfig | None = None,
                        missing_head_init: str = "identity") -> "DupMAEEncoder":
        """Load a retriever folder written by `save_pretrained` (its saved config wins), or start one
        from any masked-LM / encoder folder (e.g. a `dupmae export`) with `config`; a head that folder
        lacks starts as `missing_head_init` (see `dupmae.modeling.head_init`)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model folder not found: {directory}")
        if not (directory / CONFIG_FILE).is_file():
            return cls(load_masked_lm(directory, missing_head_init), config or RepresentationConfig())
        stored = RepresentationConfig.load(directory)
        if config is not None and config != stored:
            raise ValueError(f"{directory} was trained with {stored}; it cannot be re-read as {config}")
        encoder = cls(AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(directory)), stored)
        load_weights(encoder, directory)
        encoder.tie_weights()
        return encoder


def load_tokenizer(directory: str | Path):
    return AutoTokenizer.from_pretrained(directory)
