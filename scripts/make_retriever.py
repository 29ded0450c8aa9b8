"""Wrap any local masked-LM / encoder folder as a dupmae retriever folder, without training.

For zero-shot baselines, e.g. all-MiniLM-L6-v2 the way sentence-transformers uses it:

    python scripts/make_retriever.py MODEL_DIR runs/minilm-zeroshot \
        --representation cls --dense-dim 0 --dense-pooling mean --normalize-dense true

Every `RepresentationConfig` field is a flag (see docs/retrieval.md).
"""

import sys

from transformers import HfArgumentParser

from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig, load_tokenizer


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    source, output, flags = argv[0], argv[1], argv[2:]
    (config,) = HfArgumentParser(RepresentationConfig).parse_args_into_dataclasses(flags)
    DupMAEEncoder.from_pretrained(source, config).save_pretrained(output, load_tokenizer(source))
    print(f"wrote {output} ({config.representation}, dense_dim={config.dense_dim}, pooling={config.dense_pooling})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
