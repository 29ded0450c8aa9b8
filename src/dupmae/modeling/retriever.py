"""`Retriever`: encode queries and documents with a DupMAE (or cls / sparse) model, and search.

    retriever = Retriever.from_pretrained("runs/scifact-finetuned")
    results = retriever.search(queries, corpus, top_k=100)   # {qid: [(doc_id, score), ...]}

Texts are tokenised once, sorted by token count and batched, so a batch is padded only to its own
longest text (SciFact with all-MiniLM-L6-v2: 0.2 % padding, vs 4.4 % when sorting by characters);
vectors come back in input order. The device's speed paths come from `dupmae.platform.prepare` (on
a CPU, linear layers through oneDNN: same arithmetic, ~1.8x faster on AMD CPUs); precision from
`bf16` = auto (bf16 where the device multiplies it natively, fp32 elsewhere), true or false.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dupmae.platform import Accelerations, prepare, resolve_bf16
from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig, load_tokenizer
from dupmae.retrieval.index import DocumentBlock, HybridScorer, QueryBlock, TopK

logger = logging.getLogger(__name__)
# Texts tokenised per call to the tokenizer: the window within which batches are sorted exactly by
# token count (a global character-length sort comes first, so windows hold texts of similar length).
TOKENIZE_WINDOW_BATCHES = 32


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Positions grouped into batches of `batch_size`, longest first (memory peaks early, and each
    batch pads only to its own longest member); ties keep input order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(token_lists: list[list[int]], special_lists: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token id lists to the longest: input_ids, attention_mask, special_tokens_mask `[B, L]`."""
    width = max(len(t) for t in token_lists)
    input_ids = np.full((len(token_lists), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(token_lists), width), dtype=np.int64)
    special = np.ones((len(token_lists), width), dtype=np.int64)  # padding counts as special, as in HF
    for row, (tokens, specials) in enumerate(zip(token_lists, special_lists)):
        input_ids[row, : len(tokens)] = tokens
        attention[row, : len(tokens)] = 1
        special[row, : len(tokens)] = specials
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention),
            "special_tokens_mask": torch.from_numpy(special)}


def document_text(document: dict | str) -> str:
    """BEIR documents are {"title", "text"}: title and text joined by a space, as BEIR baselines do."""
    if isinstance(document, str):
        return document
    title, text = document.get("title") or "", document.get("text") or ""
    return f"{title} {text}".strip() if title else text


