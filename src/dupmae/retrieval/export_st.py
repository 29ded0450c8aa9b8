"""`dupmae export-st MODEL_DIR OUT`: a dupmae retriever as sentence-transformers folders.

    dupmae export-st runs/scifact/model runs/scifact/st [--only dense|sparse] [--accept-sparse-edge-cases]

Writes, for the halves the representation has (`cls`: dense only; `sparse`: sparse only):
- `OUT/dense` — a `SentenceTransformer`: Transformer -> Pooling (`dense_pooling`: cls | mean) ->
  Dense (`W_cls`, identity activation, bias per `dense_bias`; left out when `dense_dim` = 0) ->
  Normalize (when `normalize_dense`). Its `query_length` / `document_length` are the retriever's
  query / passage max lengths, so `encode_query` / `encode_document` give the vectors of
  `Retriever.encode_queries` / `encode_corpus` (plain `encode` uses the passage length).
- `OUT/sparse-query`, `OUT/sparse-document` — `SparseEncoder`s: Transformer (fill-mask) ->
  WordWeights (0 for the special tokens dupmae's max-pool leaves out, 1 for every other token) ->
  SpladePooling (max, `relu` = log(1 + relu(x)), which is dupmae's `log1p_relu`). Two folders because
  a SparseEncoder keeps one `max_active_dims` for queries and documents alike, while dupmae keeps a
  query's whole vocabulary vector and a document's top `sparse_top_k` entries; the document folder
  has `max_active_dims = sparse_top_k`. Same weights in both (twice the disk).

Every setting sentence-transformers cannot express exactly is refused before anything is written
(`ExportRefused`, naming the setting): `sparse_activation` none / relu, `sparse_weight` != 1, a tokenizer
that does not start every text with a special token. Two kinds of text are encoded differently whatever
the settings, so the sparse half is written only with `--accept-sparse-edge-cases` (`edge_case_message`).
Weights are written in float32; equality is for float32 encoding (`dupmae encode --bf16 false`).
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from dupmae.modeling.representation import CONFIG_FILE, DupMAEEncoder, RepresentationConfig, load_tokenizer

logger = logging.getLogger(__name__)
HALVES = ("dense", "sparse")
# 6.0: Transformer(query_length=, document_length=); 6.2: SparseEncoder saves max_active_dims with the model.
MINIMUM_SENTENCE_TRANSFORMERS = (6, 2)


def require_sentence_transformers() -> None:
    """ImportError naming the minimum version unless sentence-transformers >= 6.2 is installed."""
    needed = ".".join(map(str, MINIMUM_SENTENCE_TRANSFORMERS))
    try:
        import sentence_transformers
    except ImportError:
        raise ImportError(f"needs sentence-transformers >= {needed} (pip install 'dupmae[st]')") from None
    installed = tuple(int(part) for part in re.findall(r"\d+", sentence_transformers.__version__)[:2])
    if installed < MINIMUM_SENTENCE_TRANSFORMERS:
        raise ImportError(f"needs sentence-transformers >= {needed}, found {sentence_transformers.__version__} "
                          "(pip install 'dupmae[st]')")


class ExportRefused(ValueError):
    """A setting of the retriever that sentence-transformers cannot reproduce exactly."""


def edge_case_message(tokenizer, excluded: list[int], exclude_special: bool) -> str:
    """What the exported SparseEncoder computes differently, whatever the settings: WordWeights works by
    token id, dupmae's max-pool (`DupMAEEncoder.forward`) by position."""
    names = tokenizer.convert_ids_to_tokens(excluded)
    cases = [f"a text containing the literal string {' or '.join(map(repr, names))}: dupmae pools that token "
             "there, the export does not"]
    if exclude_special:  # otherwise the final [SEP] is always pooled, so no text leaves the max-pool empty
        cases.insert(0, "a text with no ordinary token (the empty text): dupmae falls back to the position-0 "
                        "vector, the export gives the zero vector")
    return (f"dupmae leaves position 0{' and the special tokens the tokenizer adds' if exclude_special else ''} out "
            "of the max-pool; sentence-transformers' SpladePooling pools every attended position, so the export "
            f"zeroes the logits of {', '.join(names)} by token id (WordWeights). That is exact except for "
            + "; ".join(f"({n}) {case}" for n, case in enumerate(cases, 1)))


