"""PPO on the tiny model: the score rises under a rule-based reward, an RM artifact scores with
its own statistics, running normalisation centres scores, the LoRA reference is the SFT model,
and an interrupted stage resumes from its checkpoint."""

from __future__ import annotations

import json
import os

import pytest
import torch

from align.artifacts import load_artifact
from align.errors import AlignError
from align.modeling import load_artifact_model, load_tokenizer
from align.ppo.config import PPOConfig
from align.ppo.core import AdaptiveKLController, logprobs_from_logits
from align.rewards.sources import build_reward, position_ids_from_mask
from align.ppo.trainer import PPOTrainer
from align.recipe import RecipeError, load_recipe
from align.runner import run_recipe
from conftest import write_recipe

COMMON = {"per_device_train_batch_size": 16, "logging_steps": 10, "disable_tqdm": True,
          "save_steps": 1000}
BASE_STAGES = {
    "pretrain": {"kind": "pretrain", "data": "world:corpus",
                 "args": {**COMMON, "max_steps": 60, "learning_rate": 3e-3}},
    "sft": {"kind": "sft", "from": "pretrain", "data": "world:sft",
            "args": {**COMMON, "max_steps": 40, "learning_rate": 1e-3}},
    "rm": {"kind": "rm", "from": "sft",
           "data": {"train": "world:preference_train", "eval": "world:preference_eval"},
           "args": {**COMMON, "max_steps": 30, "learning_rate": 1e-3}},
}
WORD = "capital"
SEEN_COLUMNS: set[str] = set()


# -- reward functions named in the recipes below (module test_ppo_trainer is importable) ---------

def says_word(prompts, completions, **columns):
    """+1 when the completion says WORD: the SFT model does so about a third of the time (for
    capital questions, and sometimes by mistake), so there is signal from the first step."""
    SEEN_COLUMNS.update(k for k, v in columns.items() if len(v) == len(completions))
    return [1.0 if WORD in c else 0.0 for c in completions]


def noise(prompts, completions, **columns):
    """Scores that ignore the text: N(5, 3^2). Normalised, they must come out N(0, 1)."""
    generator = torch.Generator().manual_seed(sum(len(c) for c in completions) + len(completions))
    return (5.0 + 3.0 * torch.randn(len(completions), generator=generator, dtype=torch.float64)).tolist()


_CALLS = {"n": 0}


def crashes_later(prompts, completions, **columns):
    """says_word, but raising on the call ALIGN_TEST_PPO_CRASH_AT (a simulated kill)."""
    _CALLS["n"] += 1
    crash_at = int(os.environ.get("ALIGN_TEST_PPO_CRASH_AT", "0"))
    if crash_at and _CALLS["n"] >= crash_at:
        raise RuntimeError("simulated crash")
    return says_word(prompts, completions, **columns)


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """pretrain -> sft -> rm on the small world, once; PPO stages are added next to them."""
    root = tmp_path_factory.mktemp("ppo")
    return root, run_recipe(write_recipe(root, BASE_STAGES, name="base"))


def ppo_stage(rewards, steps: int, *, sources=("sft",), method="full", **args) -> dict:
    base = {"rewards": rewards, "batch_size": 16, "mini_batch_size": 8, "ppo_epochs": 2,
            "response_length": 20, "learning_rate": 1e-4, "total_episodes": 16 * steps,
            "disable_tqdm": True, "log_samples": 2}
    return {"kind": "ppo", "from": list(sources), "data": "world:sft",
            "method": {"type": method, "lora": {"r": 8, "alpha": 16}}, "args": {**base, **args}}


def run_ppo(trained, name: str, stage: dict):
    root, _ = trained
    path = write_recipe(root, {**BASE_STAGES, name: stage}, name=name)
    return run_recipe(path)[name]


def stats_of(artifact) -> list[dict]:
    return [json.loads(line) for line in artifact.file("stats").read_text().splitlines()]


# -- outcomes -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_rule_based_reward_raises_the_score(trained):
    artifact = run_ppo(trained, "ppo_rule", ppo_stage([{"source": "test_ppo_trainer:says_word"}], 20,
                                                   learning_rate=3e-4))
    metrics = artifact.manifest.metrics
    history = stats_of(artifact)
    assert [s["step"] for s in history] == list(range(1, 21))
    # The score is the share of completions that say the word (about 0.35 before training). A
    # quarter is 5 steps x 16 = 80 episodes, so a quarter's mean has a standard error of at most
    # sqrt(0.25 / 80) = 0.056 and the difference of two quarters about 0.08: a rise of 0.15 is
    # two standard errors above chance, while five seeds we ran rose by 0.26 to 0.45.
    assert metrics["mean_score_last"] > metrics["mean_score_first"] + 0.15, metrics
    # The policy moved away from the reference, and the KL stayed finite and logged every step.
    kls = [s["kl"] for s in history]
    assert all(torch.isfinite(torch.tensor(kls))) and metrics["kl_last"] > 0
    assert metrics["kl_max"] < 20, "KL exploded"
    for key in ("score_raw", "score", "entropy", "policy_clipfrac", "value_clipfrac", "approx_kl",
                "value_loss", "explained_variance", "response_length", "eos_rate", "kl_coef"):
        assert key in history[-1], key
    assert artifact.file("samples").read_text().strip()
    assert "messages" in SEEN_COLUMNS, "the data's other columns did not reach the reward function"
    # The saved policy is a full model that loads and differs from the SFT model.
    _, artifacts = trained
    policy = load_artifact_model(load_artifact(artifact.path))
    sft = load_artifact_model(artifacts["sft"])
    assert any(not torch.equal(a, b) for a, b in zip(policy.parameters(), sft.parameters()))


