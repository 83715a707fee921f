"""Two CPU processes through `accelerate launch` (profile cpu-ddp): real data parallelism.

One recipe runs SFT (full weights, eval split, early stopping), DPO (LoRA, reference = adapter
disabled), PPO (full policy, running score moments, adaptive KL), the IDK probe and the
evaluation on two processes. Each training stage's manifest records the world size, whether both ranks ended with identical weights, and
whether both ranks agree on the decisions they must share (step reached, best checkpoint,
running reward moments, KL coefficient, logged scores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import write_recipe

pytestmark = pytest.mark.slow  # trains on two processes

FAST = {"per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 2,
        "disable_tqdm": True}


def stages() -> dict:
    return {
        "sft": {"kind": "sft", "data": {"train": "world:sft", "eval_fraction": 0.1},
                "early_stopping_patience": 1,
                "args": {**FAST, "max_steps": 6, "save_steps": 2}},
        "dpo": {"kind": "dpo", "from": "sft", "method": "lora",
                "data": {"train": "world:preference_train", "eval": "world:preference_eval"},
                "args": {**FAST, "max_steps": 4, "save_steps": 100, "max_length": 64}},
        "ppo": {"kind": "ppo", "from": "sft",
                "data": {"train": {"world": "qa_train", "columns": {"question": "prompt"}}},
                "args": {"rewards": [{"source": "dist_rewards:shorter", "weight": 1.0},
                                     {"source": "align.rewards:correct_answer", "weight": 1.0}],
                         "value_model": "policy", "score_normalization": "running",
                         "adaptive_kl": True, "kl_target": 0.5,
                         "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1,
                         "total_episodes": 24, "response_length": 8, "learning_rate": 1e-4,
                         "save_steps": 2, "disable_tqdm": True}},
        # No training: every process generates; the main one alone writes the files.
        "idk": {"kind": "idk", "from": "sft", "data": "world:qa_train",
                "options": {"k": 2, "max_new_tokens": 8, "batch_size": 64}},
        "evaluate": {"kind": "evaluate", "from": ["sft", "ppo"], "data": "world:qa_eval",
                     "options": {"max_new_tokens": 8}},
    }


TRAINED = ("sft", "dpo", "ppo")


# A reward every completion gets a different share of, so PPO has something to learn from the
# first step (the tiny model rarely answers correctly after a few SFT steps).
REWARDS = """
def shorter(prompts, completions, **columns):
    return [-len(c.split()) / 4.0 for c in completions]
"""


def run_two_processes(tmp_path, model: str, recipe_stages: dict) -> subprocess.CompletedProcess:
    path = write_recipe(tmp_path, recipe_stages, model={"name_or_path": model}, accelerate="cpu-ddp")
    (tmp_path / "dist_rewards.py").write_text(REWARDS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-m", "align", "run", path], capture_output=True,
                          text=True, timeout=1200, env=env)


def test_sft_dpo_ppo_idk_evaluate_run_on_two_processes(tmp_path, pretrained_tiny):
    proc = run_two_processes(tmp_path, pretrained_tiny, stages())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_run(tmp_path / "run")


def check_run(run):
    for name in stages():
        # Exactly one manifest, written once, and no leftovers of the two processes.
        assert len(list(run.glob(f"{name}*/artifact.json"))) == 1, name
        assert not list(run.glob(f"{name}*/.artifact.json.*"))
        assert not (run / f"{name}.partial").exists()
    for name in TRAINED:
        metrics = json.loads((run / name / "artifact.json").read_text())["metrics"]
        assert metrics["world_size"] == 2, name
        assert metrics["replicas_identical"] is True, name
        assert metrics["ranks_agree"] is True, name
    # PPO: 24 episodes = 3 steps of 2 processes x 4 prompts; the statistics are written by the
    # main process only (one line per step, not one per rank).
    ppo = json.loads((run / "ppo" / "artifact.json").read_text())["metrics"]
    assert (ppo["steps"], ppo["episodes"]) == (3, 24)
    assert ppo["kl_max"] > 0  # the policy moved away from the SFT model: both ranks trained it
    lines = (run / "ppo" / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    # The idk and evaluate files hold each question once (one writer, not one per rank).
    world = [json.loads(line) for line in (run / "world" / "qa_train.jsonl").read_text().splitlines()]
    probe = (run / "idk" / "probe.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["question"] for line in probe) == sorted(r["question"] for r in world)
    n_eval = len((run / "world" / "qa_eval.jsonl").read_text().splitlines())
    answers = [json.loads(line) for line in (run / "evaluate" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 * n_eval and {a["stage"] for a in answers} == {"sft", "ppo"}
    # DPO trained a LoRA adapter on top of the SFT model and measured its held-out margin.
    dpo = json.loads((run / "dpo" / "artifact.json").read_text())
    assert dpo["model"]["type"] == "adapter" and dpo["metrics"]["heldout_pairs"] > 0
