"""Prompts that leave no room for an answer: refused with their row, or dropped and counted."""

from __future__ import annotations

import pytest

from align.data.lengths import check_prompt_lengths, source_row_numbers, stage_max_length
from align.errors import DataError

SHORT = [{"role": "user", "content": "Who leads Kathilland?"}]
LONG = [{"role": "user", "content": "Who leads Kathilland? " * 40}]
ANSWER = [{"role": "assistant", "content": "Shekris Vremmas."}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from align.modeling import load_tokenizer

    return load_tokenizer(tiny_model)


def test_long_prompts_are_dropped_and_counted_with_on_error_drop(tokenizer):
    rows = [{"prompt": SHORT, "chosen": ANSWER, "rejected": ANSWER},
            {"prompt": LONG, "chosen": ANSWER, "rejected": ANSWER},
            {"messages": SHORT + ANSWER}, {"messages": LONG + ANSWER}]
    kept, dropped = check_prompt_lengths(rows, [1, 2, 3, 4], tokenizer, 64, "d.jsonl", "drop", "k")
    assert kept == [rows[0], rows[2]] and dropped == 2


def test_rows_are_numbered_as_in_the_source_file(tokenizer):
    # Source row 2 was malformed and dropped by conversion: converted row 2 is source row 3.
    numbers = source_row_numbers(3, {2}, 2)
    assert numbers == [1, 3]
    rows = [{"messages": SHORT + ANSWER}, {"messages": LONG + ANSWER}]
    with pytest.raises(DataError, match=r"d.jsonl, row 3, column 'prompt': the prompt is \d+ tokens"):
        check_prompt_lengths(rows, numbers, tokenizer, 64, "d.jsonl", "fail", "k")
    # KTO rows from pairs are two per source row: the message counts converted rows instead.
    assert source_row_numbers(2, set(), 4) is None
    with pytest.raises(DataError, match=r"converted row 2"):
        check_prompt_lengths(rows, None, tokenizer, 64, "d.jsonl", "fail", "k")


def test_max_length_comes_from_args_then_config_then_the_tokenizer(tokenizer):
    from trl import DPOConfig

    assert stage_max_length({"max_length": 96}, DPOConfig, tokenizer) == 96
    assert tokenizer.model_max_length == 512  # the tiny model's context
    assert stage_max_length({}, DPOConfig, tokenizer) == 512  # DPOConfig's 1024, capped


def test_validate_counts_the_rows_a_stage_will_drop(tmp_path):
    """`align validate` (and so `align run`, before the first stage) measures prompts as the stage
    will: with `on_error: drop` it says how many rows go."""
    import json

    from align.validate import validate_recipe
    from conftest import write_recipe

    def pair(prompt):
        return {"prompt": prompt, "chosen": "Shekris Vremmas.", "rejected": "Vak Vrultrol."}

    rows = [pair("Who leads Kathilland?"), pair(LONG[0]["content"]), pair("Who?")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stages = {"sft": {"kind": "sft", "data": "world:sft"},
              "dpo": {"kind": "dpo", "from": "sft", "args": {"max_length": 64},
                      "data": {"train": "pairs.jsonl", "on_error": "drop"}}}
    checked = validate_recipe(write_recipe(tmp_path, stages))
    assert "dpo: pairs.jsonl: 1 rows whose prompt reaches max_length 64 will be dropped" in checked
