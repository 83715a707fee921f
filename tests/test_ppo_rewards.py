"""Reward sources and score shaping for PPO, on an untrained tiny model (no training needed:
these check what is scored and how, not that anything learns)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from align.artifacts import Manifest, ModelRef, load_artifact, write_json_atomic
from align.errors import AlignError
from align.ppo.config import PPOConfig
from align.ppo.rewards import ScoreShaper
from align.rewards.sources import (
    CallableSource,
    Episodes,
    RewardModelSource,
    WeightedReward,
    build_reward,
    import_callable,
)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from align.modeling import load_full, load_tokenizer

    path = tiny_model
    torch.manual_seed(0)
    rm = load_full(path, task="sequence-classification").eval()
    return path, rm, load_tokenizer(path)


PROMPTS = [[{"role": "user", "content": "What is the capital of Benland?"}],
           [{"role": "user", "content": "Who leads Gouia?"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When was Meesh founded?"}]]
COMPLETIONS = ["The capital of Benland is Rethmar.", "Gouia is led by", "Meesh was founded in 1326."]


def policy_batch(tokenizer, prompts, completions, finished):
    """Token ids laid out as the trainer lays them out: left-padded prompt, right-padded response
    (ending with EOS when finished)."""
    prompt_ids = [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True,
                                                return_dict=True)["input_ids"] for p in prompts]
    response_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if f else [])
                    for c, f in zip(completions, finished)]
    P, R = max(map(len, prompt_ids)), max(map(len, response_ids))
    ids = torch.full((len(prompts), P + R), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, P - len(p):P] = torch.tensor(p)
        ids[i, P:P + len(r)] = torch.tensor(r)
        mask[i, P - len(p):P + len(r)] = 1
    return ids, mask


def episodes(tokenizer, finished=(True, True, True)) -> Episodes:
    ids, mask = policy_batch(tokenizer, PROMPTS, COMPLETIONS, finished)
    return Episodes(prompts=PROMPTS, completions=COMPLETIONS, columns={}, query_responses=ids,
                    attention_mask=mask, has_eos=torch.tensor(finished))


def rendered_scores(model, tokenizer, prompts, completions):
    """What the rm stage measured its statistics on: the chat template's rendering, scored by
    the model's own last-token pooling."""
    from align.stages.rm import score_conversations

    return torch.tensor(score_conversations(
        model, tokenizer, [p + [{"role": "assistant", "content": c}] for p, c in zip(prompts, completions)]))


# -- the reward model ---------------------------------------------------------------------------

def test_rm_scores_the_policy_ids_as_the_rm_stage_rendered_them(tiny):
    _, rm, tokenizer = tiny
    source = RewardModelSource(rm, tokenizer, policy_tokenizer=tokenizer)
    assert source.same_tokenizer
    assert source.turn_suffix == tokenizer("\n", add_special_tokens=False)["input_ids"]
    scores = source(episodes(tokenizer))
    expected = rendered_scores(rm, tokenizer, PROMPTS, COMPLETIONS)
    assert torch.allclose(scores.float(), expected, atol=1e-4), (scores, expected)


def test_rm_scores_an_unfinished_completion_as_unfinished(tiny):
    _, rm, tokenizer = tiny
    source = RewardModelSource(rm, tokenizer, policy_tokenizer=tokenizer)
    cut = source(episodes(tokenizer, finished=(True, False, True)))
    finished = source(episodes(tokenizer))
    assert cut[0] == pytest.approx(finished[0].item(), abs=1e-5)
    assert cut[1] != pytest.approx(finished[1].item(), abs=1e-4)  # no EOS, no turn suffix: other text


def test_rm_with_its_own_tokenizer_re_renders_the_conversation(tiny):
    _, rm, tokenizer = tiny
    from transformers import AutoTokenizer

    rm_tokenizer = AutoTokenizer.from_pretrained(tiny[0])
    rm_tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}"
                                  "{{ '<|end|>' }}{% endfor %}")
    source = RewardModelSource(rm, rm_tokenizer, policy_tokenizer=tokenizer)
    assert not source.same_tokenizer
    scores = source(episodes(tokenizer))
    assert torch.allclose(scores.float(), rendered_scores(rm, rm_tokenizer, PROMPTS, COMPLETIONS), atol=1e-4)


