"""`dupmae export CKPT OUT`: the encoder with its MLM head as an ordinary Hugging Face folder.

The output loads with `AutoModelForMaskedLM.from_pretrained(OUT)` (or `AutoModel` for the
encoder alone): safetensors weights, config and tokenizer. The decoder stays behind in the
pre-training checkpoint, which remains the thing to resume from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from dupmae.data.integrity import read_json_file
from dupmae import __version__
from dupmae.modeling.pretraining import DupMAEForPretraining

EXPORT_MANIFEST = "dupmae_export.json"


def export_encoder(checkpoint: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    checkpoint, output = Path(checkpoint), Path(output)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {checkpoint}")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty (pass --overwrite to replace its files)")
    model = DupMAEForPretraining.from_checkpoint(checkpoint)
    model.encoder.save_pretrained(output)  # safetensors by default; ties handled by transformers
    AutoTokenizer.from_pretrained(checkpoint).save_pretrained(output)
    state_file = checkpoint / "trainer_state.json"
    step = read_json_file(state_file, "trainer state").get("global_step") if state_file.is_file() else None
    manifest = {"source": str(checkpoint.resolve()), "global_step": step, "pretraining": model.options.to_dict(),
                "dupmae_version": __version__}
    (output / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return output


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dupmae export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="pre-training output folder or one of its checkpoint-N folders")
    parser.add_argument("output", help="folder to write the Hugging Face model to")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    args = parser.parse_args(argv)
    try:
        out = export_encoder(args.checkpoint, args.output, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"dupmae export: error: {error}", file=sys.stderr)
        return 2
    print(f"exported encoder + MLM head to {out}")
    return 0
