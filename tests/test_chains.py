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
    # Straight from the recipe's base model, no `from:` (the reference is then the base model).
    stages["dpo_base"] = {"kind": "dpo", "method": "lora", "data": PAIRS, "args": FAST}
    stages["kto_base"] = {"kind": "kto", "method": "full", "data": PAIRS, "args": FAST}
    stages["orpo_base"] = {"kind": "orpo", "method": "lora", "data": PAIRS, "args": FAST}
    stages["rm_base"] = {"kind": "rm", "method": "full", "data": PAIRS, "args": FAST}
    stages["ppo_base"] = {
        "kind": "ppo", "method": "full",
        "data": {"train": {"world": "qa_train", "columns": {"question": "prompt"},
                           "max_samples": 8}},
        "args": {"rewards": [{"source": "align.ppo.rewards:correct_answer", "weight": 1.0}],
                 "value_model": "policy", "batch_size": 4, "mini_batch_size": 2,
                 "ppo_epochs": 1, "total_episodes": 8, "response_length": 4,
                 "save_steps": 100, "disable_tqdm": True}}
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


def test_rm_accuracy_on_training_pairs_is_named_so(chain_recipe):
    """An rm stage without eval pairs scores its training pairs: the log line, the manifest and
    report.md say so instead of calling it held-out."""
    from pathlib import Path

    from align.runner import run_recipe

    artifact = run_recipe(chain_recipe, only=["rm_full"])["rm_full"]
    metrics = artifact.manifest.metrics
    assert metrics["scored_on"] == "train"
    assert metrics["train_pair_accuracy"] == metrics["accuracy"]
    assert "not held-out" in metrics["accuracy_note"]
    report = (Path(chain_recipe).parent / "run" / "report.md").read_text()
    assert "accuracy on training pairs" in report


@pytest.mark.parametrize("kind", ["dpo", "kto", "orpo", "rm", "ppo"])
def test_preference_stages_start_from_the_base_model_without_from(chain_recipe, tiny_model, kind):
    from align.runner import run_recipe
    from align.validate import validate_recipe

    validate_recipe(chain_recipe, only=[f"{kind}_base"])
    artifact = run_recipe(chain_recipe, only=[f"{kind}_base"])[f"{kind}_base"]
    model = artifact.manifest.model
    assert artifact.manifest.inputs == {}
    if model.type == "adapter":
        assert model.base == str(tiny_model)  # the base model is the start and the reference
