"""A stage that runs again says why: the config keys that changed, the upstream stage that
changed, or its data; "resuming" only when there is a checkpoint to resume from."""

from __future__ import annotations

import json

import pytest

from conftest import write_recipe


@pytest.mark.slow
def test_rerun_names_the_changed_key_and_the_upstream(tmp_path, tiny_model, capsys):
    from align.runner import run_recipe

    args = {"max_steps": 1, "per_device_train_batch_size": 4, "save_steps": 100,
            "disable_tqdm": True}
    stages = {"sft": {"kind": "sft", "data": {"train": {"world": "sft", "max_samples": 8}},
                      "args": dict(args)},
              "dpo": {"kind": "dpo", "from": "sft", "method": "lora",
                      "data": {"train": {"world": "preference_train", "max_samples": 8}},
                      "args": dict(args)}}
    path = write_recipe(tmp_path, stages, model={"name_or_path": str(tiny_model)})
    run_recipe(path)
    out = capsys.readouterr().out
    assert "sft (sft): running\n" in out and "resuming" not in out
    run_recipe(path, ["stages.sft.args.learning_rate=1e-3"])
    out = capsys.readouterr().out
    assert "sft (sft): running (changed: stage.args.learning_rate)" in out
    assert "dpo (dpo): running (upstream stage sft changed)" in out


@pytest.mark.slow
def test_keep_checkpoints_and_align_stage_on_an_up_to_date_stage(tmp_path, tiny_model, capsys):
    from align.cli import main
    from align.runner import run_recipe

    stages = {"sft": {"kind": "sft", "data": {"train": {"world": "sft", "max_samples": 8}},
                      "keep_checkpoints": True,
                      "args": {"max_steps": 2, "per_device_train_batch_size": 4, "save_steps": 1,
                               "disable_tqdm": True}}}
    path = write_recipe(tmp_path, stages, model={"name_or_path": str(tiny_model)})
    artifact = run_recipe(path)["sft"]
    kept = artifact.path / "last_checkpoint"
    assert (kept / "trainer_state.json").exists() and artifact.manifest.files["last_checkpoint"]
    assert not (artifact.path / "checkpoints").exists()
    assert json.loads((kept / "trainer_state.json").read_text())["global_step"] == 2
    capsys.readouterr()
    assert main(["stage", path, "--stage", "sft"]) == 0
    assert "sft: up to date, skipped" in capsys.readouterr().out
