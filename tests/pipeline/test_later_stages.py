"""`dupmae run` with fine-tuning stages 2 and 3 and the cross-encoder teacher, on the tiny collection
of test_run.py: the plan, the hashes, the report's comparisons, the cache."""

from __future__ import annotations

import io
import json

import pytest
import torch
import yaml

from dupmae.modeling.representation import DupMAEEncoder
from dupmae.pipeline.config import ConfigError, load_pipeline_config
from dupmae.pipeline.run import prepare_environment, run_pipeline, stage_key
from dupmae.pipeline.stages import plan
from dupmae.training.interpolate import interpolate
from test_finetune import tiny_encoder_dir
from test_run import tiny_settings, write_collection

LATER = ["bm25", "finetune", "finetune-r2", "rerank", "finetune-distill"]
STAGES = ["data", "bm25", "mine", "teacher", "finetune-cls", "eval-finetune-cls", "mine-r2-finetune-cls",
          "finetune-r2-cls", "eval-finetune-r2-cls", "teacher-scores-mine-r2-finetune-cls", "finetune-distill-cls",
          "eval-finetune-distill-cls", "rerank", "hybrid-ft-cls", "hybrid-ft-r2-cls", "hybrid-ft-distill-cls"]


@pytest.fixture(scope="module")
def later(tmp_path_factory, wordpiece_dir):
    root = tmp_path_factory.mktemp("later")
    write_collection(root / "data" / "tiny")
    settings = tiny_settings(tiny_encoder_dir(root / "model", wordpiece_dir))
    settings.update(systems=LATER, round2={"depth": 10}, rerank={"top_k": 5}, distill={"depth": 3, "weight": 2.0},
                    teacher={"max_length": 32, "negatives_per_query": 2, "per_device_train_batch_size": 8,
                             "num_train_epochs": 1, "bf16": False, "learning_rate": 1.0e-3})
    config_file = root / "later.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    results = run_pipeline(load_pipeline_config(config_file), root / "out", root / "data", stream=io.StringIO())
    return {"root": root, "config": config_file, "results": results, "output": root / "out"}


def stages_of(later, *overrides: str) -> dict[str, str]:
    """{stage name: key} of the plan for the config with `overrides` (no stage runs)."""
    env = prepare_environment(load_pipeline_config(later["config"], list(overrides)), later["root"] / "data")
    keys = {}
    for stage in plan(env).stages:
        keys[stage.name] = stage_key(stage, {name: _Key(keys[name]) for name in stage.deps})
    return keys


class _Key:
    def __init__(self, key: str) -> None:
        self.key = key


