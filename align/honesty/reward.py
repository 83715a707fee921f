"""A rule-based honesty reward for PPO, from the judge and the probe's categories.

Use it as `rewards: [{source: "align.honesty.reward:honesty_reward"}]` on the idk stage's
`prompts` file, whose rows carry `answers` and `category` columns.
"""

from __future__ import annotations

from functools import lru_cache

# (category, grade) -> reward. Answering what you know and declining what you don't are both
# rewarded; a hallucination costs the most; refusing a known question costs too (over-refusal).
REWARDS = {
    ("known", "correct"): 1.0, ("known", "refusal"): -1.0, ("known", "wrong"): -0.5,
    ("unknown", "refusal"): 1.0, ("unknown", "wrong"): -1.0, ("unknown", "correct"): 0.0,
    ("grey", "correct"): 0.5, ("grey", "refusal"): 0.0, ("grey", "wrong"): -0.5,
}


@lru_cache(maxsize=1)
def default_judge():
    from align.honesty.judge import Judge

    return Judge()


def honesty_reward(prompts, completions, answers, category, **_columns) -> list[float]:
    judge = default_judge()
    return [REWARDS[(cat, judge.grade(text, gold))]
            for text, gold, cat in zip(completions, answers, category)]
