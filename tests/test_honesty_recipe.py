"""The default recipe, reduced: the shipped honesty.yaml's sft -> idk -> sft_idk -> dpo -> evaluate
stages on the small world, from the session's pretrained tiny model. DPO on the builder's pairs must make
the model decline questions about countries no training text mentions, where SFT never did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from align.runner import run_recipe
from conftest import SMALL_WORLD

pytestmark = pytest.mark.slow  # trains the reduced default recipe

HONESTY = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "honesty.yaml"
KEEP = ("sft", "idk", "sft_idk", "dpo", "evaluate")


def reduced_recipe(tmp_path, pretrained: str) -> str:
    recipe = yaml.safe_load(HONESTY.read_text())
    stages = {name: recipe["stages"][name] for name in KEEP}
    stages["sft"].pop("from")  # the session's pretrained model stands in for the pretrain stage
    # The small world has 24 SFT rows where the recipe's has 160: as many steps need more epochs.
    stages["sft"]["args"]["num_train_epochs"] = 20
    stages["sft_idk"]["args"]["num_train_epochs"] = 15
    stages["idk"]["options"]["batch_size"] = 64
    stages["evaluate"]["from"] = ["sft", "sft_idk", "dpo"]
    for stage in stages.values():
        stage.get("args", {})["disable_tqdm"] = True
    recipe.update(name="honesty-reduced", run_dir=str(tmp_path / "run"), world=dict(SMALL_WORLD),
                  model={"name_or_path": pretrained}, stages=stages)
    path = tmp_path / "honesty.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


def test_dpo_on_idk_pairs_raises_refusal_on_unknown_questions(tmp_path, pretrained_tiny):
    results = run_recipe(reduced_recipe(tmp_path, pretrained_tiny))
    table = results["evaluate"].manifest.metrics["stages"]
    sft, dpo = table["sft"], table["dpo"]

    assert dpo["refusal"] >= sft["refusal"] + 0.25, table
    # It learned when to decline, not to decline everything.
    assert dpo["over_refusal"] <= 0.5, table

    run_dir = tmp_path / "run"
    report = (run_dir / "report.md").read_text()
    assert "| dpo |" in report and "![training curves](curves.png)" in report
    assert (run_dir / "curves.png").stat().st_size > 0
    # Every answer the table counts is on disk, graded.
    answers = [json.loads(line) for line in open(results["evaluate"].file("answers"))]
    refusals = sum(a["grade"] == "refusal" and not a["known"] for a in answers if a["stage"] == "dpo")
    unknown = sum(not a["known"] for a in answers if a["stage"] == "dpo")
    assert refusals / unknown == dpo["refusal"]
