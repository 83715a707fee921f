"""Training summaries from a Trainer's log history: the numbers a stage's one-line report shows."""

from __future__ import annotations

import math


def finite_mean(key: str, rows: list[dict]) -> float | None:
    """Mean of `key` over the rows where it is a finite number (None when there is none)."""
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return sum(values) / len(values) if values else None


def quarters(rows: list[dict]) -> list[list[dict]]:
    """The rows in four consecutive parts (a part of a short run repeats its nearest row), so an
    RL stage's reward can be read first quarter against last."""
    n = len(rows)
    bounds = [round(i * n / 4) for i in range(5)]
    return [rows[a:b] or rows[min(a, n - 1):min(a, n - 1) + 1] for a, b in zip(bounds, bounds[1:])]


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def loss_summary(log_history: list[dict], *, window: int = 3) -> dict:
    """First/last train loss, final/best eval loss, and an overfitting flag.

    Overfitting is flagged when the eval loss ended above its best value by more than 2% while
    the train loss kept falling over the same evaluations.
    """
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "eval_loss" not in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    out: dict = {}
    if train:
        window = max(1, min(window, len(train) // 3))  # a short run still shows first vs last
        head = [v for _, v in train[:window]]
        tail = [v for _, v in train[-window:]]
        out["train_loss_first"] = sum(head) / len(head)
        out["train_loss_last"] = sum(tail) / len(tail)
    if evals:
        best_step, best = min(evals, key=lambda e: e[1])
        out["eval_loss"] = evals[-1][1]
        out["eval_loss_best"] = best
        later_train = [v for s, v in train if s >= best_step]
        train_fell = len(later_train) >= 2 and later_train[-1] < later_train[0]
        out["overfitting"] = bool(evals[-1][1] > best * 1.02 and train_fell)
    out["steps"] = max((h.get("step", 0) for h in log_history), default=0)
    return out


def metric_parts(metrics: dict) -> list[str]:
    """The handful of figures that say whether a stage did its job, as short phrases."""
    parts = []
    if "train_loss_first" in metrics:
        parts.append(f"loss {metrics['train_loss_first']:.3f} -> {metrics['train_loss_last']:.3f}")
    if "eval_loss" in metrics:
        parts.append(f"eval loss {metrics['eval_loss']:.3f}")
        if metrics.get("overfitting"):
            parts.append("OVERFITTING: eval loss rose while train loss fell")
    if "categories" in metrics:  # the idk builder
        parts.append("known/unknown/grey " + "/".join(str(metrics["categories"][c])
                                                      for c in ("known", "unknown", "grey")))
    if isinstance(metrics.get("reward_first"), (int, float)) and isinstance(metrics.get("reward_last"), (int, float)):
        parts.append(f"reward {metrics['reward_first']:.3f} -> {metrics['reward_last']:.3f}")  # grpo, rloo
    on_train = metrics.get("scored_on") == "train"  # an rm stage without eval pairs
    for key in ("accuracy", "margin", "heldout_margin_sft", "heldout_margin", "label_agreement",
                "mean_score_last"):
        if key in metrics and isinstance(metrics[key], (int, float)):
            label = f"{key} on training pairs" if on_train and key in ("accuracy", "margin") else key
            parts.append(f"{label} {metrics[key]:.3f}")
    return parts


def one_line(name: str, kind: str, metrics: dict, seconds: float) -> str:
    return " | ".join([f"{name} ({kind})", *metric_parts(metrics), f"{seconds:.0f}s"])
