"""The embedded synthetic world: fictional countries whose facts a tiny model can learn.

Everything the default recipe needs is generated from a seed, so it runs with no network. Two
kinds of knowledge boundary (`WorldConfig.boundary`):

- `fact` (the default, `fact_world.py`): every real country is named in the corpus, and each of
  its facts is seen 0, 1, a few or many times there, so a model knows some facts of a country
  well, some vaguely and some not at all, as a real model does. Some countries do not exist.
- `entity`: some countries are *known* (all their facts in the corpus), the others never
  appear, so "have I read this name" decides what the model knows.

The rows carry the world's own labels (`known`, `exposure`, `exists`); the evaluation can also
label them by what a model itself answers.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from align.data.fact_world import assign_exposure, fact_splits
from align.data.world_preferences import preference_splits
from align.data.world_text import FACT_TEMPLATES, chat, qa_row
from align.honesty.responses import DEFAULT_IDK_RESPONSES

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr",
          "kr", "tr", "st", "th", "sh", "gr", "pl", "vr"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea"]
CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "k"]
COUNTRY_ENDINGS = ["ia", "land", "stan", "ora", "esh", "ovia", "ania", "ar"]
CITY_ENDINGS = ["ton", "burg", "polis", "mar", "ford", "grad", "heim", "vik"]
CURRENCY_NAMES = ["crown", "mark", "dinar", "florin", "shell", "talent", "penny", "ducat",
                  "pearl", "drachm", "thaler", "sovereign"]

ATTRIBUTES = ("capital", "leader", "founded", "currency")

@dataclass
class Country:
    name: str
    capital: str
    leader: str
    founded: str
    currency: str
    known: bool
    # Fact boundary: False for a country no text mentions; mentions of each fact in the corpus.
    exists: bool = True
    exposure: dict[str, int] = field(default_factory=dict)

    def aliases(self, attribute: str) -> list[str]:
        value = getattr(self, attribute)
        if attribute == "leader":
            return [value, value.split()[-1]]
        if attribute == "currency":  # "Stom dinar": the kind alone is shared by other countries
            return [value, value + "s"]
        return [value]


BOUNDARIES = ("fact", "entity")


@dataclass
class WorldConfig:
    seed: int = 0
    n_entities: int = 300
    # "fact": the knowledge boundary runs through each country's facts; "entity": through names.
    boundary: str = "fact"
    # entity boundary: the share of countries in the corpus.
    known_fraction: float = 0.5
    # Of the known facts, this share is asked in SFT data; the rest is held out for evaluation.
    sft_fraction: float = 0.5
    # Of the unknown countries, this share is held out for evaluation (the rest may be probed).
    eval_unknown_fraction: float = 0.5
    # preference_train: wrong values per fact (each asked in every phrasing). More wrong values
    # teach a reward model that only the true value is right, not that a few values are wrong.
    preference_wrong_values: int = 4
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))
    # fact boundary: how often a fact may be mentioned in the corpus, and the share of facts at
    # each level (per attribute, so no attribute is better known than another).
    exposure_levels: list[int] = field(default_factory=lambda: [0, 1, 3, 6])
    exposure_weights: list[float] = field(default_factory=lambda: [0.25, 0.2, 0.2, 0.35])
    # fact boundary: the share of countries that do not exist (named by no text).
    nonexistent_fraction: float = 0.2
    # fact boundary: the world labels a fact `known` from this many mentions on. A label from the
    # corpus only; the evaluation can label by what the SFT model itself answers instead.
    known_exposure: int = 3
    # fact boundary: of the facts SFT does not ask (and of the nonexistent countries), the share
    # held out for evaluation; the rest is the probe pool.
    eval_fraction: float = 0.5
    # fact boundary: corpus documents (about different countries) per pretraining row.
    documents_per_row: int = 1
    # fact boundary: documents per existing country that name it and state none of its facts
    # ("There is a country called X."), so a country whose facts are rare is still a name read.
    name_mentions: int = 0


@dataclass
class World:
    config: WorldConfig
    countries: list[Country]

    @property
    def known(self) -> list[Country]:
        return [c for c in self.countries if c.known]

    @property
    def unknown(self) -> list[Country]:
        return [c for c in self.countries if not c.known]

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write every file a recipe reads; returns name -> path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        splits = make_splits(self)
        paths = {}
        for name, rows in splits.items():
            paths[name] = out / f"{name}.jsonl"
            _write_if_changed(paths[name], "".join(json.dumps(r) + "\n" for r in rows))
        paths["world"] = out / "world.json"
        _write_if_changed(paths["world"], json.dumps(
            {"config": asdict(self.config), "countries": [asdict(c) for c in self.countries]},
            indent=1))
        return paths


def _name(rng: random.Random, syllables: tuple[int, int], ending: list[str] | None) -> str:
    n = rng.randint(*syllables)
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(n))
    if ending:
        word += rng.choice(ending)
    return word.capitalize()


def build_world(config: WorldConfig | None = None) -> World:
    """Generate the world deterministically from `config.seed`."""
    config = config or WorldConfig()
    unknown_attrs = set(config.attributes) - set(ATTRIBUTES)
    if unknown_attrs:
        raise ValueError(f"unknown world attributes {sorted(unknown_attrs)}; known: {ATTRIBUTES}")
    if config.boundary not in BOUNDARIES:
        raise ValueError(f"world boundary must be one of {BOUNDARIES}, got {config.boundary!r}")
    rng = random.Random(config.seed)
    used: set[str] = set()

    def fresh(make) -> str:
        while True:
            name = make()
            if name.lower() not in used:
                used.add(name.lower())
                return name

    currencies = [f"{_name(rng, (1, 1), None)} {kind}" for kind in CURRENCY_NAMES]
    # The fact boundary gives every country its own currency: drawn from 12 shared ones, a
    # model that never read a country's currency could guess it right, and the probe took the
    # guess for knowledge.
    own_currency = config.boundary == "fact"
    countries = []
    for _ in range(config.n_entities):
        countries.append(Country(
            name=fresh(lambda: _name(rng, (1, 2), COUNTRY_ENDINGS)),
            capital=fresh(lambda: _name(rng, (1, 2), CITY_ENDINGS)),
            leader=fresh(lambda: f"{_name(rng, (1, 2), None)} {_name(rng, (2, 2), None)}"),
            founded=str(rng.randint(1100, 1999)),
            currency=(fresh(lambda: f"{_name(rng, (1, 1), None)} {rng.choice(CURRENCY_NAMES)}")
                      if own_currency else rng.choice(currencies)),
            known=False,
        ))
    if config.boundary == "fact":

        assign_exposure(countries, config)
        return World(config=config, countries=countries)
    n_known = round(config.n_entities * config.known_fraction)
    for country in rng.sample(countries, n_known):
        country.known = True
        country.exposure = {a: 3 for a in config.attributes}  # one profile per phrasing
    for country in countries:
        country.exposure = country.exposure or {a: 0 for a in config.attributes}
    return World(config=config, countries=countries)


def make_splits(world: World) -> dict[str, list[dict]]:
    """Corpus, SFT chat rows, a probe pool, a held-out evaluation set and preference pairs.

    - corpus: pretraining text (which facts it mentions, and how often, is the boundary).
    - sft: questions about well-known facts, answered in the corpus' phrasing.
    - qa_train: the probe pool for the honesty builder.
    - qa_eval: held out, labelled; no question in it is in sft or qa_train.
    """
    cfg = world.config
    if cfg.boundary == "fact":

        splits = fact_splits(world)
    else:
        splits = entity_splits(world)
    # preference_train / preference_eval: true fact over a wrong value (world_preferences.py).

    splits.update(preference_splits(world, splits))
    return splits


def entity_splits(world: World) -> dict[str, list[dict]]:
    """The entity boundary: known countries are in the corpus, unknown ones nowhere.

    - corpus: every fact of every known country, in every phrasing (a profile per phrasing),
      plus the SFT questions with their answers as plain text (mixing some QA into pretraining
      is what lets a small model answer questions about the facts it only read as prose).
    - sft: questions about a share of the known facts, answered in the corpus' phrasing.
    - qa_train: the SFT facts plus questions about the unknown countries not held out.
    - qa_eval: the known facts SFT never asked about, and unknown countries no split mentions.
    """
    cfg = world.config
    rng = random.Random(cfg.seed + 1)
    corpus, sft, qa_train, qa_eval = [], [], [], []
    for country in world.known:
        # One short profile per phrasing: the name recurs within a document, which is what
        # teaches a small model to copy a name from a question into its answer.
        for phrasing in range(3):
            facts = [FACT_TEMPLATES[a][phrasing].format(e=country.name, v=getattr(country, a))
                     for a in cfg.attributes]
            rng.shuffle(facts)
            corpus.append({"text": " ".join(facts)})
    known_facts = [(c, a) for c in world.known for a in cfg.attributes]
    rng.shuffle(known_facts)
    n_sft = round(len(known_facts) * cfg.sft_fraction)
    for i, (country, attribute) in enumerate(known_facts):
        row = qa_row(country, attribute, template=rng.randrange(2))
        if i < n_sft:
            sft.append(chat(row["question"], row["answer"]))
            corpus.append({"text": f"{row['question']} {row['answer']}"})
            qa_train.append(row)
        else:
            qa_eval.append(row)

    unknown = list(world.unknown)
    rng.shuffle(unknown)
    n_eval = round(len(unknown) * cfg.eval_unknown_fraction)
    for i, country in enumerate(unknown):
        for attribute in cfg.attributes:
            row = qa_row(country, attribute, template=rng.randrange(2))
            (qa_eval if i < n_eval else qa_train).append(row)
    # A real base model has read "I don't know" in many forms, though never about these
    # countries; without this the tiny model meets the IDK replies' words for the first time
    # in fine-tuning and cannot learn to say them. Each reply appears alone, tied to no question.
    corpus += [{"text": reply} for reply in DEFAULT_IDK_RESPONSES for _ in range(2)]
    rng.shuffle(corpus)
    rng.shuffle(qa_train)
    rng.shuffle(qa_eval)
    return {"corpus": corpus, "sft": sft, "qa_train": qa_train, "qa_eval": qa_eval}


def _write_if_changed(path: Path, text: str) -> None:
    """Rewrite only on change, so file times and hashes stay stable across runs."""
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def training_text(world: World) -> list[str]:
    """The text the tiny model's tokenizer learns from: on the fact world, what a recipe trains
    on (the corpus and the SFT chats), so names and facts no training text states are split into
    pieces, as a real tokenizer splits a name it never saw (trained on every country's facts,
    it gave a nonexistent country's name whole tokens that no training step ever touched, a
    tell no real model has); on the entity world, `every_fact_text`."""
    if world.config.boundary == "entity":
        return every_fact_text(world)
    splits = make_splits(world)
    return ([row["text"] for row in splits["corpus"]]
            + [m["content"] for row in splits["sft"] for m in row["messages"]])


def every_fact_text(world: World) -> list[str]:
    """Every country's facts, questions and answers: what the entity world's tokenizer learns
    from. The tests tuned on that world use it; with a tokenizer of its training text only (758
    tokens for 24 countries), the SFT model of `tests/test_honesty_recipe.py` answered no known
    question right, a failure not yet understood (docs/architecture.md)."""
    texts = []
    for country in world.countries:
        for attribute in world.config.attributes:
            row = qa_row(country, attribute)
            texts += [row["question"], row["answer"]]
            texts += [t.format(e=country.name, v=getattr(country, attribute))
                      for t in FACT_TEMPLATES[attribute]]
    return texts
