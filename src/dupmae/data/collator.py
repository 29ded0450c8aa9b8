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

import torch

from dupmae.config import PretrainingOptions
from dupmae.data.masking import apply_mlm_corruption, decoder_attention_mask, select_words, word_lengths

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def example_generator(seed: int, epoch: int, example_id: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch, example_id)."""
    mixed = (seed * _MIX[0] + (epoch + 1) * _MIX[1] + (example_id + 1) * _MIX[2]) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def _pad(rows: list[torch.Tensor], length: int, value) -> torch.Tensor:
    """Right-pad 1-d tensors to `length` and stack: `[len(rows), length]`."""
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
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
        encoder_words = select_words(_pad([d["encoder_scores"] for d in draws], num_words, 0.0), lengths,
                                     self.options.encoder_mask_ratio)  # [B, W]
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
        generator = example_generator(self.seed, self.epoch, int(example["example_id"]))
        draws = {
            "encoder_scores": torch.rand(num_words, generator=generator),
            "action_draws": torch.rand(num_tokens, generator=generator),
            "random_tokens": torch.randint(self.vocab_size, (num_tokens,), generator=generator),
        }
        if self.options.uses_decoder:
            pool = min(num_tokens, self.options.decoder_mask_pool_size)
            draws["pool_scores"] = torch.rand(pool, num_words, generator=generator)
            draws["row_choice"] = torch.randint(pool, (num_tokens,), generator=generator)
        return draws

    def _decoder_mask(self, draws, word_ids, lengths, attention_mask) -> torch.Tensor:
        batch, num_words = lengths.shape
        pool = max(d["pool_scores"].shape[0] for d in draws)
        scores = torch.zeros(batch, pool, num_words)
        for i, d in enumerate(draws):  # a copy per sequence, not per row
            scores[i, : d["pool_scores"].shape[0], : d["pool_scores"].shape[1]] = d["pool_scores"]
        pool_lengths = lengths[:, None, :].expand(batch, pool, num_words)
        pool_words = select_words(
            scores.reshape(batch * pool, num_words), pool_lengths.reshape(batch * pool, num_words),
            self.options.decoder_mask_ratio,
        ).view(batch, pool, num_words)
        row_choice = _pad([d["row_choice"] for d in draws], word_ids.shape[1], 0)
        return decoder_attention_mask(pool_words, row_choice, word_ids, attention_mask)
