"""Whole-word masks and decoder attention masks, checked element by element."""

import torch

from dupmae.config import PretrainingOptions
from dupmae.data.collator import PretrainingCollator
from dupmae.data.masking import (
    apply_mlm_corruption,
    decoder_attention_mask,
    select_words_in_order,
    word_lengths,
    words_to_tokens,
)

# [CLS] w0 w0 w1 w2 w2 w2 [SEP] <pad> <pad>
WORD_IDS = torch.tensor([[-1, 0, 0, 1, 2, 2, 2, -1, -1, -1]])
ATTENTION = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])


def test_word_lengths():
    assert word_lengths(WORD_IDS, 4).tolist() == [[2, 1, 3, 0]]


def select_words(scores, lengths, ratio):
    """Words visited in ascending `scores` order (absent slots last), as random keys would give."""
    order = scores.masked_fill(lengths == 0, float("inf")).argsort(dim=1, stable=True)
    return select_words_in_order(order, lengths, ratio)


def test_select_words_takes_random_order_within_token_budget():
    lengths = torch.tensor([[1, 2, 1, 3], [2, 2, 0, 0]])
    scores = torch.tensor([[0.4, 0.1, 0.3, 0.2], [0.9, 0.5, 0.0, 0.0]])
    # row 0: budget round(0.5 * 7) = 4; order w1(2) w3(3) w2(1) w0(1); cumsum 2, 5 -> only w1 fits.
    # row 1: budget round(0.5 * 4) = 2; absent slots ignored; order w1(2) w0(2) -> w1.
    assert select_words(scores, lengths, 0.5).tolist() == [[False, True, False, False], [False, True, False, False]]
    # ratio 1 covers everything present, never the absent slots
    assert select_words(scores, lengths, 1.0).tolist() == [[True, True, True, True], [True, True, False, False]]


def test_select_words_always_masks_one_word_and_none_of_an_empty_sequence():
    lengths = torch.tensor([[5, 1], [0, 0]])
    selected = select_words(torch.tensor([[0.2, 0.7], [0.1, 0.2]]), lengths, 0.01)
    assert selected.tolist() == [[True, False], [False, False]]


def test_words_to_tokens_spreads_words_and_skips_special_tokens():
    tokens = words_to_tokens(torch.tensor([[True, False, True]]), WORD_IDS)
    assert tokens.int().tolist() == [[0, 1, 1, 0, 1, 1, 1, 0, 0, 0]]
    pooled = words_to_tokens(torch.tensor([[[False, True, False], [True, True, True]]]), WORD_IDS)  # [1, 2, L]
    assert pooled.int().tolist() == [[[0, 0, 0, 1, 0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1, 0, 0, 0]]]


def test_mlm_corruption_80_10_10():
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    selected = torch.tensor([[True, True, True, False, True]])
    draws = torch.tensor([[0.5, 0.85, 0.95, 0.1, 0.79]])
    random_tokens = torch.tensor([[7, 8, 9, 6, 5]])
    out = apply_mlm_corruption(ids, selected, draws, random_tokens, mask_token_id=4)
    # 0.5 -> mask; 0.85 -> random (8); 0.95 -> unchanged; not selected -> unchanged; 0.79 -> mask
    assert out.tolist() == [[4, 8, 12, 13, 4]]


