"""PPOConfig checks itself: built in Python it refuses what a recipe would, naming the field;
built from a recipe's args it names `stages.<name>.args.<key>`; every field says what it is."""

from __future__ import annotations

import dataclasses

import pytest

from align.errors import AlignError
from align.ppo.config import PPOConfig

CALLABLE = [{"source": "align.rewards:correct_answer"}]


def test_defaults_and_good_values_construct():
    config = PPOConfig()
    assert (config.batch_size, config.mini_batch_size, config.rewards) == (64, 16, [{"source": "rm", "weight": 1.0}])
    assert PPOConfig().rewards is not config.rewards  # each config its own list
    PPOConfig(rewards=CALLABLE, batch_size=4, mini_batch_size=2, gradient_accumulation_steps=2,
              learning_rate=1, total_episodes=8, max_grad_norm=None, score_clip=3.0,
              value_model="policy", score_normalization="running", seed=0)
    assert dataclasses.replace(config, batch_size=32).batch_size == 32
    # A reward source is checked for its form only (the stage imports it): as align.importing reads it.
    PPOConfig(rewards=[{"source": "my.rewards:Scorer.score", "weight": 0.5}, {"source": "rm"}])


@pytest.mark.parametrize("kwargs, named, why", [
    ({"mini_batch_size": 32, "batch_size": 16}, "mini_batch_size", "cannot exceed batch_size (16)"),
    ({"mini_batch_size": 6, "batch_size": 16}, "mini_batch_size", "must divide batch_size"),
    ({"gradient_accumulation_steps": 3, "mini_batch_size": 8, "batch_size": 16},
     "gradient_accumulation_steps", "must divide mini_batch_size"),
    ({"learning_rate": -1e-5}, "learning_rate", "must be a positive number"),
    ({"learning_rate": float("nan")}, "learning_rate", "must be a positive number"),
    ({"cliprange": 1.5}, "cliprange", "must be in (0, 1)"),
    ({"top_p": 0}, "top_p", "must be in (0, 1]"),
    ({"lam": 1.1}, "lam", "must be in [0, 1]"),
    ({"ppo_epochs": 0}, "ppo_epochs", "must be at least 1"),
    ({"total_episodes": 0}, "total_episodes", "must be at least 1 (or null)"),
    ({"kl_coef": -0.1}, "kl_coef", "must not be negative"),
    ({"max_grad_norm": 0}, "max_grad_norm", "must be positive (or null to disable)"),
    ({"missing_eos_penalty": -1.0}, "missing_eos_penalty", "must not be negative"),
    ({"rewards": []}, "rewards", "needs at least one source"),
    ({"rewards": [{"source": "not a function"}]}, "rewards.0", "module:function"),
    ({"rewards": [{"source": "m:f", "wieght": 2}]}, "rewards.0", "unknown key(s) ['wieght']"),
    ({"rewards": [{"source": "m:f", "weight": float("inf")}]}, "rewards.0", "finite number"),
    ({"rewards": CALLABLE, "score_normalization": "rm_stats"}, "score_normalization",
     "needs a reward source `rm`"),
    # What a recipe's annotations check refuses, refused here too.
    ({"kl_estimator": "k4"}, "kl_estimator", "must be one of 'k1', 'k2', 'k3'"),
    ({"value_model": "critic"}, "value_model", "must be one of 'rm', 'policy' or null"),
    ({"learning_rate": "fast"}, "learning_rate", "must be float"),
    ({"batch_size": 2.5}, "batch_size", "must be int"),
    ({"whiten_rewards": "yes"}, "whiten_rewards", "must be bool"),
    ({"seed": True}, "seed", "must be int or null"),
])
def test_python_built_config_with_a_bad_value_names_the_field(kwargs, named, why):
    with pytest.raises(AlignError) as info:
        PPOConfig(**kwargs)
    message = str(info.value)
    assert f"'PPOConfig.{named}'" in message and why in message, message


def test_recipe_args_name_the_stage_key_and_the_file():
    with pytest.raises(AlignError) as info:
        PPOConfig.from_args({"mini_batch_size": 32, "batch_size": 16}, "stages.ppo.args", "r.yaml")
    assert str(info.value) == ("r.yaml: 'stages.ppo.args.mini_batch_size' cannot exceed "
                               "batch_size (16) (got 32).")
    with pytest.raises(AlignError, match=r"^r.yaml: 'stages.x.args.rewards.0'.source must be"):
        PPOConfig.validate_args({"rewards": [{"source": "nope"}]}, "stages.x.args", "r.yaml")
    with pytest.raises(AlignError, match="unknown key 'stages.ppo.args.kl_estimater'"):
        PPOConfig.validate_args({"kl_estimater": "k3"}, "stages.ppo.args")
    # The recipe's place is only for that call: a config built next names PPOConfig again.
    with pytest.raises(AlignError, match=r"^'PPOConfig.learning_rate'"):
        PPOConfig(learning_rate=0)


def test_from_args_returns_the_checked_config():
    config = PPOConfig.from_args({"rewards": CALLABLE, "batch_size": 8, "mini_batch_size": 8})
    assert (config.batch_size, config.uses_rm) == (8, False)
    assert PPOConfig.validate_args({"rewards": CALLABLE}, "stages.ppo.args") is None


def test_every_field_has_one_line_of_help():
    for f in dataclasses.fields(PPOConfig):
        text = f.metadata.get("help", "")
        assert text and "\n" not in text and text.endswith("."), f.name
