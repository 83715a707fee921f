"""kill -9 at the worst moments: during DPO, PPO, the IDK probe, evaluation, and while a finished
stage's manifest is written and moved into place. Every rerun resumes or completes; a finished
stage is never redone or lost; the final artifacts pass the checks an uninterrupted run passes.
A second `align run` on the same run directory meanwhile is refused and harms nothing.

(SFT is killed and resumed in test_resume.py.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import write_recipe

FAST = {"per_device_train_batch_size": 4, "learning_rate": 1e-4, "logging_steps": 1,
        "disable_tqdm": True}


def stages() -> dict:
    return {
        "sft": {"kind": "sft", "data": "world:sft", "args": {**FAST, "max_steps": 2, "save_steps": 1000}},
        "dpo": {"kind": "dpo", "from": "sft", "method": "lora", "data": "world:preference_train",
                "args": {**FAST, "max_steps": 6, "save_steps": 2, "max_length": 64}},
        "ppo": {"kind": "ppo", "from": "sft",
                "data": {"train": {"world": "qa_train", "columns": {"question": "prompt"}}},
                "args": {"rewards": [{"source": "align.rewards:correct_answer"}],
                         "value_model": "policy", "batch_size": 4, "mini_batch_size": 4,
                         "ppo_epochs": 1, "total_episodes": 16, "response_length": 8,
                         "learning_rate": 1e-5, "save_steps": 2, "disable_tqdm": True}},
        "idk": {"kind": "idk", "from": "sft",
                "options": {"k": 2, "batch_size": 16, "max_new_tokens": 8}},
        "evaluate": {"kind": "evaluate", "from": ["sft", "dpo", "ppo"],
                     "options": {"batch_size": 16, "max_new_tokens": 8}},
    }


TOKEN = "hf_" + "Z9y8" * 9  # in every run's environment: it must not reach any file or log


def start(path: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_TOKEN": TOKEN}  # offline, one thread: set by conftest.py
    return subprocess.Popen([sys.executable, "-m", "align", "run", path, "--no-validate"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def freeze_when(proc: subprocess.Popen, log: Path, ready, what: str, timeout: float = 300) -> None:
    """Wait until `ready()`, then stop the whole process group at once (SIGSTOP), so what it
    was doing at that moment is what gets killed."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before {what}:\n" + log.read_text()[-3000:]
        assert time.time() < deadline, f"never reached {what}:\n" + log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGSTOP)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def checkpoints(run: Path, name: str) -> list[int]:
    root = run / f"{name}.partial" / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("checkpoint-*")
                  if (p / "trainer_state.json").exists())


def manifest(run: Path, name: str) -> dict:
    return json.loads((run / name / "artifact.json").read_text())


@pytest.mark.slow
def test_kill_during_each_stage_kind_then_resume(tmp_path, pretrained_tiny):
    path = write_recipe(tmp_path, stages(), model={"name_or_path": pretrained_tiny})
    run = tmp_path / "run"
    logs = [tmp_path / f"run{i}.log" for i in range(6)]

    # 1. Killed during DPO, after its first checkpoint. Meanwhile a second run is refused.
    proc = start(path, logs[0])
    freeze_when(proc, logs[0], lambda: checkpoints(run, "dpo"), "a DPO checkpoint")
    second = subprocess.run([sys.executable, "-m", "align", "run", path, "--no-validate"],
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and "another `align run` is using" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    kill(proc)
    sft = manifest(run, "sft")
    assert not (run / "dpo").exists() and checkpoints(run, "dpo")

    # 2. DPO resumes from its checkpoint and finishes; killed during PPO after a checkpoint.
    proc = start(path, logs[1])
    freeze_when(proc, logs[1], lambda: checkpoints(run, "ppo"), "a PPO checkpoint")
    kill(proc)
    out = logs[1].read_text()
    assert "sft: up to date, skipped" in out and "dpo (dpo): resuming" in out
    assert "[dpo] resuming from checkpoint-" in out
    dpo = manifest(run, "dpo")
    assert dpo["metrics"]["steps"] == 6 and not (run / "ppo").exists()
    assert len(checkpoints(run, "ppo")) <= 2  # save_total_limit

    # 3. PPO resumes and finishes; killed during the IDK probe (its generation has begun).
    proc = start(path, logs[2])
    freeze_when(proc, logs[2], lambda: "probe (" in logs[2].read_text(), "the IDK probe")
    kill(proc)
    out = logs[2].read_text()
    assert "[ppo] resuming from checkpoint-" in out
    ppo = manifest(run, "ppo")
    assert ppo["metrics"]["steps"] == 4 and not (run / "idk").exists()

    # 4. The probe is redone and finishes; killed during evaluation (generation has begun).
    proc = start(path, logs[3])
    freeze_when(proc, logs[3], lambda: "evaluate sft" in logs[3].read_text(), "evaluation")
    kill(proc)
    idk = manifest(run, "idk")
    assert not (run / "evaluate").exists() and not (run / "evaluate" / "metrics.json").exists()

    # 5. The last run only evaluates.
    proc = start(path, logs[4])
    assert proc.wait(timeout=600) == 0, logs[4].read_text()[-3000:]
    out = logs[4].read_text()
    for name in ("sft", "dpo", "ppo", "idk"):
        assert f"{name}: up to date, skipped" in out, name
    # Finished stages were never redone: their manifests are byte for byte the first ones.
    assert (manifest(run, "sft"), manifest(run, "dpo"), manifest(run, "ppo"), manifest(run, "idk")) \
        == (sft, dpo, ppo, idk)
    assert not list(run.glob("*.partial")) and not list(run.rglob(".*.tmp"))
    check_final_artifacts(run)
    for file in [*logs, *run.rglob("*")]:
        if file.is_file():
            assert TOKEN.encode() not in file.read_bytes(), file


def check_final_artifacts(run: Path) -> None:
    """What an uninterrupted run's artifacts satisfy: they load, their weights are finite, their
    files convert, the evaluation covers every model stage and question."""
    import torch

    from align.artifacts import load_artifact
    from align.data.formats import convert_rows
    from align.data.sources import read_local
    from align.modeling import load_artifact_model

    for name in ("sft", "dpo", "ppo"):
        artifact = load_artifact(run / name)
        model = load_artifact_model(artifact)
        assert all(torch.isfinite(p).all() for p in model.parameters()), name
    idk = load_artifact(run / "idk")
    for role, target in (("sft", "sft"), ("preference", "preference"), ("prompts", "prompt_only")):
        assert not convert_rows(read_local(idk.file(role)), source=role, target=target).dropped
    evaluation = load_artifact(run / "evaluate")
    table = json.loads(evaluation.file("metrics").read_text())
    assert set(table) == {"sft", "dpo", "ppo"}
    answers = read_local(evaluation.file("answers"))
    assert len(answers) == 3 * evaluation.manifest.metrics["questions"]


# -- a kill while a finished stage is committed ------------------------------------------------

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from align.artifacts import Manifest, StageDirs

    run_dir, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    calls = []
    real_replace = os.replace

    def replace(src, dst):
        calls.append(1)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst)

    os.replace = replace
    dirs = StageDirs(run_dir, "sft")
    (dirs.partial / "model").mkdir(parents=True, exist_ok=True)
    (dirs.partial / "model" / "weights").write_text("new")
    dirs.commit(Manifest(name="sft", kind="sft", status="running", config_hash="new", config={}))
