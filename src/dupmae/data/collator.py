"""Batches for pre-training: padding, encoder masking and decoder masks.

Randomness is drawn *per example* from a generator seeded by
`(seed, epoch, example_id)`. The masks an example gets therefore do not depend
on the batch it lands in, the number of processes, data-loader workers or an
interruption and resume — which is what makes the 2-process run equal the
1-process run and a resumed run equal an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dupmae.config import PretrainingOptions
from dupmae.data.masking import apply_mlm_corruption, decoder_attention_mask, select_words_in_order, word_lengths

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _mixed_seed(seed: int, epoch: int, example_id: int) -> int:
    return (seed * _MIX[0] + (epoch + 1) * _MIX[1] + (example_id + 1) * _MIX[2]) % (2**63 - 1)


def example_generator(seed: int, epoch: int, example_id: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch, example_id)."""
    return torch.Generator().manual_seed(_mixed_seed(seed, epoch, example_id))


def example_rng(seed: int, epoch: int, example_id: int) -> np.random.Generator:
    """A NumPy generator whose stream depends only on (seed, epoch, example_id). The pre-training
    collator draws with NumPy: its raw bits and row-wise sorts build a whole mask pool's word orders
    in a few calls (`torch.randperm` would take one call per row)."""
    return np.random.default_rng(_mixed_seed(seed, epoch, example_id))


def row_permutations(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """`rows` independent random permutations of `0..n-1`: `[rows, n]` int64.

    Each row sorts `n` random keys that carry their index in the low bits, so the sorted keys' low
    bits are the permutation: one draw of raw bits and one row-wise sort of uint32 (2.5x faster
    than `Generator.permuted` at 128 rows x 100 words, which shuffles row by row). With 32-bit keys
    at least 20 bits are random (12 index bits, n <= 4096); two words whose random parts are equal
    (probability 2^-r for r random bits) keep index order, so the order of any two words is biased
    by at most 2^-21 — negligible. Longer rows use 64-bit keys.
    """
    index_bits = max(1, (n - 1).bit_length())
    dtype = np.uint32 if index_bits <= 12 else np.uint64
    words_needed = -(-rows * n * np.dtype(dtype).itemsize // 8)
    keys = rng.bit_generator.random_raw(words_needed).view(dtype)[: rows * n].reshape(rows, n)
    low = dtype((1 << index_bits) - 1)
    keys = (keys & ~low) | np.arange(n, dtype=dtype)
    keys.sort(axis=1)
    return (keys & low).astype(np.int64)


def _pad(rows: list[torch.Tensor], length: int, value) -> torch.Tensor:
    """Right-pad 1-d tensors to `length` and stack: `[len(rows), length]`."""
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out


def _orders(orders: list[torch.Tensor], rows: int, num_words: int) -> torch.Tensor:
    """Stack per-sequence word orders `[rows_i, words_i]` into `[B, rows, num_words]` permutations:
    each sequence's absent word slots (`words_i..num_words-1`) follow its own words, and rows a
    sequence does not have (never chosen) are the identity."""
    out = torch.arange(num_words).expand(len(orders), rows, num_words).clone()  # [B, rows, W]
    for i, order in enumerate(orders):  # a copy per sequence, not per row
        out[i, : order.shape[0], : order.shape[1]] = order
    return out


@dataclass
class PretrainingCollator:
    """Turns prepared examples (`input_ids`, `word_ids`, `example_id`) into a model batch.

    Output (B = batch, L = longest sequence rounded up to `pad_to_multiple_of`):
        input_ids            [B, L]    encoder input after whole-word masking + 80/10/10
        attention_mask       [B, L]    1 for tokens, 0 for padding
        labels               [B, L]    original id at encoder-masked positions, -100 elsewhere
        original_input_ids   [B, L]    the unmasked input (decoder content stream, BoW target)
        ordinary_mask        [B, L]    True at ordinary (non-special, non-padding) tokens
        decoder_attention_mask [B, L, L] bool, only for objectives with a decoder
    """

    options: PretrainingOptions
    pad_token_id: int
    mask_token_id: int
    vocab_size: int
    seed: int = 42
    pad_to_multiple_of: int | None = 8
    epoch: int = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        words = [torch.as_tensor(e["word_ids"], dtype=torch.long) for e in examples]
        length = max(len(x) for x in ids)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        num_words = max(1, max(int(w.max()) + 1 for w in words))

        draws = [self._draw(e, len(x), int(w.max()) + 1) for e, x, w in zip(examples, ids, words)]
        input_ids = _pad(ids, length, self.pad_token_id)  # [B, L]
        word_ids = _pad(words, length, -1)  # [B, L]
        attention_mask = (torch.arange(length)[None, :] < torch.tensor([len(x) for x in ids])[:, None]).long()
        lengths = word_lengths(word_ids, num_words)  # [B, W]

        # Encoder: whole words covering encoder_mask_ratio of the tokens, then 80/10/10.
        encoder_order = _orders([d["encoder_order"][None] for d in draws], 1, num_words)[:, 0]  # [B, W]
        encoder_words = select_words_in_order(encoder_order, lengths, self.options.encoder_mask_ratio)  # [B, W]
        token_mask = encoder_words.gather(1, word_ids.clamp(min=0)) & (word_ids >= 0)  # [B, L]
        corrupted = apply_mlm_corruption(
            input_ids, token_mask,
            _pad([d["action_draws"] for d in draws], length, 1.0),
            _pad([d["random_tokens"] for d in draws], length, self.pad_token_id),
            self.mask_token_id, self.options.mask_token_prob, self.options.random_token_prob,
        )
        batch = {
            "input_ids": corrupted,
            "attention_mask": attention_mask,
            "labels": input_ids.masked_fill(~token_mask, -100),
            "original_input_ids": input_ids,
            "ordinary_mask": word_ids >= 0,
        }
        if self.options.uses_decoder:
            batch["decoder_attention_mask"] = self._decoder_mask(draws, word_ids, lengths, attention_mask)
        return batch

    def _draw(self, example: dict[str, Any], num_tokens: int, num_words: int) -> dict[str, torch.Tensor]:
        """All random numbers one example needs; their sizes depend on the example only."""
        rng = example_rng(self.seed, self.epoch, int(example["example_id"]))
        draws = {
            "encoder_order": rng.permutation(num_words),  # the order in which words are masked
            "action_draws": rng.random(num_tokens, dtype=np.float32),
            "random_tokens": rng.integers(self.vocab_size, size=num_tokens),
        }
        if self.options.uses_decoder:
            pool = min(num_tokens, self.options.decoder_mask_pool_size)
            draws["pool_orders"] = row_permutations(rng, pool, num_words)
            draws["row_choice"] = rng.integers(pool, size=num_tokens)
        draws = {name: torch.from_numpy(values) for name, values in draws.items()}
        return draws

    def _decoder_mask(self, draws, word_ids, lengths, attention_mask) -> torch.Tensor:
        batch, num_words = lengths.shape
        pool = max(d["pool_orders"].shape[0] for d in draws)
        orders = _orders([d["pool_orders"] for d in draws], pool, num_words)  # [B, P, W]
        pool_words = select_words_in_order(orders, lengths[:, None, :], self.options.decoder_mask_ratio)  # [B, P, W]
        row_choice = _pad([d["row_choice"] for d in draws], word_ids.shape[1], 0)
        return decoder_attention_mask(pool_words, row_choice, word_ids, attention_mask)
