"""The peer for benchmarks/pretrain_step.py: DupMAE written the plain way the released code does it.

- encoder MLM: `BertForMaskedLM(..., labels=...)` — vocabulary logits at *every* position, `[B, L, V]`;
- BoW: the same `[B, L, V]` logits, padding filled with -inf, max over positions (materialised);
- decoder: one BERT-shaped layer with eager attention (explicit `[B, heads, L, L]` scores and an additive
  mask), the MLM head over every position and `CrossEntropyLoss(ignore_index=-100)`;
- collator: whole-word masks with Python lists, and the decoder's position-specific masks built with a
  per-row Python loop (a pool of `min(L, 256)` masks per sequence, one picked per row).

Written here from the method description (../shared/DUPMAE.md §1), not taken from the released code;
it computes the same objective as `dupmae.modeling.pretraining.DupMAEForPretraining`.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertForMaskedLM


class PlainDecoderLayer(nn.Module):
    """Query stream attends to the content stream; eager softmax attention with an additive mask."""

    def __init__(self, config) -> None:
        super().__init__()
        d = config.hidden_size
        self.heads = config.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attention_output = nn.Linear(d, d)
        self.attention_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(d, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, d)
        self.output_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.attention_dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, query_stream, content_stream, additive_mask):
        batch, length, d = query_stream.shape
        head_dim = d // self.heads

        def split(x):
            return x.view(batch, length, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.query(query_stream)), split(self.key(content_stream)), split(self.value(content_stream))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + additive_mask[:, None]  # [B, heads, L, L]
        attended = (self.attention_dropout(scores.softmax(-1)) @ v).transpose(1, 2).reshape(batch, length, d)
        x = self.attention_norm(query_stream + self.dropout(self.attention_output(attended)))
        return self.output_norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class PlainDupMAE(nn.Module):
    def __init__(self, encoder: BertForMaskedLM, bow_loss_weight: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = PlainDecoderLayer(encoder.config)
        self.bow_loss_weight = bow_loss_weight

    def forward(self, input_ids, attention_mask, labels, original_input_ids, decoder_labels, bow_targets,
                decoder_attention_mask):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                           output_hidden_states=True)
        logits = out.logits  # [B, L, V]: the whole tensor, as the released code has it
        pooled = logits[:, 1:].masked_fill(attention_mask[:, 1:, None] == 0, float("-inf")).max(dim=1).values  # [B, V]
        bow = -(bow_targets * F.log_softmax(pooled.float(), dim=-1)).sum(-1).mean()
        h = out.hidden_states[-1][:, :1]  # [B, 1, d]
        embeddings = self.encoder.bert.embeddings
        query = embeddings(inputs_embeds=h.expand(-1, input_ids.shape[1], -1))
        content = torch.cat([h, embeddings(input_ids=original_input_ids)[:, 1:]], dim=1)
        additive = (1.0 - decoder_attention_mask.to(query.dtype)) * torch.finfo(query.dtype).min
        decoded = self.decoder(query, content, additive)
        decoder_logits = self.encoder.cls(decoded)  # [B, L, V]
        decoder_loss = F.cross_entropy(decoder_logits.float().view(-1, decoder_logits.shape[-1]),
                                       decoder_labels.view(-1), ignore_index=-100)
        return out.loss + decoder_loss + self.bow_loss_weight * bow


class PlainCollator:
    """Python-list masking and a per-row loop for the decoder masks (`examples`: input_ids + word_ids lists)."""

    def __init__(self, vocab_size: int, mask_token_id: int, pad_token_id: int = 0, encoder_ratio: float = 0.3,
                 decoder_ratio: float = 0.5, pool_size: int = 256, seed: int = 0) -> None:
        self.vocab_size, self.mask_token_id, self.pad_token_id = vocab_size, mask_token_id, pad_token_id
        self.encoder_ratio, self.decoder_ratio, self.pool_size = encoder_ratio, decoder_ratio, pool_size
        self.rng = random.Random(seed)

    def _whole_word_positions(self, word_ids: list[int], ratio: float) -> set[int]:
        words: dict[int, list[int]] = {}
        for position, word in enumerate(word_ids):
            if word >= 0:
                words.setdefault(word, []).append(position)
        order = list(words)
        self.rng.shuffle(order)
        budget = round(ratio * sum(len(p) for p in words.values()))
        chosen: set[int] = set()
        for word in order:
            if chosen and len(chosen) + len(words[word]) > budget:
                continue
            chosen.update(words[word])
        return chosen

    def __call__(self, examples):
        length = max(len(e["input_ids"]) for e in examples)
        batch = {name: [] for name in ("input_ids", "attention_mask", "labels", "original_input_ids",
                                       "decoder_labels", "bow_targets", "decoder_attention_mask")}
        for example in examples:
            ids, word_ids = list(example["input_ids"]), list(example["word_ids"])
            n = len(ids)
            pad = [self.pad_token_id] * (length - n)
            masked_positions = self._whole_word_positions(word_ids, self.encoder_ratio)
            corrupted, labels = list(ids), [-100] * length
            for position in masked_positions:
                labels[position] = ids[position]
                draw = self.rng.random()
                if draw < 0.8:
                    corrupted[position] = self.mask_token_id
                elif draw < 0.9:
                    corrupted[position] = self.rng.randrange(self.vocab_size)
            pool = [self._whole_word_positions(word_ids, self.decoder_ratio) for _ in range(min(n, self.pool_size))]
            rows = []
            for row in range(length):  # the per-row loop
                visible = [1] * n + [0] * (length - n)
                for position in pool[self.rng.randrange(len(pool))]:
                    visible[position] = 0
                if row < length:
                    visible[row] = 0
                visible[0] = 1
                rows.append(visible)
            ordinary = [w >= 0 for w in word_ids]
            bow = torch.zeros(self.vocab_size)
            distinct = {t for t, o in zip(ids, ordinary) if o}
            bow[list(distinct)] = 1.0 / max(1, sum(ordinary))
            batch["input_ids"].append(corrupted + pad)
            batch["attention_mask"].append([1] * n + [0] * (length - n))
            batch["labels"].append(labels)
            batch["original_input_ids"].append(ids + pad)
            batch["decoder_labels"].append([t if o else -100 for t, o in zip(ids, ordinary)] + [-100] * (length - n))
            batch["bow_targets"].append(bow)
            batch["decoder_attention_mask"].append(rows)
        out = {name: torch.tensor(value) for name, value in batch.items() if name != "bow_targets"}
        out["bow_targets"] = torch.stack(batch["bow_targets"])
        return out
