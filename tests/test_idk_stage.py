"""The idk stage on the tiny model: its categories match the world's split, its files load."""

from __future__ import annotations

import json

import pytest

from align.data.formats import convert_rows
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
