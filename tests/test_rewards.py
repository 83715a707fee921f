"""The shared reward layer and the ternary honesty reward, without training: pure functions,
the recipe checks of an RL stage's `rewards`, and the adapter that hands a source to TRL."""

from __future__ import annotations

import math

import pytest
import torch

from align.errors import AlignError
from align.honesty.reward import (TernaryReward, grade_rates, honesty_reward, ternary_reward,
                                  ternary_score)
from align.kinds import get_kind
from align.recipe import RecipeError, load_recipe
from align.rewards import correct_answer, parse_rewards
from align.rewards.sources import CallableSource, Episodes, build_reward, check_callables
from align.rewards.spec import RewardSpec, check_rl_options, unique_names
from align.rewards.trl import TRLReward, completion_text, trl_reward_funcs
from conftest import write_recipe

IDK = "I don't know the answer to that."


# -- the ternary honesty reward -----------------------------------------------------------------

@pytest.mark.parametrize("grade, category, expected", [
    ("correct", None, 1.0), ("refusal", None, 0.0), ("wrong", None, -1.0),
    ("correct", "known", 1.0), ("refusal", "unknown", 0.0), ("wrong", "unknown", -1.0),
    ("refusal", "known", 0.0),  # without r_abstain_known every refusal earns r_abstain
])
def test_ternary_score_defaults(grade, category, expected):
    assert ternary_score(grade, category) == expected


def test_ternary_score_configured_and_known_refusal_priced_apart():
    kw = dict(r_correct=2.0, r_abstain=0.25, r_wrong=-3.0, r_abstain_known=-0.5)
    assert [ternary_score(g, "unknown", **kw) for g in ("correct", "refusal", "wrong")] == [2.0, 0.25, -3.0]
    assert ternary_score("refusal", "known", **kw) == -0.5
    assert ternary_score("refusal", "grey", **kw) == 0.25
    with pytest.raises(AlignError, match="unknown grade"):
        ternary_score("maybe")


def test_ternary_reward_grades_with_the_judge_against_gold_answers():
    completions = ["The capital is Kelmar.", IDK, "The capital is Dorvan.", "", "I don't know if it's Kelmar"]
    answers = [["Kelmar"]] * 5
    assert ternary_reward([None] * 5, completions, answers=answers) == [1.0, 0.0, -1.0, -1.0, 0.0]
    # As TRL hands conversational completions to a bare reward function: message lists.
    messages = [[{"role": "assistant", "content": c}] for c in completions]
    assert ternary_reward([None] * 5, messages, answers=answers) == [1.0, 0.0, -1.0, -1.0, 0.0]
    reward = TernaryReward(r_abstain=0.3, r_abstain_known=-0.5)
    out = reward([None] * 4, ["Kelmar", IDK, IDK, "Dorvan"], answers=[["Kelmar"]] * 4,
                 category=["known", "known", "unknown", "unknown"])
    assert out == [1.0, -0.5, 0.3, -1.0]
    # A boolean `known` column (the world's QA splits) stands in for the probe's category.
    out = reward([None] * 2, [IDK, IDK], answers=[["x"], ["y"]], known=[True, False])
    assert out == [-0.5, 0.3]
    assert reward.metrics() == {"correct_rate": 0.0, "refusal_rate": 1.0, "wrong_rate": 0.0,
                                "correct_rate_known": 0.0, "refusal_rate_known": 1.0,
                                "wrong_rate_known": 0.0, "correct_rate_unknown": 0.0,
                                "refusal_rate_unknown": 1.0, "wrong_rate_unknown": 0.0}


def test_ternary_reward_refuses_an_order_that_rewards_hallucination_and_needs_answers():
    with pytest.raises(AlignError, match="r_correct > r_abstain > r_wrong"):
        TernaryReward(r_abstain=-2.0)
    with pytest.raises(AlignError, match="r_correct > r_abstain > r_wrong"):
        TernaryReward(r_abstain=1.0)
    with pytest.raises(AlignError, match="needs an `answers` column"):
        TernaryReward()(["q"], ["a"])
    with pytest.raises(AlignError, match="unknown judge config key"):
        TernaryReward(judge={"metod": "exact"})
    assert TernaryReward(judge={"method": "exact"})([None], ["kelmar"], answers=[["Kelmar"]]) == [1.0]