def test_later_stages_run_and_are_reported(later):
    results, stages = later["results"], later["output"] / "stages"
    assert results["timings"]["stages_run"] == STAGES
    assert list(results["systems"]) == ["bm25", "ft-cls", "ft-r2-cls", "ft-distill-cls", "rerank", "ft-cls+bm25",
                                        "ft-r2-cls+bm25", "ft-distill-cls+bm25"]
    # round 2: negatives mined by the stage-1 model (positives removed), at most round2.depth of them
    mined = [json.loads(line) for line in (next(stages.glob("mine-r2-finetune-cls-*")) / "negatives.jsonl")
             .read_text().splitlines()]
    assert len(mined) == 20 and all(len(r["negatives"]) <= 10 and not set(r["negatives"]) & set(r["positives"])
                                    for r in mined)
    r2 = json.loads((next(stages.glob("finetune-r2-cls-*")) / "model" / "dupmae_finetune_config.json").read_text())
    assert r2["finetune"]["negatives"].endswith("negatives.jsonl") and "mine-r2-finetune-cls-" in r2["finetune"]["negatives"]
    assert r2["finetune"]["teacher_scores"] is None
    # round 3: the teacher's scores of the 15 training queries (5 dev queries held out), KL weight 2
    distill = next(stages.glob("finetune-distill-cls-*"))
    scores = [json.loads(line) for line in (next(stages.glob("teacher-scores-*")) / "teacher_scores.jsonl")
              .read_text().splitlines()]
    assert len(scores) == 15 and all(len(record["scores"]) == 1 + 3 for record in scores)
    log = [json.loads(line) for line in (distill / "model" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss_distill" in r] == [1, 2]
    assert json.loads((distill / "model" / "dupmae_finetune_config.json").read_text())["finetune"]["distill_weight"] == 2.0
    # the re-ranker: compared with the best baseline, never the best baseline itself
    for split in ("test", "dev"):
        assert results["best_baseline"][split] != "rerank"
        assert results["comparisons"][split]["rerank"]["against"] == results["best_baseline"][split]
    assert results["systems"]["rerank"]["kind"] == "reference"
    # each later round against the round before it, with a paired test
    effect = results["stage_vs_previous"]["test"]
    assert effect["ft-r2-cls"]["against"] == "ft-cls" and effect["ft-distill-cls"]["against"] == "ft-r2-cls"
    assert effect["ft-r2-cls+bm25"]["against"] == "ft-cls+bm25"
    assert effect["ft-r2-cls"]["deltas"]["ndcg@10"] == pytest.approx(
        results["systems"]["ft-r2-cls"]["test"]["ndcg@10"] - results["systems"]["ft-cls"]["test"]["ndcg@10"])
    report = (later["output"] / "report.md").read_text()
    assert "Each fine-tuning round vs the round before it" in report and "BM25 + rerank" in report


def test_a_rerun_is_cached_and_settings_reach_only_their_stages(later):
    results = run_pipeline(load_pipeline_config(later["config"]), later["output"], later["root"] / "data",
                           stream=io.StringIO())
    assert results["timings"]["stages_run"] == []
    base = stages_of(later)

    def changed(*overrides: str) -> list[str]:
        keys = stages_of(later, *overrides)
        return [name for name in keys if keys[name] != base.get(name)]

    assert changed("round2.depth=7") == ["mine-r2-finetune-cls", "finetune-r2-cls", "eval-finetune-r2-cls",
                                         "teacher-scores-mine-r2-finetune-cls", "finetune-distill-cls",
                                         "eval-finetune-distill-cls", "hybrid-ft-r2-cls", "hybrid-ft-distill-cls"]
    assert changed("distill.weight=0.5") == ["finetune-distill-cls", "eval-finetune-distill-cls", "hybrid-ft-distill-cls"]
    assert changed("distill.depth=2") == ["teacher-scores-mine-r2-finetune-cls", "finetune-distill-cls",
                                          "eval-finetune-distill-cls", "hybrid-ft-distill-cls"]
    assert changed("rerank.top_k=4") == ["rerank"]
    # WiSE-FT of the distilled model alone: round 1 (the miner) and round 2 keep their caches
    assert changed("distill.interpolate_with_start=0.5") == ["finetune-distill-cls", "eval-finetune-distill-cls",
                                                             "hybrid-ft-distill-cls"]
    assert changed("distill.interpolate_with_start=null") == []
    assert "teacher" in changed("teacher.learning_rate=3e-5") and "finetune-r2-cls" not in changed("teacher.learning_rate=3e-5")
    # distilling on BM25's negatives: one scoring stage of `mine`, no round-2 mining needed
    bm25 = stages_of(later, "distill.negatives=bm25", "systems=[bm25,finetune,finetune-distill]")
    assert "teacher-scores-mine" in bm25 and not any(name.startswith("mine-r2") for name in bm25)


def test_later_systems_need_their_stage_one(later):
    plan_names = list(stages_of(later, "systems=[bm25,finetune,dupmae,finetune-r2,dupmae-r2]"))
    assert {"mine-r2-dupmae-finetune-cls", "dupmae-finetune-r2-cls", "hybrid-dupmae-ft-r2-cls"} <= set(plan_names)
    assert "teacher" not in plan_names  # no teacher without rerank or distillation
    for systems, message in (("[bm25,finetune-r2]", "finetune-r2 needs finetune"),
                             ("[finetune,dupmae-distill]", "dupmae-distill needs dupmae"),
                             ("[finetune,rerank]", "rerank needs bm25")):
        with pytest.raises(ConfigError, match=message):
            load_pipeline_config(later["config"], [f"systems={systems}"])
    with pytest.raises(ConfigError, match="not among"):
        load_pipeline_config(later["config"], ["distill.negatives=random"])
    with pytest.raises(ConfigError, match="distill.interpolate_with_start must be in"):
        load_pipeline_config(later["config"], ["distill.interpolate_with_start=1.5"])


def test_distill_interpolation_mixes_the_distilled_model_with_the_start(later):
    """`distill.interpolate_with_start: 0.5` retrains the distilled stage alone, and its model is the
    plain distilled model's weights averaged with the start (the `dupmae interpolate` function)."""
    stages = later["output"] / "stages"
    plain = next(stages.glob("finetune-distill-cls-*")) / "model"
    results = run_pipeline(load_pipeline_config(later["config"], ["distill.interpolate_with_start=0.5"]),
                           later["output"], later["root"] / "data", stream=io.StringIO())
    assert results["timings"]["stages_run"] == ["finetune-distill-cls", "eval-finetune-distill-cls",
                                                "hybrid-ft-distill-cls"]
    mixed = next(folder for folder in stages.glob("finetune-distill-cls-*") if folder / "model" != plain) / "model"
    assert yaml.safe_load((mixed.parent / "finetune.yaml").read_text())["interpolate_with_start"] == 0.5
    assert "interpolate_with_start" not in yaml.safe_load((plain.parent / "finetune.yaml").read_text())
    expected = interpolate(later["root"] / "model", plain, 0.5).state_dict()
    weights = DupMAEEncoder.from_pretrained(mixed).state_dict()
    assert weights.keys() == expected.keys()
    for name, value in weights.items():
        assert torch.allclose(value, expected[name], atol=1e-6), name
    trained = DupMAEEncoder.from_pretrained(plain).state_dict()
    assert any(not torch.allclose(value, trained[name], atol=1e-6) for name, value in weights.items())
