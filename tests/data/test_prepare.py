"""`dupmae prepare`: corpus readers, chunking strategies, manifest and CLI (tiny tokenizers, offline)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os

import numpy as np
import pytest

from dupmae.data.chunking import Packer, renumber_words, special_token_template
from dupmae.data.formats import CorpusFormatError, SourceStats, expand_corpus_paths, read_documents
from dupmae.data.prepare import PrepareError, load_prepared, main, prepare_corpus, vocab_fingerprint

# WordPiece of the conftest vocabulary (hand-checked):
#   "The proteins expressed in cells" -> the | protein ##s | e ##x ##p ##r ##e ##s ##s ##ed | in | cells
#   13 content tokens, 5 words (0 1 1 2 2 2 2 2 2 2 2 3 4).
DOCUMENT = "The proteins expressed in cells"


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def tokens_of(tokenizer, row) -> list[str]:
    return tokenizer.convert_ids_to_tokens(row["input_ids"])


def prepare(tmp_path, corpus, tokenizer_dir, name="out", **options):
    output = str(tmp_path / name)
    manifest = prepare_corpus(corpus if isinstance(corpus, list) else [corpus], tokenizer_dir, output, **options)
    dataset, loaded = load_prepared(output)
    assert loaded == manifest
    return dataset, manifest


# ----------------------------------------------------------------------------- readers


def test_jsonl_documents_title_blank_and_empty_lines(tmp_path):
    path = write(
        tmp_path / "corpus.jsonl",
        '{"_id": "1", "title": "Cell", "text": "proteins"}\n'
        "\n"
        '{"id": "2", "title": "", "text": "no title"}\n'
        '{"text": "   "}\n'
        '{"text": "untitled", "title": null}\n',
    )
    stats = SourceStats(path)
    assert list(read_documents(path, stats=stats)) == ["Cell proteins", "no title", "untitled"]
    assert (stats.documents, stats.skipped_malformed, stats.skipped_empty) == (3, 0, 1)


def test_plain_text_one_document_per_non_empty_line(tmp_path):
    path = write(tmp_path / "corpus.txt", "first doc\n\n  \nsecond doc\r\n")
    stats = SourceStats(path)
    assert list(read_documents(path, stats=stats)) == ["first doc", "second doc"]
    assert stats.documents == 2 and stats.skipped_empty == 0


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object, got list"),
        ('{"title": "t"}', "missing required field 'text'"),
        ('{"text": 7}', "field 'text' must be a string, got int"),
        ('{"text": "x", "title": 3}', "field 'title' must be a string"),
    ],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_malformed_line_names_file_and_line(tmp_path, line, problem, compressed):
    content = f'{{"text": "fine"}}\n\n{line}\n{{"text": "also fine"}}\n'
    if compressed:
        path = str(tmp_path / "corpus.jsonl.gz")
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(content)
    else:
        path = write(tmp_path / "corpus.jsonl", content)
    with pytest.raises(CorpusFormatError) as raised:
        list(read_documents(path))
    assert str(raised.value).startswith(f"{path}:3: {problem}")
    stats = SourceStats(path)
    assert list(read_documents(path, on_error="skip", stats=stats)) == ["fine", "also fine"]
    assert (stats.documents, stats.skipped_malformed) == (2, 1)


def test_invalid_utf8_is_reported_with_its_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"good line\n\xff\xfe bad\n")
    with pytest.raises(CorpusFormatError, match=rf"{path}:2: invalid UTF-8"):
        list(read_documents(str(path)))


def test_glob_expansion(tmp_path):
    for name in ("b.jsonl", "a.jsonl"):
        write(tmp_path / name, '{"text": "x"}\n')
    assert expand_corpus_paths([str(tmp_path / "*.jsonl")]) == [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_corpus_paths([str(tmp_path / "*.txt")])
    with pytest.raises(IsADirectoryError):
        expand_corpus_paths([str(tmp_path)])


# ----------------------------------------------------------------------------- chunking units


def test_renumber_words_and_template(wordpiece_tokenizer, bpe_tokenizer):
    assert renumber_words([7, 7, 8, -1, 12, 12, 8]) == [0, 0, 1, -1, 2, 2, 1]
    cls_, sep = wordpiece_tokenizer.cls_token_id, wordpiece_tokenizer.sep_token_id
    assert special_token_template(wordpiece_tokenizer) == ([cls_], [sep])
    assert special_token_template(bpe_tokenizer) == ([bpe_tokenizer.bos_token_id], [bpe_tokenizer.eos_token_id])


def test_packer_separator_and_boundaries():
    packer = Packer(content_length=4, separator_id=99, min_tokens=2)
    chunks = list(packer.add([1, 2, 3, 4], [0, 0, 1, 2]))  # fills a chunk exactly
    chunks += list(packer.add([5, 6], [0, 1]))  # starts a chunk: no separator in front
    chunks += list(packer.add([7], [0]))
    assert chunks == [([1, 2, 3, 4], [0, 0, 1, 2]), ([5, 6, 99, 7], [3, 4, -1, 5])]
    assert packer.finish() == (None, 0)
    list(packer.add([8], [0]))
    assert packer.finish() == (None, 1)  # one token < min_tokens: dropped and counted


# ----------------------------------------------------------------------------- strategies, exact values


def test_split_exact_values(tmp_path, wordpiece_dir, wordpiece_tokenizer):
    corpus = write(tmp_path / "corpus.txt", f"{DOCUMENT}\ngene\n")
    dataset, manifest = prepare(tmp_path, corpus, wordpiece_dir, max_length=8, min_tokens=2)
    rows = dataset[:]
    assert [tokens_of(wordpiece_tokenizer, {"input_ids": ids}) for ids in rows["input_ids"]] == [
        ["[CLS]", "the", "protein", "##s", "e", "##x", "##p", "[SEP]"],
        ["[CLS]", "##r", "##e", "##s", "##s", "##ed", "in", "[SEP]"],
        # "cells" (1 token < min_tokens=2) was cut off and dropped; "gene" is a document's only chunk.
        ["[CLS]", "gene", "[SEP]"],
    ]
    assert rows["word_ids"] == [
        [-1, 0, 1, 1, 2, 2, 2, -1],
        [-1, 0, 0, 0, 0, 0, 1, -1],  # the rest of "expressed" is a new word 0 in this sequence
        [-1, 0, -1],
    ]
    assert rows["example_id"] == [0, 1, 2]
    # Same ids the tokenizer itself produces with its special-token template.
    assert rows["input_ids"][2] == wordpiece_tokenizer("gene")["input_ids"]
    counts = manifest["counts"]
    assert counts == {
        "documents": 2, "sequences": 3, "tokens": 19, "ordinary_tokens": 13, "skipped_malformed": 0,
        "skipped_empty": 0, "truncated_files": 0, "documents_without_tokens": 0, "dropped_short_chunks": 1,
    }
    features = dataset.features
    assert (features["input_ids"].feature.dtype, features["word_ids"].feature.dtype) == ("int32", "int32")
    assert features["example_id"].dtype == "int64"


def test_split_keeps_final_chunk_at_min_tokens(tmp_path, wordpiece_dir, wordpiece_tokenizer):
    corpus = write(tmp_path / "corpus.txt", f"{DOCUMENT}\n")
    dataset, manifest = prepare(tmp_path, corpus, wordpiece_dir, max_length=8, min_tokens=1)
    assert tokens_of(wordpiece_tokenizer, dataset[2]) == ["[CLS]", "cells", "[SEP]"]
    assert dataset[2]["word_ids"] == [-1, 0, -1]
    assert manifest["counts"]["dropped_short_chunks"] == 0


def test_truncate_exact_values(tmp_path, wordpiece_dir, wordpiece_tokenizer):
    corpus = write(tmp_path / "corpus.txt", f"{DOCUMENT}\ngene\n")
    dataset, manifest = prepare(tmp_path, corpus, wordpiece_dir, max_length=8, min_tokens=2, strategy="truncate")
    assert [tokens_of(wordpiece_tokenizer, row) for row in dataset] == [
        ["[CLS]", "the", "protein", "##s", "e", "##x", "##p", "[SEP]"],
        ["[CLS]", "gene", "[SEP]"],
    ]
    assert dataset["word_ids"][:] == [[-1, 0, 1, 1, 2, 2, 2, -1], [-1, 0, -1]]
    assert manifest["counts"]["sequences"] == 2 and manifest["counts"]["dropped_short_chunks"] == 0


@pytest.mark.parametrize(("min_tokens", "expected_sequences", "dropped"), [(3, 3, 0), (4, 2, 1)])
def test_pack_exact_values(tmp_path, wordpiece_dir, wordpiece_tokenizer, min_tokens, expected_sequences, dropped):
    corpus = write(tmp_path / "corpus.txt", f"{DOCUMENT}\ngene\n")
    dataset, manifest = prepare(tmp_path, corpus, wordpiece_dir, max_length=8, min_tokens=min_tokens, strategy="pack")
    # stream: 13 tokens + [SEP] + gene = 15 -> 6 + 6 + a final 3 ("cells [SEP] gene")
    expected_tokens = [
        ["[CLS]", "the", "protein", "##s", "e", "##x", "##p", "[SEP]"],
        ["[CLS]", "##r", "##e", "##s", "##s", "##ed", "in", "[SEP]"],
        ["[CLS]", "cells", "[SEP]", "gene", "[SEP]"],
    ]
    expected_words = [[-1, 0, 1, 1, 2, 2, 2, -1], [-1, 0, 0, 0, 0, 0, 1, -1], [-1, 0, -1, 1, -1]]
    assert [tokens_of(wordpiece_tokenizer, row) for row in dataset] == expected_tokens[:expected_sequences]
    assert dataset["word_ids"][:] == expected_words[:expected_sequences]
    assert manifest["counts"]["dropped_short_chunks"] == dropped
    assert manifest["counts"]["ordinary_tokens"] == 14 - (3 - 1) * dropped  # 13 + gene, minus the dropped two


def test_literal_special_token_text_stays_text(tmp_path, wordpiece_dir, wordpiece_tokenizer):
    corpus = write(tmp_path / "corpus.txt", "the [MASK] gene [SEP] cell\n")
    dataset, _ = prepare(tmp_path, corpus, wordpiece_dir, max_length=32, min_tokens=1)
    ids, words = dataset[0]["input_ids"], dataset[0]["word_ids"]
    assert wordpiece_tokenizer.mask_token_id not in ids
    assert ids.count(wordpiece_tokenizer.sep_token_id) == 1 and words.count(-1) == 2


def test_bpe_word_ids_follow_space_marker(tmp_path, bpe_dir, bpe_tokenizer):
    corpus = write(tmp_path / "corpus.txt", "the proteins expressed in human cells\nwater river city\n")
    dataset, manifest = prepare(tmp_path, corpus, bpe_dir, max_length=7, min_tokens=1)
    assert manifest["tokenizer"]["class"] == type(bpe_tokenizer).__name__
    for row in dataset:
        tokens, words = tokens_of(bpe_tokenizer, row), row["word_ids"]
        assert (tokens[0], tokens[-1], words[0], words[-1]) == ("<s>", "</s>", -1, -1)
        assert words[1] == 0
        for position in range(2, len(tokens) - 1):  # a 'Ġ' piece starts a new word, any other continues one
            starts_word = words[position] != words[position - 1]
            assert starts_word == tokens[position].startswith("Ġ"), (tokens, words)
    first = dataset[0]
    assert tokens_of(bpe_tokenizer, first)[:3] == ["<s>", "Ġth", "e"] and first["word_ids"][:3] == [-1, 0, 0]


# ----------------------------------------------------------------------------- counts, manifest, processes


def test_manifest_counts_hashes_and_skips(tmp_path, wordpiece_dir, wordpiece_tokenizer):
    first = write(
        tmp_path / "a.jsonl",
        '{"title": "Gene", "text": "the cells of the mouse"}\n{"text": ""}\n{broken\n{"text": "\\u200b"}\n',
    )
    second = tmp_path / "b.jsonl.gz"
    with gzip.open(second, "wt", encoding="utf-8") as handle:
        handle.write('{"text": "brain"}\n{"text": 5}\n')
    dataset, manifest = prepare(
        tmp_path, str(tmp_path / "*.jsonl*"), wordpiece_dir, max_length=16, min_tokens=1, on_error="skip"
    )
    a_source, b_source = manifest["sources"]
    assert a_source == {
        "path": first, "sha256": hashlib.sha256(open(first, "rb").read()).hexdigest(),
        "bytes": os.path.getsize(first), "documents": 2, "skipped_malformed": 1, "skipped_empty": 1,
        "truncated_after_line": None,
    }
    assert (b_source["path"], b_source["documents"], b_source["skipped_malformed"]) == (str(second), 1, 1)
    assert b_source["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    assert manifest["counts"] == {
        "documents": 3, "sequences": 2, "tokens": 11, "ordinary_tokens": 7, "skipped_malformed": 2,
        "skipped_empty": 1, "truncated_files": 0, "documents_without_tokens": 1, "dropped_short_chunks": 0,
    }  # the zero-width-space document tokenizes to nothing: counted, no sequence
    assert manifest["tokenizer"]["vocab_sha256"] == vocab_fingerprint(wordpiece_tokenizer)
    assert manifest["tokenizer"]["vocab_size"] == len(wordpiece_tokenizer)
    assert (manifest["format"], manifest["version"], manifest["max_length"]) == ("dupmae-pretrain-data", 1, 16)
    assert tokens_of(wordpiece_tokenizer, dataset[1]) == ["[CLS]", "brain", "[SEP]"]
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "b.jsonl.gz", "out"]  # temporary folder removed


def test_two_processes_give_the_same_dataset(tmp_path, wordpiece_dir):
    words = ["the", "protein", "cells", "expression"]  # one token each: document n has n + 1 tokens
    sentences = [" ".join(words[i % 4] for i in range(n + 1)) for n in range(23)]
    corpus = write(tmp_path / "corpus.txt", "\n".join(sentences) + "\n")
    options = dict(max_length=12, min_tokens=3, batch_size=4)
    one, one_manifest = prepare(tmp_path, corpus, wordpiece_dir, name="one", num_proc=1, **options)
    two, two_manifest = prepare(tmp_path, corpus, wordpiece_dir, name="two", num_proc=2, **options)
    assert one[:] == two[:]
    assert one_manifest["counts"] == two_manifest["counts"]
    assert one_manifest["counts"]["dropped_short_chunks"] == 4  # documents of 11, 12, 21, 22 tokens (content 10)
    assert np.array_equal(two["example_id"][:], np.arange(len(two)))


def test_invalid_settings_are_refused(tmp_path, wordpiece_dir):
    corpus = write(tmp_path / "corpus.txt", "gene\n")
    with pytest.raises(PrepareError, match="no room for content"):
        prepare_corpus([corpus], wordpiece_dir, str(tmp_path / "a"), max_length=2)
    with pytest.raises(PrepareError, match="min_tokens 16 is larger"):
        prepare_corpus([corpus], wordpiece_dir, str(tmp_path / "b"), max_length=8)
    with pytest.raises(PrepareError, match="could not load a tokenizer"):
        prepare_corpus([corpus], str(tmp_path), str(tmp_path / "c"))
    with pytest.raises(PrepareError, match="not a prepared dataset"):
        load_prepared(str(tmp_path))


# ----------------------------------------------------------------------------- CLI


def test_cli_end_to_end_and_overwrite(tmp_path, wordpiece_dir, capsys):
    corpus = write(tmp_path / "corpus.jsonl", json.dumps({"title": "Cell", "text": DOCUMENT}) + "\n")
    output = str(tmp_path / "prepared")
    argv = ["--corpus", corpus, "--tokenizer", wordpiece_dir, "--max-length", "8", "--min-tokens", "2",
            "--output", output, "--num-proc", "1"]
    assert main(argv) == 0
    assert "1 documents -> 3 sequences" in capsys.readouterr().out
    assert main(argv) == 2  # output exists
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--strategy", "truncate"]) == 0
    dataset, manifest = load_prepared(output)
    assert manifest["strategy"] == "truncate" and len(dataset) == 1


def test_cli_bad_input_is_one_clean_line(tmp_path, wordpiece_dir, capsys):
    corpus = write(tmp_path / "corpus.jsonl", '{"text": "gene"}\n{"text": ["gene"]}\n')
    argv = ["--corpus", corpus, "--tokenizer", wordpiece_dir, "--max-length", "8", "--min-tokens", "1"]
    assert main([*argv, "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err  # progress bars may come first; the message is the last line
    assert error.splitlines()[-1] == f"dupmae prepare: error: {corpus}:2: field 'text' must be a string, got list"
    assert "Traceback" not in error
    assert not os.path.exists(tmp_path / "out")
    # --overwrite never deletes a folder that is not a prepared dataset.
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    assert main([*argv, "--on-error", "skip", "--output", str(tmp_path / "keep"), "--overwrite"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_a_truncated_gzip_is_an_error_or_a_warning_that_says_the_rest_is_lost(tmp_path, wordpiece_dir, capsys):
    """`--on-error skip` on a cut .jsonl.gz keeps what could be read and says the file is truncated
    (not "1 malformed line"); without skip it is an error naming the file."""
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(f'{{"text": "gene number {i} of the mouse brain cells"}}\n' for i in range(2000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    argv = ["--corpus", str(path), "--tokenizer", wordpiece_dir, "--max-length", "16", "--min-tokens", "1",
            "--output", str(tmp_path / "out"), "--num-proc", "1"]
    assert main(argv) == 2
    assert f"{path}:" in capsys.readouterr().err
    assert main([*argv, "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    read = manifest["sources"][0]["truncated_after_line"]
    assert 0 < read < 2000 and manifest["counts"]["documents"] == read
    assert manifest["counts"]["skipped_malformed"] == 0 and manifest["counts"]["truncated_files"] == 1
    assert f"warning: {path} is damaged or truncated: read up to line {read:,}" in captured.err
    assert "1 truncated file(s)" in captured.out
