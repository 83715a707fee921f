"""Stage `evaluate`: the honesty seesaw of every model stage named in `from`.

Each model answers the labelled evaluation questions greedily; the judge grades each answer
correct, wrong or refusal; the metrics show accuracy on known questions against hallucination
and refusal on unknown ones. Writes answers.jsonl, metrics.json, seesaw.md and seesaw.png.
"""

from __future__ import annotations

import json
from pathlib import Path

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
        if need_known and part and "known" not in part[0] and "category" in part[0]:
            part = labels_from_probe(part)
        check_columns(part, required, name)
        for row in part:
            if isinstance(row["answers"], str):
                row["answers"] = [row["answers"]]
        rows += part
    return rows


def labels_from_probe(rows: list[dict]) -> list[dict]:
    """An idk stage's probe rows as labelled QA: real QA data has no `known` column, so what a
    model knows is what a probe of it found (its grey zone left out)."""
    return [{**row, "known": row["category"] == "known"} for row in rows
            if row.get("category") in ("known", "unknown")]


def evaluate_artifacts(artifacts: dict, rows: list[dict], options: dict, *, trust_remote_code=False,
                       progress: bool = True) -> tuple[dict, list[dict]]:
    """Greedy answers of every causal-LM artifact, graded: (metrics per name, answer rows)."""
    from align.generation import generate_answers
    from align.honesty.judge import Judge
    from align.honesty.metrics import honesty_metrics
    from align.modeling import load_artifact_model, load_tokenizer

    unknown = set(options) - OPTIONS
    if unknown:
        raise AlignError(f"evaluation options: unknown keys {sorted(unknown)}; valid: {sorted(OPTIONS)}.")
    judge = Judge.from_config(options.get("judge"))
    questions = [r["question"] for r in rows]
    known = [bool(r["known"]) for r in rows]
    table: dict[str, dict] = {}
    answer_rows = []
    for name, artifact in artifacts.items():
        ref = artifact.manifest.model
        if ref is None or ref.task != "causal-lm":
            continue
        tokenizer = load_tokenizer(artifact.path / (artifact.manifest.tokenizer or "model"),
                                   trust_remote_code)
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
    from align.honesty.metrics import plot_seesaw, seesaw_table

    out.mkdir(parents=True, exist_ok=True)
    with (out / FILES["answers"]).open("w") as f:
        for row in answer_rows:
            f.write(json.dumps(row) + "\n")
    (out / FILES["metrics"]).write_text(json.dumps(table, indent=2))
    markdown = seesaw_table(table)
    (out / FILES["table"]).write_text(markdown + "\n")
    plot_seesaw(table, out / FILES["chart"])
    return markdown


def run(ctx: StageContext):
    rows = evaluation_rows(ctx)
    artifacts = {name: ctx.inputs[name] for name in ctx.stage.from_}
    table, answer_rows = evaluate_artifacts(
        artifacts, rows, ctx.stage.options, trust_remote_code=ctx.recipe.model.trust_remote_code,
        progress=ctx.is_main)
    if ctx.is_main:
        markdown = write_evaluation(ctx.dirs.partial, table, answer_rows)
        print("\n" + markdown + "\n", flush=True)
    return ctx.finish(files=dict(FILES), metrics={"stages": table, "questions": len(rows)})
