"""`dupmae run`: the whole pipeline on a tiny BEIR collection with a tiny BERT, its cache, report,
significance tests, the missing-data message and the md5-checked download (offline: file:// URLs)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from dupmae.cli import main as cli
from dupmae.pipeline.config import ConfigError, PipelineConfig, load_pipeline_config
from dupmae.pipeline.data import (
    PUBLIC_COLLECTIONS,
    DownloadError,
    MissingDataError,
    download_collection,
    find_collection,
    unpack_collection,
)
from dupmae.pipeline.run import run_pipeline
from dupmae.evaluation.significance import paired_t_test, paired_test, permutation_test
from test_finetune import tiny_encoder_dir
from tiny import WORDS, free_port

ALL_STAGES = ["data", "bm25", "zero-shot", "eval-zero-shot", "mine", "finetune-cls", "eval-finetune-cls",
              "prepare", "pretrain", "dupmae-finetune-cls", "eval-dupmae-finetune-cls",
              "hybrid-zero-shot", "hybrid-ft-cls", "hybrid-dupmae-ft-cls"]
SYSTEMS = ["bm25", "zero-shot", "ft-cls", "dupmae-ft-cls", "zero-shot+bm25", "ft-cls+bm25", "dupmae-ft-cls+bm25"]


def write_collection(folder: Path, documents: int = 40) -> Path:
    """BEIR folder: query i is the first words of document i; train = q0..q19, test = q20..q27."""
    rng = np.random.default_rng(3)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    docs = {f"d{i}": " ".join(rng.choice(WORDS, size=14)) for i in range(documents)}
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in docs.items()))
    queries = {f"q{i}": " ".join(docs[f"d{i}"].split()[:4]) for i in range(28)}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    header = "query-id\tcorpus-id\tscore\n"
    (folder / "qrels" / "train.tsv").write_text(header + "".join(f"q{i}\td{i}\t1\n" for i in range(20)))
    (folder / "qrels" / "test.tsv").write_text(header + "".join(f"q{i}\td{i}\t1\n" for i in range(20, 28)))
    return folder


def tiny_settings(model: str) -> dict:
    quiet = {"report_to": "none", "disable_tqdm": True, "logging_steps": 1}
    return {
        "collection": "tiny", "model": model, "top_k": 20, "dev_fraction": 0.25, "keep_checkpoints": True,
        "zero_shot": {"query_max_length": 16, "passage_max_length": 32},
        "prepare": {"max_length": 32, "min_tokens": 4, "num_proc": 1},
        "pretrain": {"max_steps": 3, "per_device_train_batch_size": 4, "save_steps": 2, "learning_rate": 1.0e-3,
                     **quiet},
        "finetune": {"max_steps": 2, "per_device_train_batch_size": 4, "group_size": 2, "save_strategy": "steps",
                     "save_steps": 1, "learning_rate": 1.0e-3, "query_max_length": 16, "passage_max_length": 32,
                     **quiet},
        "encode": {"batch_size": 16, "part_size": 16},
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory, wordpiece_dir):
    root = tmp_path_factory.mktemp("pipeline")
    write_collection(root / "data" / "tiny")
    model = tiny_encoder_dir(root / "model", wordpiece_dir)
    config_file = root / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_settings(model)))
    stream = io.StringIO()
    results = run_pipeline(load_pipeline_config(config_file), root / "out", root / "data", stream=stream,
                           config_file=str(config_file))
    return {"root": root, "config": config_file, "output": root / "out", "results": results,
            "progress": stream.getvalue()}


def rerun(setup, *overrides: str) -> tuple[dict, str]:
    stream = io.StringIO()
    config = load_pipeline_config(setup["config"], list(overrides))
    results = run_pipeline(config, setup["output"], setup["root"] / "data", stream=stream)
    return results, stream.getvalue()


def test_end_to_end_every_stage_runs_and_writes_its_marker(setup):
    results, output = setup["results"], setup["output"]
    assert results["timings"]["stages_run"] == ALL_STAGES
    assert list(results["systems"]) == SYSTEMS
    for system in results["systems"].values():
        for split in ("test", "dev"):
            assert set(system[split]) == {"ndcg@10", "mrr@10", "recall@100"}
            assert all(0.0 <= value <= 1.0 for value in system[split].values())
    assert results["collection"]["test_queries"] == 8 and results["collection"]["dev_queries"] == 5
    assert results["best_baseline"]["test"] in ("bm25", "zero-shot", "ft-cls", "zero-shot+bm25", "ft-cls+bm25")
    # BM25 finds these lexical matches: a sanity check that runs and qrels line up
    assert results["systems"]["bm25"]["test"]["recall@100"] == 1.0
    folders = sorted(p.name for p in (output / "stages").iterdir())
    assert len(folders) == len(ALL_STAGES)
    for folder in folders:
        assert re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{12}", folder)
        marker = json.loads((output / "stages" / folder / "stage.json").read_text())
        assert marker["hash"].startswith(folder[-12:]) and marker["status"] == "ran"
    for name in ("report.md", "results.json", "config.yaml", "metrics.png", "loss_curves.png"):
        assert (output / name).is_file(), name
    assert results["pretraining"]["global_step"] == 3
    assert set(results["pretraining"]["loss_terms_first_last"]) >= {"loss_encoder_mlm", "loss_decoder", "loss_bow"}
    # the fine-tuning dev split is the pipeline's dev split
    finetune = next((output / "stages").glob("finetune-cls-*"))
    data = next((output / "stages").glob("data-*"))
    assert (finetune / "model" / "dev_qrels.tsv").read_text() == (data / "dev_qrels.tsv").read_text()


def test_progress_lines_name_stage_count_and_time(setup):
    lines = setup["progress"].splitlines()
    total = len(ALL_STAGES) + 1
    done = [line for line in lines if " ... done in " in line]
    assert len(done) == total - 1
    assert re.fullmatch(rf"\[1/{total}\] collection: validate, carve the dev split \.\.\. done in \d+\.\ds", done[0])
    assert lines[-1].startswith(f"[{total}/{total}] report ... done: ")


def test_second_run_runs_no_stage(setup):
    results, progress = rerun(setup)
    assert results["timings"]["stages_run"] == []
    assert progress.count("... cached (took ") == len(ALL_STAGES)
    assert results["systems"] == setup["results"]["systems"]


def test_changing_a_finetuning_setting_reruns_only_finetuning_and_what_follows(setup):
    results, _ = rerun(setup, "finetune.learning_rate=5e-4", "keep_checkpoints=false")
    assert results["timings"]["stages_run"] == ["finetune-cls", "eval-finetune-cls", "dupmae-finetune-cls",
                                                "eval-dupmae-finetune-cls", "hybrid-ft-cls", "hybrid-dupmae-ft-cls"]
    assert results["systems"]["bm25"] == setup["results"]["systems"]["bm25"]
    stages = setup["output"] / "stages"
    assert len(list(stages.glob("finetune-cls-*"))) == 2  # the old folder stays: switching back is free
    for folder in [*stages.glob("finetune-*"), *stages.glob("dupmae-finetune-*")]:
        marker = json.loads((folder / "stage.json").read_text())
        if marker["settings"]["finetune"]["learning_rate"] == 5e-4:
            assert not list((folder / "model").glob("checkpoint-*"))  # dropped after success
    # a setting that only changes logging changes no hash
    results, _ = rerun(setup, "finetune.learning_rate=5e-4", "finetune.logging_steps=7")
    assert results["timings"]["stages_run"] == []
    # pre-training settings reach pre-training and what follows it only
    results, _ = rerun(setup, "pretrain.max_steps=2")
    assert results["timings"]["stages_run"] == ["pretrain", "dupmae-finetune-cls", "eval-dupmae-finetune-cls",
                                                "hybrid-dupmae-ft-cls"]
    # fusion settings reach the hybrids only
    results, _ = rerun(setup, "hybrid.method=rrf")
    assert results["timings"]["stages_run"] == ["hybrid-zero-shot", "hybrid-ft-cls", "hybrid-dupmae-ft-cls"]
    results, _ = rerun(setup, "hybrid.weight=0.5")
    assert results["timings"]["stages_run"] == ["hybrid-zero-shot", "hybrid-ft-cls", "hybrid-dupmae-ft-cls"]
    assert results["systems"]["ft-cls+bm25"]["fusion"] == {"weight": 0.5, "chosen_on": "config", "method": "minmax",
                                                           "dev_by_weight": {}}
    rerun(setup)  # leave the default report behind


def test_an_interrupted_stage_resumes_from_its_checkpoint(setup):
    stages = setup["output"] / "stages"
    pretrain = next(f for f in stages.glob("pretrain-*")
                    if json.loads((f / "stage.json").read_text())["settings"]["pretrain"]["max_steps"] == 3)
    log = pretrain / "train" / "train_log.jsonl"
    first_log = log.read_text()
    # 1. died after training (while exporting): training is not repeated
    (pretrain / "stage.json").unlink()
    results, progress = rerun(setup)
    assert results["timings"]["stages_run"] == ["pretrain"]  # its hash did not change: downstream stays cached
    assert "DupMAE: continued pre-training" in progress and " resuming " in progress
    assert log.read_text() == first_log
    # 2. died during training, after checkpoint-2 of 3 (keep_checkpoints: true kept them)
    (pretrain / "stage.json").unlink()
    (pretrain / "pretrain.done.json").unlink()
    shutil.rmtree(pretrain / "train" / "checkpoint-3")
    results, _ = rerun(setup)
    assert results["timings"]["stages_run"] == ["pretrain"]
    marker = json.loads((pretrain / "stage.json").read_text())
    assert marker["status"] == "resumed" and marker["outputs"]["resumed"] is True and marker["outputs"]["global_step"] == 3
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if "loss_encoder_mlm" in line]
    assert steps == [1, 2, 3]  # the log reads as one run: step 3 logged once, after the resumed step
    assert (pretrain / "train" / "checkpoint-3").is_dir()


def test_report_table_holds_the_numbers_of_results_json(setup):
    results = json.loads((setup["output"] / "results.json").read_text())
    report = (setup["output"] / "report.md").read_text()
    for split, heading in (("test", "## Test"), ("dev", "## Dev")):
        section = report.split(heading, 1)[1]
        rows = [line for line in section.splitlines() if line.startswith("| ")][: 1 + len(results["systems"])]
        assert rows[0].startswith("| system | nDCG@10 | Δ | MRR@10 | Δ | Recall@100 | Δ | p (nDCG@10) |")
        best = results["best_baseline"][split]
        for row, (system_id, system) in zip(rows[1:], results["systems"].items()):
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            assert cells[0].startswith(system["label"])
            assert ("(best baseline)" in cells[0]) == (system_id == best)
            comparison = results["comparisons"][split].get(system_id)
            for index, metric in enumerate(("ndcg@10", "mrr@10", "recall@100")):
                assert cells[1 + 2 * index] == f"{system[split][metric]:.4f}"
                expected = f"{comparison['deltas'][metric]:+.4f}" if comparison else "—"
                assert cells[2 + 2 * index] == expected
                if comparison:
                    assert comparison["deltas"][metric] == pytest.approx(
                        system[split][metric] - results["systems"][best][split][metric])
            if comparison:
                p = comparison["p_value"]
                assert cells[7].split()[0] == ("<0.001" if p < 0.001 else f"{p:.3f}")
    assert "```yaml" in report and "significance: auto" in report
    assert "![DupMAE pre-training loss terms](loss_curves.png)" in report


def test_report_significance_is_recomputable_from_per_query_json(setup):
    results = json.loads((setup["output"] / "results.json").read_text())
    per_query = json.loads((setup["output"] / "per_query.json").read_text())
    best = results["best_baseline"]["test"]
    comparison = results["comparisons"]["test"]["dupmae-ft-cls"]

    def values(system_id):
        return [per_query[system_id]["test"][q]["ndcg@10"] for q in sorted(per_query[system_id]["test"])]

    expected = paired_test(values("dupmae-ft-cls"), values(best))
    assert comparison["p_value"] == pytest.approx(expected.p_value) and comparison["n"] == 8
    assert np.mean(values("bm25")) == pytest.approx(results["systems"]["bm25"]["test"]["ndcg@10"])


def test_changing_the_metrics_reruns_no_stage(setup):
    results, _ = rerun(setup, "metrics=[ndcg@10,recall@5]")
    assert results["timings"]["stages_run"] == [] and set(results["systems"]["bm25"]["test"]) == {"ndcg@10", "recall@5"}
    rerun(setup)  # leave the default report behind


def test_hybrids_fuse_each_neural_run_with_bm25_at_the_dev_chosen_weight(setup):
    """A hybrid's runs are `fuse` of its two systems' runs at the weight `choose_weight` picks on dev,
    cut to top_k; the DupMAE hybrid is compared with the plain fine-tuned hybrid."""
    from dupmae.data.beir import load_qrels
    from dupmae.retrieval.fusion import choose_weight, fuse
    from dupmae.retrieval.trec import ranked, read_run

    results, stages = setup["results"], setup["output"] / "stages"
    runs = lambda system, split: read_run(str(stages / results["systems"][system]["stage"] / f"{split}.trec"))
    dev_qrels = load_qrels(str(next(stages.glob("data-*")) / "dev_qrels.tsv"))
    for system in ("zero-shot", "ft-cls", "dupmae-ft-cls"):
        weight, by_weight = choose_weight(runs(system, "dev"), runs("bm25", "dev"), dev_qrels, depth=20)
        fusion = results["systems"][f"{system}+bm25"]["fusion"]
        assert fusion == {"weight": weight, "chosen_on": "dev", "method": "minmax",
                          "dev_by_weight": {str(w): v for w, v in by_weight.items()}}
        assert results["systems"][f"{system}+bm25"]["dev"]["ndcg@10"] == pytest.approx(by_weight[weight])
        for split in ("test", "dev"):
            expected = fuse(runs(system, split), runs("bm25", split), weight, depth=20)
            written = runs(f"{system}+bm25", split)
            assert written.keys() == expected.keys()
            for query_id, hits in written.items():
                top = ranked(expected[query_id])[:20]
                assert hits == pytest.approx(dict(top))
    effect = results["dupmae_vs_same_finetuning"]["test"]
    assert effect["dupmae-ft-cls+bm25"]["against"] == "ft-cls+bm25" and effect["dupmae-ft-cls"]["against"] == "ft-cls"
    report = (setup["output"] / "report.md").read_text()
    assert "## Hybrids" in report
    assert f"| model fine-tuned (cls) + BM25 | minmax | {results['systems']['ft-cls+bm25']['fusion']['weight']:.2f} | dev |" in report


def test_hybrid_weight_needs_a_dev_split_or_a_setting(setup):
    with pytest.raises(ConfigError, match="hybrid.weight"):
        load_pipeline_config(setup["config"], ["dev_fraction=0"])
    assert load_pipeline_config(setup["config"], ["dev_fraction=0", "hybrid.weight=0.6"]).hybrid.weight == 0.6
    assert not load_pipeline_config(setup["config"], ["dev_fraction=0", "systems=[finetune,dupmae]"]).hybrids_wanted()
    with pytest.raises(ConfigError, match="hybrid.weight must be in"):
        load_pipeline_config(setup["config"], ["hybrid.weight=1.5"])


def test_stage_keys_ignore_logging_and_allocator_settings_only():
    """Settings that cannot change a stage's outputs (logging, `keep_freed_memory`) leave its key
    alone, so switching them reuses the cache; a training setting changes it."""
    from dupmae.pipeline.run import stage_key
    from dupmae.pipeline.stages import Stage

    def key(pretrain: dict) -> str:
        return stage_key(Stage("pretrain", "", {"pretrain": pretrain, "seed": 1}, (), None), {})

    base = key({"learning_rate": 1e-5})
    assert key({"learning_rate": 1e-5, "keep_freed_memory": False, "logging_steps": 5}) == base
    assert key({"learning_rate": 1e-4}) != base
    assert key({"learning_rate": 1e-5, "fast_dropout": False}) != base  # other dropout masks: other weights


def test_a_subset_of_systems_without_dev_split(setup, tmp_path):
    config = load_pipeline_config(setup["config"], ["systems=[bm25]", "dev_fraction=0"])
    results = run_pipeline(config, tmp_path / "out", setup["root"] / "data", stream=io.StringIO())
    assert results["timings"]["stages_run"] == ["data", "bm25"] and results["splits"] == ["test"]
    assert results["best_baseline"] == {"test": "bm25"} and results["comparisons"] == {"test": {}}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| BM25 (best baseline) | 1.0000 | — |" in report and "## Dev" not in report


def test_dry_run_lists_stages_per_representation(setup, capsys):
    assert cli(["run", str(setup["config"]), "--output", str(setup["output"]), "--data-root",
                str(setup["root"] / "data"), "--dry-run", "--set", "representations=[cls,dupmae]"]) == 0
    err = capsys.readouterr().err
    assert "fine-tune model (dupmae representation) ... would run in stages/finetune-dupmae-" in err
    assert "fine-tune the DupMAE export (dupmae representation) ... would run in stages/dupmae-finetune-dupmae-" in err
    # finetune-dupmae, its eval, and the same from the DupMAE export; the two hybrids of those
    assert err.count("would run") == 6
    assert err.count("... cached") == len(ALL_STAGES)  # the cls stages are all there


# -- significance ------------------------------------------------------------------------------------

A, B = [0.5, 0.7, 0.9, 0.4], [0.3, 0.6, 0.6, 0.5]  # differences 0.2, 0.1, 0.3, -0.1


def test_paired_t_test_against_a_hand_computed_value():
    pytest.importorskip("scipy")
    # mean 0.125; sample variance ((.075² + .025² + .175² + .225²) / 3) = 0.0875 / 3; t = mean / (sd / 2)
    t = 0.125 / (math.sqrt(0.0875 / 3) / 2)
    # Student t with 3 degrees of freedom in closed form: p = 1 - (2/π)(θ + sin θ cos θ), θ = atan(t / √3)
    theta = math.atan(t / math.sqrt(3))
    p = 1 - (2 / math.pi) * (theta + math.sin(theta) * math.cos(theta))
    result = paired_t_test(A, B)
    assert result.statistic == pytest.approx(t, rel=1e-9) and result.statistic == pytest.approx(1.46385, abs=1e-5)
    assert result.p_value == pytest.approx(p, rel=1e-9) and result.p_value == pytest.approx(0.23944, abs=1e-5)
    assert paired_t_test([0.1, 0.2], [0.1, 0.2]).p_value == 1.0  # no difference at all


def test_permutation_test_against_hand_enumeration():
    # 16 sign flips of (.2, .1, .3, .1): |sum| >= 0.5 for all +, all -, flipping one 0.1 (2 ways) or its
    # negation (2 ways) -> 6 of 16
    result = permutation_test(A, B)
    assert result.p_value == pytest.approx(6 / 16) and result.n == 4 and result.mean_difference == pytest.approx(0.125)
    # sampled (n > 16): deterministic for a seed, close to the t-test on a clear difference
    rng = np.random.default_rng(1)
    a = rng.random(40)
    b = a - 0.05 + rng.normal(0, 0.2, 40)
    first, second = permutation_test(a, b, seed=3), permutation_test(a, b, seed=3)
    assert first == second and 0.0 < first.p_value < 0.01


def test_auto_falls_back_to_the_permutation_test_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    result = paired_test(A, B, "auto")
    assert result.method == "permutation" and result.p_value == pytest.approx(0.375)


# -- data: missing collection, download ------------------------------------------------------------


def test_missing_collection_says_which_files_go_where(tmp_path, capsys):
    with pytest.raises(MissingDataError) as caught:
        find_collection("scifact", None, tmp_path / "data")
    message = str(caught.value)
    folder = tmp_path / "data" / "scifact"
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        assert str(folder / name) in message
    assert "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip" in message
    assert "5f7d1de60b170fc8027bb7898e2efca1" in message and "--download" in message and "DUPMAE_DATA" in message
    # one file missing: the message names just that one
    write_collection(tmp_path / "data" / "mine")
    (tmp_path / "data" / "mine" / "qrels" / "test.tsv").unlink()
    with pytest.raises(MissingDataError, match=r"incomplete: missing qrels/test\.tsv\.") as caught:
        find_collection("mine", None, tmp_path / "data")
    assert "download" not in str(caught.value).split("\n")[-1] or "thakur" not in str(caught.value)
    # through the CLI: status 2 and the same message
    config = tmp_path / "c.yaml"
    config.write_text("collection: scifact\n")
    assert cli(["run", str(config), "--data-root", str(tmp_path / "empty"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "collection 'scifact' not found" in err and "qrels/train.tsv" in err and "md5" in err


def fake_zip(path: Path, name: str, members: dict[str, str]) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in members.items():
            archive.writestr(member, text)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_the_md5_before_unpacking(tmp_path):
    source = tmp_path / "src"
    write_collection(source / "tiny")
    members = {f"tiny/{p.relative_to(source / 'tiny').as_posix()}": p.read_text()
               for p in (source / "tiny").rglob("*") if p.is_file()}
    archive = tmp_path / "tiny.zip"
    md5 = fake_zip(archive, "tiny", members)
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="does not match the published"):
        download_collection("tiny", root, url=archive.as_uri(), md5="0" * 32)
    assert not (root / "tiny").exists() and not list(root.glob(".tiny*"))
    folder = download_collection("tiny", root, url=archive.as_uri(), md5=md5.upper())
    assert folder == root / "tiny" and find_collection("tiny", None, root).corpus.is_file()
    with pytest.raises(FileExistsError):
        unpack_collection(archive, root, "tiny")


def test_download_without_network_fails_clearly(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/scifact.zip"  # nobody listens: connection refused
    with pytest.raises(DownloadError, match="could not download .*Without network access"):
        download_collection("scifact", tmp_path, url=url, md5=PUBLIC_COLLECTIONS["scifact"].md5, timeout=5)
    with pytest.raises(DownloadError, match="no public download is known"):
        download_collection("my-own", tmp_path)


def test_unpack_refuses_entries_outside_the_data_root(tmp_path):
    archive = tmp_path / "evil.zip"
    fake_zip(archive, "tiny", {"tiny/corpus.jsonl": "{}", "../escape.txt": "x"})
    with pytest.raises(DownloadError, match="outside the data root"):
        unpack_collection(archive, tmp_path / "data", "tiny")
    assert not (tmp_path / "escape.txt").exists()


# -- config ------------------------------------------------------------------------------------------


def test_config_validation_and_overrides(tmp_path):
    config = load_pipeline_config(None, ["finetune.learning_rate=3e-5", "finetune.passage_max_length=128",
                                         "representations=[cls,dupmae]", "bm25.k1=1.2", "encode.bf16=true"])
    assert config.finetune == {"learning_rate": 3e-5}  # representation fields move into each representation
    assert config.representation["dupmae"]["passage_max_length"] == 128
    assert config.representation["dupmae"]["sparse_activation"] == "log1p_relu"
    assert config.representation["cls"]["dense_pooling"] == "mean" and config.bm25.k1 == 1.2 and config.encode.bf16
    assert config.zero_shot["normalize_dense"] is True
    assert PipelineConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()  # the resolved config reloads
    for bad, message in ((["colection=x"], "unknown setting"), (["bm25.k=1"], "bm25: unknown"),
                         (["pretrain.seed=1"], "set by the pipeline"), (["finetune.output_dir=x"], "set by the pipeline"),
                         (["pretrain.objective=bert"], "objective must be one of"), (["systems=[bm25,cat]"], "not among"),
                         (["dev_fraction=lots"], "must be a float"), (["metrics=[ndcg@x]"], "unknown metric"),
                         (["representation.cls.dense_pooling=max"], "dense_pooling")):
        with pytest.raises(ConfigError, match=message):
            load_pipeline_config(None, bad)


def test_shipped_configs_are_valid():
    configs = Path(__file__).resolve().parents[2] / "configs"
    quick = load_pipeline_config(configs / "scifact-quick.yaml")
    full = load_pipeline_config(configs / "scifact.yaml")
    assert quick.collection == full.collection == "scifact" and quick.model == "minilm"
    assert set(full.representations) == {"cls", "dupmae"} and full.systems[:4] == quick.systems
    assert {"finetune-r2", "dupmae-r2", "rerank", "finetune-distill", "dupmae-distill"} <= set(full.systems)
    # Both divide cosine scores by a temperature; the sparse weight over that temperature is what balances
    # the sparse term against the dense one, so it is the same in both (0.02, set for temperature 1).
    dense_sparse = load_pipeline_config(configs / "scifact-quick.yaml", ["representations=[cls,dupmae]"])
    for config in (dense_sparse, full):
        assert config.representation["dupmae"]["normalize_dense"] is config.representation["cls"]["normalize_dense"] is True
        assert config.representation["dupmae"]["sparse_weight"] / config.finetune["temperature"] == pytest.approx(0.02)
    assert full.transfer == quick.transfer != []


def test_transfer_evaluates_every_system_zero_shot_on_other_collections(setup):
    other = write_collection(setup["root"] / "elsewhere" / "other", documents=30)
    results, progress = rerun(setup, f"transfer=[{other}]")
    assert results["timings"]["stages_run"] == []  # the pipeline's own stages are all cached
    transfer = results["transfer"]
    assert transfer["collections"] == ["other"]
    assert set(transfer["systems"]) == {"BM25", "zero-shot", "ft-cls", "dupmae-ft-cls", "zero-shot + BM25",
                                        "ft-cls + BM25", "dupmae-ft-cls + BM25"}
    details = json.loads((setup["output"] / "transfer" / "results.json").read_text())
    for system_id in ("zero-shot", "ft-cls", "dupmae-ft-cls"):  # each hybrid keeps the weight chosen on dev
        chosen = results["systems"][f"{system_id}+bm25"]["fusion"]["weight"]
        assert details["systems"][f"{system_id} + BM25"]["runs"]["other"]["weight"] == chosen
    # Its numbers are `dupmae evaluate`'s on its runs.
    work = setup["output"] / "transfer" / "collections" / "other"
    ft_stage = next(item["folder"] for item in results["timings"]["stages"] if item["stage"] == "finetune-cls")
    run = work / f"ft-cls.{ft_stage.rsplit('-', 1)[-1]}" / "run.trec"
    summary = setup["root"] / "ft-transfer.json"
    assert cli(["evaluate", "--run", str(run), "--qrels", str(other / "qrels" / "test.tsv"), "--output", str(summary),
                "--metrics", "ndcg@10,mrr@10,recall@100"]) == 0
    assert transfer["systems"]["ft-cls"]["collections"]["other"] == json.loads(summary.read_text())["metrics"]
    report = (setup["output"] / "report.md").read_text()
    assert "## Zero-shot transfer" in report and "(transfer/report.md)" in report
    test_value = results["systems"]["ft-cls"]["test"]["ndcg@10"]
    section = report.split("## Zero-shot transfer")[1]
    row = next(line for line in section.splitlines() if line.startswith(f"| {results['systems']['ft-cls']['label']} |"))
    assert row.endswith(f"| {transfer['systems']['ft-cls']['average']['ndcg@10']:.4f} | {test_value:.4f} |")
    # A second run re-evaluates nothing.
    _, progress = rerun(setup, f"transfer=[{other}]")
    assert "other: ft-cls ... cached" in progress and "other: BM25 ... cached" in progress
    # Another seed in the same output adds its own work beside it: going back finds the first seed's cached.
    _, progress = rerun(setup, f"transfer=[{other}]", "systems=[bm25,finetune]", "seed=7")
    assert "other: ft-cls ... done" in progress and "other: BM25 ... cached" in progress
    assert len([folder for folder in work.glob("ft-cls.*") if "+" not in folder.name]) == 2 and run.is_file()
    _, progress = rerun(setup, f"transfer=[{other}]", "systems=[bm25,finetune]")
    assert "other: ft-cls ... cached" in progress


def test_a_missing_transfer_collection_fails_before_any_stage(setup, tmp_path):
    stream = io.StringIO()
    config = load_pipeline_config(setup["config"], [f"transfer=[{tmp_path / 'nowhere'}]"])
    with pytest.raises(MissingDataError, match="nowhere"):
        run_pipeline(config, tmp_path / "out", setup["root"] / "data", stream=stream)
    assert stream.getvalue() == ""