""")


def prepare(run: Path, with_old: bool):
    from align.artifacts import Manifest, StageDirs, write_json_atomic

    dirs = StageDirs(run, "sft")
    if with_old:
        (dirs.final / "model").mkdir(parents=True)
        (dirs.final / "model" / "weights").write_text("old")
        write_json_atomic(dirs.final / "artifact.json",
                          Manifest(name="sft", kind="sft", status="complete", config_hash="old",
                                   config={}).to_dict())
    dirs.begin("new")  # the stage ran: progress file and a checkpoint to resume from
    (dirs.checkpoints / "checkpoint-4").mkdir(parents=True)
    (dirs.checkpoints / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (dirs.checkpoints / "checkpoint-6").mkdir()  # killed while saving: no trainer_state.json
    return dirs


def commit_killed_at(tmp_path, kill_at: int, with_old: bool):
    run = tmp_path / "run"
    dirs = prepare(run, with_old)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(run), str(kill_at)], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    return dirs


def visible(dirs) -> str | None:
    """What a reader (or a rerun's skip check) sees at the final path."""
    from align.artifacts import read_manifest

    manifest = read_manifest(dirs.final)
    return manifest.config_hash if manifest else None


def test_kill_during_commit_before_the_manifest_is_in_place_resumes(tmp_path):
    for with_old in (False, True):
        dirs = commit_killed_at(tmp_path / str(with_old), 1, with_old)
        # The old artifact (or none) is visible, never a half-written one; the partial stage
        # still has what a resume needs.
        assert visible(dirs) == ("old" if with_old else None)
        assert dirs.recover("new") is False
        assert list(dirs.partial.glob(".artifact.json.*.tmp"))  # the write the kill cut short
        assert dirs.begin("new") is True  # the rerun resumes, from the complete checkpoint ...
        assert dirs.last_checkpoint().name == "checkpoint-4"
        # ... without the half-written leftovers
        assert not list(dirs.partial.glob(".*.tmp")) and not (dirs.checkpoints / "checkpoint-6").exists()


def test_kill_during_commit_after_the_manifest_completes_without_redoing(tmp_path):
    for kill_at, with_old in ((2, False), (2, True), (3, True)):
        dirs = commit_killed_at(tmp_path / f"{kill_at}{with_old}", kill_at, with_old)
        assert visible(dirs) in (None, "old")
        assert dirs.recover("new") is True  # what the rerun does before its skip check
        assert visible(dirs) == "new"
        assert (dirs.final / "model" / "weights").read_text() == "new"
        assert not dirs.partial.exists() and not (dirs.final / "checkpoints").exists()
        assert not (dirs.final / "progress.json").exists()
        assert not any((dirs.run_dir / ".replaced").glob("*"))


def test_atomic_write_never_leaves_a_half_written_file(tmp_path):
    from align.artifacts import read_manifest

    run = tmp_path / "run"
    dirs = prepare(run, with_old=True)
    before = (dirs.final / "artifact.json").read_text()
    child = CHILD.replace('dirs.commit(', 'from align.artifacts import write_json_atomic\n'
                          'write_json_atomic(dirs.final / "artifact.json", {"half": 1})\ndirs.commit(')
    proc = subprocess.run([sys.executable, "-c", child, str(run), "1"], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (dirs.final / "artifact.json").read_text() == before
    assert read_manifest(dirs.final).config_hash == "old"