def sparse_refusals(config: RepresentationConfig) -> list[str]:
    """Why SpladePooling cannot compute this sparse vector (empty list: it can)."""
    reasons = []
    if config.sparse_activation != "log1p_relu":
        reasons.append(f"sparse_activation={config.sparse_activation}: SpladePooling's activations are log(1 + relu(x)) "
                       "(its 'relu', dupmae's log1p_relu) and log(1 + log(1 + relu(x))); dupmae's "
                       f"{config.sparse_activation!r} has no sentence-transformers equivalent")
    if config.sparse_weight != 1.0:
        reasons.append(f"sparse_weight={config.sparse_weight}: dupmae multiplies the sparse vectors by "
                       "sqrt(sparse_weight) after the activation; no sentence-transformers sparse module scales them")
    return reasons


def excluded_token_ids(tokenizer, config: RepresentationConfig) -> list[int]:
    """Token ids whose logits the export zeroes: the one dupmae's tokenizer puts at position 0 and, with
    `sparse_exclude_special`, those it marks in `special_tokens_mask` (the [CLS] / [SEP] it adds).
    Refuses when position 0 is not always the same special token (then dupmae drops an ordinary token)."""
    probes = ["", "a", "the cell", "two words and more"]
    encodings = [tokenizer(text, return_special_tokens_mask=True) for text in probes]
    first = {encoding["input_ids"][0] for encoding in encodings if encoding["input_ids"]}
    if len(first) != 1 or not all(e["input_ids"] and e["special_tokens_mask"][0] == 1 for e in encodings):
        raise ExportRefused("tokenizer: dupmae always leaves position 0 out of the max-pool, and this tokenizer "
                            "does not start every text with the same special token, so no token id marks it")
    excluded = set(first)
    if config.sparse_exclude_special:
        for encoding in encodings:
            excluded.update(i for i, special in zip(encoding["input_ids"], encoding["special_tokens_mask"]) if special)
    return sorted(excluded)


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty (pass --overwrite to replace its files)")


def _dense_model(hf_dir: Path, encoder: DupMAEEncoder):
    """Transformer -> Pooling -> [Dense W_cls] -> [Normalize], as a `SentenceTransformer`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    config = encoder.representation
    transformer = Transformer(str(hf_dir), transformer_task="feature-extraction", max_seq_length=config.passage_max_length,
                              query_length=config.query_max_length, document_length=config.passage_max_length)
    modules = [transformer, Pooling(encoder.model.config.hidden_size, pooling_mode=config.dense_pooling)]
    projection = encoder.dense_projection
    if projection is not None:
        bias = None if projection.bias is None else projection.bias.detach().float().clone()
        modules.append(Dense(projection.in_features, projection.out_features, bias=bias is not None,
                             activation_function=torch.nn.Identity(),
                             init_weight=projection.weight.detach().float().clone(), init_bias=bias))
    if config.normalize_dense:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, similarity_fn_name="dot", device="cpu")


def zeroing_word_weights(tokenizer, excluded: list[int]):
    """A WordWeights module: weight 0 at the `excluded` token ids, 1 at every other id of the tokenizer.
    WordWeights matches tokens by name (then lower-cased name), so the weights it ends up with are checked."""
    from sentence_transformers.sentence_transformer.modules import WordWeights

    # ids the tokenizer cannot name get a name no weight matches
    vocabulary = [token if token is not None else f"<dupmae unnamed id {i}>"
                  for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))]
    weights = WordWeights(vocabulary, {vocabulary[i]: 0.0 for i in excluded}, unknown_word_weight=1.0)
    expected = torch.ones(len(vocabulary))
    expected[excluded] = 0.0
    if not torch.equal(weights.emb_layer.weight.detach()[:, 0], expected):
        raise ExportRefused("tokenizer: another token shares its name (up to case) with one of "
                            f"{tokenizer.convert_ids_to_tokens(excluded)}, so WordWeights, which weights tokens "
                            "by name, cannot zero those alone")
    return weights


def _sparse_model(hf_dir: Path, word_weights, vocabulary_size: int):
    """Transformer (fill-mask) -> WordWeights -> SpladePooling (max, log(1 + relu)), as a `SparseEncoder`
    (its max length and `max_active_dims` are set per folder by the caller)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import SpladePooling, Transformer

    # unpad_inputs=False: WordWeights needs the padded [B, L] input_ids and attention_mask.
    transformer = Transformer(str(hf_dir), transformer_task="fill-mask", unpad_inputs=False)
    pooling = SpladePooling(pooling_strategy="max", activation_function="relu", embedding_dimension=vocabulary_size)
    return SparseEncoder(modules=[transformer, word_weights, pooling], similarity_fn_name="dot", device="cpu")


