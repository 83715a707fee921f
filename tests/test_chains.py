"""Every upstream tuning method (full, LoRA, QLoRA) into every downstream kind that loads a model
(rm, dpo, kto, orpo, ppo's policy and value model, idk, evaluate): each hand-off loads, trains a
step or two and writes its artifact. The three upstream SFT stages train once per module."""

from __future__ import annotations

import pytest

from conftest import write_recipe

pytestmark = pytest.mark.slow

UPSTREAM = ("full", "lora", "qlora")
FAST = {"per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1,
        "disable_tqdm": True, "max_steps": 2, "save_steps": 100, "max_length": 64}
PAIRS = {"train": {"world": "preference_train", "max_samples": 16}}


def chain_stages() -> dict:
    stages = {}
    for up in UPSTREAM:
        sft = f"sft_{up}"
        stages[sft] = {"kind": "sft", "method": up,
                       "data": {"train": {"world": "sft", "max_samples": 16}}, "args": FAST}
        stages[f"rm_{up}"] = {"kind": "rm", "from": sft, "method": "lora", "data": PAIRS,
                              "args": FAST}
        stages[f"dpo_{up}"] = {"kind": "dpo", "from": sft, "method": "lora", "data": PAIRS,
                               "args": FAST}
        stages[f"kto_{up}"] = {"kind": "kto", "from": sft, "method": "full", "data": PAIRS,
                               "args": FAST}
        stages[f"orpo_{up}"] = {"kind": "orpo", "from": sft, "method": "qlora", "data": PAIRS,
                                "args": FAST}
        stages[f"ppo_{up}"] = {
            "kind": "ppo", "from": [sft, f"rm_{up}"], "method": "lora",
            "data": {"train": {"world": "qa_train", "columns": {"question": "prompt"},
                               "max_samples": 8}},
            "args": {"rewards": [{"source": "rm", "weight": 1.0}], "value_model": "rm",
                     "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1,
                     "total_episodes": 8, "response_length": 4, "save_steps": 100,
                     "disable_tqdm": True}}
        stages[f"idk_{up}"] = {"kind": "idk", "from": sft,
                               "data": {"train": {"world": "qa_train", "max_samples": 8}},
                               "options": {"k": 2, "max_new_tokens": 4}}
        stages[f"evaluate_{up}"] = {"kind": "evaluate", "from": [sft, f"dpo_{up}"],
                                    "data": {"train": {"world": "qa_eval", "max_samples": 8}},
                                    "options": {"max_new_tokens": 4}}
    return stages


@pytest.fixture(scope="module")
def chain_recipe(tmp_path_factory, tiny_model):
    from align.runner import run_recipe

    tmp = tmp_path_factory.mktemp("chains")
    path = write_recipe(tmp, chain_stages(), name="chains",
                        model={"name_or_path": str(tiny_model)})
    run_recipe(path, only=[f"sft_{up}" for up in UPSTREAM])
    return path


@pytest.mark.parametrize("up", UPSTREAM)
@pytest.mark.parametrize("down", ["rm", "dpo", "kto", "orpo", "ppo", "idk", "evaluate"])
def test_every_upstream_method_into_every_model_loading_kind(chain_recipe, up, down):
    from align.runner import run_recipe

    names = [f"rm_{up}", f"ppo_{up}"] if down == "ppo" else \
        [f"dpo_{up}", f"evaluate_{up}"] if down == "evaluate" else [f"{down}_{up}"]
    done = run_recipe(chain_recipe, only=names)
    artifact = done[names[-1]]
    assert artifact is not None and artifact.manifest.status == "complete"
    if down == "ppo":
        assert artifact.manifest.metrics["value_model"] == "rm"
