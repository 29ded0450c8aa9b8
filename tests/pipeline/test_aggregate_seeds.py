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
        path.write_text(json.dumps({"metrics": ["ndcg@10"], "systems": {
            "bm25": {"label": "BM25", "test": {"ndcg@10": 0.68}},
            "dupmae": {"label": "DupMAE", "test": {"ndcg@10": value}}}}))
        paths.append(str(path))
    assert module.main(paths) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| BM25 | 0.6800 ± 0.0000 |"
    assert lines[3] == "| DupMAE | 0.6000 ± 0.1000 |"  # sample std of 0.5, 0.7, 0.6
