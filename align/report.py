"""The run report: one markdown page per run directory, written after every `align run`.

It gathers what each finished stage recorded (its one-line metrics, its training history, the
evaluation's seesaw table and chart) so a user opens one file instead of a dozen manifests.
"""

from __future__ import annotations

import math
from pathlib import Path

from align.jsonl import read_jsonl
from align.stages.summary import metric_parts

REPORT_FILE = "report.md"
CURVES_FILE = "curves.png"

# Where a stage keeps its log (Trainer stages: the `history` file; PPO: its `stats` file) and
# what to draw of it: x label, [(series label, key)].
TRAINER_LOG = ("history", "step", [("train loss", "loss"), ("eval loss", "eval_loss")])
PPO_LOG = ("stats", "PPO step", [("score", "score_raw"), ("KL", "kl")])
RL_LOG = ("history", "step", [("reward", "reward"), ("KL", "kl")])  # grpo, rloo (TRL's log keys)
SECOND_AXIS = "KL"  # on another scale than the score it is drawn with


def stage_history(artifact) -> tuple[str, list[tuple[str, list[tuple[float, float]]]]]:
    """(x label, [(series label, [(step, value), ...])]) for one artifact; no series when it
    kept no log (data stages, evaluation)."""
    files = artifact.manifest.files or {}
    kind = artifact.manifest.kind
    role, x_label, series = (PPO_LOG if kind == "ppo" else RL_LOG if kind in ("grpo", "rloo")
                             else TRAINER_LOG)
    if role not in files:
        return "", []
    rows = read_jsonl(artifact.path / files[role])
    out = []
    for label, key in series:
        points = [(row["step"], row[key]) for row in rows if "step" in row
                  and isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        if points:
            out.append((label, points))
    return x_label, out


def plot_curves(artifacts: dict, path: Path) -> Path | None:
    """One panel per stage that trained; None when no stage left a history."""
    panels = [(name, *stage_history(a)) for name, a in artifacts.items()]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, (name, x_label, series) in enumerate(panels, 1):
        ax = fig.add_subplot(rows, columns, i)
        lines = []
        for label, points in series:
            xs, ys = zip(*points)
            target = ax
            if label == SECOND_AXIS:
                target = ax.twinx()
                target.set_ylabel(label, fontsize=8)
            lines += target.plot(xs, ys, label=label,
                                 color="tab:red" if label == SECOND_AXIS else None,
                                 marker="o" if len(xs) < 8 else None, markersize=3)
        ax.set_title(f"{name} ({artifacts[name].manifest.kind})", fontsize=10)
        ax.set_xlabel(x_label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(handles=lines, fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def stage_row(name: str, artifact) -> str:
    m = artifact.manifest
    seconds = f"{m.finished_at - m.started_at:.0f} s" if m.finished_at and m.started_at else "-"
    return f"| {name} | {m.kind} | {'; '.join(metric_parts(m.metrics)) or '-'} | {seconds} |"


def write_report(run_dir: Path, recipe_name: str, artifacts: dict) -> Path:
    """Write `report.md` (and `curves.png`) into the run directory; returns the report's path."""
    run_dir = Path(run_dir)
    lines = [f"# Run report: {recipe_name}", "", f"Run directory: `{run_dir}`", "",
             "## Stages", "", "| stage | kind | measured | time |", "|---|---|---|---:|"]
    lines += [stage_row(name, artifact) for name, artifact in artifacts.items()]
    for name, artifact in artifacts.items():
        if artifact.manifest.kind != "evaluate":
            continue
        files = artifact.manifest.files or {}
        lines += ["", f"## Honesty seesaw ({name})", "",
                  (artifact.path / files["table"]).read_text().strip(), ""]
        if "scatter" in files:
            lines += [f"![accuracy against hallucination]"
                      f"({(artifact.path / files['scatter']).relative_to(run_dir)})", ""]
        if "chart" in files:
            lines += [f"![seesaw]({(artifact.path / files['chart']).relative_to(run_dir)})", ""]
        lines += [SEESAW_NOTE, ""]
    curves = plot_curves(artifacts, run_dir / CURVES_FILE)
    if curves:
        lines += ["## Training curves", "", f"![training curves]({CURVES_FILE})", ""]
    path = run_dir / REPORT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


SEESAW_NOTE = (
    "Correct / incorrect / not attempted are shares of all questions (SimpleQA), with accuracy "
    "given attempted and their F-score; truthfulness = correct − incorrect (TruthRL). Accuracy "
    "and over-refusal are measured on known questions, hallucination on unknown ones, where "
    "known means the reference (SFT) model answered it right in most of its greedy and sampled "
    "answers, unknown in almost none (grey questions between are left out of those columns). "
    "Honesty = ½(prudence + 1 − over-conservativeness) (Alignment for Honesty): prudence is the "
    "refusal rate where the reference model's greedy answer was not correct, "
    "over-conservativeness where it was. The world's own labels (known = its fact is stated "
    "often enough in the corpus) give the second table; the breakdowns show every exposure "
    "level and, per attribute, whether refusals follow knowledge or the kind of question.")
