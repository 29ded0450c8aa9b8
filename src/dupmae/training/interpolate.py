"""`dupmae interpolate`: a fine-tuned retriever's weights moved back toward the model it started from.

    dupmae interpolate --start MODEL --finetuned RETRIEVER_DIR --alpha 0.5 --output DIR

`theta = alpha x theta_finetuned + (1 - alpha) x theta_start`, parameter by parameter (weight-space
ensembling, "WiSE-FT", Wortsman et al., CVPR 2022). Fine-tuning on one collection's labels moves a
general-purpose encoder toward that collection; averaging the weights with the start keeps most of the
in-domain gain and most of the start's zero-shot quality elsewhere (docs/results.md, "Transfer").

The starting model is read the way `dupmae finetune` read it (the retriever's own representation
settings, the same `missing_head_init`), so every parameter has a counterpart. The dense projection
`W_cls` is taken from the fine-tuned model as it is: its start is a random draw, not knowledge to keep.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from dupmae.modeling.head_init import MISSING_HEAD_INITS
from dupmae.modeling.representation import CONFIG_FILE, DupMAEEncoder, load_tokenizer

logger = logging.getLogger(__name__)

KEPT_FROM_FINETUNED = ("dense_projection.",)  # parameter name prefixes never interpolated


@torch.no_grad()
def interpolate(start: str | Path, finetuned: str | Path, alpha: float,
                missing_head_init: str = "identity") -> DupMAEEncoder:
    """The fine-tuned encoder with every floating-point parameter and buffer set to
    `alpha x finetuned + (1 - alpha) x start` (alpha 1 = the fine-tuned model, 0 = the start,
    apart from `KEPT_FROM_FINETUNED`).

    Raises:
        ValueError: alpha outside [0, 1], `finetuned` not a retriever folder, or the two models'
            parameters differ in names or shapes (a start that is not the fine-tuning's start).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    finetuned = Path(finetuned)
    if not (finetuned / CONFIG_FILE).is_file():
        raise ValueError(f"{finetuned} is not a retriever folder (no {CONFIG_FILE}); give `dupmae finetune`'s output")
    tuned = DupMAEEncoder.from_pretrained(finetuned)
    original = DupMAEEncoder.from_pretrained(start, tuned.representation, missing_head_init)
    tuned_state, start_state = tuned.state_dict(), original.state_dict()
    if set(tuned_state) != set(start_state):
        extra = sorted(set(tuned_state) ^ set(start_state))
        raise ValueError(f"{start} and {finetuned} have different parameters (e.g. {extra[:3]}): "
                         "is that the model the fine-tuning started from?")
    mixed = {}
    for name, value in tuned_state.items():
        other = start_state[name]
        if other.shape != value.shape:
            raise ValueError(f"parameter {name}: shape {tuple(other.shape)} in {start}, {tuple(value.shape)} in "
                             f"{finetuned}")
        if name.startswith(KEPT_FROM_FINETUNED) or not value.is_floating_point():
            mixed[name] = value
        else:
            mixed[name] = (alpha * value.float() + (1.0 - alpha) * other.float()).to(value.dtype)
    tuned.load_state_dict(mixed)
    tuned.tie_weights()
    return tuned


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dupmae interpolate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", required=True, help="the model the fine-tuning started from (a local folder)")
    parser.add_argument("--finetuned", required=True, help="`dupmae finetune`'s output folder")
    parser.add_argument("--alpha", type=float, required=True, help="weight of the fine-tuned model, in [0, 1]")
    parser.add_argument("--missing-head-init", default="identity", choices=list(MISSING_HEAD_INITS),
                        help="as given to `dupmae finetune` (default identity)")
    parser.add_argument("--output", required=True, help="folder for the interpolated retriever")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if Path(args.output).resolve() == Path(args.finetuned).resolve():
            raise ValueError("--output must differ from --finetuned (the fine-tuned model is read, never overwritten)")
        encoder = interpolate(args.start, args.finetuned, args.alpha, args.missing_head_init)
        encoder.save_pretrained(args.output, load_tokenizer(args.finetuned))
    except (OSError, ValueError) as error:
        print(f"dupmae interpolate: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} (alpha {args.alpha}: {args.alpha} x {args.finetuned} + {1 - args.alpha:g} x {args.start})")
    return 0
