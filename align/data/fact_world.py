"""The fact boundary: every real country is named, each fact is seen 0, 1, a few or many times.

In a real model the line between known and unknown runs through facts, not names: it has read
about an entity and knows some facts well, some vaguely, some not at all (Gekhman et al.'s
HighlyKnown / MaybeKnown / WeaklyKnown / Unknown). Here each fact of a country gets an exposure
level, the number of corpus documents that state it, in rotating phrasings. A country whose
facts are all at level 0 would be unnamed, so none is; the countries that do not exist are
named by no text at all. SFT asks only about the most exposed facts; the probe pool and the
held-out evaluation both cover every level, so what a probe of the SFT model learns about its
own boundary is what the evaluation measures.
"""

from __future__ import annotations

import random
from collections import defaultdict

from align.data.world_text import (FACT_ANSWER_TEMPLATES, FACT_TEMPLATES, NAME_TEMPLATES,
                                   QUESTION_TEMPLATES, chat, qa_row)
from align.honesty.responses import DEFAULT_IDK_RESPONSES


def level_counts(n: int, weights: list[float]) -> list[int]:
    """Split n items into len(weights) parts proportional to weights (largest remainder), so
    every attribute gets the same mix of levels up to rounding."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_exposure(countries: list, config) -> None:
    """Mark the nonexistent countries and give every fact of the others an exposure level."""
    levels, weights = list(config.exposure_levels), list(config.exposure_weights)
    if len(levels) != len(weights) or not levels or min(levels) < 0 or max(levels) < 1:
        raise ValueError("exposure_levels and exposure_weights need equal lengths, levels >= 0 "
                         f"and one above 0 (got {levels} and {weights})")
    rng = random.Random(config.seed + 3)
    n_missing = round(len(countries) * config.nonexistent_fraction)
    missing = set(id(c) for c in rng.sample(countries, n_missing))
    existing = []
    for country in countries:
        country.exists = id(country) not in missing
        country.known = country.exists  # the name is in the corpus
        country.exposure = {a: 0 for a in config.attributes}
        if country.exists:
            existing.append(country)
    for attribute in config.attributes:
        pool = [lvl for lvl, n in zip(levels, level_counts(len(existing), weights))
                for _ in range(n)]
        rng.shuffle(pool)
        for country, level in zip(existing, pool):
            country.exposure[attribute] = level
    # Every existing country is named somewhere: swap a fact level with a country that can spare
    # one, which keeps each attribute's mix of levels exact.
    for country in existing:
        if max(country.exposure.values()) > 0:
            continue
        for attribute in config.attributes:
            donor = next((c for c in existing if c.exposure[attribute] > 0
                          and sum(v > 0 for v in c.exposure.values()) > 1), None)
            if donor:
                country.exposure[attribute], donor.exposure[attribute] = \
                    donor.exposure[attribute], 0
                break


def fact_row(country, attribute: str, template: int, known_exposure: int) -> dict:

    row = qa_row(country, attribute, template, FACT_ANSWER_TEMPLATES)
    row["known"] = country.exists and row["exposure"] >= known_exposure
    # Every phrasing of the question, for a probe that asks each fact more than one way.
    row["paraphrases"] = [q.format(e=country.name) for q in QUESTION_TEMPLATES[attribute]]
    return row


def corpus_documents(country, attributes: list[str], rng: random.Random) -> list[dict]:
    """Document i states the facts seen more than i times; each fact rotates through the
    phrasings from a random start, so a fact seen once is not always in the answer's words."""

    start = {a: rng.randrange(len(FACT_TEMPLATES[a])) for a in attributes}
    docs = []
    for i in range(max(country.exposure[a] for a in attributes)):
        facts = [FACT_TEMPLATES[a][(start[a] + i) % len(FACT_TEMPLATES[a])].format(
            e=country.name, v=getattr(country, a)) for a in attributes if country.exposure[a] > i]
        rng.shuffle(facts)
        docs.append({"text": " ".join(facts)})
    return docs