class Retriever:
    def __init__(self, encoder: DupMAEEncoder, tokenizer, batch_size: int = 64, bf16: bool | str = "auto",
                 device: str | None = None, show_progress: bool = True, onednn: bool = True,
                 accelerations: Accelerations | None = None) -> None:
        """`bf16`: auto / true / false (`dupmae.platform.precision`). `onednn`: on a CPU, run linear layers
        through oneDNN (`dupmae.platform.cpu.onednn`). `accelerations`: the platform settings (compile_layers)."""
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.bf16 = resolve_bf16(bf16, self.device, "encoding")
        self.encoder.to(self.device)
        # the process-wide allocator setting only where asked for (`dupmae encode` asks; a library call does not)
        accelerations = accelerations or Accelerations(keep_freed_memory=False)
        self.platform = prepare(self.encoder, self.device, accelerations, training=False, onednn_linears=onednn)
        self.show_progress = show_progress

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: RepresentationConfig | None = None, **kwargs) -> "Retriever":
        return cls(DupMAEEncoder.from_pretrained(directory, config), load_tokenizer(directory), **kwargs)

    @property
    def config(self) -> RepresentationConfig:
        return self.encoder.representation

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @torch.inference_mode()
    def _encode(self, texts: list[str], max_length: int, top_k: int | None, description: str):
        """Yields (positions, Representation) per batch; batches hold texts of equal or nearly equal
        token counts (exact sort within windows of `TOKENIZE_WINDOW_BATCHES` batches)."""
        window = self.batch_size * TOKENIZE_WINDOW_BATCHES
        by_characters = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        progress = tqdm(total=len(texts), desc=description, disable=not self.show_progress, unit="text")
        with self.platform.inference(self.encoder), progress:
            for start in range(0, len(by_characters), window):
                positions = by_characters[start : start + window]
                tokens = self.tokenizer([texts[i] for i in positions], max_length=max_length, truncation=True,
                                        return_special_tokens_mask=True, return_attention_mask=False,
                                        return_token_type_ids=False)
                ids, specials = tokens["input_ids"], tokens["special_tokens_mask"]
                for batch in length_sorted_batches([len(t) for t in ids], self.batch_size):
                    padded = pad_batch([ids[j] for j in batch], [specials[j] for j in batch],
                                       self.tokenizer.pad_token_id or 0)
                    with self._autocast():
                        representation = self.encoder(
                            padded["input_ids"].to(self.device), padded["attention_mask"].to(self.device),
                            padded["special_tokens_mask"].to(self.device), top_k=top_k,
                        )
                    progress.update(len(batch))
                    yield [positions[j] for j in batch], representation

    def encode_queries(self, texts: list[str], ids: list[str] | None = None) -> QueryBlock:
        """Dense `[Q, D]` and full sparse `[Q, V]` vectors (queries keep every vocabulary entry)."""
        dense = sparse = None
        for positions, rep in self._encode(texts, self.config.query_max_length, None, "encoding queries"):
            if rep.dense is not None:
                dense = dense if dense is not None else np.zeros((len(texts), rep.dense.shape[1]), np.float32)
                dense[positions] = rep.dense.cpu().numpy()
            if rep.sparse is not None:
                sparse = sparse if sparse is not None else np.zeros((len(texts), rep.sparse.shape[1]), np.float32)
                sparse[positions] = rep.sparse.cpu().numpy()
        return QueryBlock(ids=list(ids) if ids is not None else [str(i) for i in range(len(texts))],
                          dense=dense, sparse=sparse)

    def encode_corpus(self, documents: list[dict | str], ids: list[str] | None = None) -> DocumentBlock:
        """Dense `[N, D]` and sparse top-k `(indices, values)` `[N, k]` per document."""
        texts = [document_text(d) for d in documents]
        k = self.config.sparse_top_k
        dense = indices = values = None
        for positions, rep in self._encode(texts, self.config.passage_max_length, None, "encoding documents"):
            if rep.dense is not None:
                dense = dense if dense is not None else np.zeros((len(texts), rep.dense.shape[1]), np.float32)
                dense[positions] = rep.dense.cpu().numpy()
            if rep.sparse is not None:
                top = rep.sparse.topk(min(k, rep.sparse.shape[1]), dim=-1)
                if indices is None:
                    indices = np.zeros((len(texts), top.indices.shape[1]), np.int32)
                    values = np.zeros((len(texts), top.indices.shape[1]), np.float32)
                indices[positions] = top.indices.cpu().numpy()
                values[positions] = top.values.cpu().numpy()
        return DocumentBlock(ids=list(ids) if ids is not None else [str(i) for i in range(len(texts))],
                             dense=dense, sparse_indices=indices, sparse_values=values)

    def search(self, queries: dict[str, str], corpus: dict[str, dict | str], top_k: int = 1000,
               exclude_self: bool = False) -> dict[str, list[tuple[str, float]]]:
        """Exact search of `queries` over an in-memory `corpus`: {qid: [(doc_id, score), ...]} best first."""
        query_ids, doc_ids = list(queries), list(corpus)
        query_block = self.encode_queries([queries[q] for q in query_ids], query_ids)
        documents = self.encode_corpus([corpus[d] for d in doc_ids], doc_ids)
        best = TopK(len(query_ids), top_k)
        best.add_by_document(HybridScorer(query_block)(documents), doc_ids,
                 exclude=[{q} for q in query_ids] if exclude_self else None)
        return best.results(query_ids)
