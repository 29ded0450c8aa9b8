"""Fault injection: kill -9 `dupmae pretrain`, `finetune`, `encode` and `run` at random moments (seeded), and
while they write a checkpoint or an index part; resume; compare with an uninterrupted run. Then damage the
newest checkpoint and an index part on purpose and resume again.

Survived = the resumed command exited 0. Identical = its outputs equal the uninterrupted run's: weights
(every tensor), the training log's step records (timings aside), index part bytes, run files and metrics.

    python scripts/fault_injection.py --trials 3 --seed 0 --output out/fault_injection.json
    bash scripts/fault_injection.sh            # the same, with the settings of docs/reliability.md

Tiny models and data are built in a temporary folder (the tests' builders), so it runs anywhere in minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "pipeline"), str(ROOT / "src")]
COMMANDS = ("pretrain", "finetune", "encode", "run")
QUIET = ["--report-to", "none", "--disable-tqdm", "true", "--bf16", "false", "--keep-freed-memory", "false"]


def build_inputs(work: Path) -> dict:
    """Tokenizer, tiny MLM, prepared data, BEIR collection with negatives, tiny retriever, pipeline config."""
    import yaml
    from test_finetune import tiny_encoder_dir, write_beir
    from test_run import tiny_settings, write_collection
    from test_training import make_model, write_corpus
    from tiny import build_wordpiece_tokenizer
    from transformers import AutoTokenizer

    from dupmae.data.prepare import prepare_corpus
    from dupmae.modeling.representation import DupMAEEncoder, RepresentationConfig

    tokenizer = str(work / "tokenizer")
    build_wordpiece_tokenizer(tokenizer)
    prepare_corpus([str(write_corpus(work / "corpus.jsonl", documents=60))], tokenizer, str(work / "data"),
                   max_length=32, num_proc=1)
    start = tiny_encoder_dir(work / "start", tokenizer)
    retriever = work / "retriever"
    config = RepresentationConfig(representation="dupmae", dense_dim=16, sparse_top_k=6, sparse_activation="relu")
    DupMAEEncoder.from_pretrained(start, config).save_pretrained(retriever, AutoTokenizer.from_pretrained(start))
    write_collection(work / "collections" / "tiny", documents=120)
    settings = tiny_settings(start)
    settings["pretrain"].update(max_steps=6, save_steps=2)
    settings["finetune"].update(max_steps=6, save_steps=2)
    (work / "tiny.yaml").write_text(yaml.safe_dump(settings))
    return {"mlm": make_model(work / "mlm", tokenizer, dropout=0.1), "data": str(work / "data"),
            "beir": str(write_beir(work / "beir")), "start": start, "retriever": str(retriever),
            "collections": str(work / "collections"), "config": str(work / "tiny.yaml")}


def command_line(name: str, inputs: dict, output: Path, resume: bool) -> list[str]:
    """The CLI argv of one command writing to `output`."""
    if name == "pretrain":
        argv = ["pretrain", "--model", inputs["mlm"], "--data", inputs["data"], "--output", str(output),
                "--max-steps", "12", "--per-device-train-batch-size", "4", "--save-steps", "3", "--logging-steps",
                "1", "--seed", "3", *QUIET]
    elif name == "finetune":
        argv = ["finetune", "--model", inputs["start"], "--data", inputs["beir"], "--negatives",
                str(Path(inputs["beir"]) / "negs.jsonl"), "--output", str(output), "--max-steps", "8",
                "--per-device-train-batch-size", "4", "--group-size", "2", "--save-strategy", "steps",
                "--save-steps", "2", "--logging-steps", "1", "--seed", "3", "--query-max-length", "16",
                "--passage-max-length", "32", *QUIET]
    elif name == "encode":
        return ["encode", "--model", inputs["retriever"], "--corpus", inputs["beir"], "--output", str(output),
                "--part-size", "3", "--batch-size", "2", "--keep-freed-memory", "false"]
    else:
        return ["run", inputs["config"], "--output", str(output), "--data-root", inputs["collections"]]
    return argv + (["--resume"] if resume else [])


def launch(argv: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(log, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "dupmae.cli", *argv], stdout=handle, stderr=handle, env=env,
                                start_new_session=True)  # its own process group: the kill takes its workers too


def run_to_end(argv: list[str], log: Path, timeout: float = 900) -> int:
    process = launch(argv, log)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return -9


def write_in_progress(name: str, output: Path) -> str | None:
    """What `output` shows being written now — a checkpoint not yet marked complete, or a part's temporary
    file — or None."""
    if name == "encode":
        return next((path.name for path in output.glob("*.tmp")), None)
    folders = [output] if name != "run" else [p for p in output.glob("stages/*/*") if p.is_dir()] + \
        [p for p in output.glob("stages/*") if p.is_dir()]
    for folder in folders:
        for checkpoint in folder.glob("checkpoint-*"):
            if not (checkpoint / "dupmae_checkpoint.json").is_file():
                return str(checkpoint)
    return None


def wait_for_output(process: subprocess.Popen, output: Path, limit_s: float) -> float:
    """Seconds until `output` holds its first file (the command has started working: imports are done)."""
    started = time.monotonic()
    while process.poll() is None and time.monotonic() - started < limit_s:
        if output.is_dir() and any(output.iterdir()):
            break
        time.sleep(0.02)
    return time.monotonic() - started


def reference_run(name: str, inputs: dict, output: Path, log: Path) -> float:
    """The uninterrupted run; returns how long it worked after start-up (what random kills are drawn over)."""
    process = launch(command_line(name, inputs, output, resume=False), log)
    wait_for_output(process, output, 600)
    started = time.monotonic()
    if process.wait(900) != 0:
        raise SystemExit(f"the uninterrupted {name} failed: see {log}\n{log.read_text()[-3000:]}")
    return time.monotonic() - started


def interrupted_run(name: str, inputs: dict, output: Path, log: Path, rng: random.Random, working_s: float,
                    during_write: bool) -> dict:
    """Start, kill -9 (at a random moment of its work, or as soon as a write is seen), then resume to the end."""
    process = launch(command_line(name, inputs, output, resume=False), log)
    wait_for_output(process, output, 600)
    started = time.monotonic()
    deadline = started + (working_s * 2 if during_write else rng.uniform(0.05, 0.95) * working_s)
    skip_writes = rng.randint(0, 2)  # which write to die in: the first, second or third seen
    seen: set[str] = set()
    killed_at, reason, victim = None, "finished before the kill", None
    while process.poll() is None and time.monotonic() < deadline:
        if during_write:
            victim = write_in_progress(name, output)
            if victim is not None:
                seen.add(victim)
                if len(seen) > skip_writes:
                    break
        time.sleep(0.002 if during_write else 0.02)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        killed_at = round(time.monotonic() - started, 2)
        reason = f"while writing {Path(victim).name}" if during_write and victim else "at a random moment"
    resumable = name in ("pretrain", "finetune") and any(output.glob("checkpoint-*"))
    status = run_to_end(command_line(name, inputs, output, resume=resumable), log)
    return {"killed_after_s": killed_at, "of_s": round(working_s, 2), "kill": reason, "resume_exit": status}


def damaged_run(name: str, inputs: dict, output: Path, log: Path) -> dict:
    """Finish a run, damage what a crash of the machine could leave damaged, and resume."""
    assert run_to_end(command_line(name, inputs, output, resume=False), log) == 0
    if name in ("pretrain", "finetune"):
        newest = max(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        weights = newest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        (output / "model.safetensors").unlink()
        damage = f"{newest.name}/model.safetensors cut in half, final weights removed"
    elif name == "encode":
        part = sorted(output.glob("*.part*.safetensors"))[1]
        part.write_bytes(part.read_bytes()[:100])
        damage = f"{part.name} cut to 100 bytes"
    status = run_to_end(command_line(name, inputs, output, resume=name != "encode"), log)
    return {"damage": damage, "resume_exit": status}


def encode_killed_in_a_write(inputs: dict, output: Path, log: Path, rng: random.Random) -> dict:
    """A part's write lasts microseconds (tensors to a temporary file, then a rename), too short to hit with a
    kill from outside; so the disk is left as such a kill leaves it — part k's id list written, its tensors only
    in a truncated temporary file, no later part — and encode is rerun."""
    assert run_to_end(command_line("encode", inputs, output, resume=False), log) == 0
    parts = sorted(output.glob("*.part*.safetensors"))
    victim = rng.randrange(len(parts))
    for part in parts[victim + 1:]:
        part.unlink()
        part.with_suffix(".ids.json").unlink()
    data = parts[victim].read_bytes()
    temporary = parts[victim].with_name(parts[victim].name + ".tmp")
    temporary.write_bytes(data[: rng.randrange(1, len(data))])
    parts[victim].unlink()
    status = run_to_end(command_line("encode", inputs, output, resume=False), log)
    temporary.unlink(missing_ok=True)  # a leftover temporary file is not an output
    return {"kill": f"disk left as by a kill while writing {parts[victim].name} (simulated)", "resume_exit": status}


def damaged_pipeline_run(inputs: dict, output: Path, log: Path) -> dict:
    """`dupmae run` killed once a training stage holds a complete checkpoint; that checkpoint's weights are then
    cut in half, and the run resumed."""
    process = launch(command_line("run", inputs, output, resume=False), log)
    marker = None
    while process.poll() is None and marker is None:
        marker = next(iter(output.glob("stages/*/*/checkpoint-*/dupmae_checkpoint.json")), None)
        time.sleep(0.002)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if marker is None:
        return {"skipped": "the run finished before a checkpoint was seen"}
    weights = marker.parent / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    status = run_to_end(command_line("run", inputs, output, resume=False), log)
    return {"damage": f"{marker.parent.relative_to(output)}/model.safetensors cut in half after a kill",
            "resume_exit": status}


def outputs_of(name: str, folder: Path) -> dict[str, bytes | object]:
    """What must be identical: tensors by name, log step records, part bytes, run files and metrics."""
    from safetensors.numpy import load_file

    found: dict[str, object] = {}
    if name in ("pretrain", "finetune"):
        for key, value in load_file(str(folder / "model.safetensors")).items():
            found[f"weight {key}"] = value.tobytes()
        records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line]
        found["log"] = [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in records if "loss" in r
                        and "train_runtime" not in r]
    elif name == "encode":
        for path in sorted(folder.glob("*.part*")):
            found[path.name] = path.read_bytes()
    else:
        for path in sorted(folder.glob("stages/*/*.trec")):
            found[str(path.relative_to(folder))] = path.read_bytes()
        results = json.loads((folder / "results.json").read_text())
        found["metrics"] = {system: {split: values for split, values in splits.items() if split in ("test", "dev")}
                            for system, splits in results["systems"].items()}
    return found


def differences(reference: dict, other: dict) -> list[str]:
    names = sorted(set(reference) | set(other))
    return [name for name in names if reference.get(name) != other.get(name)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3, help="random-moment kills per command (default 3)")
    parser.add_argument("--write-trials", type=int, default=1, help="kills during a write per command (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commands", default=",".join(COMMANDS))
    parser.add_argument("--output", default=str(ROOT / "out" / "fault_injection.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="dupmae-faults-"))
    report = {"seed": args.seed, "trials": [], "summary": {}}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        inputs = build_inputs(work / "inputs")
        for name in args.commands.split(","):
            reference = work / name / "reference"
            log = work / name / "log.txt"
            reference.parent.mkdir(parents=True)
            working_s = reference_run(name, inputs, reference, log)
            expected = outputs_of(name, reference)
            plans = [("random", i) for i in range(args.trials)] + [("write", i) for i in range(args.write_trials)]
            plans.append(("damage", 0))
            for kind, number in plans:
                folder = work / name / f"{kind}-{number}"
                if kind == "write" and name == "encode":
                    trial = encode_killed_in_a_write(inputs, folder, log, rng)
                elif kind == "damage":
                    trial = damaged_pipeline_run(inputs, folder, log) if name == "run" else \
                        damaged_run(name, inputs, folder, log)
                else:
                    trial = interrupted_run(name, inputs, folder, log, rng, working_s, during_write=kind == "write")
                if "skipped" not in trial:
                    trial["survived"] = trial["resume_exit"] == 0
                    differ = differences(expected, outputs_of(name, folder)) if trial["survived"] else ["(not run)"]
                    trial["identical"] = not differ
                    trial["differ"] = differ[:5]
                record = {"command": name, "kind": kind, "trial": number, **trial}
                report["trials"].append(record)
                print(json.dumps(record), flush=True)
                output.write_text(json.dumps(report, indent=2) + "\n")
        for name in args.commands.split(","):
            done = [t for t in report["trials"] if t["command"] == name and "survived" in t]
            report["summary"][name] = {"trials": len(done), "survived": sum(t["survived"] for t in done),
                                       "identical": sum(t["identical"] for t in done)}
        output.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["summary"], indent=2))
        bad = [t for t in report["trials"] if "survived" in t and not (t["survived"] and t["identical"])]
        return 1 if bad else 0
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
