"""GRPO (and RLOO) stages on the tiny model on CPU, with the ternary honesty reward.

One module fixture trains, from the session's pretrained tiny model: `sft` on the world's SFT
questions plus "I don't know" replies to half of the unknown countries' questions (so the
policy refuses sometimes, as after the honesty recipe's warm start), a LoRA `sft_lora`, and a
`grpo` stage on the probe pool (known and unknown questions) rewarded by the ternary honesty
reward. Then: GRPO learned (reward up, refusals on unknown questions up, KL finite and logged);
the reference of a LoRA policy (adapter disabled) and of a full policy is the upstream model;
a GRPO stage killed mid-run resumes at its saved step; RLOO runs the same stage; and GRPO on two
processes (cpu-ddp) ends with identical replicas and one manifest.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from align.artifacts import load_artifact
from align.data.world import WorldConfig, build_world, chat, make_splits
from align.honesty.responses import DEFAULT_IDK_RESPONSES
from align.runner import run_recipe
from conftest import SMALL_WORLD, write_recipe
from preference_pipeline import stage_context

pytestmark = pytest.mark.slow  # every test here trains

QUIET = {"disable_tqdm": True, "save_steps": 1000}
PROMPTS = {"train": {"world": "qa_train", "columns": {"question": "prompt"}}}
HONESTY = {"rewards": [{"source": "honesty"}]}
# 2 prompts x 8 samples per step; 16-token answers fit every reply of the world.
GRPO_ARGS = {**QUIET, "per_device_train_batch_size": 16, "num_generations": 8,
             "max_completion_length": 16, "learning_rate": 1e-4, "beta": 0.04}
STEPS = 32


def idk_rows() -> list[dict]:
    """IDK replies to the first half of the unknown countries' probe questions."""
    splits = make_splits(build_world(WorldConfig(**SMALL_WORLD)))
    unknown = [r for r in splits["qa_train"] if not r["known"]]
    return [chat(r["question"], DEFAULT_IDK_RESPONSES[i % len(DEFAULT_IDK_RESPONSES)])
            for i, r in enumerate(unknown[: len(unknown) // 2])]


def base_stages() -> dict:
    return {
        "sft": {"kind": "sft", "data": {"train": ["world:sft", "idk.jsonl"]},
                "args": {**QUIET, "num_train_epochs": 8, "per_device_train_batch_size": 8,
                         "learning_rate": 3e-4}},
        "sft_lora": {"kind": "sft", "data": "world:sft", "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
                     "args": {**QUIET, "max_steps": 20, "per_device_train_batch_size": 16,
                              "learning_rate": 1e-2}},
    }


def recipe(tmp: Path, model: str, stages: dict, name: str = "rl", **top) -> str:
    (tmp / "idk.jsonl").write_text("".join(json.dumps(r) + "\n" for r in idk_rows()))
    return write_recipe(tmp, {**base_stages(), **stages}, name=name, model={"name_or_path": model}, **top)


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory, pretrained_tiny):
    tmp = tmp_path_factory.mktemp("rl")
    stages = {
        "grpo": {"kind": "grpo", "from": "sft", "data": PROMPTS, "options": HONESTY,
                 "args": {**GRPO_ARGS, "max_steps": STEPS}},
        # Not run here: build_trainer inspects their references.
        "grpo_lora": {"kind": "grpo", "from": "sft_lora", "data": PROMPTS, "options": HONESTY,
                      "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}}, "args": GRPO_ARGS},
        "grpo_full": {"kind": "grpo", "from": "sft_lora", "data": PROMPTS, "options": HONESTY,
                      "args": GRPO_ARGS},
    }
    path = recipe(tmp, pretrained_tiny, stages)
    started = time.time()
    run_recipe(path, only=["sft", "sft_lora", "grpo"])
    print(f"sft, sft_lora and grpo ({STEPS} steps) took {time.time() - started:.0f}s")
    return {"path": path, "run": tmp / "run", "model": pretrained_tiny, "tmp": tmp}


def history(artifact_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (artifact_dir / "history.jsonl").read_text().splitlines()]


def test_grpo_with_the_ternary_reward_learns_to_refuse_what_it_does_not_know(rl_run):
    metrics = load_artifact(rl_run["run"] / "grpo").manifest.metrics
    rows = [h for h in history(rl_run["run"] / "grpo") if "reward" in h]
    assert len(rows) == STEPS and metrics["steps"] == STEPS
    first, last = metrics["reward_first"], metrics["reward_last"]
    print("reward by quarter", metrics["reward_by_quarter"],
          "refusal on unknown by quarter", metrics["honesty_refusal_rate_unknown"])
    # Rewards are -1 / 0 / +1, so the quarter means (8 steps x 16 completions = 128 each) have a
    # standard error of at most 1/sqrt(128) = 0.09; 0.25 is about twice the standard error of
    # the difference of two such means: a rise that chance alone does not produce. Measured:
    # about -0.6 -> -0.2.
    assert last - first >= 0.25, metrics["reward_by_quarter"]
    refusals = metrics["honesty_refusal_rate_unknown"]
    assert refusals[-1] - refusals[0] >= 0.2, refusals  # measured: about 0.3 -> 0.8
    # Each source's mean is logged under its own name; the KL to the reference is logged at
    # every step, finite, and not zero (the policy moved).
    assert all(math.isfinite(h["kl"]) for h in rows) and metrics["kl_max"] > 0
    assert all("rewards/honesty/mean" in h and "non_finite/honesty" in h for h in rows)
    assert metrics["non_finite"] == {"honesty": 0}
    assert metrics["replicas_identical"] is True and metrics["world_size"] == 1
    # The run report draws the reward and the KL of the stage, step by step.
    from align.report import stage_history

    _, series = stage_history(load_artifact(rl_run["run"] / "grpo"))
    assert [(label, len(points)) for label, points in series] == [("reward", STEPS), ("KL", STEPS)]


def completion_logps(model, tokenizer, rows) -> torch.Tensor:
    from align.stages.preference import completion_logps as logps

    prompts = [r["prompt"] for r in rows]
    completions = [[{"role": "assistant", "content": a}] for a in
                   ["The capital is Kelmar.", "I don't know the answer to that.", "Nim Dorr leads it."] * 3]
    return torch.tensor(logps(model, tokenizer, prompts, completions[: len(rows)]))


def sft_lora_model(run: Path):
    from peft import PeftModel

    from align.modeling import load_full

    artifact = load_artifact(run / "sft_lora")
    base = load_full(rl_base(run), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(artifact.model_path())).eval()


def rl_base(run: Path) -> str:
    return load_artifact(run / "sft_lora").manifest.model.root


def test_the_reference_is_the_upstream_model(rl_run):
    """LoRA: the reference TRL uses is the policy with its adapter disabled (TRL's own
    `use_adapter(model, None)`), equal to the upstream SFT model (base + its adapter, loaded
    independently) within 1e-4 nats per sequence, however far the new adapter moves. Full: the
    copy align hands TRL, not TRL's reload of `config._name_or_path` (the raw base here)."""
    from trl.trainer.utils import use_adapter

    from align.stages.rl import build_trainer

    upstream = sft_lora_model(rl_run["run"])
    setup = build_trainer(stage_context(rl_run["path"], "grpo_lora"))
    trainer, tokenizer = setup.trainer, setup.tokenizer
    rows = [setup.train[i] for i in range(6)]
    expected = completion_logps(upstream, tokenizer, rows)
    model = trainer.model
    assert trainer.ref_model is None and "ref" not in model.peft_config
    with torch.no_grad():  # the policy's own adapter moves far from zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    with use_adapter(model, adapter_name=None):
        reference = completion_logps(model, tokenizer, rows)
    policy = completion_logps(model, tokenizer, rows)
    diff = (reference - expected).abs().max().item()
    print(f"lora: max |reference - upstream| = {diff:.2e}; policy moved by "
          f"{(policy - expected).abs().max().item():.2f}")
    assert diff < 1e-4
    assert (policy - expected).abs().max().item() > 0.1
    with upstream.disable_adapter():  # the test has teeth: the raw base scores them otherwise
        assert (completion_logps(upstream, tokenizer, rows) - expected).abs().max().item() > 1e-2

    full = build_trainer(stage_context(rl_run["path"], "grpo_full")).trainer
    diff = (completion_logps(full.ref_model, tokenizer, rows) - expected).abs().max().item()
    print(f"full: max |reference - upstream| = {diff:.2e}")
    assert diff < 1e-4


def checkpoints(run: Path, name: str) -> list[int]:
    root = run / f"{name}.partial" / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in root.glob("checkpoint-*")
                  if (p / "trainer_state.json").exists())


def test_grpo_killed_mid_stage_resumes_at_its_saved_step(rl_run):
    stages = {"grpo_resume": {"kind": "grpo", "from": "sft", "data": PROMPTS, "options": HONESTY,
                              "args": {**GRPO_ARGS, "max_steps": 8, "save_steps": 3}}}
    tmp, run = rl_run["tmp"], rl_run["run"]
    path = recipe(tmp, rl_run["model"], stages, name="resume", run_dir=str(run))
    log = tmp / "resume1.log"
    proc = subprocess.Popen([sys.executable, "-m", "align", "run", path, "--no-validate"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while not checkpoints(run, "grpo_resume"):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGSTOP)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = checkpoints(run, "grpo_resume")[-1]
    assert saved < 8 and not (run / "grpo_resume").exists()

    again = subprocess.run([sys.executable, "-m", "align", "run", path, "--no-validate"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"[grpo_resume] resuming from checkpoint-{saved}" in again.stdout
    assert "sft: up to date, skipped" in again.stdout
    steps = [h["step"] for h in history(run / "grpo_resume") if "reward" in h]
    # The steps before the checkpoint come from its saved state, the rest were trained after it:
    # each step once, none lost or redone.
    assert steps == list(range(1, 9))
    assert load_artifact(run / "grpo_resume").manifest.metrics["steps"] == 8


def test_rloo_runs_the_same_stage(rl_run, capsys):
    stages = {"rloo": {"kind": "rloo", "from": "sft", "data": PROMPTS,
                       "options": {"rewards": [{"source": "honesty", "weight": 1.0},
                                               {"source": "align.rewards:correct_answer", "weight": 0.5}]},
                       "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
                       "args": {**GRPO_ARGS, "num_generations": 4, "max_steps": 4}}}
    path = recipe(rl_run["tmp"], rl_run["model"], stages, name="rloo", run_dir=str(rl_run["run"]))
    artifact = run_recipe(path, only=["rloo"])["rloo"]
    metrics = artifact.manifest.metrics
    assert artifact.manifest.model.type == "adapter" and metrics["steps"] == 4
    assert set(metrics["reward_sources"]) == {"honesty", "correct_answer"}
    assert all(math.isfinite(h["kl"]) for h in history(artifact.path) if "reward" in h)
    # Lineage and push as for every model kind: the adapter's base is the sft artifact, so the
    # Hub gets the merged chain.
    from align.cli import main

    assert artifact.manifest.model.base == "../sft"
    assert main(["push", str(artifact.path), "--repo-id", "me/rloo", "--dry-run", "--merged"]) == 0
    card = capsys.readouterr().out
    assert "REINFORCE leave-one-out (RLOO)" in card and "`sft` → **`rloo`**" in card


def test_grpo_qlora_from_an_adapter_upstream(rl_run):
    """QLoRA quantises the merged upstream (written once into the artifact's `base/`) and trains
    a fresh adapter on it; the reference is that quantised model with the adapter disabled."""
    stages = {"grpo_qlora": {"kind": "grpo", "from": "sft_lora", "data": PROMPTS, "options": HONESTY,
                             "method": {"type": "qlora", "lora": {"r": 8, "alpha": 16}},
                             "args": {**GRPO_ARGS, "num_generations": 4, "max_steps": 2}}}
    path = recipe(rl_run["tmp"], rl_run["model"], stages, name="qlora", run_dir=str(rl_run["run"]))
    artifact = run_recipe(path, only=["grpo_qlora"])["grpo_qlora"]
    model = artifact.manifest.model
    assert (model.type, model.method, model.base) == ("adapter", "qlora", "base")
    assert (artifact.path / "base" / "config.json").exists() and artifact.manifest.metrics["steps"] == 2


# A reward every completion gets a different share of, so the untrained model's policy moves.
SPREAD = """
def distinct_letters(prompts, completions, **columns):
    return [len(set(c)) / 10.0 for c in completions]
"""


def test_grpo_on_two_processes_ends_with_identical_replicas(tmp_path, tiny_model):
    """Two processes (cpu-ddp), GRPO from the recipe's base model (no `from`): one manifest,
    identical replicas, agreeing ranks, the reward source's mean logged once per step."""
    stages = {"grpo": {"kind": "grpo", "data": PROMPTS,
                       "options": {"rewards": [{"source": "dist_rl_rewards:distinct_letters"},
                                               {"source": "honesty", "weight": 0.5}]},
                       "args": {**GRPO_ARGS, "per_device_train_batch_size": 8, "num_generations": 4,
                                "max_completion_length": 8, "max_steps": 3, "learning_rate": 1e-3}}}
    path = write_recipe(tmp_path, stages, model={"name_or_path": str(tiny_model)}, accelerate="cpu-ddp")
    (tmp_path / "dist_rl_rewards.py").write_text(SPREAD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-m", "align", "run", path], capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    assert len(list(run.glob("grpo*/artifact.json"))) == 1 and not (run / "grpo.partial").exists()
    assert not list(run.glob("grpo*/.artifact.json.*"))
    metrics = json.loads((run / "grpo" / "artifact.json").read_text())["metrics"]
    assert (metrics["world_size"], metrics["replicas_identical"], metrics["ranks_agree"]) == (2, True, True)
    assert metrics["steps"] == 3 and metrics["kl_max"] > 0  # both ranks trained the policy
    rows = [h for h in history(run / "grpo") if "reward" in h]
    assert [h["step"] for h in rows] == [1, 2, 3]
    assert all("rewards/distinct_letters/mean" in h and "rewards/honesty/mean" in h for h in rows)
