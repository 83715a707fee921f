"""`align validate`: everything that can be checked before training, without training.

The recipe's structure and stage args (recipe.py), the accelerate profile, and every dataset:
it exists, parses, is not empty, converts to the layout its stage's kind reads, and leaves room
after each prompt for an answer within the stage's max_length (so a missing column, a malformed
row or an overlong prompt is found now, with its file and row, not an hour into a run). Data is
read exactly as the stage will read it (`stage_data.StageData`). Prompt lengths need the base
model's tokenizer; where it cannot be had (a Hub model offline) they are checked when each stage
starts instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache

from align.base_model import resolve_base
from align.data.formats import LayoutError
from align.data.lengths import PROMPTED_TARGETS
from align.data.world import WorldConfig, build_world, make_splits
from align.kinds import get_kind
from align.modeling import load_tokenizer
from align.profiles import DESCRIBE, check_stage, classify_file, profile_path
from align.errors import AlignError, DataError
from align.recipe import Recipe, RecipeError, data_key, load_recipe
from align.stage_data import StageData


def world_rows(recipe: Recipe) -> dict[str, list[dict]]:
    try:
        return make_splits(build_world(WorldConfig(**recipe.world)))
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{recipe.source}: invalid `world` settings: {exc}") from None


def base_tokenizer(recipe: Recipe):
    """The tokenizer every stage inherits from the base model, or None where it cannot be had."""
    try:
        return load_tokenizer(resolve_base(recipe), recipe.model.trust_remote_code)
    except (OSError, ValueError):
        return None


def check_profile(recipe: Recipe, profile, only: list[str] | None = None) -> str:
    """Every stage that will run (those in `only`, when given) against the profile's class."""
    profile_class = classify_file(profile)
    for name in recipe.order():
        if not only or name in only:
            check_stage(name, get_kind(recipe.stages[name].kind), profile_class, profile.stem)
    return profile_class


def validate_recipe(path: str, overrides: list[str] | None = None, *, accelerate: str | None = None,
                    only: list[str] | None = None) -> list[str]:
    """Raise the first problem found; return what was checked, one line per item. `only`: the
    stages that will run (all by default), which must support the accelerate profile."""
    recipe = load_recipe(path, overrides)
    checked = [f"recipe {path}: {len(recipe.stages)} stages, order {' -> '.join(recipe.order())}"]
    profile = profile_path(accelerate or recipe.accelerate)
    profile_class = check_profile(recipe, profile, only)
    checked.append(f"accelerate profile {profile.stem} ({profile}): {DESCRIBE[profile_class]}, "
                   "supported by every stage" + (f" of {', '.join(only)}" if only else ""))
    world = None
    tokenizer = cache(lambda: base_tokenizer(recipe))  # loaded on first need, once
    for name in recipe.order():
        stage = recipe.stages[name]
        if stage.data is None:
            continue
        if any(src.world for src in [*stage.data.train, *stage.data.eval]):
            world = world or world_rows(recipe)
        data = StageData(recipe, name, world=world, tokenizer=tokenizer)
        target = get_kind(stage.kind).data
        for i, src in enumerate([*stage.data.train, *stage.data.eval]):
            label = src.describe()
            if src.hub:
                checked.append(f"{name}: {label} (Hub dataset, not checked offline)")
                continue
            if src.stage:
                offers = get_kind(recipe.stages[src.stage].kind).offers
                if src.file not in offers:
                    kind = recipe.stages[src.stage].kind
                    raise RecipeError(f"{recipe.source}: stage '{name}' reads file '{src.file}' of "
                                      f"stage '{src.stage}' ({kind}); "
                                      + (f"{kind} stages offer: {', '.join(offers)}." if offers
                                         else f"{kind} stages offer no files to read."))
                checked.append(f"{name}: {label} (made by stage {src.stage})")
                continue
            with format_error_names_key(recipe, name, stage, src):
                prepared = data.prepare(src, i, target)
            if prepared.problems:
                checked.append(f"{name}: {label}: {len(prepared.problems)} malformed rows will "
                               f"be dropped (first: {prepared.problems[0]})")
            if prepared.identical:
                checked.append(f"{name}: {label}: {prepared.identical} preference pairs whose "
                               "chosen and rejected are identical will be dropped")
            checked.append(f"{name}: {label}: {prepared.read_rows} rows OK for {stage.kind}")
            if prepared.ignored:
                checked.append(f"{name}: {label}: columns ignored (not read by the "
                               f"{stage.kind} stage): {', '.join(prepared.ignored)}")
            checked.append(prompt_lengths(name, label, prepared, target, tokenizer))
    return [line for line in checked if line]


def prompt_lengths(name: str, label: str, prepared, target: str, tokenizer) -> str:
    """What measuring the prompts against the stage's max_length found."""
    if target not in PROMPTED_TARGETS:
        return ""
    if tokenizer() is None:
        return f"{name}: {label}: prompt lengths checked when the stage starts (no tokenizer here)"
    if prepared.limit is None:
        return f"{name}: {label}: no max_length or chat template: prompt lengths not checked"
    if prepared.too_long:
        return (f"{name}: {label}: {prepared.too_long} rows whose prompt reaches max_length "
                f"{prepared.limit} will be dropped")
    return f"{name}: {label}: every prompt leaves room for an answer within max_length {prepared.limit}"


@contextmanager
def format_error_names_key(recipe: Recipe, name: str, stage, src):
    """A dataset whose layout (`format`, given or detected) cannot feed the stage: the message
    also names the recipe, the stage and the source's key path. Problems of the data itself
    (rows, files) already name the file and row and pass unchanged."""
    try:
        yield
    except AlignError as exc:
        if isinstance(exc, DataError) and not isinstance(exc, LayoutError):
            raise
        key = f"stages.{name}.{data_key(stage, src)}"
        fmt = f"format {src.format!r}" if src.format != "auto" else "format auto-detected"
        raise RecipeError(f"{recipe.source}: stage '{name}' ({stage.kind}), '{key}.format' "
                          f"({fmt}): {exc}") from None
