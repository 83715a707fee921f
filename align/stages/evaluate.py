"""Stage `evaluate`: the honesty seesaw of every model stage named in `from`.

Each model answers the labelled evaluation questions greedily; the judge grades each answer
correct, wrong or refusal; the metrics show accuracy on known questions against hallucination
and refusal on unknown ones. Writes answers.jsonl, metrics.json, seesaw.md and seesaw.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from align.errors import AlignError
from align.generation import generate_answers
from align.honesty.judge import Judge
from align.honesty.metrics import honesty_metrics, plot_seesaw, seesaw_table
from align.jsonl import write_jsonl
from align.kinds import get_kind
from align.modeling import load_artifact_model, load_tokenizer
from align.stages.context import StageContext

OPTIONS = {"judge", "max_new_tokens", "batch_size"}


def evaluate_artifacts(artifacts: dict, rows: list[dict], options: dict, *, trust_remote_code=False,
                       progress: bool = True) -> tuple[dict, list[dict]]:
    """Greedy answers of every causal-LM artifact, graded: (metrics per name, answer rows)."""
    unknown = set(options) - OPTIONS
    if unknown:
        raise AlignError(f"evaluation options: unknown keys {sorted(unknown)}; valid: {sorted(OPTIONS)}.")
    judge = Judge.from_config(options.get("judge"))
    questions = [r["question"] for r in rows]
    known = [r["known"] for r in rows]  # booleans: the data path normalises the labels
    table: dict[str, dict] = {}
    answer_rows = []
    for name, artifact in artifacts.items():
        ref = artifact.manifest.model
        if ref is None or ref.task != "causal-lm":
            continue
        tokenizer = load_tokenizer(artifact.tokenizer_path(), trust_remote_code)
        model = load_artifact_model(artifact, trust_remote_code=trust_remote_code)
        answers = generate_answers(model, tokenizer, questions,
                                   max_new_tokens=options.get("max_new_tokens", 32),
                                   batch_size=options.get("batch_size", 64),
                                   progress=f"evaluate {name}" if progress else None)
        grades = [judge.grade(a[0], r["answers"]) for a, r in zip(answers, rows)]
        table[name] = honesty_metrics(grades, known)
        answer_rows += [{"stage": name, "question": r["question"], "known": r["known"],
                         "answer": a[0], "grade": g} for r, a, g in zip(rows, answers, grades)]
        del model
    if not table:
        raise AlignError(f"none of {list(artifacts)} holds a causal language model to evaluate.")
    return table, answer_rows


FILES = {"answers": "answers.jsonl", "metrics": "metrics.json", "table": "seesaw.md",
         "chart": "seesaw.png"}


def write_evaluation(out: Path, table: dict, answer_rows: list[dict]) -> str:
    """Write the evaluation files; returns the markdown table."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / FILES["answers"], answer_rows)
    (out / FILES["metrics"]).write_text(json.dumps(table, indent=2))
    markdown = seesaw_table(table)
    (out / FILES["table"]).write_text(markdown + "\n")
    plot_seesaw(table, out / FILES["chart"])
    return markdown


def run(ctx: StageContext):
    rows = ctx.rows(get_kind(ctx.stage.kind).data)
    artifacts = {name: ctx.inputs[name] for name in ctx.stage.from_}
    table, answer_rows = evaluate_artifacts(
        artifacts, rows, ctx.stage.options, trust_remote_code=ctx.recipe.model.trust_remote_code,
        progress=ctx.is_main)
    if ctx.is_main:
        markdown = write_evaluation(ctx.dirs.partial, table, answer_rows)
        print("\n" + markdown + "\n", flush=True)
    return ctx.finish(files=dict(FILES), metrics={"stages": table, "questions": len(rows)})
