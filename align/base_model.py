"""The recipe's base model: a Hub id or local directory, or the tiny model built for the recipe.

The tiny model's byte-level BPE tokenizer learns from the text the recipe's stages train on. A
tokenizer splits text it never saw into short pieces; trained on the embedded world alone, it
cut the training text of `recipes/tiny/byod.yaml` (the files in data/) into 3.0 times as many
tokens as one trained on that text (5,063 against 1,699), and a conversation held out of the
SFT file into 3.2 times as many, so a tiny model spent its short context and its few parameters
on spelling. What it learns from (`tokenizer_texts`):

* the world's training text (`world.training_text`: corpus and SFT chats) when a stage that
  trains a model reads the world, or when nothing else gives text;
* the rows of every local file a stage that trains a model reads (`data.train`), read and
  converted as that stage reads them (`StageData`), their text being what the stage
  tokenizes (text, prompt, completion, messages, chosen, rejected). Held-out and probe
  questions (`data.eval`, the idk and evaluate stages) stay out, as the world's do: a name
  only the evaluation mentions stays in pieces, as a real tokenizer leaves a name it never saw.

At most `ROWS_PER_FILE` rows and `CHARACTERS_PER_FILE` characters of each file are used (JSONL
and CSV are read no further), so a big corpus costs neither the build (BPE took 1.7 s on 8 MB
here) nor the stage hash, which computes the text's digest on every run. Hub datasets and
upstream stages' files are not read: the first needs a download, the second does not exist
before the run. A file that cannot be read or converted is left out here; its stage reports
it, with the file and row.

Every caller that needs the base (runner, validate, the stage hash) goes through this module,
so they all get the same build.
"""

from __future__ import annotations

from align.data.world import WorldConfig, build_world, training_text
from align.errors import AlignError
from align.kinds import get_kind
from align.recipe import Recipe
from align.stage_data import StageData
from align.tiny import TinyConfig, build_tiny

ROWS_PER_FILE = 5_000
CHARACTERS_PER_FILE = 2_000_000
# The fields of a converted row (`formats.TARGETS`) that hold text the stage tokenizes.
TEXT_FIELDS = ("text", "prompt", "completion", "messages", "chosen", "rejected")


def resolve_base(recipe: Recipe) -> str:
    """The recipe's base model as a loadable reference (the tiny model is built on demand)."""
    if recipe.model.name_or_path == "tiny":
        return str(build_tiny(tiny_config(recipe), texts=tokenizer_texts(recipe)))
    ref = recipe.model.name_or_path
    local = recipe.resolve_path(ref)
    return str(local) if local.exists() else ref


def tiny_config(recipe: Recipe) -> TinyConfig:
    """The tiny model's settings: `model.tiny`, on the recipe's world."""
    return TinyConfig.from_dict({**recipe.model.tiny, "world": recipe.world})


def tokenizer_texts(recipe: Recipe) -> list[str]:
    """The text the tiny model's tokenizer learns from for this recipe (see the module doc)."""
    texts, reads_world = [], False
    for name in recipe.order():
        kind = get_kind(recipe.stages[name].kind)
        if not kind.makes_model or kind.data is None:  # builds data or a report, or reads none
            continue
        data = StageData(recipe, name, max_rows=ROWS_PER_FILE)
        for index, src in enumerate(data.default_sources()):
            reads_world = reads_world or src.world is not None
            if src.path:
                texts += file_texts(data, src, index, kind.data)
    if reads_world or not texts:
        texts = training_text(build_world(WorldConfig(**recipe.world))) + texts
    return texts


def file_texts(data: StageData, src, index: int, target: str) -> list[str]:
    """The text of one file source's rows as the stage converts them, up to the budget."""
    try:
        rows = data.prepare(src, index, target).rows
    except AlignError:
        return []  # the stage (and `align validate`) reports it, naming the file and row
    texts, size = [], 0
    for row in rows:
        for text in row_texts(row):
            if size + len(text) > CHARACTERS_PER_FILE:
                return texts
            texts.append(text)
            size += len(text)
    return texts


def row_texts(row: dict) -> list[str]:
    """The strings a stage tokenizes in one converted row (message contents for messages)."""
    out = []
    for key in TEXT_FIELDS:
        value = row.get(key)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out += [m["content"] for m in value if isinstance(m.get("content"), str)]
    return out
