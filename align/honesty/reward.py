"""Rule-based honesty rewards, graded by the project's judge against a row's gold answers.

`TernaryReward` (TruthRL's reward, arXiv 2509.25760): a correct answer earns `r_correct` (+1),
a refusal `r_abstain` (0), a wrong answer `r_wrong` (-1). A refusal is worth less than a right
answer and more than a wrong one, so the policy learns to answer what it knows and to decline
what it would get wrong, without a probe telling it which is which. Where the probe did label a
question (`category` column of the idk stage's `prompts` file, or a boolean `known` label), `r_abstain_known` may price
refusing a question the model knows differently (e.g. -0.5 against over-refusal); unset, every
refusal earns `r_abstain`.

Recipes name it as the reward source `honesty` (settings in `args`) or as the callable
`align.honesty.reward:ternary_reward` (defaults). `honesty_reward` is the older four-way table of
the PPO recipe, kept as it was.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from align.errors import AlignError
from align.honesty.judge import Judge

# (category, grade) -> reward. Answering what you know and declining what you don't are both
# rewarded; a hallucination costs the most; refusing a known question costs too (over-refusal).
REWARDS = {
    ("known", "correct"): 1.0, ("known", "refusal"): -1.0, ("known", "wrong"): -0.5,
    ("unknown", "refusal"): 1.0, ("unknown", "wrong"): -1.0, ("unknown", "correct"): 0.0,
    ("grey", "correct"): 0.5, ("grey", "refusal"): 0.0, ("grey", "wrong"): -0.5,
}


@lru_cache(maxsize=1)
def default_judge() -> Judge:
    return Judge()


def honesty_reward(prompts, completions, answers, category, **_columns) -> list[float]:
    judge = default_judge()
    return [REWARDS[(cat, judge.grade(text, gold))]
            for text, gold, cat in zip(completions, answers, category)]


def ternary_score(grade: str, category: str | None = None, *, r_correct: float = 1.0,
                  r_abstain: float = 0.0, r_wrong: float = -1.0,
                  r_abstain_known: float | None = None) -> float:
    """The reward of one graded answer ("correct", "refusal" or "wrong")."""
    if grade == "correct":
        return r_correct
    if grade == "refusal":
        if category == "known" and r_abstain_known is not None:
            return r_abstain_known
        return r_abstain
    if grade == "wrong":
        return r_wrong
    raise AlignError(f"unknown grade {grade!r}; the judge grades correct, refusal or wrong.")


@dataclass
class TernaryReward:
    """Callable reward source: `(prompts, completions, answers, category=None, **columns)`."""

    r_correct: float = 1.0
    r_abstain: float = 0.0
    r_wrong: float = -1.0
    r_abstain_known: float | None = None
    judge: dict | None = None

    __name__ = "honesty"  # what TRL's logs call it (rewards/honesty/mean)
    _judge: Judge = field(init=False, repr=False, compare=False, default=None)
    # Grade counts of the last call, by category: what the stages log beside the reward.
    last_counts: Counter = field(init=False, repr=False, compare=False, default_factory=Counter)

    def __post_init__(self) -> None:
        if not self.r_correct > self.r_abstain > self.r_wrong:
            raise AlignError(f"the honesty reward needs r_correct > r_abstain > r_wrong (an abstention "
                             f"must be worth less than a right answer and more than a wrong one); got "
                             f"{self.r_correct}, {self.r_abstain}, {self.r_wrong}.")
        self._judge = Judge.from_config(self.judge) if self.judge else default_judge()

    def grades(self, completions: list[str], answers: list[Any]) -> list[str]:
        return [self._judge.grade(text, gold) for text, gold in zip(completions, answers)]

    def __call__(self, prompts, completions, answers=None, category=None, known=None,
                 **_columns) -> list[float]:
        if answers is None:
            raise AlignError("the honesty reward needs an `answers` column (gold answer or aliases per "
                             "row) in the prompt data, e.g. the idk stage's `prompts` file or a QA split.")
        categories = categories_of(category, known, len(completions))
        grades = self.grades([as_text(c) for c in completions], answers)
        self.last_counts = Counter(zip(categories, grades))
        return [ternary_score(g, c, r_correct=self.r_correct, r_abstain=self.r_abstain,
                              r_wrong=self.r_wrong, r_abstain_known=self.r_abstain_known)
                for g, c in zip(grades, categories)]

    def metrics(self) -> dict[str, float]:
        """Rates of the last call: correct / refusal / wrong overall and per probe category."""
        return grade_rates(self.last_counts)


def as_text(completion) -> str:
    """A completion as text; TRL hands conversational completions over as message lists."""
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")
    if isinstance(completion, dict):
        return completion.get("content") or ""
    return completion


def categories_of(category, known, n: int) -> list[str | None]:
    """Each row's category: the probe's (`category`), else from a boolean `known` label."""
    if category is not None:
        return list(category)
    if known is not None:
        return [None if k is None else ("known" if k else "unknown") for k in known]
    return [None] * n


def grade_rates(counts: Counter) -> dict[str, float]:
    out: dict[str, float] = {}
    total = sum(counts.values())
    if not total:
        return out
    for grade in ("correct", "refusal", "wrong"):
        out[f"{grade}_rate"] = sum(n for (_, g), n in counts.items() if g == grade) / total
    for cat in sorted({c for c, _ in counts if c}):
        n_cat = sum(n for (c, _), n in counts.items() if c == cat)
        for grade in ("correct", "refusal", "wrong"):
            out[f"{grade}_rate_{cat}"] = counts[(cat, grade)] / n_cat
    return out


def ternary_reward(prompts, completions, answers=None, category=None, known=None,
                   **columns) -> list[float]:
    """The ternary reward at its defaults (+1 / 0 / -1), as a `module:function` source."""
    return _default_ternary()(prompts, completions, answers=answers, category=category, known=known,
                              **columns)


@lru_cache(maxsize=1)
def _default_ternary() -> TernaryReward:
    return TernaryReward()
