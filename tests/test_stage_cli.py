"""`align stage` run by hand (as under a hand-written `accelerate launch`): the main process
prepares the world and pushes the finished stage once; an up-to-date stage is not pushed again."""

from __future__ import annotations

import pytest

from align.cli import main
from conftest import write_recipe

REPO = "me/tiny-sft"

pytestmark = pytest.mark.slow  # trains (one step) and pushes to the fake Hub (conftest `hub`)


def test_align_stage_prepares_the_world_and_pushes_once(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_for_loopback")
    monkeypatch.delenv("ALIGN_LAUNCHED", raising=False)  # as typed by hand, not under `align run`
    stages = {"sft": {"kind": "sft", "data": "world:sft",
                      "args": {"max_steps": 1, "per_device_train_batch_size": 4, "save_steps": 100,
                               "disable_tqdm": True},
                      "push_to_hub": {"repo_id": REPO}}}
    path = write_recipe(tmp_path, stages)
    assert main(["stage", path, "--stage", "sft"]) == 0
    run = tmp_path / "run"
    assert (run / "world" / "sft.jsonl").exists() and (run / "sft" / "artifact.json").exists()
    assert len(hub.commits) == 1 and hub.commits[0].repo_id == REPO
    assert "model.safetensors" in hub.files(REPO)
    # Up to date: skipped, and not pushed a second time.
    assert main(["stage", path, "--stage", "sft"]) == 0
    assert len(hub.commits) == 1
