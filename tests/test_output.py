"""When stdout is not a terminal (a CI log, a file), a training stage prints one line per
logging step and no carriage-return progress bars."""

from __future__ import annotations

import pytest

from conftest import write_recipe


@pytest.mark.slow
def test_one_line_per_logging_step_without_a_terminal(tmp_path, tiny_model, capfd):
    from align.runner import run_recipe

    stages = {"sft": {"kind": "sft", "data": {"train": {"world": "sft", "max_samples": 8}},
                      "args": {"max_steps": 3, "logging_steps": 1,
                               "per_device_train_batch_size": 4, "save_steps": 100}}}
    run_recipe(write_recipe(tmp_path, stages, model={"name_or_path": str(tiny_model)}))
    captured = capfd.readouterr()
    out = captured.out + captured.err
    assert "\r" not in out
    assert len([line for line in out.splitlines() if line.startswith("{'loss'")]) == 3


def test_only_a_new_score_head_load_report_is_filtered():
    from align.console import ExpectedNewHead, _is_new_head_report

    head = ("\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: /m\n"
            "Key          | Status  | \n-------------+---------+-\nscore.weight | MISSING | \n\n"
            "Notes:\n- MISSING:\tthose params were newly initialized")
    assert _is_new_head_report(head)
    other = head.replace("score.weight | MISSING", "model.layers.0.mlp.up_proj.weight | MISSING")
    assert not _is_new_head_report(other)
    assert not _is_new_head_report("some other warning | with a bar")

    import logging

    record = logging.LogRecord("transformers.modeling_utils", logging.WARNING, "", 0, head, (), None)
    assert ExpectedNewHead().filter(record) is False