def export_sentence_transformers(model_dir: str | Path, output: str | Path, only: str | None = None,
                                 accept_sparse_edge_cases: bool = False, overwrite: bool = False) -> list[Path]:
    """Write the sentence-transformers folders of a dupmae retriever folder; returns the folders written.

    `only`: "dense" or "sparse" to export one half of a `dupmae` representation. Raises `ExportRefused`
    (nothing written) for settings sentence-transformers cannot reproduce, `FileNotFoundError` /
    `FileExistsError` for bad paths."""
    require_sentence_transformers()
    model_dir, output = Path(model_dir), Path(output)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"retriever folder not found: {model_dir}")
    if not (model_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} is not a dupmae retriever folder (no {CONFIG_FILE}; "
                                "`dupmae finetune` or scripts/make_retriever.py write one)")
    _check_output(output, overwrite)
    config = RepresentationConfig.load(model_dir)
    halves = [half for half, used in zip(HALVES, (config.uses_dense, config.uses_sparse)) if used]
    if only is not None:
        if only not in halves:
            raise ExportRefused(f"--only {only}: the retriever's representation {config.representation!r} has no {only} part")
        halves = [only]
    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "right"  # as dupmae pads (`pad_batch`): position ids then match for every text
    word_weights = None
    if "sparse" in halves:
        problems = sparse_refusals(config)
        if problems:
            hint = " (or export the dense half alone: --only dense)" if config.uses_dense else ""
            raise ExportRefused("cannot export the sparse half exactly: " + "; ".join(problems) + hint)
        excluded = excluded_token_ids(tokenizer, config)
        word_weights = zeroing_word_weights(tokenizer, excluded)
        if not accept_sparse_edge_cases:
            raise ExportRefused(edge_case_message(tokenizer, excluded, config.sparse_exclude_special)
                                + ". Pass --accept-sparse-edge-cases to write the sparse folders anyway"
                                + (", or --only dense" if config.uses_dense else ""))
        logger.warning("writing the sparse folders with known differences: %s",
                       edge_case_message(tokenizer, excluded, config.sparse_exclude_special))

    encoder = DupMAEEncoder.from_pretrained(model_dir).float().eval()
    written = []
    with tempfile.TemporaryDirectory(prefix="dupmae-export-st-") as scratch:
        hf_dir = Path(scratch)  # the encoder (+ MLM head) as a plain Hugging Face folder, float32
        encoder.model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        output.mkdir(parents=True, exist_ok=True)

        def save(model, name: str) -> None:
            if (output / name).exists():
                shutil.rmtree(output / name)
            model.save(str(output / name))
            written.append(output / name)

        if "dense" in halves:
            save(_dense_model(hf_dir, encoder), "dense")
        if "sparse" in halves:
            sparse = _sparse_model(hf_dir, word_weights, encoder.model.get_output_embeddings().out_features)
            sparse.max_seq_length, sparse.max_active_dims = config.query_max_length, None  # queries: every entry
            save(sparse, "sparse-query")
            sparse.max_seq_length, sparse.max_active_dims = config.passage_max_length, config.sparse_top_k
            save(sparse, "sparse-document")
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dupmae export-st", description=__doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("model", help="retriever folder written by `dupmae finetune` (or scripts/make_retriever.py)")
    parser.add_argument("output", help="folder to write the sentence-transformers folders into")
    parser.add_argument("--only", choices=HALVES, help="export one half of a dupmae (dense + sparse) retriever")
    parser.add_argument("--accept-sparse-edge-cases", action="store_true",
                        help="write the sparse folders although they differ from dupmae on empty texts and on "
                             "texts containing a literal special token such as '[SEP]' (see docs/retrieval.md)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    args = parser.parse_args(argv)
    try:
        written = export_sentence_transformers(args.model, args.output, args.only, args.accept_sparse_edge_cases,
                                               args.overwrite)
    except (ImportError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"dupmae export-st: error: {error}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
