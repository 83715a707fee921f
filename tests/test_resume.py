"""Kill a run during a stage; the rerun skips finished stages and resumes from the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_recipe


def stages():
    common = {"per_device_train_batch_size": 8, "logging_steps": 5, "disable_tqdm": True,
              "learning_rate": 3e-3}
    return {
        "pretrain": {"kind": "pretrain", "data": "world:corpus",
                     "args": {**common, "max_steps": 10, "save_steps": 1000}},
        "sft": {"kind": "sft", "from": "pretrain", "data": "world:sft",
                "args": {**common, "max_steps": 150, "save_steps": 5}},
    }


def start(path: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "align", "run", path, "--no-validate"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ}, start_new_session=True)


@pytest.mark.slow
def test_kill_during_stage_then_resume(tmp_path):
    path = write_recipe(tmp_path, stages())
    run = tmp_path / "run"
    proc = start(path, tmp_path / "first.log")
    checkpoints = run / "sft.partial" / "checkpoints"
    deadline = time.time() + 400
    while time.time() < deadline:
        found = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
        if found:
            break
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    else:
        raise AssertionError("no checkpoint appeared")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    pretrain_manifest = json.loads((run / "pretrain" / "artifact.json").read_text())
    assert not (run / "sft").exists(), "an interrupted stage must not look finished"
    killed_at = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))

    second = tmp_path / "second.log"
    proc = start(path, second)
    assert proc.wait(timeout=600) == 0, second.read_text()[-3000:]
    out = second.read_text()
    assert "pretrain: up to date, skipped" in out
    assert "resuming from checkpoint-" in out
    resumed_from = int(out.split("resuming from checkpoint-")[1].split()[0])
    assert resumed_from >= killed_at - 5

    # The finished stage was not redone, and the resumed one completed all its steps.
    assert json.loads((run / "pretrain" / "artifact.json").read_text()) == pretrain_manifest
    sft = json.loads((run / "sft" / "artifact.json").read_text())
    assert sft["status"] == "complete" and sft["metrics"]["steps"] == 150
    assert not (run / "sft.partial").exists()


def test_data_fingerprint_follows_names_and_contents_not_the_directory(tmp_path):
    """A run directory or recipe that moves keeps its hashes; an edited data file does not."""
    from align.artifacts import file_fingerprint

    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        (tmp_path / where / "train.jsonl").write_text('{"text": "x"}\n')
    same = [file_fingerprint([tmp_path / w / "train.jsonl"]) for w in ("a", "b")]
    assert same[0] == same[1]
    (tmp_path / "b" / "train.jsonl").write_text('{"text": "y"}\n')
    assert file_fingerprint([tmp_path / "b" / "train.jsonl"]) != same[0]
