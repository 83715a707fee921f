"""`report_to`: unknown or not-installed trackers are refused by `align validate` naming the
package; TensorBoard works out of the box and its event files stay in the run directory
(`<stage>/logs/`), read back here with TensorBoard's own reader."""

from __future__ import annotations

import pytest

from conftest import write_recipe


def sft(**args) -> dict:
    return {"sft": {"kind": "sft", "data": {"train": {"world": "sft", "max_samples": 16}},
                    "args": {"max_steps": 4, "logging_steps": 1, "per_device_train_batch_size": 4,
                             "save_steps": 100, "disable_tqdm": True, **args}}}


def refusal(tmp_path, capsys, **args) -> str:
    from align.cli import main

    assert main(["validate", write_recipe(tmp_path, sft(**args))]) == 2
    return capsys.readouterr().err


def test_unknown_tracker_is_refused_with_a_suggestion(tmp_path, capsys):
    err = refusal(tmp_path, capsys, report_to="tensorbord")
    assert "unknown tracker 'tensorbord'" in err and "Did you mean 'tensorboard'" in err


def test_tracker_not_installed_names_the_package(tmp_path, capsys, monkeypatch):
    import align.trackers as trackers

    monkeypatch.setattr(trackers, "installed", lambda name: name != "wandb")
    err = refusal(tmp_path, capsys, report_to=["tensorboard", "wandb"])
    assert "needs the package 'wandb'" in err and "pip install wandb" in err


def test_logging_dir_says_where_logs_go(tmp_path, capsys):
    err = refusal(tmp_path, capsys, logging_dir="tb")
    assert "<run_dir>/<stage>/logs/" in err


def test_tensorboard_and_trackers_lists_pass_validation(tmp_path):
    from align.validate import validate_recipe

    validate_recipe(write_recipe(tmp_path, sft(report_to="tensorboard")))
    validate_recipe(write_recipe(tmp_path, sft(report_to=["tensorboard"], run_name="x"), name="u"))


@pytest.mark.slow
def test_tensorboard_event_file_in_the_run_directory_holds_the_loss_curve(tmp_path, tiny_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from align.runner import run_recipe

    path = write_recipe(tmp_path, sft(report_to="tensorboard"),
                        model={"name_or_path": str(tiny_model)})
    artifact = run_recipe(path)["sft"]
    logs = tmp_path / "run" / "sft" / "logs"
    assert artifact.manifest.files["logs"] == "logs"
    assert list(logs.glob("events.out.tfevents.*")), f"no event file in {logs}"
    assert not (tmp_path / "run" / "sft" / "checkpoints").exists()
    events = EventAccumulator(str(logs))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert all(e.value > 0 for e in losses)
