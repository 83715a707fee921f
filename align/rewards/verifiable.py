"""Verifiable rewards for QA data, named in recipes as `module:function` sources."""

from __future__ import annotations

from align.errors import AlignError
from align.honesty.judge import Judge


def correct_answer(prompts, completions, answers=None, **columns) -> list[float]:
    """1.0 when the completion contains a gold answer or alias (the `answers` column, judged as
    the evaluation judges), else 0.0. For recipes: `source: align.rewards:correct_answer`."""
    if answers is None:
        raise AlignError("align.rewards:correct_answer needs an `answers` column in the prompt data "
                         "(a gold answer or a list of aliases per row).")
    judge = Judge(method="contains")
    return [1.0 if judge.grade(c, gold) == "correct" else 0.0 for c, gold in zip(completions, answers)]
