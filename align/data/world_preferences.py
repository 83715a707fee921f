"""Preference pairs from the embedded world: the true fact over the same sentence with a wrong value.

The wrong value is another known country's value of the same attribute, so a rejected answer
is fluent and plausible (a hallucination a model could make), and only knowing the fact tells
the two apart. Pairs follow the split `make_splits` already drew: `preference_train` asks about
the facts SFT trained on; `preference_eval` about the known facts SFT never asked, which the
model only read in pretraining. A gain on the held-out pairs is therefore a gain in preferring
what the model knows, not memorised pairs.
"""

from __future__ import annotations

import random

from align.data.world import ANSWER_TEMPLATES, World

# Wrong values per fact: several for training (more signal per fact), one to measure with.
TRAIN_WRONG_VALUES = 3
EVAL_WRONG_VALUES = 1


def wrong_values(world: World, entity: str, attribute: str, k: int, rng: random.Random) -> list[str]:
    """`k` distinct values of `attribute` held by other known countries, never the true one."""
    by_name = {c.name: c for c in world.countries}
    truth = getattr(by_name[entity], attribute)
    pool = sorted({getattr(c, attribute) for c in world.known if c.name != entity} - {truth})
    return rng.sample(pool, min(k, len(pool)))


def preference_pair(row: dict, wrong: str) -> dict:
    """One pair in TRL's conversational explicit-prompt layout, plus what it is about."""
    rejected = ANSWER_TEMPLATES[row["attribute"]].format(e=row["entity"], v=wrong)
    return {
        "prompt": [{"role": "user", "content": row["question"]}],
        "chosen": [{"role": "assistant", "content": row["answer"]}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "entity": row["entity"],
        "attribute": row["attribute"],
    }


def preference_splits(world: World, splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """`preference_train` from the SFT facts (known rows of qa_train), `preference_eval` from the
    known rows of qa_eval. Seeded apart from `make_splits`, so its other files never change."""
    rng = random.Random(world.config.seed + 2)
    out = {}
    for name, source, k in (("preference_train", "qa_train", TRAIN_WRONG_VALUES),
                            ("preference_eval", "qa_eval", EVAL_WRONG_VALUES)):
        rows = sorted((r for r in splits[source] if r["known"]),
                      key=lambda r: (r["entity"], r["attribute"]))
        pairs = [preference_pair(row, wrong) for row in rows
                 for wrong in wrong_values(world, row["entity"], row["attribute"], k, rng)]
        rng.shuffle(pairs)
        out[name] = pairs
    return out
