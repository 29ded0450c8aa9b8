"""Cutting tokenized documents into model-sized sequences (pure Python, no I/O).

A *document* arrives as two equal-length lists: ``ids`` (content token ids, no
special tokens) and ``words`` (the tokenizer's ``word_ids()``: tokens of one
word share a number; ``-1`` marks a token that belongs to no word). A *sequence*
leaves as ``prefix + content + suffix`` where prefix/suffix are the tokenizer's
special-token template (BERT: ``[CLS]`` / ``[SEP]``; RoBERTa: ``<s>`` / ``</s>``),
with word ids ``-1`` on every special token and the content's words renumbered
0, 1, 2, ... in order of appearance within the sequence. A word cut by a chunk
boundary therefore becomes one word in each chunk, which is what whole-word
masking of that sequence should see.

Strategies (``C`` = content length = max_length - number of template tokens):

* ``split``: consecutive chunks of ``C`` tokens per document, never mixing
  documents; a last chunk shorter than ``min_tokens`` is dropped (and counted)
  unless it is the document's only chunk.
* ``truncate``: the first chunk of each document only.
* ``pack``: all documents concatenated with the separator token between them,
  cut into chunks of ``C``; the final partial chunk is kept when it has at least
  ``min_tokens`` tokens (or when it is the only chunk of the whole corpus).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

STRATEGIES = ("split", "pack", "truncate")
NO_WORD = -1  # word id of special tokens and of anything that is not part of a word

Chunk = tuple[list[int], list[int]]  # (content ids, content word ids)


def special_token_template(tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single sequence, e.g. ``([101], [102])``.

    Read from the tokenizer's own post-processor by encoding two probe texts with
    ``add_special_tokens=True`` and keeping the tokens that ``sequence_ids()`` marks
    as not belonging to the text. (transformers 5 fast tokenizers no longer have
    ``build_inputs_with_special_tokens``; this works on 4.x and 5.x alike.) The
    template must be the same for both probes and contain
    ``num_special_tokens_to_add()`` tokens, otherwise it is not a fixed
    prefix/suffix and cannot be reused around arbitrary chunks.
    """
    templates = []
    for probe in ("a b c d", "a"):
        encoding = tokenizer(probe, add_special_tokens=True)
        sequence_ids = encoding.sequence_ids()
        content = [index for index, sequence in enumerate(sequence_ids) if sequence is not None]
        if not content or content != list(range(content[0], content[-1] + 1)):
            raise ValueError(f"tokenizer template around {probe!r} is not prefix + text + suffix: {sequence_ids}")
        ids = encoding["input_ids"]
        templates.append((list(ids[: content[0]]), list(ids[content[-1] + 1 :])))
    prefix, suffix = templates[0]
    if templates[1] != templates[0] or len(prefix) + len(suffix) != tokenizer.num_special_tokens_to_add():
        raise ValueError(f"tokenizer special-token template is not constant: {templates}")
    return prefix, suffix


def renumber_words(words: Sequence[int]) -> list[int]:
    """Word ids renumbered 0, 1, 2, ... by first appearance; ``-1`` stays ``-1``.

    >>> renumber_words([7, 7, 8, -1, 12, 12])
    [0, 0, 1, -1, 2, 2]
    """
    new_ids: dict[int, int] = {}
    renumbered = []
    for word in words:
        if word == NO_WORD:
            renumbered.append(NO_WORD)
        else:
            renumbered.append(new_ids.setdefault(word, len(new_ids)))
    return renumbered


def make_sequence(content_ids: Sequence[int], content_words: Sequence[int], template) -> Chunk:
    """``(input_ids, word_ids)`` of one model input: template around the content, words renumbered."""
    prefix, suffix = template
    input_ids = [*prefix, *content_ids, *suffix]
    word_ids = [NO_WORD] * len(prefix) + renumber_words(content_words) + [NO_WORD] * len(suffix)
    return input_ids, word_ids


def chunk_document(
    ids: Sequence[int], words: Sequence[int], content_length: int, min_tokens: int, strategy: str
) -> tuple[list[Chunk], int]:
    """Cut one document for the ``split`` or ``truncate`` strategy.

    Returns:
        (chunks, dropped): the content chunks in order, and how many short final
        chunks were dropped (0 or 1). An empty document gives no chunks.
    """
    if strategy not in ("split", "truncate"):
        raise ValueError(f"chunk_document handles 'split' and 'truncate', not {strategy!r}")
    if not ids:
        return [], 0
    if strategy == "truncate":
        return [(list(ids[:content_length]), list(words[:content_length]))], 0
    chunks = [
        (list(ids[start : start + content_length]), list(words[start : start + content_length]))
        for start in range(0, len(ids), content_length)
    ]
    if len(chunks) > 1 and len(chunks[-1][0]) < min_tokens:
        chunks.pop()
        return chunks, 1
    return chunks, 0


class Packer:
    """The ``pack`` strategy, fed one document at a time (state carries across documents).

    Word ids are made unique across documents by an offset, so that renumbering a
    chunk never merges words of two documents. The separator goes *between*
    documents; it is left out when a document starts exactly at a chunk
    boundary, where the template's own start token already marks the boundary.
    """

    def __init__(self, content_length: int, separator_id: int, min_tokens: int):
        self.content_length = content_length
        self.separator_id = separator_id
        self.min_tokens = min_tokens
        self.emitted = 0
        self._ids: list[int] = []
        self._words: list[int] = []
        self._word_offset = 0

    def add(self, ids: Sequence[int], words: Sequence[int]) -> Iterator[Chunk]:
        """Append one document; yield every chunk that is now full."""
        if not ids:
            return
        if self._ids:
            self._ids.append(self.separator_id)
            self._words.append(NO_WORD)
        self._ids.extend(ids)
        self._words.extend(word if word == NO_WORD else word + self._word_offset for word in words)
        self._word_offset += max(words) + 1
        full = len(self._ids) // self.content_length * self.content_length
        for start in range(0, full, self.content_length):
            end = start + self.content_length
            self.emitted += 1
            yield self._ids[start:end], self._words[start:end]
        del self._ids[:full], self._words[:full]

    def finish(self) -> tuple[Chunk | None, int]:
        """The final partial chunk (or None) and how many chunks were dropped (0 or 1)."""
        if not self._ids:
            return None, 0
        chunk = (self._ids, self._words)
        self._ids, self._words = [], []
        if len(chunk[0]) >= self.min_tokens or self.emitted == 0:
            self.emitted += 1
            return chunk, 0
        return None, 1
