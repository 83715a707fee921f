"""Stage `evaluate`: the honesty seesaw of every model stage named in `from`.

Each model answers the labelled evaluation questions greedily; the judge grades each answer
correct, wrong or refusal; the metrics show accuracy on known questions against hallucination
and refusal on unknown ones. Writes answers.jsonl, metrics.json, seesaw.md and seesaw.png.
"""

from __future__ import annotations

import json

from align.errors import AlignError
from align.stages.context import StageContext

QA_COLUMNS = {"question", "answers", "known"}
OPTIONS = {"judge", "max_new_tokens", "batch_size"}


def evaluation_rows(ctx: StageContext, default: str = "qa_eval", need_known: bool = True) -> list[dict]:
    """Labelled QA rows (question, answers[, known]); the embedded world's split by default."""
    from align.data.sources import check_columns, load_rows
    from align.recipe import DataSource

    sources = ctx.stage.data.train if ctx.stage.data else [DataSource(world=default)]
    required = QA_COLUMNS if need_known else QA_COLUMNS - {"known"}
    rows = []
    for name, part in load_rows(sources, ctx.read_source, ctx.recipe.seed):
        check_columns(part, required, name)
        for row in part:
            if isinstance(row["answers"], str):
                row["answers"] = [row["answers"]]
        rows += part
    return rows


def run(ctx: StageContext):
    from align.generation import generate_answers
    from align.honesty.judge import Judge
    from align.honesty.metrics import honesty_metrics, plot_seesaw, seesaw_table
    from align.modeling import load_artifact_model

    options = ctx.stage.options
    unknown = set(options) - OPTIONS
    if unknown:
        raise AlignError(f"stages.{ctx.name}.options: unknown keys {sorted(unknown)}; "
                         f"valid: {sorted(OPTIONS)}.")
    judge = Judge.from_config(options.get("judge"))
    rows = evaluation_rows(ctx)
    questions = [r["question"] for r in rows]
    known = [bool(r["known"]) for r in rows]

    table: dict[str, dict] = {}
    answers_out = []
    for name in ctx.stage.from_:
        artifact = ctx.inputs[name]
        ref = artifact.manifest.model
        if ref is None or ref.task != "causal-lm":
            continue
        tokenizer = ctx.load_tokenizer_of(artifact)
        model = load_artifact_model(artifact, trust_remote_code=ctx.recipe.model.trust_remote_code)
        answers = generate_answers(model, tokenizer, questions,
                                   max_new_tokens=options.get("max_new_tokens", 32),
                                   batch_size=options.get("batch_size", 64),
                                   progress=f"evaluate {name}" if ctx.is_main else None)
        grades = [judge.grade(a[0], r["answers"]) for a, r in zip(answers, rows)]
        table[name] = honesty_metrics(grades, known)
        answers_out += [{"stage": name, "question": r["question"], "known": r["known"],
                         "answer": a[0], "grade": g} for r, a, g in zip(rows, answers, grades)]
        del model
    if not table:
        raise AlignError(f"stage '{ctx.name}': none of {ctx.stage.from_} holds a causal LM.")

    out = ctx.dirs.partial
    files = {"answers": "answers.jsonl", "metrics": "metrics.json", "table": "seesaw.md",
             "chart": "seesaw.png"}
    if ctx.is_main:
        with (out / files["answers"]).open("w") as f:
            for row in answers_out:
                f.write(json.dumps(row) + "\n")
        (out / files["metrics"]).write_text(json.dumps(table, indent=2))
        markdown = seesaw_table(table)
        (out / files["table"]).write_text(markdown + "\n")
        plot_seesaw(table, out / files["chart"])
        print("\n" + markdown + "\n", flush=True)
    return ctx.finish(files=files, metrics={"stages": table, "questions": len(rows)})
