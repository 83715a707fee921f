"""The idk stage on the tiny model: its categories match the world's split, its files load."""

from __future__ import annotations

import json

import pytest

from align.data.formats import convert_rows
from align.generation import generate_answers
from align.honesty.abstention import load_policy
from align.modeling import load_artifact_model, load_tokenizer
from align.runner import run_recipe
from conftest import write_recipe


@pytest.mark.slow
def test_idk_stage_probes_and_writes_training_files(tmp_path, pretrained_tiny):
    stages = {
        "sft": {"kind": "sft", "data": "world:sft",
                "args": {"num_train_epochs": 20, "per_device_train_batch_size": 8,
                         "learning_rate": 1e-3, "save_steps": 10_000, "disable_tqdm": True}},
        "idk": {"kind": "idk", "from": "sft", "options": {"k": 4, "batch_size": 32}},
    }
    path = write_recipe(tmp_path, stages, model={"name_or_path": pretrained_tiny})
    artifact = run_recipe(path)["idk"]
    stats = artifact.manifest.metrics

    # The world knows which questions are about known countries: the probe should agree.
    assert stats["label_agreement"] >= 0.8, stats
    assert stats["categories"]["known"] > 0 and stats["categories"]["unknown"] > 0

    read = lambda role: [json.loads(line) for line in open(artifact.file(role))]  # noqa: E731
    assert len(read("probe")) == stats["questions"]
    for role, target in (("sft", "sft"), ("preference", "preference"), ("kto", "unpaired"),
                         ("rm", "preference"), ("prompts", "prompt_only")):
        rows = read(role)
        assert rows, role
        result = convert_rows(rows, source=role, target=target, fmt="trl")
        assert not result.dropped, (role, result.dropped[:3])
    refusals = [r for r in read("sft") if r["messages"][1]["content"] in
                artifact.manifest.metrics["probe"]["idk_responses"]]
    assert len(refusals) == stats["categories"]["unknown"]


def test_probe_rows_label_an_evaluation_set():
    """Real QA has no `known` column: an idk probe of the SFT model supplies it, grey left out."""
    probe = [{"question": "q1", "answers": ["a"], "category": "known"},
             {"question": "q2", "answers": ["b"], "category": "grey"},
             {"question": "q3", "answers": ["c"], "category": "unknown"}]
    rows = convert_rows(probe, source="probe.jsonl", target="labelled_qa").rows
    assert [(r["question"], r["known"]) for r in rows] == [("q1", True), ("q3", False)]


@pytest.mark.slow
def test_abstain_stage_on_a_lora_model_links_its_weights_and_keeps_its_answers(tmp_path,
                                                                               pretrained_tiny):
    stages = {
        "sft": {"kind": "sft", "data": "world:sft", "method": "lora",
                "args": {"num_train_epochs": 10, "per_device_train_batch_size": 8,
                         "learning_rate": 3e-3, "save_steps": 10_000, "disable_tqdm": True}},
        "idk": {"kind": "idk", "from": "sft", "options": {"k": 2, "batch_size": 32}},
        "abstain": {"kind": "abstain", "from": ["sft", "idk"],
                    "options": {"max_hallucination": 0.2}},
    }
    results = run_recipe(write_recipe(tmp_path, stages, model={"name_or_path": pretrained_tiny}))
    sft, abstain = results["sft"], results["abstain"]
    assert abstain.manifest.model.type == "adapter"
    weights = "adapter_model.safetensors"
    # The adapter's weights are one file on disk, its config a copy the stage may rewrite.
    assert (abstain.model_path() / weights).stat().st_ino == (sft.model_path() / weights).stat().st_ino
    assert (abstain.model_path() / "adapter_config.json").stat().st_ino != \
        (sft.model_path() / "adapter_config.json").stat().st_ino
    policy = load_policy(abstain.model_path())
    fitted = abstain.manifest.metrics
    assert policy.threshold == fitted["threshold"] and fitted["pool_hallucination"] <= 0.2
    # Where the policy answers, the answer is the sft model's own, loaded through the chain.
    questions = [json.loads(line)["question"] for line in open(results["idk"].file("probe"))]
    tokenizer = load_tokenizer(sft.tokenizer_path())
    mine = generate_answers(load_artifact_model(abstain), tokenizer, questions, token_probs=True)
    theirs = generate_answers(load_artifact_model(sft), tokenizer, questions)
    decided = [policy.decide(a[0]) for a in mine]
    assert [a[0].text for a in mine] == [a[0] for a in theirs]
    assert any(d == policy.reply for d in decided) and any(d != policy.reply for d in decided)
