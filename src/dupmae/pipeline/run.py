"""`dupmae run CONFIG`: the domain-adaptation pipeline, cached stage by stage.

    dupmae run configs/scifact-quick.yaml [--output DIR] [--data-root DIR] [--set KEY=VALUE ...]

Every stage (see `dupmae.pipeline.stages`) works in `OUTPUT/stages/<name>-<hash12>/`, where the hash
covers the stage's own settings and the hashes of the stages it depends on. `stage.json` is written
last (atomically) when the stage has finished, so:
- a rerun skips every stage whose folder holds a `stage.json` with the same hash;
- an interrupted stage resumes in its folder (pre-training and fine-tuning from their last
  checkpoint, encoding at its first missing part);
- changing one setting changes the hashes of the stages it reaches, and only those run again
  (the old folders stay, so switching back is free).
`report.md`, `results.json` and the plots are rewritten at the end of every run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from dupmae.data.integrity import read_json_file

from dupmae.pipeline.config import ConfigError, PipelineConfig, describe, load_pipeline_config
from dupmae.pipeline.data import (
    DownloadError,
    MissingDataError,
    data_root,
    download_collection,
    find_collection,
    folder_fingerprint,
    resolve_model,
)
from dupmae.pipeline.transfer import run_transfer, transfer_collections
from dupmae.pipeline.stages import Context, Environment, Finished, PipelineError, Plan, Stage, hashed, plan

CACHE_FORMAT = 1  # bump when a stage's outputs change meaning: every hash changes, nothing stale is reused
MARKER = "stage.json"


def stage_key(stage: Stage, inputs: dict[str, Finished]) -> str:
    """sha256 of the stage's hashed settings and the keys of the stages it depends on."""
    payload = {"format": CACHE_FORMAT, "stage": stage.name, "settings": hashed(stage.settings),
               "inputs": {name: inputs[name].key for name in stage.deps}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_marker(folder: Path) -> dict | None:
    """The stage's record, None when it has not finished; a damaged record is a `DamagedFileError`."""
    if not (folder / MARKER).is_file():
        return None
    return read_json_file(folder / MARKER, "stage record",
                          f"remove {folder} to run that stage again (it is written last, by a rename: something "
                          "else changed it)")


def write_marker(folder: Path, record: dict) -> None:
    """Write `stage.json` via a temporary file and a rename: it exists complete or not at all."""
    temporary = folder / f".{MARKER}.tmp"
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, folder / MARKER)