def with_name_mentions(corpus: list[dict], countries: list, config) -> list[dict]:
    """The corpus with `name_mentions` sentences per country that name it and state none of its
    facts, `documents_per_row` to a row, spread through it. They draw from their own random
    stream, so every split is the same with or without them."""
    if config.name_mentions <= 0:
        return corpus
    own = random.Random(config.seed + 5)
    sentences = [NAME_TEMPLATES[i % len(NAME_TEMPLATES)].format(e=c.name)
                 for c in countries for i in range(config.name_mentions)]
    own.shuffle(sentences)
    n = max(1, config.documents_per_row)
    out = list(corpus)
    for j in range(0, len(sentences), n):
        out.insert(own.randrange(len(out) + 1), {"text": " ".join(sentences[j:j + n])})
    return out


def pack(countries: list, config, rng: random.Random) -> list[dict]:
    """Corpus rows of `documents_per_row` documents about different countries.

    Documents are short (one to four facts), so a batch of them is half padding; a row of two
    halves the pretraining steps for the same text. Documents in a row come from the same round
    (document i of different countries), so a row never states a fact twice, which would let
    the model copy the second mention instead of recalling it."""
    documents = [corpus_documents(c, config.attributes, rng) for c in countries]
    n = max(1, config.documents_per_row)
    if n == 1:
        return [doc for docs in documents for doc in docs]
    rounds: dict[int, list[str]] = defaultdict(list)
    for docs in documents:
        for i, doc in enumerate(docs):
            rounds[i].append(doc["text"])
    own = random.Random(config.seed + 4)  # leaves the splits' random stream as it was
    rows = []
    for i in sorted(rounds):
        texts = rounds[i]
        own.shuffle(texts)
        rows += [{"text": " ".join(texts[j:j + n])} for j in range(0, len(texts), n)]
    return rows


def fact_splits(world) -> dict[str, list[dict]]:
    """Corpus, SFT, probe pool (qa_train) and evaluation (qa_eval) for the fact boundary.

    - corpus: each existing country's documents, the SFT questions with their answers as plain
      text (what lets a small model answer questions about facts it only read as prose), and
      the builder's IDK replies.
    - sft: a share (`sft_fraction`) of the most exposed facts, per attribute.
    - qa_train: the SFT facts (`in_sft`) plus, from every level and attribute and from the
      nonexistent countries, the share not held out.
    - qa_eval: the rest (`eval_fraction`), every row with its `exposure`, `attribute`, `exists`
      and the world's `known` label (exposure >= `known_exposure`).
    """

    cfg = world.config
    rng = random.Random(cfg.seed + 1)
    existing = [c for c in world.countries if c.exists]
    corpus = pack(existing, cfg, rng)
    top = max(cfg.exposure_levels)
    strata: dict[tuple[int, str], list] = defaultdict(list)
    for country in existing:
        for attribute in cfg.attributes:
            strata[(country.exposure[attribute], attribute)].append(country)
    sft, qa_train, qa_eval = [], [], []
    for (level, attribute), countries in sorted(strata.items()):
        rng.shuffle(countries)
        n_sft = round(len(countries) * cfg.sft_fraction) if level == top else 0
        rest = countries[n_sft:]
        n_eval = round(len(rest) * cfg.eval_fraction)
        for i, country in enumerate(countries):
            row = fact_row(country, attribute, rng.randrange(2), cfg.known_exposure)
            row["in_sft"] = i < n_sft
            if row["in_sft"]:
                sft.append(chat(row["question"], row["answer"]))
                corpus.append({"text": f"{row['question']} {row['answer']}"})
                qa_train.append(row)
            else:
                (qa_eval if i - n_sft < n_eval else qa_train).append(row)
    missing = [c for c in world.countries if not c.exists]
    rng.shuffle(missing)
    n_eval = round(len(missing) * cfg.eval_fraction)
    for i, country in enumerate(missing):
        for attribute in cfg.attributes:
            row = fact_row(country, attribute, rng.randrange(2), cfg.known_exposure)
            row["in_sft"] = False
            (qa_eval if i < n_eval else qa_train).append(row)
    # As in the entity world: a real base model has read "I don't know" in many forms.
    corpus += [{"text": reply} for reply in DEFAULT_IDK_RESPONSES for _ in range(2)]
    for rows in (corpus, sft, qa_train, qa_eval):
        rng.shuffle(rows)
    corpus = with_name_mentions(corpus, existing, cfg)
    return {"corpus": corpus, "sft": sft, "qa_train": qa_train, "qa_eval": qa_eval}

