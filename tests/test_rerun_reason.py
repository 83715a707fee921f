"""A stage that runs again says why: the config keys that changed, the upstream stage that
changed, or its data; "resuming" only when there is a checkpoint to resume from."""

from __future__ import annotations

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
