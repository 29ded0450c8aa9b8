"""The enhanced-decoding layer of RetroMAE / DupMAE (DUPMAE.md §1, loss 2).

One transformer block whose queries come from the *query stream* (the sentence
embedding `h` plus position information, one query per position) and whose
keys/values come from the *content stream* (`[h ; Emb(x)[1:]]`). Each query row
gets its own attention mask, so row `i` reconstructs token `i` from `h` and a
random subset of the other tokens — never from itself.

The attention function is an attribute, `attention_function`, with SDPA's signature: PyTorch's
`scaled_dot_product_attention` by default (the best kernel of the device), replaced by the
platform layer where it has a better one (`dupmae.platform.prepare`: lean attention on a CPU when
training with attention dropout, where SDPA would materialise `[B, heads, L, L]`). The decoder
imports no kernel and uses no transformers internals.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import get_activation



class EnhancedDecoderLayer(nn.Module):
    """Post-LayerNorm attention + feed-forward block, BERT-shaped, with separate query and content streams.

    Sizes follow the encoder's config (`hidden_size`, `num_attention_heads`, `intermediate_size`,
    `hidden_act`, `layer_norm_eps`, dropout probabilities), as in the released code, which builds
    the decoder from a copy of the encoder's `BertLayer` config.
    """

    def __init__(self, config, attention_function: Callable[..., torch.Tensor] = F.scaled_dot_product_attention) -> None:
        """`attention_function(q, k, v, mask, dropout_p=...)`: `[B, heads, L, head_dim]` in and out, SDPA's
        signature (the platform layer may set another: see the module docstring)."""
        super().__init__()
        hidden = config.hidden_size
        if hidden % config.num_attention_heads:
            raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {config.num_attention_heads}")
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_output = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(hidden, config.intermediate_size)
        self.activation = get_activation(config.hidden_act)
        self.output = nn.Linear(config.intermediate_size, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.attention_dropout = float(getattr(config, "attention_probs_dropout_prob", 0.0))
        self.dropout = nn.Dropout(float(getattr(config, "hidden_dropout_prob", 0.0)))
        self.attention_function = attention_function
        self._init_weights(float(getattr(config, "initializer_range", 0.02)))

    def _init_weights(self, std: float) -> None:
        # Same scheme as BERT: N(0, initializer_range) weights, zero biases, unit LayerNorms.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # [B, heads, L, head_dim]

    def forward(self, query_stream: torch.Tensor, content_stream: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            query_stream: `[B, L, d]` — one query per position, built from `h` and the position.
            content_stream: `[B, L, d]` — keys/values: `h` at position 0, token embeddings after it.
            attention_mask: `[B, L, L]` bool, `True` where query row `i` may attend to content column `j`.
                Every row must have at least one `True` (DupMAE rows always see position 0).
        Returns:
            `[B, L, d]` hidden states, one per query row.
        """
        batch, length, hidden = query_stream.shape
        q = self._split_heads(self.query(query_stream))
        k = self._split_heads(self.key(content_stream))
        v = self._split_heads(self.value(content_stream))
        attended = self.attention_function(
            q, k, v,
            attention_mask[:, None],  # [B, 1, L, L], broadcast over heads
            dropout_p=self.attention_dropout if self.training else 0.0,
        )  # [B, heads, L, head_dim]
        attended = attended.transpose(1, 2).reshape(batch, length, hidden)
        # The residual comes from the query stream: the content stream is only read, never updated.
        x = self.attention_norm(query_stream + self.dropout(self.attention_output(attended)))
        return self.output_norm(x + self.dropout(self.output(self.activation(self.intermediate(x)))))