@pytest.mark.slow
def test_rm_reward_with_rm_stats_normalisation(trained):
    _, artifacts = trained
    rm_metrics = artifacts["rm"].manifest.metrics
    mean, std = rm_metrics["score_mean"], rm_metrics["score_std"]
    stage = ppo_stage([{"source": "rm"}], 3, sources=("sft", "rm"), score_normalization="rm_stats")
    artifact = run_ppo(trained, "ppo_rm", stage)
    assert artifact.manifest.metrics["value_model"] == "rm"
    for step in stats_of(artifact):
        # Normalisation is affine, so the batch means obey it exactly.
        assert step["score"] == pytest.approx((step["score_raw"] - mean) / std, abs=1e-4)
        assert step["reward/rm"] == pytest.approx(step["score_raw"], abs=1e-5)


@pytest.mark.slow
def test_running_normalisation_centres_and_scales(trained):
    stage = ppo_stage([{"source": "test_ppo_trainer:noise"}], 8, score_normalization="running",
                      response_length=8, ppo_epochs=1)
    history = stats_of(run_ppo(trained, "ppo_running", stage))
    raw = torch.tensor([s["score_raw"] for s in history])
    assert raw.mean().item() == pytest.approx(5.0, abs=0.6)
    # Over the window of steps 2-8 (112 episodes; step 1 is normalised by its own moments), the
    # normalised scores have mean ~ 0 and std ~ 1; the tolerances are ~3 standard errors.
    window = history[1:]
    means = torch.tensor([s["score"] for s in window])
    second = torch.tensor([s["score_std"] ** 2 + s["score"] ** 2 for s in window])
    assert abs(means.mean().item()) < 0.3
    assert second.mean().sqrt().item() == pytest.approx(1.0, abs=0.25)


