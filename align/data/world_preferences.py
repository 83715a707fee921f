"""Preference pairs from the embedded world: a true fact over the same sentence, wrong value.

The pairs ask about the facts SFT taught (the known rows of `qa_train` SFT asked). A rejected answer puts
another of those facts' value of the same attribute into the sentence: fluent, plausible, a
hallucination a model could make, told apart from the truth only by knowing whose value it is.
Each value is thus the chosen answer for its own country and a rejected one for others, so no
value is good or bad in itself.

`preference_train` holds `preference_wrong_values` wrong values per fact (fewer where the
world has fewer), each asked in every question phrasing;
`preference_eval` holds one more pair per fact with a wrong value its training pairs never
used: it measures whether a model learned the fact rather than the pairs it was shown. (Facts
the model only read in pretraining are left out: the tiny model recalls them too weakly for a
preference over them to mean anything.)
"""

from __future__ import annotations

import random

from align.data.world_text import ANSWER_TEMPLATES, QUESTION_TEMPLATES

def preference_pair(question: str, entity: str, attribute: str, right: str, wrong: str) -> dict:
    """One pair in TRL's conversational explicit-prompt layout, plus what it is about."""
    answer = ANSWER_TEMPLATES[attribute]
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": answer.format(e=entity, v=right)}],
        "rejected": [{"role": "assistant", "content": answer.format(e=entity, v=wrong)}],
        "entity": entity,
        "attribute": attribute,
    }


def preference_splits(world, splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """`preference_train` and `preference_eval` from `make_splits`' output, seeded apart from
    it so that adding them changed none of its other files."""
    rng = random.Random(world.config.seed + 2)
    facts = sorted({(r["entity"], r["attribute"]) for r in splits["qa_train"]
                    if r["known"] and r.get("in_sft", True)})
    by_name = {c.name: c for c in world.countries}
    train, heldout = [], []
    for entity, attribute in facts:
        right = getattr(by_name[entity], attribute)
        pool = sorted({getattr(by_name[e], a) for e, a in facts if a == attribute} - {right})
        wrong = rng.sample(pool, min(world.config.preference_wrong_values + 1, len(pool)))
        if len(wrong) < 2:
            continue  # too few facts of this attribute to hold a wrong value out
        questions = [q.format(e=entity) for q in QUESTION_TEMPLATES[attribute]]
        train += [preference_pair(q, entity, attribute, right, w) for w in wrong[:-1]
                  for q in questions]
        heldout.append(preference_pair(rng.choice(questions), entity, attribute, right, wrong[-1]))
    rng.shuffle(train)
    rng.shuffle(heldout)
    return {"preference_train": train, "preference_eval": heldout}
