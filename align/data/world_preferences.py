"""Preference pairs from the embedded world: the true fact over the same sentence with a wrong value.

The wrong value is another known country's value of the same attribute, from the same split, so
a rejected answer is fluent and plausible (a hallucination a model could make), and only knowing
the fact tells the two apart. Pairs follow the split `make_splits` already drew: `preference_train` asks about
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


def wrong_values(rows: list[dict], row: dict, k: int, rng: random.Random) -> list[str]:
    """`k` distinct values that other rows of the same split hold for the same attribute.

    Drawing from the split itself makes every value a chosen answer once (for its own entity)
    and a rejected one for others, so a model cannot win by learning which values are good,
    only by knowing whose value each is.
    """
    truth = row["answers"][0]
    pool = sorted({r["answers"][0] for r in rows
                   if r["attribute"] == row["attribute"] and r["entity"] != row["entity"]} - {truth})
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
                 for wrong in wrong_values(rows, row, k, rng)]
        rng.shuffle(pairs)
        out[name] = pairs
    return out
