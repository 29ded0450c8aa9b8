"""BM25 baseline on a six-document corpus: the obvious match wins, stemming and stopwords apply."""

from __future__ import annotations

import pytest

from dupmae.retrieval.bm25 import BM25Index
from tiny_beir import QUERIES, tiny_corpus


@pytest.fixture
def index() -> BM25Index:
    return BM25Index.build(tiny_corpus(), show_progress=False)


@pytest.fixture
def tiny_queries() -> dict[str, str]:
    return dict(QUERIES)


def test_the_obviously_matching_document_ranks_first(index, tiny_queries):
    results = index.search(tiny_queries, top_k=3)
    assert results["q1"][0][0] == "d1"  # "protein structures": d1 has both (as "Proteins", "structures")
    assert results["q2"][0][0] == "d3"  # "tumor immune therapy" -> "tumors", "Immune"
    assert results["q3"][0][0] == "d2"  # "flooding of rivers" -> title "River flooding"
    for hits in results.values():
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True)
        assert len(hits) <= 3


def test_stemming_matches_plural_to_singular():
    # Only "protein" (singular) occurs in d6's text; the stemmer maps "proteins" onto it.
    corpus = tiny_corpus()
    index = BM25Index.build({"d6": corpus["d6"], "d2": corpus["d2"]}, show_progress=False)
    hits = index.search({"q": "proteins"}, top_k=10)["q"]
    assert [doc_id for doc_id, _ in hits] == ["d6"]
    assert hits[0][1] > 0


def test_only_matching_documents_are_returned_and_stopword_queries_get_nothing(index, tiny_queries):
    results = index.search(tiny_queries, top_k=100)  # more than the corpus: clipped, no error
    assert results["q4"] == []  # "the of and" is all stopwords
    assert {doc_id for doc_id, _ in results["q1"]} == {"d1", "d6"}  # the two "protein" documents
    assert all(score > 0 for hits in results.values() for _, score in hits)


def test_threads_do_not_change_results(index, tiny_queries):
    assert index.search(tiny_queries, top_k=5, threads=2) == index.search(tiny_queries, top_k=5, threads=1)


def test_bad_arguments(index, tiny_queries):
    with pytest.raises(ValueError, match="top_k"):
        index.search(tiny_queries, top_k=0)
    with pytest.raises(ValueError, match="threads"):
        index.search(tiny_queries, top_k=1, threads=0)
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build({})


def test_no_queries_no_results(index):
    assert index.search({}, top_k=5) == {}