def test_grade_rates_and_the_older_honesty_table_still_work():
    assert grade_rates(__import__("collections").Counter()) == {}
    assert honesty_reward(None, [IDK, "Kelmar"], [["Kelmar"]] * 2, ["unknown", "known"]) == [1.0, 1.0]


# -- reward specs -------------------------------------------------------------------------------

def test_reward_specs_parse_and_name():
    specs = parse_rewards([{"source": "honesty", "args": {"r_abstain": 0.1}},
                           {"source": "rm", "weight": 0.5},
                           {"source": "align.rewards:correct_answer", "weight": 2},
                           {"source": "my.mod:correct_answer"}])
    assert specs[0] == RewardSpec("honesty", 1.0, {"r_abstain": 0.1})
    assert unique_names(specs) == ["honesty", "rm", "correct_answer", "correct_answer#2"]


@pytest.mark.parametrize("items, message", [
    ([], "needs at least one reward source"),
    ([{"source": "nope"}], r"'rewards.0'.source must be"),
    ([{"source": "m:f", "wieght": 1}], r"unknown key\(s\) \['wieght'\]"),
    ([{"source": "m:f", "weight": math.nan}], "finite number"),
    ([{"source": "m:f", "args": [1]}], "args must be a mapping"),
    ([{"source": "rm", "args": {"x": 1}}], "rm source takes no args"),
    ([{"source": "honesty", "args": {"r_abstian": 0}}], r"unknown key\(s\) \['r_abstian'\]"),
    ([{"source": "honesty", "args": {"r_abstain": "0"}}], "r_abstain must be a finite number"),
])
def test_bad_reward_specs_name_the_entry(items, message):
    with pytest.raises(AlignError, match=message):
        parse_rewards(items)


def test_rl_options_need_rewards_and_nothing_else():
    assert check_rl_options({"rewards": [{"source": "honesty"}]}, "stages.g.options")[0].source == "honesty"
    with pytest.raises(AlignError, match="'stages.g.options.rewards' is missing"):
        check_rl_options({}, "stages.g.options")
    with pytest.raises(AlignError, match="unknown key 'stages.g.options.reward'"):
        check_rl_options({"reward": []}, "stages.g.options")


def test_callables_are_imported_before_any_model_loads():
    check_callables(parse_rewards([{"source": "align.rewards:correct_answer"}, {"source": "honesty"}]), "r")
    with pytest.raises(AlignError, match="r.0: .*no_such_module_xyz"):
        check_callables(parse_rewards([{"source": "no_such_module_xyz:f"}]), "r")
    with pytest.raises(AlignError, match=r"r.0.args: .*r_correct > r_abstain"):
        check_callables(parse_rewards([{"source": "honesty", "args": {"r_abstain": 5}}]), "r")


# -- sources and their weighted sum ---------------------------------------------------------------

def scaled(prompts, completions, scale=1.0, **columns):
    return [scale * len(c) if c != "nan" else math.nan for c in completions]


def test_callable_args_are_bound_and_non_finite_values_are_counted_per_source():
    episodes = Episodes(prompts=[[]] * 3, completions=["ab", "nan", IDK], columns={"answers": [["ab"]] * 3})
    reward = build_reward([{"source": "test_rewards:scaled", "args": {"scale": 2.0}, "weight": 0.5},
                           {"source": "honesty"}])
    batch = reward(episodes)
    assert batch.parts["test_rewards:scaled"].tolist()[0] == 4.0
    assert batch.parts["honesty"].tolist() == [1.0, -1.0, 0.0]
    assert batch.non_finite == {"test_rewards:scaled": 1, "honesty": 0}
    assert batch.bad_rows == [1] and batch.total[0].item() == 0.5 * 4.0 + 1.0


def test_correct_answer_moved_and_still_reachable_from_the_old_name():
    from align.importing import import_object

    assert import_object("align.ppo.rewards:correct_answer", "r") is correct_answer
    assert correct_answer(None, ["Kelmar it is", "no"], answers=[["Kelmar"], ["Kelmar"]]) == [1.0, 0.0]


# -- as TRL reward functions ----------------------------------------------------------------------

