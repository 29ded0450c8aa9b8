"""The exact backend: every document scored with the DupMAE score, a running top-k kept
(`HybridScorer` + `TopK`, `dupmae.retrieval.index`). Blocks may be added as loaders (`load_part` of
a path), so a search holds one part at a time however large the index."""

from __future__ import annotations

from typing import Callable, Iterable

from dupmae.retrieval.backends import Hits
from dupmae.retrieval.index import DocumentBlock, HybridScorer, QueryBlock, TopK


def search_blocks(encoded: QueryBlock, blocks: Iterable[DocumentBlock], top_k: int,
                  exclude_self: bool = False) -> TopK:
    """Exact hybrid scores of the queries `encoded` against every block of the iterable `blocks`
    (loaded one at a time), keeping the best `top_k` per query."""
    scorer, best = HybridScorer(encoded), TopK(len(encoded.ids), top_k)
    exclude = [{q} for q in encoded.ids] if exclude_self else None
    for block in blocks:
        best.add_by_document(scorer(block), block.ids, exclude=exclude)
    return best


class ExactBackend:
    """`add(block)` keeps the block (or, with `add_loader`, a function that loads it at search time)."""

    def __init__(self) -> None:
        self._sources: list[DocumentBlock | Callable[[], DocumentBlock]] = []
        self._count = 0
        self.searched = 0  # documents scored by the last search

    def add(self, block: DocumentBlock) -> None:
        self._sources.append(block)
        self._count += len(block.ids)

    def add_loader(self, load: Callable[[], DocumentBlock], count: int = 0) -> None:
        """A block (of `count` documents, if known: `len` counts them) that `load()` returns when a
        search reaches it."""
        self._sources.append(load)
        self._count += count

    def __len__(self) -> int:
        return self._count

    def blocks(self, wrap: Callable[[Iterable], Iterable] = iter) -> Iterable[DocumentBlock]:
        for source in wrap(self._sources):
            yield source if isinstance(source, DocumentBlock) else source()

    def search(self, queries: QueryBlock, top_k: int, exclude_self: bool = False,
               wrap: Callable[[Iterable], Iterable] = iter) -> Hits:
        """`wrap`: e.g. a progress bar around the block sources."""
        best = search_blocks(queries, self.blocks(wrap), top_k, exclude_self)
        self.searched = best.seen
        return Hits.from_results(queries.ids, best.results(queries.ids))