def fake_rm_artifact(root, model_dir, metrics):
    """An artifact around a copy of `model_dir` (an artifact may only name files inside it)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(model_dir, root / "model")
    manifest = Manifest(name="rm", kind="rm", status="complete", config_hash="x", config={},
                        model=ModelRef(type="full", path="model", task="sequence-classification"),
                        tokenizer="model", metrics=metrics)
    write_json_atomic(root / "artifact.json", manifest.to_dict())
    return load_artifact(root)


def test_rm_stats_normalisation_uses_the_artifact_statistics(tiny, tmp_path):
    path, _, tokenizer = tiny
    artifact = fake_rm_artifact(tmp_path / "rm", path, {"score_mean": 0.5, "score_std": 2.0})
    source = RewardModelSource.from_artifact(artifact, policy_tokenizer=tokenizer, device="cpu", normalize=True)
    assert source.normalize_with == (0.5, 2.0)
    reward = WeightedReward([(source, 3.0), (CallableSource("c", lambda p, c, **k: [1.0] * len(c)), 1.0)])
    batch = reward(episodes(tokenizer))
    raw = batch.parts["rm"]
    assert torch.allclose(batch.total, 3.0 * raw + 1.0)
    assert torch.allclose(batch.rm_normalized, 3.0 * (raw - 0.5) / 2.0 + 1.0)
    shaped = ScoreShaper("rm_stats")(batch, torch.ones(3, dtype=torch.bool))
    assert torch.allclose(shaped, batch.rm_normalized)


def test_rm_stats_without_statistics_is_an_error(tiny, tmp_path):
    path, _, tokenizer = tiny
    artifact = fake_rm_artifact(tmp_path / "rm", path, {"accuracy": 0.9})
    with pytest.raises(AlignError, match="score_mean"):
        RewardModelSource.from_artifact(artifact, policy_tokenizer=tokenizer, device="cpu", normalize=True)
    policy_artifact = fake_rm_artifact(tmp_path / "policy", path, {})
    policy_artifact.manifest.model.task = "causal-lm"
    with pytest.raises(AlignError, match="holds no reward model"):
        RewardModelSource.from_artifact(policy_artifact, policy_tokenizer=tokenizer, device="cpu")


# -- callables and sums ---------------------------------------------------------------------------

def length_reward(prompts, completions, **columns):
    return [len(c) / 10 for c in completions]


def test_callable_import_errors_name_the_string():
    with pytest.raises(AlignError, match="'no_such_module_xyz:score'.*cannot import"):
        import_callable("no_such_module_xyz:score")
    with pytest.raises(AlignError, match="'json:no_such_function'.*no attribute"):
        import_callable("json:no_such_function")
    with pytest.raises(AlignError, match="'json:__doc__'.*not callable"):
        import_callable("json:__doc__")
    assert import_callable("test_ppo_rewards:length_reward") is length_reward
    config = PPOConfig(rewards=[{"source": "no_such_module_xyz:score"}])
    with pytest.raises(AlignError, match="no_such_module_xyz:score"):
        build_reward(config)


def test_callable_gets_prompts_completions_and_columns():
    seen = {}

    def fn(prompts, completions, **columns):
        seen.update(prompts=prompts, completions=completions, columns=columns)
        return torch.tensor([1.0, 2.0, 3.0])

    batch = Episodes(prompts=PROMPTS, completions=COMPLETIONS, columns={"answers": [["a"], ["b"], ["c"]]})
    assert CallableSource("fn", fn)(batch).tolist() == [1.0, 2.0, 3.0]
    assert seen["prompts"] is PROMPTS and seen["completions"] is COMPLETIONS
    assert seen["columns"] == {"answers": [["a"], ["b"], ["c"]]}


def test_callable_returning_the_wrong_count_or_type_is_an_error():
    batch = Episodes(prompts=PROMPTS, completions=COMPLETIONS, columns={})
    with pytest.raises(AlignError, match="returned 2 scores for 3 completions"):
        CallableSource("two", lambda p, c, **k: [1.0, 2.0])(batch)
    with pytest.raises(AlignError, match="must return a list of numbers"):
        CallableSource("text", lambda p, c, **k: ["good", "bad", "ugly"])(batch)


def test_weighted_sum_and_non_finite_rows():
    batch = Episodes(prompts=PROMPTS, completions=COMPLETIONS, columns={})
    reward = WeightedReward([
        (CallableSource("a", lambda p, c, **k: [1.0, 2.0, float("nan")]), 0.5),
        (CallableSource("b", lambda p, c, **k: [10.0, None, 1.0]), 2.0),
    ])
    out = reward(batch)
    assert out.total.tolist() == [20.5, 0.0, 0.0]  # non-finite rows hold 0, never nan
    assert out.finite.tolist() == [True, False, False]
    assert out.bad_rows == [1, 2]
    assert out.parts["a"][:2].tolist() == [1.0, 2.0] and math.isnan(out.parts["b"][1])
    assert out.rm_normalized is None


# -- shaping ------------------------------------------------------------------------------------------

def batch_of(values, finite=None):
    from align.rewards.sources import ScoreBatch

    total = torch.tensor(values, dtype=torch.float64)
    finite = torch.ones(len(values), dtype=torch.bool) if finite is None else torch.tensor(finite)
    return ScoreBatch(total=torch.where(finite, total, 0.0), parts={}, finite=finite)


def test_running_normalisation_skips_non_finite_rows_and_round_trips():
    shaper = ScoreShaper("running")
    eos = torch.ones(5, dtype=torch.bool)
    out = shaper(batch_of([1.0, 2.0, 3.0, 4.0, 0.0], [True, True, True, True, False]), eos)
    real = out[:4]
    assert real.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert real.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert out[4] == 0.0 and shaper.moments.count == 4
    again = ScoreShaper("running")
    again.load_state_dict(shaper.state_dict())
    b = batch_of([5.0, 6.0])
    assert torch.equal(shaper(b, eos[:2]), again(b, eos[:2]))


def test_clip_then_missing_eos_penalty():
    shaper = ScoreShaper("none", clip=1.0, missing_eos_penalty=0.5)
    out = shaper(batch_of([3.0, 3.0, -0.2]), torch.tensor([True, False, False]))
    assert out.tolist() == pytest.approx([1.0, 0.5, -0.7])


# -- the trainer leaves non-finite rows out -------------------------------------------------------

def every_other_nan(prompts, completions, **columns):
    return [float("nan") if i % 2 else 1.0 for i in range(len(completions))]


def test_non_finite_rows_are_reported_and_not_trained_on(tiny, capsys):
    from align.modeling import load_full
    from align.ppo.trainer import PPOTrainer

    path, _, tokenizer = tiny
    policy, reference = load_full(path), load_full(path)
    value = load_full(path, task="sequence-classification")
    config = PPOConfig(rewards=[{"source": "test_ppo_rewards:every_other_nan"}], batch_size=4,
                       mini_batch_size=4, response_length=6, total_episodes=8, disable_tqdm=True)
    prompts = [{"prompt": p} for p in PROMPTS]
    trainer = PPOTrainer(config, policy=policy, value_model=value, tokenizer=tokenizer,
                         reward=build_reward(config), prompts=prompts, ref_policy=reference)
    rows = trainer.next_prompt_rows()
    r = trainer.rollout(rows)
    trainer.shape_rewards(r)
    trainer.compute_advantages(r)
    assert r.scores.finite.tolist() == [True, False, True, False]
    assert not r.mask[1].any() and not r.mask[3].any() and r.mask[0].any()
    assert not r.advantages[1].any() and not r.returns[3].any() and not r.rewards[1].any()
    before = [p.detach().clone() for p in trainer.unwrapped.parameters()]
    stats = trainer.statistics(r, trainer.update(r))
    assert stats["non_finite"] == 2 and math.isfinite(stats["policy_loss"])
    assert all(torch.isfinite(p).all() for p in trainer.unwrapped.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.unwrapped.parameters()))
    out = capsys.readouterr().out
    assert "2 of 4 episodes had a non-finite score" in out
    assert f"prompt rows [{rows[1]}, {rows[3]}]" in out