def format_duration(seconds: float) -> str:
    """'8.2s', '3m12s', '1h04m'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@contextlib.contextmanager
def exclusive(output: Path):
    """One `dupmae run` per output folder at a time (two would write the same stage folders)."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        yield
        return
    with open(output / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PipelineError(f"another `dupmae run` is working in {output}") from None
        yield


def prepare_environment(config: PipelineConfig, root: str | Path | None = None, download: bool = False) -> Environment:
    """Find (or download) the collection and the model; fingerprint both for the stage hashes."""
    from dupmae.data.formats import file_sha256

    root = data_root(root)
    try:
        collection = find_collection(config.collection, config.collection_path, root,
                                     config.train_split, config.test_split)
    except MissingDataError:
        if not download or config.collection_path:
            raise
        print(f"downloading {config.collection} into {root} ...", file=sys.stderr, flush=True)
        download_collection(config.collection, root)
        collection = find_collection(config.collection, None, root, config.train_split, config.test_split)
    model_path, label = resolve_model(config.model)
    files = {path.relative_to(collection.folder).as_posix(): file_sha256(str(path))
             for path in (collection.corpus, collection.queries, collection.train_qrels, collection.test_qrels)}
    return Environment(config, collection, model_path, label, folder_fingerprint(model_path), files)


def run_pipeline(config: PipelineConfig, output: str | Path, root: str | Path | None = None, download: bool = False,
                 dry_run: bool = False, stream: TextIO | None = None, config_file: str | None = None) -> dict | None:
    """Run (or with `dry_run`, list) every stage; returns the results written to results.json."""
    from dupmae.pipeline.report import write_outputs

    stream = stream or sys.stderr
    output = Path(output).absolute()
    env = prepare_environment(config, root, download)
    transfer_collections(config, data_root(root))  # a missing transfer collection fails now, not after hours
    the_plan: Plan = plan(env)
    output.mkdir(parents=True, exist_ok=True)
    total = len(the_plan.stages) + 1  # + the report

    def say(text: str) -> None:
        print(text, file=stream, flush=True)

    started = time.monotonic()
    finished: dict[str, Finished] = {}
    with exclusive(output):
        for number, stage in enumerate(the_plan.stages, start=1):
            inputs = {name: finished[name] for name in stage.deps}
            key = stage_key(stage, inputs)
            folder = output / "stages" / f"{stage.name}-{key[:12]}"
            tag = f"[{number}/{total}] {stage.title}"
            marker = read_marker(folder)
            if marker and marker.get("hash") == key:
                finished[stage.name] = Finished(stage.name, key, folder, marker["outputs"], marker["seconds"], "cached")
                say(f"{tag} ... cached (took {format_duration(marker['seconds'])} when it ran)")
                continue
            if dry_run:
                finished[stage.name] = Finished(stage.name, key, folder, {}, 0.0, "pending")
                say(f"{tag} ... would {'resume' if folder.is_dir() else 'run'} in {folder.relative_to(output)}")
                continue
            resuming = folder.is_dir()
            folder.mkdir(parents=True, exist_ok=True)
            say(f"{tag} ...{' resuming' if resuming else ''} (elapsed {format_duration(time.monotonic() - started)})")
            stage_started, wall_started = time.monotonic(), datetime.now(timezone.utc)
            try:
                outputs = stage.action(Context(folder, inputs, env, resuming))
            except BaseException:
                say(f"{tag} ... failed after {format_duration(time.monotonic() - stage_started)} "
                    f"(its folder {folder} is kept: the same command resumes it)")
                raise
            seconds = time.monotonic() - stage_started
            status = "resumed" if resuming else "ran"
            write_marker(folder, {
                "stage": stage.name, "title": stage.title, "hash": key, "settings": stage.settings,
                "inputs": {name: {"hash": item.key, "folder": item.folder.name} for name, item in inputs.items()},
                "outputs": outputs, "seconds": seconds, "status": status,
                "started": wall_started.isoformat(timespec="seconds"),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            })
            finished[stage.name] = Finished(stage.name, key, folder, outputs, seconds, status)
            say(f"{tag} ... done in {format_duration(seconds)}")
        if dry_run:
            if config.transfer:
                say(f"transfer: {len(config.transfer)} collection(s), cached per system and collection in "
                    f"{output / 'transfer'}")
            return None
        transfer = None
        if config.transfer:
            say(f"transfer: zero-shot on {len(config.transfer)} other collection(s) ... "
                f"(elapsed {format_duration(time.monotonic() - started)})")
            transfer_started = time.monotonic()
            transfer = run_transfer(env, the_plan, finished, output, data_root(root), stream)
            say(f"transfer: done in {format_duration(time.monotonic() - transfer_started)}: {output / 'transfer'}")
        say(f"[{total}/{total}] report ...")
        results = write_outputs(output, env, the_plan, finished, started, config_file, transfer=transfer)
        say(f"[{total}/{total}] report ... done: {output / 'report.md'} "
            f"(this run took {format_duration(time.monotonic() - started)})")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dupmae run",
        description="The domain-adaptation pipeline on a BEIR collection: BM25, the starting model zero-shot and "
                    "fine-tuned, DupMAE continued pre-training + the same fine-tuning; report.md + results.json. "
                    "Stages are cached by config hash; rerunning resumes. See docs/pipeline.md.")
    parser.add_argument("config", nargs="?", help="YAML/JSON pipeline config (e.g. configs/scifact-quick.yaml)")
    parser.add_argument("--output", help="output folder (default: runs/<config file name>)")
    parser.add_argument("--data-root", help="folder holding collections by name (default: $DUPMAE_DATA, else "
                                            "../shared/data relative to the current directory)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set finetune.learning_rate=3e-5 --set representations=[cls,dupmae]")
    parser.add_argument("--download", action="store_true",
                        help="download a missing public BEIR collection (md5-checked) into the data root")
    parser.add_argument("--dry-run", action="store_true", help="list the stages, cached or to run, and stop")
    parser.add_argument("--describe", action="store_true", help="print every setting with its default and help")
    return parser


def main(argv: list[str]) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.describe:
        print(describe())
        return 0
    if not arguments.config:
        print("dupmae run: error: give a config file (e.g. configs/scifact-quick.yaml); --describe lists the settings",
              file=sys.stderr)
        return 2
    output = arguments.output or os.path.join("runs", Path(arguments.config).stem)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = load_pipeline_config(arguments.config, arguments.overrides)
        results = run_pipeline(config, output, arguments.data_root, arguments.download, arguments.dry_run,
                               config_file=arguments.config)
    except (ConfigError, MissingDataError, DownloadError, FileNotFoundError, FileExistsError, ValueError,
            PipelineError) as error:
        print(f"dupmae run: error: {error}", file=sys.stderr)
        return 2
    if results is not None:
        print(Path(output) / "report.md")
    return 0
