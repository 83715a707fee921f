"""Numerical faults and concurrent runs: clear errors, nothing finished is lost."""

from __future__ import annotations

import json

import pytest

from align.cli import main
from align.runner import run_lock
from conftest import write_recipe


def test_non_finite_loss_stops_the_stage_naming_the_step(tmp_path, capsys):
    args = {"max_steps": 30, "per_device_train_batch_size": 8, "learning_rate": 1e12,
            "max_grad_norm": 0.0, "logging_steps": 1, "save_steps": 1, "disable_tqdm": True,
            "optim": "sgd"}
    path = write_recipe(tmp_path, {"sft": {"kind": "sft", "data": "world:sft", "args": args}})
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert "training stopped at step" in err and ("is nan" in err or "is inf" in err), err
    assert not (tmp_path / "run" / "sft").exists()  # nothing that looks like a result
    kept = list((tmp_path / "run" / "sft.partial" / "checkpoints").glob("checkpoint-*"))
    assert kept, "the last good checkpoints are kept for a resume"


def test_second_run_on_the_same_directory_is_refused(tmp_path, capsys):
    path = write_recipe(tmp_path, {"sft": {"kind": "sft", "data": "world:sft",
                                           "args": {"max_steps": 1}}})
    with run_lock(tmp_path / "run"):
        assert main(["run", path]) == 2
    assert "another `align run` is using" in capsys.readouterr().err