def test_trl_reward_funcs_carry_names_weights_and_report_non_finite():
    funcs, weights = trl_reward_funcs(parse_rewards(
        [{"source": "honesty", "weight": 1.0}, {"source": "test_rewards:scaled", "weight": 0.25}]))
    assert [f.__name__ for f in funcs] == ["honesty", "scaled"] and weights == [1.0, 0.25]
    from trl.trainer.utils import get_callable_name

    assert get_callable_name(funcs[0]) == "honesty"  # what TRL logs: rewards/honesty/mean
    logged, messages = {}, []
    prompts = [[{"role": "user", "content": "Who leads Gouia?"}]] * 3
    completions = [[{"role": "assistant", "content": "Nim Dorr"}], [{"role": "assistant", "content": IDK}],
                   [{"role": "assistant", "content": "nan"}]]
    kwargs = dict(answers=[["Nim Dorr"]] * 3, known=[True, False, False], completion_ids=[[1]] * 3,
                  trainer_state=object(), log_extra=lambda *a: None,
                  log_metric=lambda name, value: logged.setdefault(name, value))
    assert funcs[0](prompts, completions, **kwargs) == [1.0, 0.0, -1.0]
    scaled_func = TRLReward(funcs[1].source, "scaled", log=messages.append)
    assert scaled_func(prompts, completions, **kwargs) == [8.0, float(len(IDK)), None]
    assert scaled_func.non_finite == 1 and "1 of 3 values not finite" in messages[0]
    assert logged["non_finite/honesty"] == 0.0 and logged["non_finite/scaled"] == 1.0
    assert logged["honesty/refusal_rate_unknown"] == 0.5 and logged["honesty/correct_rate_known"] == 1.0


def test_completion_text_reads_every_layout():
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "ab"
    assert completion_text({"role": "assistant", "content": "c"}) == "c"


def test_callable_source_accepts_tensors():
    source = CallableSource("t", fn=lambda p, c, **k: torch.tensor([1.0, 2.0]))
    assert source(Episodes([[]] * 2, ["a", "b"], {})).tolist() == [1.0, 2.0]


# -- the kinds and their recipe checks ------------------------------------------------------------

def test_grpo_and_rloo_are_registered_on_trl():
    for name in ("grpo", "rloo"):
        kind = get_kind(name)
        assert (kind.config, kind.trainer, kind.data) == (f"trl:{name.upper()}Config",
                                                           f"trl:{name.upper()}Trainer", "prompt_only")
        assert kind.reference and kind.makes_model and "lora" in kind.methods and "qlora" in kind.methods


GRPO = {"kind": "grpo", "from": "sft", "data": {"train": {"world": "qa_train", "columns": {"question": "prompt"}}},
        "options": {"rewards": [{"source": "honesty"}]}}


def recipe_with(tmp_path, grpo: dict):
    stages = {"sft": {"kind": "sft", "data": "world:sft"}, "grpo": grpo}
    return load_recipe(write_recipe(tmp_path, stages))


def test_recipe_checks_rl_options_and_trl_args(tmp_path):
    # vLLM settings are GRPOConfig fields: validated, not exercised.
    recipe_with(tmp_path, {**GRPO, "args": {"use_vllm": True, "vllm_mode": "colocate", "beta": 0.0,
                                            "num_generations": 4}})
    with pytest.raises(RecipeError, match="'stages.grpo.options.rewards.0'.source must be"):
        recipe_with(tmp_path, {**GRPO, "options": {"rewards": [{"source": "bogus"}]}})
    with pytest.raises(RecipeError, match="'stages.grpo.options.rewards' is missing"):
        recipe_with(tmp_path, {**GRPO, "options": {}})
    with pytest.raises(RecipeError, match="GRPOConfig has no field 'vllm_mod'. Did you mean 'vllm_mode'"):
        recipe_with(tmp_path, {**GRPO, "args": {"vllm_mod": "server"}})
    with pytest.raises(RecipeError, match="RLOOConfig has no field 'epsilon_hi'"):
        recipe_with(tmp_path, {**GRPO, "kind": "rloo", "args": {"epsilon_hi": 0.3}})
    with pytest.raises(RecipeError, match="'stages.grpo.args.use_vllm' must be bool"):
        recipe_with(tmp_path, {**GRPO, "args": {"use_vllm": "yes"}})
