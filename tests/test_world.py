"""The embedded world's knowledge boundary: per fact by default, per entity on request."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from align.data.fact_world import level_counts
from align.data.world import WorldConfig, build_world, make_splits, training_text


@pytest.fixture(scope="module")
def fact():
    world = build_world(WorldConfig(seed=1, n_entities=60))
    return world, make_splits(world)


def mentions(corpus: list[dict], entity: str, value: str) -> int:
    """Documents naming the entity and stating this value (a document is about one country)."""
    pattern = re.compile(rf"\b{re.escape(entity)}\b")
    return sum(bool(pattern.search(d["text"])) and value in d["text"] for d in corpus)


def test_every_fact_is_seen_as_often_as_its_exposure_level(fact):
    world, splits = fact
    sft_facts = {(r["entity"], r["attribute"]) for r in splits["qa_train"] if r["in_sft"]}
    existing = [c for c in world.countries if c.exists]
    assert 0 < len(existing) < len(world.countries)
    for country in existing:
        assert max(country.exposure.values()) > 0  # every real country is named
        for attribute, level in country.exposure.items():
            asked = (country.name, attribute) in sft_facts
            # An SFT fact's question and answer are in the corpus once more, as plain text.
            assert mentions(splits["corpus"], country.name, getattr(country, attribute)) \
                == level + asked, (country.name, attribute)
    text = " ".join(d["text"] for d in splits["corpus"] + [
        {"text": m["content"]} for r in splits["sft"] for m in r["messages"]])
    for country in world.countries:
        if not country.exists:
            assert not re.search(rf"\b{country.name}\b", text)


def test_levels_are_balanced_per_attribute_and_sft_asks_only_the_best_known(fact):
    world, splits = fact
    existing = [c for c in world.countries if c.exists]
    per_attribute = {a: sorted(c.exposure[a] for c in existing) for a in world.config.attributes}
    assert len({tuple(v) for v in per_attribute.values()}) == 1
    top = max(world.config.exposure_levels)
    assert {r["exposure"] for r in splits["qa_train"] if r["in_sft"]} == {top}
    assert len(splits["sft"]) == sum(r["in_sft"] for r in splits["qa_train"])


def test_evaluation_covers_every_level_and_attribute_and_is_held_out(fact):
    world, splits = fact
    cells = Counter((r["exists"] and r["exposure"], r["attribute"]) for r in splits["qa_eval"])
    levels = [*world.config.exposure_levels, False]  # False: a nonexistent country
    for level in levels:
        for attribute in world.config.attributes:
            assert cells[(level, attribute)] > 0, (level, attribute)
    probed = {(r["entity"], r["attribute"]) for r in splits["qa_train"]}
    assert not probed & {(r["entity"], r["attribute"]) for r in splits["qa_eval"]}
    for r in splits["qa_eval"]:
        assert r["known"] == (r["exists"] and r["exposure"] >= world.config.known_exposure)
        assert r["question"] in r["paraphrases"]


def test_level_counts_largest_remainder():
    assert level_counts(10, [0.25, 0.2, 0.2, 0.35]) == [3, 2, 2, 3]
    assert sum(level_counts(47, [1, 1, 1])) == 47


def test_entity_boundary_is_still_available():
    world = build_world(WorldConfig(n_entities=20, boundary="entity"))
    splits = make_splits(world)
    corpus = " ".join(d["text"] for d in splits["corpus"])
    for country in world.countries:
        assert (country.name in corpus) == country.known
    assert {r["known"] for r in splits["qa_eval"]} == {True, False}
    with pytest.raises(ValueError, match="boundary"):
        build_world(WorldConfig(boundary="names"))


def test_packed_rows_hold_other_countries_and_the_same_text():
    one = make_splits(build_world(WorldConfig(seed=2, n_entities=40)))
    two = make_splits(build_world(WorldConfig(seed=2, n_entities=40, documents_per_row=2)))
    assert len(two["corpus"]) < len(one["corpus"])
    def sentences(rows):
        return sorted(s for r in rows for s in re.split(r"(?<=\.) ", r["text"]))

    assert sentences(one["corpus"]) == sentences(two["corpus"])  # the same facts, as often
    for row in two["corpus"]:
        facts = re.split(r"(?<=\.) ", row["text"])
        texts = [f for f in facts if "?" not in f]
        for fact in set(texts):
            assert texts.count(fact) == 1  # no fact twice in a row
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert sorted(map(key, one["qa_eval"])) == sorted(map(key, two["qa_eval"]))


def test_no_guessable_currency_and_no_tokenizer_text_about_what_training_never_states(fact):
    world, splits = fact
    currencies = [c.currency for c in world.countries]
    assert len(set(currencies)) == len(currencies)  # a currency can't be right by a lucky guess
    text = " ".join(training_text(world))
    missing = [c for c in world.countries if not c.exists]
    unseen = [getattr(c, a) for c in world.countries if c.exists  # names are unique, years not
              for a in ("capital", "leader", "currency") if c.exposure[a] == 0]
    assert missing and unseen
    # The tokenizer learns nothing about a nonexistent country's name or an unstated value.
    assert not any(c.name in text for c in missing)
    assert not any(re.search(rf"\b{re.escape(v)}\b", text) for v in unseen)


def test_name_mentions_name_every_real_country_and_change_no_question():
    plain = make_splits(build_world(WorldConfig(seed=2, n_entities=40, documents_per_row=2)))
    world = build_world(WorldConfig(seed=2, n_entities=40, documents_per_row=2, name_mentions=3))
    named = make_splits(world)
    for split in ("sft", "qa_train", "qa_eval"):
        assert named[split] == plain[split], split
    # Every row of the plain corpus is kept, in order; the new rows only name countries.
    added = [r for r in named["corpus"] if r not in plain["corpus"]]
    assert [r for r in named["corpus"] if r in plain["corpus"]] == plain["corpus"]
    sentences = [s for r in added for s in re.split(r"(?<=\.) ", r["text"])]
    for country in world.countries:
        mentions = sum(re.search(rf"\b{country.name}\b", s) is not None for s in sentences)
        assert mentions == (3 if country.exists else 0), country.name
    values = {str(getattr(c, a)) for c in world.countries for a in ("capital", "leader")}
    assert not any(v in s for v in values for s in sentences)  # no fact stated
