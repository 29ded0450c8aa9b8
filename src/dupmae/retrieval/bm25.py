"""BM25 baseline with `bm25s`: English stopwords, Snowball (PyStemmer) stemming, title + text.

Analysis: lower-case, words of 2+ word characters (bm25s' default pattern), bm25s'
English stopword list removed, then the English Snowball stemmer, so "proteins" and
"protein" are the same term. Scoring: bm25s' ``lucene`` variant (k1=1.5, b=0.75 by
default). Documents are indexed as ``title + " " + text``.

Only documents sharing at least one term with the query are returned (BM25 scores
every other document 0; returning them would pad runs with arbitrarily ordered hits),
so a query can get fewer than ``top_k`` results, and none when all its words are
stopwords or unknown.

``python -m dupmae.retrieval.bm25 --corpus DIR_OR_FILE [--queries F] [--qrels F] --top-k 1000 --output run.trec``
writes a TREC run (see `main`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping

import numpy as np
from dupmae.config import positive_int

logger = logging.getLogger(__name__)


def _analyze(texts: list[str], stemmer, show_progress: bool) -> list[list[str]]:
    import bm25s

    # return_ids=False gives string tokens: queries are then mapped onto the index's own vocabulary
    # (unknown terms dropped) instead of getting ids from a separate, incompatible vocabulary.
    return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=show_progress)


class BM25Index:
    """An in-memory BM25 index over a ``{doc_id: {"title", "text"}}`` corpus."""

    def __init__(self, retriever, doc_ids: list[str], stemmer, show_progress: bool = True):
        self.retriever = retriever
        self.doc_ids = doc_ids
        self.stemmer = stemmer
        self.show_progress = show_progress

    @classmethod
    def build(
        cls,
        corpus: Mapping[str, Mapping[str, str]],
        k1: float = 1.5,
        b: float = 0.75,
        show_progress: bool = True,
    ) -> BM25Index:
        """Tokenize and index every document (``title + " " + text``)."""
        import bm25s
        import Stemmer

        if not corpus:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        doc_ids = list(corpus)
        texts = [f"{corpus[d].get('title') or ''} {corpus[d].get('text') or ''}".strip() for d in doc_ids]
        library_logger = logging.getLogger("bm25s")
        if library_logger.level == logging.DEBUG:
            # bm25s pins its logger to DEBUG at import; let the application's logging level decide.
            library_logger.setLevel(logging.NOTSET)
        stemmer = Stemmer.Stemmer("english")
        started = time.monotonic()
        tokens = _analyze(texts, stemmer, show_progress)
        retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        retriever.index(tokens, show_progress=show_progress)
        logger.info(
            "indexed %d documents (%d terms) in %.1f s",
            len(doc_ids),
            len(retriever.vocab_dict),
            time.monotonic() - started,
        )
        return cls(retriever, doc_ids, stemmer, show_progress)

    def search(
        self, queries: Mapping[str, str], top_k: int, threads: int = 1
    ) -> dict[str, list[tuple[str, float]]]:
        """``{query_id: [(doc_id, score), ...]}``: up to `top_k` matching documents, best first.

        Ties are ordered by doc id ascending. `threads` (>= 1) is passed to bm25s
        explicitly: 1 scores queries one after another in this thread.
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if not queries:
            return {}
        k = min(top_k, len(self.doc_ids))  # bm25s refuses k larger than the corpus
        tokens = _analyze([queries[query_id] for query_id in queries], self.stemmer, self.show_progress)
        # Queries with no indexed term (all stopwords, or unknown words) match nothing: answer them here,
        # since bm25s would score every document 0 (and bm25s 0.2.0 fails on an empty token list).
        vocabulary = self.retriever.vocab_dict
        known = {
            query_id: [token for token in query_tokens if token and token in vocabulary]
            for query_id, query_tokens in zip(queries, tokens)
        }
        results: dict[str, list[tuple[str, float]]] = {query_id: [] for query_id in queries}
        searchable = [query_id for query_id, query_tokens in known.items() if query_tokens]
        started = time.monotonic()
        if searchable:
            indices, scores = self.retriever.retrieve(
                [known[query_id] for query_id in searchable],
                k=k,
                show_progress=self.show_progress,
                n_threads=0 if threads == 1 else threads,  # bm25s: 0 = no thread pool
            )
            for row, query_id in enumerate(searchable):
                pairs = zip(indices[row].tolist(), np.asarray(scores[row], dtype=np.float64).tolist())
                hits = [(self.doc_ids[index], score) for index, score in pairs if score > 0.0]
                hits.sort(key=lambda hit: (-hit[1], hit[0]))
                results[query_id] = hits
        empty = sum(1 for hits in results.values() if not hits)
        if empty:
            logger.warning("%d of %d queries matched no document", empty, len(results))
        logger.info("searched %d queries (top %d) in %.1f s", len(results), k, time.monotonic() - started)
        return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dupmae.retrieval.bm25", description="BM25 (bm25s) top-k run over a BEIR corpus."
    )
    parser.add_argument("--corpus", required=True, help="BEIR folder (corpus.jsonl inside) or a corpus.jsonl file")
    parser.add_argument("--queries", help="queries.jsonl (default: CORPUS_FOLDER/queries.jsonl)")
    parser.add_argument("--qrels", help="search only the queries judged here (and check its ids)")
    parser.add_argument("--top-k", type=positive_int, default=1000, help="documents per query (default: %(default)s)")
    parser.add_argument("--output", required=True, help="TREC run file to write")
    parser.add_argument("--tag", default="bm25", help="run tag, last column (default: %(default)s)")
    parser.add_argument("--k1", type=float, default=1.5, help="BM25 k1 (default: %(default)s)")
    parser.add_argument("--b", type=float, default=0.75, help="BM25 b (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=1, help="search threads (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from dupmae.data.formats import CorpusFormatError
    from dupmae.retrieval.mine import load_inputs
    from dupmae.retrieval.trec import write_run

    arguments = build_parser().parse_args(argv)  # usage errors exit 2 through argparse
    try:
        corpus, queries, _ = load_inputs(arguments.corpus, arguments.queries, arguments.qrels)
        started = time.monotonic()
        index = BM25Index.build(corpus, k1=arguments.k1, b=arguments.b)
        results = index.search(queries, arguments.top_k, threads=arguments.threads)
        lines = write_run(arguments.output, results, arguments.tag)
    except (CorpusFormatError, OSError, ValueError) as error:
        print(f"bm25: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(results)} queries, {lines} lines in {time.monotonic() - started:.1f} s -> {arguments.output}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