@pytest.mark.slow
def test_lora_reference_is_the_sft_model(trained):
    from peft import LoraConfig, get_peft_model

    _, artifacts = trained
    sft = artifacts["sft"]
    tokenizer = load_tokenizer(sft.model_path())
    rows = [json.loads(line) for line in (sft.path.parent / "world" / "sft.jsonl").read_text().splitlines()]
    prompts = [{"prompt": r["messages"][:1]} for r in rows]
    policy = get_peft_model(load_artifact_model(sft), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    value = load_artifact_model(sft, task="sequence-classification")
    config = PPOConfig(rewards=[{"source": "test_ppo_trainer:says_word"}], batch_size=8, mini_batch_size=8,
                       response_length=12, learning_rate=5e-3, total_episodes=64, temperature=0.9,
                       disable_tqdm=True)
    trainer = PPOTrainer(config, policy=policy, value_model=value, tokenizer=tokenizer,
                         reward=build_reward(config), prompts=prompts, seed=1)
    reference = load_artifact_model(sft).eval()

    def sft_logprobs(r):
        with torch.no_grad():
            mask = r.attention_mask
            logits = reference(input_ids=r.query_responses, attention_mask=mask,
                               position_ids=position_ids_from_mask(mask)).logits
        logits = logits[:, r.context_length - 1:-1].float() / config.temperature
        return logprobs_from_logits(logits, r.responses)

    first = trainer.rollout(trainer.next_prompt_rows())
    expected = sft_logprobs(first)
    mask = first.response_mask
    assert torch.allclose(first.ref_logprobs[mask], expected[mask], atol=1e-5)
    # At step 0 the adapter is a no-op (LoRA B starts at zero): the policy is the SFT model too.
    assert torch.allclose(first.logprobs[mask], expected[mask], atol=1e-5)

    for _ in range(2):
        trainer.train_step()
    later = trainer.rollout(trainer.next_prompt_rows())
    mask = later.response_mask
    assert torch.allclose(later.ref_logprobs[mask], sft_logprobs(later)[mask], atol=1e-5)
    assert not torch.allclose(later.logprobs[mask], later.ref_logprobs[mask], atol=1e-3), \
        "the policy did not move, so the check above proves nothing"


@pytest.mark.slow
def test_resume_continues_at_the_saved_step(trained, monkeypatch, capsys):
    stage = ppo_stage([{"source": "test_ppo_trainer:crashes_later"}], 4, save_steps=2, adaptive_kl=True,
                      kl_coef=0.1, kl_target=0.05, kl_horizon=100, score_normalization="running",
                      response_length=12, ppo_epochs=1)
    root, _ = trained
    monkeypatch.setenv("ALIGN_TEST_PPO_CRASH_AT", "3")
    _CALLS["n"] = 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_ppo(trained, "ppo_resume", stage)
    partial = root / "run" / "ppo_resume.partial"
    assert (partial / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()
    assert not (root / "run" / "ppo_resume").exists()
    before = [json.loads(line) for line in (partial / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in before] == [1, 2]

    monkeypatch.delenv("ALIGN_TEST_PPO_CRASH_AT")
    capsys.readouterr()
    artifact = run_ppo(trained, "ppo_resume", stage)
    out = capsys.readouterr().out
    assert "resuming from checkpoint-2" in out and "resumed from checkpoint-2: step 2 of 4" in out
    history = stats_of(artifact)
    assert [s["step"] for s in history] == [1, 2, 3, 4]
    assert history[:2] == before
    # The KL controller came back with its state: step 3 starts from the coefficient that
    # step 2's update produced, not from the initial 0.1.
    controller = AdaptiveKLController(history[1]["kl_coef"], 0.05, 100)
    controller.update(history[1]["kl"], 16)
    assert history[2]["kl_coef"] == pytest.approx(controller.value, rel=1e-9)
    assert history[2]["kl_coef"] != pytest.approx(0.1)
    assert artifact.manifest.metrics["steps"] == 4
    # Everything a step depends on came back (weights, optimizer, moments, controller, prompt
    # order, sampling seeds): the resumed run is the uninterrupted run, statistic for statistic.
    straight = stats_of(run_ppo(trained, "ppo_straight", stage))
    assert [_without_timings(s) for s in straight] == [_without_timings(s) for s in history]


def _without_timings(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if not k.startswith("time_") and k != "episodes_per_s"}


@pytest.mark.slow
def test_qlora_policy_trains_an_adapter(trained):
    from safetensors.torch import load_file

    stage = ppo_stage([{"source": "test_ppo_trainer:says_word"}], 2, method="qlora", learning_rate=1e-3,
                      response_length=8, ppo_epochs=1)
    artifact = run_ppo(trained, "ppo_qlora", stage)
    manifest = load_artifact(artifact.path).manifest
    assert manifest.model.type == "adapter" and manifest.model.method == "qlora"
    history = stats_of(artifact)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor([s["kl"] for s in history])))
    adapter = load_file(str(artifact.model_path() / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k), "the adapter did not train"
    assert load_artifact_model(load_artifact(artifact.path)) is not None  # merges onto the SFT model


# -- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, key", [
    ({"mini_batch_size": 32, "batch_size": 16}, "stages.ppo.args.mini_batch_size"),
    ({"mini_batch_size": 6, "batch_size": 16}, "stages.ppo.args.mini_batch_size"),
    ({"learning_rate": -1e-5}, "stages.ppo.args.learning_rate"),
    ({"gradient_accumulation_steps": 3, "mini_batch_size": 8, "batch_size": 16},
     "stages.ppo.args.gradient_accumulation_steps"),
    ({"cliprange": 1.5}, "stages.ppo.args.cliprange"),
    ({"rewards": [{"source": "not a function"}]}, "stages.ppo.args.rewards.0"),
    ({"rewards": [{"source": "m:f", "wieght": 2}]}, "stages.ppo.args.rewards.0"),
    ({"rewards": [{"source": "m:f"}], "score_normalization": "rm_stats"},
     "stages.ppo.args.score_normalization"),
])
def test_impossible_args_are_refused_before_training(tmp_path, args, key):
    stages = {"sft": {"kind": "sft", "data": "world:sft"},
              "ppo": {"kind": "ppo", "from": "sft", "data": "world:sft", "args": args}}
    with pytest.raises(RecipeError) as info:
        load_recipe(write_recipe(tmp_path, stages))
    assert key in str(info.value)


def test_unknown_and_mistyped_args_name_the_key(tmp_path):
    for args, text in (({"kl_estimater": "k3"}, "Did you mean 'kl_estimator'"),
                       ({"kl_estimator": "k4"}, "stages.ppo.args.kl_estimator"),
                       ({"whiten_rewards": "yes"}, "stages.ppo.args.whiten_rewards")):
        stages = {"sft": {"kind": "sft", "data": "world:sft"},
                  "ppo": {"kind": "ppo", "from": "sft", "data": "world:sft", "args": args}}
        with pytest.raises(RecipeError, match=text):
            load_recipe(write_recipe(tmp_path, stages))


@pytest.mark.slow
def test_rm_reward_without_an_rm_input_is_an_error(trained):
    with pytest.raises(AlignError, match="needs a reward model"):
        run_ppo(trained, "ppo_no_rm", ppo_stage([{"source": "rm"}], 1))