def reference_decoder_mask(pool_tokens, row_choice, attention):
    """Per-row loop, the way the released collator reads: the slow reference."""
    _, length = attention.shape
    visible = torch.zeros(1, length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            hidden = bool(pool_tokens[0, row_choice[0, i], j])
            visible[0, i, j] = (j == 0) or (bool(attention[0, j]) and not hidden and i != j)
    return visible


def test_decoder_attention_mask_element_by_element():
    pool = torch.tensor([[[True, False, False], [False, True, True]]])  # [1, P=2, W=3]
    row_choice = torch.tensor([[0, 1, 0, 1, 1, 0, 0, 1, 0, 1]])
    visible = decoder_attention_mask(pool, row_choice, WORD_IDS, ATTENTION)
    expected = reference_decoder_mask(words_to_tokens(pool, WORD_IDS), row_choice, ATTENTION)
    assert torch.equal(visible, expected)
    # spot checks by hand: row 2 uses pool 0 (hides w0 = tokens 1, 2)
    assert visible[0, 2].int().tolist() == [1, 0, 0, 1, 1, 1, 1, 1, 0, 0]
    # row 1 uses pool 1 (hides w1, w2 = tokens 3..6) and not itself
    assert visible[0, 1].int().tolist() == [1, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    # row 3 uses pool 1 (hides w1, w2 = tokens 3..6); it never sees itself anyway
    assert visible[0, 3].int().tolist() == [1, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    assert not visible[0].diagonal()[1:].any() and visible[0, :, 0].all()


def collate(tokenizer, texts, options, ids=None, seed=0, epoch=0):
    examples = []
    for index, text in enumerate(texts):
        encoding = tokenizer(text)
        word_ids = [-1 if w is None else w for w in encoding.word_ids()]
        examples.append({"input_ids": encoding["input_ids"], "word_ids": word_ids,
                         "example_id": index if ids is None else ids[index]})
    collator = PretrainingCollator(options, tokenizer.pad_token_id, tokenizer.mask_token_id, len(tokenizer),
                                   seed=seed, epoch=epoch)
    return collator(examples), examples


TEXTS = [
    "the protein expressions increased in mouse cells and the immune response decreased",
    "cancer patients study",
    "the university school of music played the first album of the season with the team",
]


def test_collator_masks_whole_words_only_and_never_special_tokens(bpe_tokenizer, wordpiece_tokenizer):
    for tokenizer in (bpe_tokenizer, wordpiece_tokenizer):
        for seed in range(20):
            batch, examples = collate(tokenizer, TEXTS, PretrainingOptions(), seed=seed)
            masked = batch["labels"] != -100
            assert not (masked & ~batch["ordinary_mask"]).any()
            assert not (masked & (batch["attention_mask"] == 0)).any()
            for row, example in enumerate(examples):
                words = torch.tensor(example["word_ids"])
                row_mask = masked[row, : len(words)]
                for word in words[words >= 0].unique():  # all pieces of a word share its fate
                    assert row_mask[words == word].unique().numel() == 1
            # labels hold the original ids
            assert torch.equal(batch["labels"][masked], batch["original_input_ids"][masked])


def test_collator_encoder_ratio_and_80_10_10_statistics(wordpiece_tokenizer):
    selected = unchanged = replaced_by_mask = ordinary = 0
    for seed in range(200):
        batch, _ = collate(wordpiece_tokenizer, TEXTS, PretrainingOptions(), seed=seed)
        masked = batch["labels"] != -100
        selected += int(masked.sum())
        ordinary += int(batch["ordinary_mask"].sum())
        replaced_by_mask += int((batch["input_ids"][masked] == wordpiece_tokenizer.mask_token_id).sum())
        unchanged += int((batch["input_ids"][masked] == batch["labels"][masked]).sum())
    assert abs(selected / ordinary - 0.30) < 0.04
    assert abs(replaced_by_mask / selected - 0.8) < 0.03
    # 10 % unchanged plus the random replacements that happen to hit the same id
    assert abs(unchanged / selected - 0.1) < 0.03


def test_collator_masks_depend_on_example_not_batch(wordpiece_tokenizer):
    options = PretrainingOptions()
    full, _ = collate(wordpiece_tokenizer, TEXTS, options, ids=[5, 6, 7])
    alone, _ = collate(wordpiece_tokenizer, TEXTS[2:], options, ids=[7])
    length = int(alone["attention_mask"].sum())
    assert torch.equal(full["input_ids"][2, :length], alone["input_ids"][0, :length])
    assert torch.equal(full["decoder_attention_mask"][2, :length, :length],
                       alone["decoder_attention_mask"][0, :length, :length])
    next_epoch, _ = collate(wordpiece_tokenizer, TEXTS, options, ids=[5, 6, 7], epoch=1)
    assert not torch.equal(next_epoch["decoder_attention_mask"], full["decoder_attention_mask"])


def test_collator_decoder_rows_hide_half_the_words(wordpiece_tokenizer):
    batch, _ = collate(wordpiece_tokenizer, TEXTS, PretrainingOptions(decoder_mask_ratio=0.5))
    visible = batch["decoder_attention_mask"]
    ordinary = batch["ordinary_mask"]
    for row in range(len(TEXTS)):
        n = int(ordinary[row].sum())
        real = batch["attention_mask"][row].bool()
        assert visible[row, :, 0].all()
        assert not visible[row].diagonal()[1:][real[1:]].any()
        assert not visible[row][:, ~real].any()
        hidden_ordinary = (~visible[row][real][:, ordinary[row]]).sum(dim=1).float()  # per real row
        # each row hides about half of the ordinary tokens (whole words, plus itself)
        assert (hidden_ordinary >= 0.3 * n).all() and (hidden_ordinary <= 0.75 * n + 1).all()


def test_mlm_objective_builds_no_decoder_mask(wordpiece_tokenizer):
    batch, _ = collate(wordpiece_tokenizer, TEXTS, PretrainingOptions(objective="mlm"))
    assert "decoder_attention_mask" not in batch


def test_select_words_in_order_follows_the_given_order():
    lengths = torch.tensor([[1, 2, 1, 3], [2, 2, 0, 0]])
    order = torch.tensor([[2, 0, 1, 3], [1, 0, 2, 3]])
    # row 0: budget round(0.5 * 7) = 4; w2(1) w0(1) w1(2): cumsum 1, 2, 4 -> taken; w3 would make 7.
    # row 1: budget 2; w1(2) taken, w0 would make 4; absent slots never.
    assert select_words_in_order(order, lengths, 0.5).tolist() == [[True, True, True, False],
                                                                   [False, True, False, False]]


def test_collator_word_orders_are_permutations_with_own_words_first():
    from dupmae.data.collator import _orders

    stacked = _orders([torch.tensor([[1, 0], [0, 1]]), torch.tensor([[2, 0, 1]])], 2, 4)
    assert stacked.tolist() == [[[1, 0, 2, 3], [0, 1, 2, 3]], [[2, 0, 1, 3], [0, 1, 2, 3]]]


def test_row_permutations_are_uniform_independent_permutations():
    import itertools

    import numpy as np

    from dupmae.data.collator import row_permutations

    rows = row_permutations(np.random.default_rng(0), 60000, 3)
    assert rows.shape == (60000, 3) and rows.dtype == np.int64
    assert (np.sort(rows, axis=1) == np.arange(3)).all()
    # all 3! orders equally likely: each within 4 standard deviations of 10,000
    counts = {p: int((rows == p).all(axis=1).sum()) for p in itertools.permutations(range(3))}
    assert all(abs(c - 10000) < 4 * (60000 * (1 / 6) * (5 / 6)) ** 0.5 for c in counts.values()), counts
    # the same generator state gives the same rows; long rows (64-bit keys) are permutations too
    again = row_permutations(np.random.default_rng(0), 60000, 3)
    assert (again == rows).all()
    long_rows = row_permutations(np.random.default_rng(1), 4, 5000)
    assert (np.sort(long_rows, axis=1) == np.arange(5000)).all() and (long_rows[0] != long_rows[1]).any()
    assert row_permutations(np.random.default_rng(2), 3, 1).tolist() == [[0], [0], [0]]
