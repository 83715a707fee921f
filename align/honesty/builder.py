"""The "I don't know" builder: probe what a model knows, turn it into honesty training data.

For every question with gold answers the model gives one greedy and K sampled answers; the
judge grades each. p_correct = correct answers / (K + 1) sorts questions into known (answer
them), unknown (say you don't know) and a grey zone between the two thresholds (dropped, or
answered with a verbal-confidence prefix). From that come SFT rows, preference pairs, KTO rows,
reward-model pairs and PPO prompts, each in the format the stage that reads it expects.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from align.errors import AlignError, check_counts
from align.generation import generate_answers
from align.honesty.responses import (CONFIDENCE_PREFIXES, DEFAULT_IDK_RESPONSES,
                                     INLINE_IDK_ENDINGS)

OUTPUT_FILES = {"probe": "probe.jsonl", "sft": "sft.jsonl", "preference": "preference.jsonl",
                "kto": "kto.jsonl", "rm": "rm.jsonl", "prompts": "prompts.jsonl",
                "stats": "stats.json"}


@dataclass
class ProbeConfig:
    """The `options` of an idk stage."""

    k: int = 8
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 32
    batch_size: int = 64
    known_threshold: float = 0.5
    unknown_threshold: float = 0.1
    grey: str = "drop"  # or "confidence"
    idk_responses: list[str] = field(default_factory=lambda: list(DEFAULT_IDK_RESPONSES))
    judge: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # Probe every phrasing in a row's `paraphrases` column (the embedded world has one) and pool
    # the answers: a fact is known or not whatever it is asked, and every phrasing becomes a
    # training row, so what is learnt is the fact's boundary, not one question's wording.
    paraphrases: bool = False
    # The answer a known question is trained on: the data's gold answer, or the model's own
    # correct answer (its greedy one if right, else its first right sample), which teaches it
    # nothing new beyond when to answer.
    known_target: str = "gold"
    # "reply": an IDK reply alone; "inline": the gold answer's opening up to its value, then an
    # IDK ending (falls back to a reply where the gold answer does not contain the value).
    idk_style: str = "reply"
    # Leave out rows whose `in_sft` column is true: questions the model was fine-tuned on are
    # known better than any it was not, and a boundary learnt on them sits too high for the rest.
    skip_trained: bool = False

    @classmethod
    def from_options(cls, options: dict, where: str) -> "ProbeConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(options) - names
        if unknown:
            raise AlignError(f"{where}: unknown option(s) {sorted(unknown)}; valid: {sorted(names)}.")
        config = cls(**options)
        if not 0 <= config.unknown_threshold < config.known_threshold <= 1:
            raise AlignError(f"{where}: need 0 <= unknown_threshold < known_threshold <= 1 (got "
                             f"{config.unknown_threshold} and {config.known_threshold}).")
        if config.idk_style not in ("reply", "inline"):
            raise AlignError(f"{where}.idk_style must be 'reply' or 'inline', got "
                             f"{config.idk_style!r}.")
        if config.known_target not in ("gold", "own"):
            raise AlignError(f"{where}.known_target must be 'gold' or 'own', got "
                             f"{config.known_target!r}.")
        if config.grey not in ("drop", "confidence"):
            raise AlignError(f"{where}.grey must be 'drop' or 'confidence', got {config.grey!r}.")
        if config.k < 1 or not config.idk_responses:
            raise AlignError(f"{where}: k must be >= 1 and idk_responses non-empty.")
        return config


def check_probe_options(options: dict, where: str, source: str = "") -> ProbeConfig:
    """An idk stage's `options`, checked when the recipe is validated (the registry names this)."""
    prefix = f"{source}: " if source else ""
    try:
        config = ProbeConfig.from_options(options, where)
    except TypeError as exc:
        raise AlignError(f"{prefix}{where}: {exc}") from None
    check_counts(config, ("k", "max_new_tokens", "batch_size"), where, prefix)
    for key in ("temperature", "top_p"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or \
                (key == "top_p" and value > 1):
            rule = "in (0, 1]" if key == "top_p" else "positive"
            raise AlignError(f"{prefix}'{where}.{key}' must be {rule}, got {value!r}.")
    return config


# Sentence openings that lose their capital after "I think ": anything else (a name: "Paris",
# "Trelia was founded in 1802") keeps it.
LOWERED_OPENINGS = frozenset({"The", "A", "An", "It", "Its", "This", "That", "There", "In", "My"})


def after_prefix(answer: str) -> str:
    """The answer as it continues a confidence phrase ("I think " + ...)."""
    first = answer.split(" ", 1)[0]
    return answer[0].lower() + answer[1:] if first in LOWERED_OPENINGS else answer


def categorize(p_correct: float, config: ProbeConfig) -> str:
    if p_correct >= config.known_threshold:
        return "known"
    if p_correct <= config.unknown_threshold:
        return "unknown"
    return "grey"


def probe(model, tokenizer, rows: list[dict], config: ProbeConfig, judge,
          progress: bool = True) -> list[dict]:
    """One greedy and K sampled answers per question, graded; returns the probe records."""
    rows = [r for r in rows if not (config.skip_trained and r.get("in_sft"))]
    asked = [question_variants(r, config) for r in rows]
    questions = [q for variants in asked for q in variants]
    greedy = generate_answers(model, tokenizer, questions, max_new_tokens=config.max_new_tokens,
                              batch_size=config.batch_size,
                              progress="probe (greedy)" if progress else None)
    sampled = generate_answers(model, tokenizer, questions, max_new_tokens=config.max_new_tokens,
                               batch_size=max(1, config.batch_size // config.k),
                               num_samples=config.k, do_sample=True,
                               temperature=config.temperature, top_p=config.top_p,
                               seed=config.seed, progress="probe (sampled)" if progress else None)
    records, at = [], 0
    for row, variants in zip(rows, asked):
        n = len(variants)
        # The first phrasing's greedy answer stays `greedy`; the others' join the samples.
        answers = [greedy[at][0], *(g[0] for g in greedy[at + 1:at + n]),
                   *(a for samples in sampled[at:at + n] for a in samples)]
        at += n
        grades = [judge.grade(a, row["answers"]) for a in answers]
        p_correct = grades.count("correct") / len(answers)
        records.append({
            "question": row["question"], "answers": row["answers"], "gold": gold_text(row),
            "greedy": answers[0], "samples": answers[1:], "grades": grades,
            "p_correct": p_correct, "category": categorize(p_correct, config),
            **({"questions": variants} if n > 1 else {}),
            **{k: row[k] for k in ("known", "exposure", "attribute", "exists") if k in row},
        })
    return records


def question_variants(row: dict, config: ProbeConfig) -> list[str]:
    """The row's question first, then its other phrasings when the probe asks them."""
    if not config.paraphrases:
        return [row["question"]]
    others = [q for q in row.get("paraphrases") or [] if q != row["question"]]
    return [row["question"], *others]


def inline_idk(gold: str, values: list[str], ending: str) -> str | None:
    """The gold answer up to its value, then `ending`; None when no value is in the answer."""
    starts = [gold.find(v) for v in values if v and gold.find(v) > 0]
    if not starts:
        return None
    opening = gold[:min(starts)].rstrip()
    words = opening.split(" ")
    if len(words) > 1 and words[-1].lower() in ("the", "a", "an"):  # "... is the Som ducat."
        opening = " ".join(words[:-1])
    return opening + " " + ending


def known_answer(rec: dict, config: ProbeConfig) -> str:
    if config.known_target == "own":
        answers = [rec["greedy"], *rec["samples"]]
        right = [a for a, g in zip(answers, rec["grades"]) if g == "correct" and a.strip()]
        if right:
            return right[0].strip()
    return rec["gold"]


def gold_text(row: dict) -> str:
    """The reference answer to train on: a full `answer` when the data has one."""
    return row.get("answer") or row["answers"][0]


def _user(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def build_outputs(records: list[dict], config: ProbeConfig) -> dict[str, list[dict]]:
    """Every training file from the probe records (deterministic for a seed)."""
    rng = random.Random(config.seed)
    out: dict[str, list[dict]] = {k: [] for k in ("sft", "preference", "kto", "rm", "prompts")}
    for rec in records:
        for q in rec.get("questions", [rec["question"]]):
            _add_rows(out, rec, q, config, rng)
    for name in out:
        rng.shuffle(out[name])
    return out


def _add_rows(out: dict, rec: dict, q: str, config: ProbeConfig, rng: random.Random) -> None:
    """The rows of every file for one probed question, asked in phrasing `q`."""
    cat = rec["category"]
    idk = rng.choice(config.idk_responses)
    if config.idk_style == "inline":
        idk = inline_idk(rec["gold"], rec["answers"], rng.choice(INLINE_IDK_ENDINGS)) or idk
    answers = [rec["greedy"], *rec["samples"]]
    wrong = [a for a, g in zip(answers, rec["grades"]) if g == "wrong" and a.strip()]
    correct = known_answer(rec, config)
    if cat == "grey" and config.grey == "drop":
        return
    if cat == "grey":
        target = rng.choice(CONFIDENCE_PREFIXES) + after_prefix(correct)
        out["sft"].append({"messages": _user(q) + _assistant(target)})
    elif cat == "known":
        out["sft"].append({"messages": _user(q) + _assistant(correct)})
        # Guard against over-refusal: on what the model knows, answering beats refusing.
        out["preference"].append({"prompt": _user(q), "chosen": _assistant(correct),
                                  "rejected": _assistant(idk)})
        out["kto"] += [{"prompt": _user(q), "completion": _assistant(correct), "label": True},
                       {"prompt": _user(q), "completion": _assistant(idk), "label": False}]
        out["rm"].append({"prompt": _user(q), "chosen": _assistant(correct),
                          "rejected": _assistant(idk)})
        if wrong:
            out["rm"].append({"prompt": _user(q), "chosen": _assistant(correct),
                              "rejected": _assistant(rng.choice(wrong))})
    else:  # unknown
        out["sft"].append({"messages": _user(q) + _assistant(idk)})
        if wrong:
            hallucination = rng.choice(wrong)
            out["preference"].append({"prompt": _user(q), "chosen": _assistant(idk),
                                      "rejected": _assistant(hallucination)})
            out["kto"] += [
                {"prompt": _user(q), "completion": _assistant(idk), "label": True},
                {"prompt": _user(q), "completion": _assistant(hallucination), "label": False}]
            out["rm"].append({"prompt": _user(q), "chosen": _assistant(idk),
                              "rejected": _assistant(hallucination)})
    out["prompts"].append({"prompt": _user(q), "answers": rec["answers"], "category": cat})


def probe_stats(records: list[dict], config: ProbeConfig) -> dict:
    counts = {c: sum(r["category"] == c for r in records) for c in ("known", "unknown", "grey")}
    stats: dict[str, Any] = {"questions": len(records), "categories": counts,
                             "known_threshold": config.known_threshold,
                             "unknown_threshold": config.unknown_threshold, "k": config.k,
                             "grey": config.grey}
    labelled = [r for r in records if "known" in r and r["category"] != "grey"]
    if labelled:
        # Agreement of the probe's categories with ground-truth labels (the embedded world has them).
        agree = sum((r["category"] == "known") == bool(r["known"]) for r in labelled)
        stats["label_agreement"] = agree / len(labelled)
    return stats


def write_outputs(out_dir: Path, records: list[dict], outputs: dict, stats: dict) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in [("probe", records), *outputs.items()]:
        with (out_dir / OUTPUT_FILES[name]).open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    (out_dir / OUTPUT_FILES["stats"]).write_text(json.dumps(stats, indent=2))
    return dict(OUTPUT_FILES)


def config_dict(config: ProbeConfig) -> dict:
    return asdict(config)
