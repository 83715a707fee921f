"""TRL's own spellings: a scalar where TRL takes a list, and TRL command-line keys answered
with where align takes them (not "Did you mean 'use_cpu'?")."""

from __future__ import annotations

import pytest
import yaml

from conftest import write_recipe

from align.recipe import RecipeError, load_recipe

DPO = {"kind": "dpo", "data": "world:preference_train"}


def test_a_scalar_where_trl_takes_a_list(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, {"dpo": {**DPO, "args": {"loss_type": "sigmoid"}}}))
    assert recipe.stages["dpo"].args["loss_type"] == ["sigmoid"]
    with pytest.raises(RecipeError, match="must be"):
        load_recipe(write_recipe(tmp_path, {"dpo": {**DPO, "args": {"loss_type": 3}}}, name="b"))


@pytest.mark.parametrize("key,value,expected", [
    ("use_peft", True, "method:"),
    ("lora_r", 16, "lora: {r: ...}"),
    ("lora_alpha", 32, "alpha"),
    ("load_in_4bit", True, "method: qlora"),
    ("model_name_or_path", "Qwen/Qwen2.5-0.5B", "model: {name_or_path"),
])
def test_trl_cli_keys_in_stage_args_point_to_align(tmp_path, key, value, expected):
    path = write_recipe(tmp_path, {"dpo": {**DPO, "args": {key: value}}})
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert "TRL command-line key" in str(err.value) and expected in str(err.value)
    assert "Did you mean" not in str(err.value)


def test_trl_cli_keys_at_the_top_of_a_recipe(tmp_path):
    path = write_recipe(tmp_path, {"dpo": DPO})
    data = yaml.safe_load(open(path))
    data["model_name_or_path"] = "Qwen/Qwen2.5-0.5B"
    open(path, "w").write(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="model: {name_or_path"):
        load_recipe(path)
