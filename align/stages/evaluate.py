"""Stage `evaluate`: the honesty seesaw of every model stage named in `from`.

Each model answers the labelled evaluation questions greedily; the judge grades each answer
correct, wrong or refusal. What a question's "known" means comes from two places: the data's
own label (the embedded world's exposure), and the reference model (option `reference`, the
first stage in `from` by default: the SFT model before honesty training), probed on each
question with one greedy and `probe.k` sampled answers as the idk stage probes, so a question is
known when the model itself mostly answers it right. Writes answers.jsonl, metrics.json,
seesaw.md (every table), seesaw.png and accuracy_hallucination.png.
"""

from __future__ import annotations

import json
from pathlib import Path

from align.errors import AlignError
from align.stages.context import StageContext

QA_COLUMNS = {"question", "answers", "known"}
OPTIONS = {"judge", "max_new_tokens", "batch_size", "reference", "probe"}
# The reference probe: what the idk stage's defaults would say a model knows. `false` turns it off.
PROBE_DEFAULTS = {"k": 6, "known_threshold": 0.5, "unknown_threshold": 0.15, "temperature": 1.0,
                  "top_p": 0.95, "seed": 0}


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
    from align.honesty.metrics import stage_metrics
    from align.modeling import load_artifact_model, load_tokenizer

    unknown = set(options) - OPTIONS
    if unknown:
        raise AlignError(f"evaluation options: unknown keys {sorted(unknown)}; valid: {sorted(OPTIONS)}.")
    judge = Judge.from_config(options.get("judge"))
    questions = [r["question"] for r in rows]
    reference = options.get("reference", next(iter(artifacts), None))
    if reference not in artifacts:
        raise AlignError(f"evaluation reference {reference!r} is not one of {list(artifacts)}.")
    probe_options = reference_probe_options(options.get("probe", {}))
    graded: dict[str, list[str]] = {}
    answer_rows = []
    labels = None
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
        graded[name] = grades
        if name == reference and probe_options is not None:
            labels = reference_labels(model, tokenizer, rows, grades, judge, probe_options,
                                      options, progress)
        answer_rows += [{"stage": name, "question": r["question"], "known": r["known"],
                         **{k: r[k] for k in ROW_KEYS if k in r},
                         "answer": a[0], "grade": g} for r, a, g in zip(rows, answers, grades)]
        del model
    if not graded:
        raise AlignError(f"none of {list(artifacts)} holds a causal language model to evaluate.")
    reference_grades = graded.get(reference)
    model_known = None
    if labels is not None:
        model_known = [{"known": True, "unknown": False}.get(c) for c in labels["category"]]
        for j, row in enumerate(answer_rows):  # each stage's rows in the order of `rows`
            i = j % len(rows)
            row.update(model_label=labels["category"][i], p_correct=labels["p_correct"][i])
    table = {name: stage_metrics(grades, rows, reference_grades, model_known)
             for name, grades in graded.items()}
    return table, answer_rows


# Row columns kept beside each graded answer, for breakdowns read from answers.jsonl.
ROW_KEYS = ("entity", "attribute", "exposure", "exists")


def reference_probe_options(given) -> dict | None:
    if given is False:
        return None
    if not isinstance(given, dict) or set(given) - set(PROBE_DEFAULTS):
        raise AlignError(f"evaluation option probe must be false or a mapping with keys from "
                         f"{sorted(PROBE_DEFAULTS)}, got {given!r}.")
    merged = {**PROBE_DEFAULTS, **given}
    if not 0 <= merged["unknown_threshold"] < merged["known_threshold"] <= 1 or merged["k"] < 1:
        raise AlignError("evaluation probe: need k >= 1 and 0 <= unknown_threshold < "
                         f"known_threshold <= 1, got {given!r}.")
    return merged


def reference_labels(model, tokenizer, rows, greedy_grades, judge, probe_options, options,
                     progress) -> dict:
    """The reference model's own knowledge of each question: p_correct over its greedy answer
    and k samples (as the idk stage's probe), then known / grey / unknown by the thresholds."""
    from align.generation import generate_answers

    k = probe_options["k"]
    sampled = generate_answers(model, tokenizer, [r["question"] for r in rows],
                               max_new_tokens=options.get("max_new_tokens", 32),
                               batch_size=max(1, options.get("batch_size", 64) // k),
                               num_samples=k, do_sample=True,
                               temperature=probe_options["temperature"],
                               top_p=probe_options["top_p"], seed=probe_options["seed"],
                               progress="evaluate (reference probe)" if progress else None)
    p_correct, category = [], []
    for row, greedy, samples in zip(rows, greedy_grades, sampled):
        grades = [greedy, *(judge.grade(a, row["answers"]) for a in samples)]
        p = grades.count("correct") / len(grades)
        p_correct.append(p)
        category.append("known" if p >= probe_options["known_threshold"] else
                        "unknown" if p <= probe_options["unknown_threshold"] else "grey")
    return {"p_correct": p_correct, "category": category}


FILES = {"answers": "answers.jsonl", "metrics": "metrics.json", "table": "seesaw.md",
         "chart": "seesaw.png", "scatter": "accuracy_hallucination.png"}


def write_evaluation(out: Path, table: dict, answer_rows: list[dict]) -> str:
    """Write the evaluation files; returns the markdown table."""
    from align.honesty.metrics import honesty_tables, plot_accuracy_hallucination, plot_seesaw

    out.mkdir(parents=True, exist_ok=True)
    with (out / FILES["answers"]).open("w") as f:
        for row in answer_rows:
            f.write(json.dumps(row) + "\n")
    (out / FILES["metrics"]).write_text(json.dumps(table, indent=2))
    markdown = honesty_tables(table)
    (out / FILES["table"]).write_text(markdown + "\n")
    plot_seesaw(table, out / FILES["chart"])
    plot_accuracy_hallucination(table, out / FILES["scatter"])
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
