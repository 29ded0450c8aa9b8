"""Whole-word masks for the encoder and the decoder, as pure tensor functions.

Word boundaries come from the fast tokenizer's `word_ids()` (stored by
`dupmae prepare`), so masking works for WordPiece, BPE and SentencePiece alike.
Convention for `word_ids` (`[B, L]` long): the word index of each ordinary
token (0, 1, 2, ... within a sequence), `-1` for special tokens and padding —
those are never masked.

Randomness is passed in as tensors (word orders, `draws`), so each function is
deterministic and testable; the collator draws them per example.
"""

from __future__ import annotations

import torch


def word_lengths(word_ids: torch.Tensor, num_words: int) -> torch.Tensor:
    """Tokens per word. `word_ids` `[B, L]` -> `[B, W]` long (0 for word slots a sequence does not have)."""
    lengths = torch.zeros(word_ids.shape[0], num_words, dtype=torch.long, device=word_ids.device)
    ordinary = word_ids >= 0
    return lengths.scatter_add_(1, word_ids.clamp(min=0), ordinary.long())


def select_words_in_order(order: torch.Tensor, lengths: torch.Tensor, ratio: float) -> torch.Tensor:
    """Visit words in `order` and take them while the running token count stays within the budget
    `round(ratio * tokens)`; the first word is always taken (so every sequence with a word gets at
    least one masked word, as the released collator does).

    The collator passes random permutations drawn per example (`torch.randperm`): drawing the
    order directly is several times cheaper than sorting random keys, which was most of the cost
    of the decoder's mask pools (`[B, 256, words]`).

    Args:
        order: `[..., W]` long, each row a permutation of `0..W-1` listing the present words
            (`lengths > 0`) first (e.g. `[B, P, W]` for a pool of P masks per sequence).
        lengths: tokens per word, broadcastable to `order` (e.g. `[B, 1, W]`, shared by a
            sequence's pool rows without a copy); 0 marks an absent word slot.
        ratio: share of the sequence's ordinary tokens to cover.
    Returns:
        bool, the shape of `order`, True for selected words.
    """
    budget = torch.round(ratio * lengths.sum(dim=-1, keepdim=True).to(torch.float64)).long()  # [..., 1]
    sorted_lengths = lengths.expand(order.shape).gather(-1, order)  # [..., W]
    within_budget = sorted_lengths.cumsum(dim=-1) <= budget
    within_budget[..., 0] = True
    selected_sorted = within_budget & (sorted_lengths > 0)
    return torch.zeros(order.shape, dtype=torch.bool, device=order.device).scatter_(-1, order, selected_sorted)


def words_to_tokens(word_mask: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
    """Spread a word-level mask to tokens.

    Args:
        word_mask: `[B, ..., W]` bool (extra middle dims allowed, e.g. `[B, P, W]` for a pool of masks).
        word_ids: `[B, L]` word index per token, -1 for special tokens/padding.
    Returns:
        `[B, ..., L]` bool; always False at special tokens and padding.
    """
    batch, length = word_ids.shape
    shape = (batch,) + (1,) * (word_mask.dim() - 2) + (length,)  # broadcast over the middle dims
    index = word_ids.clamp(min=0).view(shape).expand(*word_mask.shape[:-1], length)
    ordinary = (word_ids >= 0).view(shape)
    return word_mask.gather(-1, index) & ordinary


def apply_mlm_corruption(
    input_ids: torch.Tensor,
    token_mask: torch.Tensor,
    action_draws: torch.Tensor,
    random_tokens: torch.Tensor,
    mask_token_id: int,
    mask_token_prob: float = 0.8,
    random_token_prob: float = 0.1,
) -> torch.Tensor:
    """BERT's 80/10/10 treatment of the selected positions.

    Args:
        input_ids: `[B, L]` original ids.
        token_mask: `[B, L]` bool, positions selected for prediction.
        action_draws: `[B, L]` uniform [0, 1) draws: `< mask_token_prob` -> mask token,
            `< mask_token_prob + random_token_prob` -> random token, else unchanged.
        random_tokens: `[B, L]` replacement ids for the random-token case.
    Returns:
        `[B, L]` corrupted ids (a new tensor).
    """
    use_mask = token_mask & (action_draws < mask_token_prob)
    use_random = token_mask & ~use_mask & (action_draws < mask_token_prob + random_token_prob)
    corrupted = input_ids.masked_fill(use_mask, mask_token_id)
    return torch.where(use_random, random_tokens, corrupted)


def decoder_attention_mask(
    pool_word_masks: torch.Tensor,
    row_choice: torch.Tensor,
    word_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Position-specific decoder masks, built without a per-row loop.

    Each sequence has a pool of `P` whole-word masks; row `i` takes mask
    `row_choice[b, i]` and may not see the tokens it covers. Row `i` never sees
    itself, never sees padding, and always sees position 0 (the sentence embedding).

    Args:
        pool_word_masks: `[B, P, W]` bool, True = word hidden from the rows that use this mask.
        row_choice: `[B, L]` long in `[0, P)`, the pool entry of each row.
        word_ids: `[B, L]` word index per token, -1 for special tokens/padding.
        attention_mask: `[B, L]` 1 for real tokens, 0 for padding.
    Returns:
        `[B, L, L]` bool, True where row `i` may attend to column `j`.
    """
    batch, length = word_ids.shape
    pool_hidden = words_to_tokens(pool_word_masks, word_ids)  # [B, P, L]
    hidden = pool_hidden.gather(1, row_choice[:, :, None].expand(batch, length, length))  # [B, L(row), L(col)]
    visible = attention_mask.bool()[:, None, :] & ~hidden
    eye = torch.eye(length, dtype=torch.bool, device=word_ids.device)
    visible = visible & ~eye
    visible[:, :, 0] = True
    return visible
