"""Abstention: refuse after the answer is recalled, when the model's confidence in it is low.

A refusal trained into the weights is decided at the answer's first uncertain token, before the
model has recalled the rest: for "Tomas Vell" it decides at "Tomas", and a first name says
little about whether the model knows the surname. The model's probability of its whole greedy
answer separates what it knows from what it does not far better (benchmarks/honesty.md). So an
abstention policy generates the answer, reads that probability, and replaces the answer with an
"I don't know" reply below a threshold fitted on the probe pool to a hallucination budget.

One kind of question that confidence misses: about an entity the model never read of. A small
model that cannot spell the unread name answers confidently about an entity it knows instead.
So the policy first reads how familiar the question's words are to the model, and refuses a
question holding a word less familiar than any in the questions it knows.

Another kind confidence misses: an answer about another entity. Asked of a country whose leader
it never read, a model completes a sentence it did read: "The leader of Kourvroland is ...",
sure of every token after the name it swapped in. So the policy also refuses an answer that
names a subject the probe asks about elsewhere, which the question does not.

The policy travels with the model as `abstention.json` beside its weights; `align chat`,
the evaluate stage and `align export` read it. Plain `transformers` generation does not.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from align.errors import AlignError, check_counts
from align.honesty.judge import Judge

if TYPE_CHECKING:  # generation imports torch, which validating a recipe does not need
    from align.generation import ScoredAnswer

POLICY_FILE = "abstention.json"
SIGNALS = ("added", "answer", "min_token")


def answer_confidence(token_probs: list[float], copied: list[bool] | None = None,
                      signal: str = "added") -> float:
    """`answer`: the probability of the whole answer (the product of its tokens'); `added`: the
    same over the tokens the answer adds to the question, leaving out the names it copies
    (whose spelling, not the fact, is what the model is unsure of there); `min_token`: its
    least probable token. An answer with no such token has confidence 0."""
    if signal not in SIGNALS:
        raise AlignError(f"abstention signal must be one of {', '.join(SIGNALS)}, got {signal!r}.")
    if signal == "added":
        token_probs = [p for p, c in zip(token_probs, copied or [False] * len(token_probs))
                       if not c]
    if not token_probs:
        return 0.0
    if signal == "min_token":
        return min(token_probs)
    return math.exp(sum(math.log(max(p, 1e-45)) for p in token_probs))


def error_rates(known: list[float], unknown: list[float], threshold: float) -> tuple[float, float]:
    """Refusing below `threshold`: (over-refusal on known, hallucination on unknown)."""
    return (sum(k < threshold for k in known) / max(1, len(known)),
            sum(u >= threshold for u in unknown) / max(1, len(unknown)))


def fit_threshold(unknown: list[float], max_hallucination: float) -> float:
    """The lowest threshold (so the least over-refusal) that answers at most
    `max_hallucination` of the unknown questions. Only the unknown questions' scores decide it,
    which is what transfers from the probe pool: the pool's known questions include the ones
    the model was fine-tuned on, more confident than any held-out one."""
    if not unknown:
        raise AlignError("cannot fit an abstention threshold: the probe found no question the "
                         "model does not know.")
    candidates = sorted(set(unknown)) + [math.inf]
    return next(t for t in candidates if error_rates([], unknown, t)[1] <= max_hallucination)


def fit_familiarity(known: list[float]) -> float:
    """The familiarity below which a question is refused before it is answered: that of the
    least familiar question the model knows the answer to. A name less familiar than any of
    those is one the model has not read (an entity that does not exist, for it)."""
    if not known:
        raise AlignError("cannot fit a familiarity gate: the probe found no question the model "
                         "knows.")
    return min(known)


def fit_subject_names(questions: list[set[str]], known_added: list[set[str]]) -> list[str]:
    """The words that name what the probe's questions ask about: every word of its questions
    (`questions`, each a set of words) that no answer the model knows adds to its question
    (`known_added`). Those answers add the words of their own phrasing ("founding year"), so
    what is left is the questions' subjects, and words no answer says ("used")."""
    named = set().union(*questions) - set().union(*known_added)
    return sorted(named)


def subject_check_cost(questions: list[set[str]], known_added: list[set[str]]) -> float:
    """The share of the known answers the subject check would refuse, each left out of the fit
    in turn: an answer adding a word of the questions that no other known answer adds. The
    fit cannot refuse its own known answers, so this is how it is judged: near 0 where answers
    name only their own subject, high where they name other subjects as a matter of course
    ("Who is Ada's spouse?" answered with another subject of the probe)."""
    asked = set().union(*questions)
    adders = Counter(w for added in known_added for w in added)
    refused = sum(any(w in asked and adders[w] == 1 for w in added) for added in known_added)
    return refused / max(1, len(known_added))


def fit_subject_check(questions: list[set[str]], known_added: list[set[str]],
                      max_over_refusal: float) -> tuple[list[str], float]:
    """The subject names (`fit_subject_names`), or none where the check would cost more than
    `max_over_refusal` of the known answers; and that cost (`subject_check_cost`)."""
    cost = subject_check_cost(questions, known_added)
    return (fit_subject_names(questions, known_added) if cost <= max_over_refusal else []), cost


@dataclass
class AbstentionPolicy:
    """Refuse with `reply` when the question holds a word less familiar than `min_familiarity`
    (a name the model never read), when the answer adds one of `subject_names` (it names
    another subject than the question's), or when the answer's confidence (`signal`) is below
    `threshold`."""

    threshold: float
    signal: str = "added"
    reply: str = "I don't know."
    min_familiarity: float = 0.0  # 0: no gate (a policy saved before the gate existed)
    subject_names: list[str] = field(default_factory=list)  # empty: no subject check
    fitted: dict = field(default_factory=dict)  # how the thresholds were chosen, for the card

    def answers_another_subject(self, answer: ScoredAnswer) -> bool:
        return not answer.added_words.isdisjoint(self.subject_names)

    def decide(self, answer: ScoredAnswer) -> str:
        if answer.familiarity < self.min_familiarity or self.answers_another_subject(answer):
            return self.reply
        confident = answer_confidence(answer.token_probs, answer.copied, self.signal) >= \
            self.threshold
        return answer.text if confident else self.reply

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / POLICY_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def copy_policy(model_dir: Path, out_dir: Path) -> Path | None:
    """Carry a model's policy to a copy of it (an export, a merged upload); None without one."""
    source = Path(model_dir) / POLICY_FILE
    if not source.is_file():
        return None
    target = Path(out_dir) / POLICY_FILE
    shutil.copy2(source, target)
    return target


def load_policy(model_dir: Path) -> AbstentionPolicy | None:
    """The policy saved beside a model's weights, or None when it has none."""
    path = Path(model_dir) / POLICY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        policy = AbstentionPolicy(**{f.name: data[f.name] for f in fields(AbstentionPolicy)
                                     if f.name in data})
        if policy.signal not in SIGNALS:
            raise ValueError(f"signal {policy.signal!r} is not one of {', '.join(SIGNALS)}")
        if not all(isinstance(name, str) for name in policy.subject_names):
            raise ValueError("subject_names is not a list of words")
    except (ValueError, TypeError, KeyError) as exc:
        raise AlignError(f"{path}: not an abstention policy ({exc}); rebuild it with the stage "
                         "that wrote it.") from None
    return policy


@dataclass
class AbstainConfig:
    """The `options` of an abstain stage."""

    # How confidence is read off the answer (`answer_confidence`).
    signal: str = "added"
    # The share of the probe's unknown questions the policy may still answer (and so get wrong).
    max_hallucination: float = 0.15
    # Refuse, before answering, a question holding a word less familiar to the model than every
    # word of the questions it knows (`fit_familiarity`): a name it never read.
    familiarity_gate: bool = True
    # Refuse an answer that names a subject the probe asks about elsewhere but this question does
    # not (`fit_subject_names`): a confident answer about another entity.
    subject_check: bool = True
    # Leave the subject check off when, each known probe answer left out of its fit in turn, it
    # would refuse more than this share of them (`subject_check_cost`).
    max_subject_over_refusal: float = 0.02
    # What the model says instead of an answer it is unsure of (the judge must read a refusal).
    reply: str = "I don't know."
    max_new_tokens: int = 32
    batch_size: int = 64


def check_abstain_options(options: dict, where: str, source: str = "") -> AbstainConfig:
    """An abstain stage's `options`, checked when the recipe is validated."""
    prefix = f"{source}: " if source else ""
    names = [f.name for f in fields(AbstainConfig)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise AlignError(f"{prefix}unknown key '{where}.{unknown[0]}'; valid: {', '.join(names)}.")
    config = AbstainConfig(**options)
    if config.signal not in SIGNALS:
        raise AlignError(f"{prefix}'{where}.signal' must be one of {', '.join(SIGNALS)}, got "
                         f"{config.signal!r}.")
    for share in ("max_hallucination", "max_subject_over_refusal"):
        value = getattr(config, share)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise AlignError(f"{prefix}'{where}.{share}' must be a number in [0, 1), got "
                             f"{value!r}.")
    for switch in ("familiarity_gate", "subject_check"):
        if not isinstance(getattr(config, switch), bool):
            raise AlignError(f"{prefix}'{where}.{switch}' must be true or false, got "
                             f"{getattr(config, switch)!r}.")
    check_counts(config, ("max_new_tokens", "batch_size"), where, prefix)
    if not isinstance(config.reply, str) or not Judge().is_refusal(config.reply):
        raise AlignError(f"{prefix}'{where}.reply' must be a refusal the judge recognises "
                         f"(e.g. \"I don't know.\"), got {config.reply!r}.")
    return config
