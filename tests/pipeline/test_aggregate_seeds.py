import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "aggregate_seeds.py"


def test_mean_and_sample_std_over_seeds(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("aggregate_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = []
    for seed, value in enumerate([0.5, 0.7, 0.6]):
        path = tmp_path / f"r{seed}.json"
        systems = {"bm25": {"label": "BM25", "test": {"ndcg@10": 0.68}},
                   "dupmae": {"label": "DupMAE", "test": {"ndcg@10": value}}}
        if seed == 0:  # a seed-free system, run with the first seed only (recipe_seeds.sh SEED_FREE)
            systems["rerank"] = {"label": "BM25 + rerank", "test": {"ndcg@10": 0.65}}
        if seed > 0:  # a system the first run lacks (added for later seeds) is still a row
            systems["late"] = {"label": "late", "test": {"ndcg@10": 0.4 + seed / 10}}
        path.write_text(json.dumps({"metrics": ["ndcg@10"], "systems": systems}))
        paths.append(str(path))
    assert module.main(paths) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| BM25 | 0.6800 ± 0.0000 |"  # in every run: its spread over them, zero
    assert lines[3] == "| DupMAE | 0.6000 ± 0.1000 |"  # sample std of 0.5, 0.7, 0.6
    assert lines[4] == "| BM25 + rerank | 0.6500 |"  # one value: no spread to claim
    assert lines[5] == "| late | 0.5500 ± 0.0707 |"  # 0.5 and 0.6, from the second and third runs
    assert len(lines) == 6


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ablation_run(objective, seed, ft, dupmae, p, learning_rate=1e-4, epochs=1):
    return {"config": {"pretrain": {"objective": objective, "learning_rate": learning_rate},
                       "finetune": {"num_train_epochs": epochs}, "seed": seed}, "metrics": ["ndcg@10"],
            "systems": {"bm25": {"label": "BM25", "test": {"ndcg@10": 0.68}},
                        "ft-cls": {"label": "ft", "representation": "cls", "test": {"ndcg@10": ft}},
                        "dupmae-ft-cls": {"label": "x", "representation": "cls", "test": {"ndcg@10": dupmae}}},
            "dupmae_vs_same_finetuning": {"test": {"dupmae-ft-cls": {"p_value": p}}}}


def _write_runs(folder, runs) -> list[str]:
    paths = [folder / f"r{i}.json" for i in range(len(runs))]
    for path, run in zip(paths, runs):
        path.write_text(json.dumps(run))
    return [str(path) for path in paths]


def test_ablation_table_rows_per_objective_with_seeds(tmp_path, capsys):
    module = _load("ablation_table")
    runs = [_ablation_run("dupmae", 42, 0.60, 0.66, 0.01), _ablation_run("mlm", 42, 0.60, 0.62, 0.3),
            _ablation_run("dupmae", 1, 0.64, 0.70, 0.02)]
    assert module.main(_write_runs(tmp_path, runs)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| BM25 | — | 2 | 0.6800 ± 0.0000 |  |"
    assert lines[3] == "| none | cls | 2 | 0.6200 ± 0.0283 |  |"  # seeds 42 and 1, counted once each
    assert lines[4] == "| mlm | cls | 1 | 0.6200 | 0.300 |"
    assert lines[5] == "| dupmae | cls | 2 | 0.6800 ± 0.0283 |  |"


def test_ablation_table_names_varied_learning_rates_and_epochs(tmp_path, capsys):
    module = _load("ablation_table")
    runs = [_ablation_run("dupmae", 42, 0.60, 0.66, 0.01), _ablation_run("dupmae", 42, 0.60, 0.64, 0.2, 1e-5),
            _ablation_run("dupmae", 42, 0.70, 0.69, 0.5, epochs=4)]
    assert module.main(_write_runs(tmp_path, runs)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3:] == [  # "none" is named by its fine-tuning only: it has no pre-training learning rate
        "| none, fine-tuning epochs 1 | cls | 1 | 0.6000 |  |",
        "| none, fine-tuning epochs 4 | cls | 1 | 0.7000 |  |",
        "| dupmae, lr 0.0001, fine-tuning epochs 1 | cls | 1 | 0.6600 | 0.010 |",
        "| dupmae, lr 0.0001, fine-tuning epochs 4 | cls | 1 | 0.6900 | 0.500 |",
        "| dupmae, lr 1e-05, fine-tuning epochs 1 | cls | 1 | 0.6400 | 0.200 |",
    ]


def test_ablation_table_keeps_hybrids_apart(tmp_path, capsys):
    """`+bm25` systems get rows of their own, after the plain ones, never mixed into them."""
    module = _load("ablation_table")
    runs = []
    for seed, (ft, dupmae, ft_hybrid, dupmae_hybrid) in ((42, (0.60, 0.62, 0.70, 0.74)), (1, (0.62, 0.64, 0.72, 0.76))):
        run = _ablation_run("dupmae", seed, ft, dupmae, 0.5)
        run["systems"]["ft-cls+bm25"] = {"label": "ft + BM25", "representation": "cls", "test": {"ndcg@10": ft_hybrid}}
        run["systems"]["dupmae-ft-cls+bm25"] = {"label": "x + BM25", "representation": "cls",
                                                "test": {"ndcg@10": dupmae_hybrid}}
        runs.append(run)
    assert module.main(_write_runs(tmp_path, runs)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[3:] == ["| none | cls | 2 | 0.6100 ± 0.0141 |  |", "| dupmae | cls | 2 | 0.6300 ± 0.0141 |  |",
                         "| none + BM25 | cls | 2 | 0.7100 ± 0.0141 |  |",
                         "| dupmae + BM25 | cls | 2 | 0.7500 ± 0.0141 |  |"]


def test_seed_pooled_test_averages_each_query_over_seeds_before_testing(tmp_path, capsys):
    """Two seeds, two queries: A finds q1's document at rank 1 in both seeds and q2's only in seed 1;
    B finds q1's at rank 2 and q2's at rank 1 in both. Per-query means over the seeds, by hand."""
    import math

    from dupmae.evaluation.significance import paired_test
    from dupmae.retrieval.trec import write_run

    module = _load("seed_pooled_test")
    (tmp_path / "beir" / "qrels").mkdir(parents=True)
    (tmp_path / "beir" / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    runs = {1: {"A": {"q1": {"d1": 2.0, "x": 1.0}, "q2": {"d2": 2.0, "x": 1.0}},
                "B": {"q1": {"x": 2.0, "d1": 1.0}, "q2": {"d2": 2.0}}},
            2: {"A": {"q1": {"d1": 2.0}, "q2": {"x": 2.0}},
                "B": {"q1": {"x": 2.0, "d1": 1.0}, "q2": {"d2": 2.0}}}}
    paths = []
    for seed, systems in runs.items():
        out = tmp_path / f"out{seed}"
        for system, run in systems.items():
            (out / "stages" / f"{system}-stage").mkdir(parents=True)
            write_run(str(out / "stages" / f"{system}-stage" / "test.trec"), run, "t")
        results = {"config": {"seed": seed, "test_split": "test"}, "collection": {"folder": str(tmp_path / "beir")},
                   "systems": {s: {"stage": f"{s}-stage"} for s in systems}, "timings": {"stages": []}}
        (out / "results.json").write_text(json.dumps(results))
        paths.append(str(out / "results.json"))
    assert module.main([*paths, "--system", "A", "--against", "B"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    second = 1 / math.log2(3)  # nDCG@10 of the one relevant document at rank 2
    a, b = [1.0, 0.5], [second, 1.0]  # per query (q1, q2), mean over the two seeds
    expected = paired_test(a, b)
    assert f"{sum(a) / 2:.4f} vs {sum(b) / 2:.4f}" in last
    assert f"difference {expected.mean_difference:+.4f}" in last and f"p = {expected.p_value:.3f}" in last


def test_seed_pooled_test_reads_the_per_query_file_beside_the_results(tmp_path, capsys):
    """results-sN.json with per_query-sN.json beside it (scripts/gpu_recipe.py collects no runs): the
    per-query values come from that file, with no stage folder and no qrels on this machine."""
    from dupmae.evaluation.significance import paired_test

    module = _load("seed_pooled_test")
    values = {7: {"A": {"q1": 1.0, "q2": 0.2}, "B": {"q1": 0.5, "q2": 0.4}},
              8: {"A": {"q1": 0.6, "q2": 0.0}, "B": {"q1": 0.5, "q2": 0.2}}}
    paths = []
    for seed, systems in values.items():
        results = {"config": {"seed": seed, "test_split": "test"}, "collection": {"folder": "/elsewhere/beir"},
                   "systems": {s: {"stage": f"{s}-stage"} for s in systems}, "timings": {"stages": []}}
        (tmp_path / f"results-s{seed}.json").write_text(json.dumps(results))
        per_query = {s: {"test": {q: {"ndcg@10": v, "mrr@10": 0.0} for q, v in by_query.items()}}
                     for s, by_query in systems.items()}
        (tmp_path / f"per_query-s{seed}.json").write_text(json.dumps(per_query))
        paths.append(str(tmp_path / f"results-s{seed}.json"))
    assert module.main([*paths, "--system", "A", "--against", "B"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "seed 7: A 0.6000  B 0.4500  difference +0.1500"
    expected = paired_test([0.8, 0.1], [0.5, 0.3])  # per query, mean over the seeds
    assert f"0.4500 vs 0.4000, difference {expected.mean_difference:+.4f}" in lines[-1]
    assert f"p = {expected.p_value:.3f}" in lines[-1]
