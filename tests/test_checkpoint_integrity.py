"""`--resume` takes the newest *complete* checkpoint: an unfinished or damaged newer one is named in a
warning, moved aside (never deleted) and skipped, and the run then ends bit-identical to an uninterrupted
one. Damaged files of our own are errors that name them."""

from __future__ import annotations

import logging

import pytest
import torch

from dupmae.data.integrity import DamagedFileError, read_json_file, verify_safetensors
from dupmae.training.pretrain import parse_arguments, pretrain
from dupmae.training.trainer import CHECKPOINT_MARKER, checkpoint_problem, checkpoint_to_resume
from test_training import base_flags, read_log, setup, weights  # noqa: F401 - the module fixture


def straight_and_checkpointed(setup, tmp_path, steps=4):  # noqa: F811
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    pretrain(*parse_arguments(base_flags(setup, straight, steps=steps)))  # saves checkpoint-2 and checkpoint-4
    pretrain(*parse_arguments(base_flags(setup, broken, steps=steps)))
    return straight, broken


def step_records(records):
    """The per-step training records without their timings (the final summary averages over the steps
    of the last process only, so a resumed run's differs by construction)."""
    return [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in records if "loss_bow" in r]


def assert_same_run(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert step_records(read_log(a)) == step_records(read_log(b)) and len(step_records(read_log(a))) == 4


def test_checkpoints_are_marked_complete_last(setup, tmp_path):  # noqa: F811
    output = tmp_path / "run"
    pretrain(*parse_arguments(base_flags(setup, output, steps=2)))
    marker = read_json_file(output / "checkpoint-2" / CHECKPOINT_MARKER)
    assert marker["global_step"] == 2
    assert {"model.safetensors", "trainer_state.json", "optimizer.pt", "scheduler.pt"} <= set(marker["files"])
    assert marker["files"]["model.safetensors"] == (output / "checkpoint-2" / "model.safetensors").stat().st_size
    assert checkpoint_problem(output / "checkpoint-2") is None


@pytest.mark.parametrize("damage", ["unfinished", "truncated-weights", "truncated-optimizer", "damaged-marker"])
def test_resume_skips_a_damaged_newest_checkpoint_and_ends_identical(setup, tmp_path, damage, caplog):  # noqa: F811
    straight, broken = straight_and_checkpointed(setup, tmp_path)
    newest = broken / "checkpoint-4"
    if damage == "unfinished":  # killed while the Trainer was writing it: no trainer state, no marker
        for path in newest.iterdir():
            if path.name not in ("model.safetensors",):
                path.unlink()
        (newest / "model.safetensors").rename(newest / "model.safetensors.tmp")
    elif damage == "truncated-weights":
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "truncated-optimizer":
        data = (newest / "optimizer.pt").read_bytes()
        (newest / "optimizer.pt").write_bytes(data[:100])
    else:
        (newest / CHECKPOINT_MARKER).write_text('{"global_step": 4, "fi')
    (broken / "model.safetensors").unlink()  # as if killed before the final save
    with caplog.at_level(logging.WARNING, logger="dupmae.training.trainer"):
        pretrain(*parse_arguments([*base_flags(setup, broken, steps=4), "--resume"]))
    assert "checkpoint-4 is not a complete checkpoint" in caplog.text and "resuming from checkpoint-2" in caplog.text
    assert (broken / "damaged" / "checkpoint-4").is_dir()  # moved aside, not deleted
    assert checkpoint_problem(broken / "checkpoint-4") is None  # written again
    assert_same_run(straight, broken)


def test_resume_with_no_complete_checkpoint_starts_again_from_step_0(setup, tmp_path, caplog):  # noqa: F811
    """Killed while writing the first checkpoint: `--resume` moves it aside and trains from the start."""
    straight, broken = straight_and_checkpointed(setup, tmp_path, steps=2)
    (broken / "checkpoint-2" / "trainer_state.json").write_text("{")
    (broken / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="dupmae.training.trainer"):
        pretrain(*parse_arguments([*base_flags(setup, broken, steps=2), "--resume"]))
    assert "trainer_state.json" in caplog.text and "training starts again from step 0" in caplog.text
    assert (broken / "damaged" / "checkpoint-2").is_dir()
    wa, wb = weights(straight), weights(broken)
    assert all(torch.equal(wa[name], wb[name]) for name in wa)
    assert step_records(read_log(straight)) == step_records(read_log(broken))


def test_a_log_line_cut_by_a_kill_is_dropped_on_resume(setup, tmp_path):  # noqa: F811
    straight, broken = straight_and_checkpointed(setup, tmp_path)
    (broken / "model.safetensors").unlink()
    with open(broken / "train_log.jsonl", "a") as handle:
        handle.write('{"step": 5, "loss_enc')  # half a record
    for name in ("checkpoint-4",):
        for path in (broken / name).iterdir():
            path.unlink()
        (broken / name).rmdir()
    pretrain(*parse_arguments([*base_flags(setup, broken, steps=4), "--resume"]))
    assert_same_run(straight, broken)


def test_damaged_files_are_errors_that_name_them(tmp_path):
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "cut.json").write_text('["d1", "d')
    with pytest.raises(DamagedFileError, match=r"empty.json: index manifest is empty"):
        read_json_file(tmp_path / "empty.json", "index manifest")
    with pytest.raises(DamagedFileError, match=r"cut.json: id list is damaged or incomplete JSON .*; rerun it"):
        read_json_file(tmp_path / "cut.json", "id list", "rerun it")
    import safetensors.numpy
    import numpy as np

    safetensors.numpy.save_file({"x": np.zeros((64, 64), np.float32)}, str(tmp_path / "w.safetensors"))
    assert verify_safetensors(tmp_path / "w.safetensors") == ["x"]
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match=r"w.safetensors: weights file is damaged or incomplete"):
        verify_safetensors(tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError):
        read_json_file(tmp_path / "missing.json")


def test_resume_after_every_checkpoint_was_moved_aside_starts_again(setup, tmp_path, caplog):  # noqa: F811
    output = tmp_path / "run"
    (output / "damaged" / "checkpoint-2").mkdir(parents=True)  # an earlier --resume moved the only one aside
    with caplog.at_level(logging.WARNING, logger="dupmae.training.trainer"):
        assert checkpoint_to_resume(output, resume=True) is None
    assert "holds no checkpoint but earlier damaged ones" in caplog.text
    with pytest.raises(FileNotFoundError, match="no checkpoint-\\* folder"):
        checkpoint_to_resume(tmp_path / "never-started", resume=True)
