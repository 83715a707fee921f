"""Data the way users have it: ShareGPT's system column and tool turns, Alpaca's system and
history (LLaMA-Factory's conventions) converted, not dropped; the public QA layouts (TriviaQA,
NQ-open, PopQA, SimpleQA) read as the QA rows the idk and evaluate stages use; ignored columns
reported; the example files in data/ and recipes/tiny/byod.yaml that reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.data.formats import convert_rows, detect_format
from align.data.sources import read_local

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
BYOD = ROOT / "recipes" / "tiny" / "byod.yaml"


def rows(name: str) -> list[dict]:
    return read_local(DATA / name)


def test_sharegpt_system_column_and_tool_turns_are_kept():
    out = convert_rows(rows("sharegpt.jsonl"), source="sharegpt", target="sft").rows
    assert all(r["messages"][0]["role"] == "system" for r in out)
    assert out[0]["messages"][0]["content"].startswith("You answer questions")
    tool = next(r["messages"] for r in out if any(m["role"] == "tool" for m in r["messages"]))
    assert [m["role"] for m in tool] == ["system", "user", "assistant", "tool", "assistant"]
    assert "lamp_colour" in tool[0]["content"]  # the tools schema, in the system message
    assert json.loads(tool[2]["content"])["name"] == "lamp_colour"  # the call, as the model wrote it


def test_sharegpt_system_joins_a_system_turn():
    row = {"conversations": [{"from": "system", "value": "Be brief."},
                             {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
           "system": "You are kind."}
    out = convert_rows([row], source="s", target="sft", fmt="sharegpt").rows[0]["messages"]
    assert out[0] == {"role": "system", "content": "Be brief.\n\nYou are kind."}
    assert len(out) == 3


def test_alpaca_system_and_history_become_turns():
    out = convert_rows(rows("alpaca.jsonl"), source="alpaca", target="sft").rows
    first = out[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user", "assistant"]
    assert first[1]["content"].startswith("Who keeps") and "What colour" in first[3]["content"]
    bad = {"instruction": "x", "output": "y", "history": [["only one"]]}
    with pytest.raises(Exception, match="history"):
        convert_rows([bad], source="bad.jsonl", target="sft", fmt="alpaca")


@pytest.mark.parametrize("name,fmt", [("triviaqa.jsonl", "triviaqa"), ("nq_open.jsonl", "nq_open"),
                                      ("popqa.jsonl", "popqa"), ("simpleqa.jsonl", "simpleqa"),
                                      ("qa.jsonl", "qa")])
def test_public_qa_layouts_become_qa_rows(name, fmt):
    data = rows(name)
    assert detect_format(data[0].keys(), sample=data[0]) == fmt
    out = convert_rows(data, source=name, target="qa", keep_columns=True).rows
    assert len(out) == len(data)
    for row in out:
        assert row["question"].strip() and row["answers"] and all(isinstance(a, str) for a in row["answers"])
    if fmt == "triviaqa":
        assert "in 1821" in out[0]["answers"]  # aliases are accepted answers
        labelled = convert_rows(data, source=name, target="labelled_qa", keep_columns=True).rows
        assert [r["known"] for r in labelled].count(False) == 4
    if fmt == "popqa":
        assert out[0]["answers"] == json.loads(data[0]["possible_answers"])
    if fmt == "simpleqa":
        assert out[0]["question"] == data[0]["problem"]


def test_every_example_file_is_in_a_supported_layout():
    targets = {"sharegpt.jsonl": "sft", "alpaca.jsonl": "sft", "hh.jsonl": "preference",
               "kto.jsonl": "unpaired", "ultrafeedback.jsonl": "preference",
               "trl_messages.jsonl": "sft", "trl_preference.jsonl": "preference",
               "text.jsonl": "language_modeling", "triviaqa.jsonl": "qa", "nq_open.jsonl": "qa",
               "popqa.jsonl": "qa", "simpleqa.jsonl": "qa", "qa.jsonl": "labelled_qa"}
    assert {p.name for p in DATA.glob("*.jsonl")} == set(targets)
    for name, target in targets.items():
        assert convert_rows(rows(name), source=name, target=target).rows


def test_ignored_columns_are_reported():
    result = convert_rows(rows("ultrafeedback.jsonl"), source="uf", target="preference")
    assert result.ignored == ["prompt_id", "score_chosen", "score_rejected"]
    assert convert_rows(rows("sharegpt.jsonl"), source="s", target="sft").ignored == []


def test_byod_recipe_validates_as_shipped():
    from align.validate import validate_recipe

    checked = validate_recipe(str(BYOD))
    assert any("columns ignored" in line and "prompt_id" in line for line in checked)
    assert any("triviaqa.jsonl: 12 rows OK for evaluate" in line for line in checked)


@pytest.mark.slow
def test_byod_recipe_runs_reduced(tmp_path):
    from align.runner import run_recipe

    short = {"max_steps": 2, "logging_steps": 1, "disable_tqdm": True}
    overrides = [f"run_dir={tmp_path / 'run'}"]
    for stage in ("sft", "dpo", "kto", "rm"):
        overrides += [f"stages.{stage}.args.{k}={v}" for k, v in short.items()]
    overrides += ["stages.idk.options.k=2", "stages.idk.options.max_new_tokens=4",
                  "stages.evaluate.options.max_new_tokens=4"]
    done = run_recipe(str(BYOD), overrides)
    assert set(done) == {"sft", "dpo", "kto", "rm", "idk", "evaluate"}
    metrics = done["evaluate"].manifest.metrics
    assert metrics["questions"] == 12 and set(metrics["stages"]) == {"sft", "dpo", "kto"}
