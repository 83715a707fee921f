"""`align validate`: everything that can be checked before training, without training.

The recipe's structure and stage args (recipe.py), the accelerate profile, and every dataset:
it exists, parses, is not empty, converts to the format its stage trains on, and leaves room
after each prompt for an answer within the stage's max_length (so a missing column, a malformed
row or an overlong prompt is found now, with its file and row, not an hour into a run). Prompt
lengths need the base model's tokenizer; where it cannot be had (a Hub model offline) they are
checked when each stage starts instead.
"""

from __future__ import annotations

from contextlib import contextmanager

from align.data.lengths import PROMPTED_TARGETS
from align.recipe import Recipe, RecipeError, load_recipe

# What each stage kind trains on (a formats.TARGETS), or the QA columns it reads.
TARGET_OF_KIND = {"pretrain": "language_modeling", "sft": "sft", "rm": "preference",
                  "dpo": "preference", "orpo": "preference", "kto": "unpaired",
                  "ppo": "prompt_only"}
QA_KINDS = ("idk", "evaluate")
QA_COLUMNS = {"question", "answers"}
# Files an idk artifact offers to later stages.
IDK_FILES = ("sft", "preference", "kto", "rm", "prompts", "probe")


def world_rows(recipe: Recipe) -> dict[str, list[dict]]:
    from align.data.world import WorldConfig, build_world, make_splits

    try:
        return make_splits(build_world(WorldConfig(**recipe.world)))
    except TypeError as exc:
        raise RecipeError(f"{recipe.source}: invalid `world` settings: {exc}") from None


def base_tokenizer(recipe: Recipe):
    """The tokenizer every stage inherits from the base model, or None where it cannot be had."""
    from align.modeling import load_tokenizer, resolve_base

    try:
        return load_tokenizer(resolve_base(recipe), recipe.model.trust_remote_code)
    except (OSError, ValueError):
        return None


def validate_recipe(path: str, overrides: list[str] | None = None, *, accelerate: str | None = None,
                    only: list[str] | None = None) -> list[str]:
    """Raise the first problem found; return what was checked, one line per item. `only`: the
    stages that will run (all by default), which must support the accelerate profile."""
    from align.data.formats import convert_rows
    from align.data.sources import check_columns, read_local, rename_columns, take
    from align.profiles import DESCRIBE, check_recipe
    from align.runner import profile_path

    recipe = load_recipe(path, overrides)
    checked = [f"recipe {path}: {len(recipe.stages)} stages, order {' -> '.join(recipe.order())}"]
    profile = profile_path(accelerate or recipe.accelerate)
    profile_class = check_recipe(recipe, profile, only)
    checked.append(f"accelerate profile {profile.stem} ({profile}): {DESCRIBE[profile_class]}, "
                   "supported by every stage" + (f" of {', '.join(only)}" if only else ""))
    world = None
    tokenizer = False  # loaded on first need
    for name in recipe.order():
        stage = recipe.stages[name]
        if stage.data is None:
            continue
        for src in [*stage.data.train, *stage.data.eval]:
            label = src.describe()
            if src.hub:
                checked.append(f"{name}: {label} (Hub dataset, not checked offline)")
                continue
            if src.stage:
                kind = recipe.stages[src.stage].kind
                if kind != "idk" or src.file not in IDK_FILES:
                    raise RecipeError(f"{recipe.source}: stage '{name}' reads file '{src.file}' of "
                                      f"stage '{src.stage}' ({kind}); only idk stages offer "
                                      f"files: {', '.join(IDK_FILES)}.")
                checked.append(f"{name}: {label} (made by stage {src.stage})")
                continue
            if src.world:
                world = world or world_rows(recipe)
                rows = world[src.world]
            else:
                rows = read_local(recipe.resolve_path(src.path))
            rows = take(rename_columns(rows, src.columns, label), 1.0, src.max_samples, recipe.seed)
            if stage.kind in QA_KINDS:
                check_columns(rows, QA_COLUMNS | ({"known"} if stage.kind == "evaluate" else set()),
                              label)
            else:
                with format_error_names_key(recipe, name, stage, src):
                    result = convert_rows(rows, source=label, target=TARGET_OF_KIND[stage.kind],
                                          fmt=src.format, label_column=src.label_column,
                                          on_error=stage.data.on_error)
                if result.dropped:
                    checked.append(f"{name}: {label}: {len(result.dropped)} malformed rows will "
                                   f"be dropped (first: {result.dropped[0]})")
                if result.identical:
                    checked.append(f"{name}: {label}: {result.identical} preference pairs whose "
                                   "chosen and rejected are identical will be dropped")
            checked.append(f"{name}: {label}: {len(rows)} rows OK for {stage.kind}")
            if TARGET_OF_KIND.get(stage.kind) in PROMPTED_TARGETS:
                if tokenizer is False:
                    tokenizer = base_tokenizer(recipe)
                checked.append(prompt_lengths(recipe, name, label, rows, result, tokenizer))
    return checked


def prompt_lengths(recipe: Recipe, name: str, label: str, rows, result, tokenizer) -> str:
    """Refuse (or count for dropping) the rows whose prompt fills the stage's max_length, as the
    stage itself will when it starts."""
    from align.data.lengths import fit_prompts
    from align.recipe import config_class

    stage = recipe.stages[name]
    if tokenizer is None:
        return f"{name}: {label}: prompt lengths checked when the stage starts (no tokenizer here)"
    _, dropped, limit = fit_prompts(result.rows, len(rows), result.dropped, tokenizer, stage.args,
                                    config_class(stage.kind), label, stage.data.on_error,
                                    f"stages.{name}.args.max_length")
    if limit is None:
        return f"{name}: {label}: no max_length or chat template: prompt lengths not checked"
    if dropped:
        return f"{name}: {label}: {dropped} rows whose prompt reaches max_length {limit} will be dropped"
    return f"{name}: {label}: every prompt leaves room for an answer within max_length {limit}"


@contextmanager
def format_error_names_key(recipe: Recipe, name: str, stage, src):
    """A dataset whose layout (`format`, given or detected) cannot feed the stage: the message
    also names the recipe, the stage and the source's key path. Problems of the data itself
    (rows, files) already name the file and row and pass unchanged."""
    from align.data.formats import LayoutError
    from align.errors import AlignError, DataError
    from align.recipe import data_key

    try:
        yield
    except AlignError as exc:
        if isinstance(exc, DataError) and not isinstance(exc, LayoutError):
            raise
        key = f"stages.{name}.{data_key(stage, src)}"
        fmt = f"format {src.format!r}" if src.format != "auto" else "format auto-detected"
        raise RecipeError(f"{recipe.source}: stage '{name}' ({stage.kind}), '{key}.format' "
                          f"({fmt}): {exc}") from None
