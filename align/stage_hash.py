"""A stage's identity: the resolved config it is hashed by, and the data files it reads.

A finished stage is skipped while its hash matches; anything that can change the trained model
must therefore be in it, and nothing that cannot (how often it logs) may be.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from align.artifacts import config_hash, file_fingerprint
from align.base_model import tokenizer_texts
from align.kinds import get_kind
from align.recipe import Recipe, Stage
from align.stage_data import world_dir
from align.tiny import text_digest

# Trainer args that change what is shown or how often it is saved, not what is trained: changing
# them must not make a finished stage stale. (save_steps also sets eval_steps when a stage
# evaluates without its own eval_steps, and then it counts: see `presentation_args`.)
PRESENTATION_ARGS = ("disable_tqdm", "logging_steps", "logging_first_step", "report_to",
                     "log_level", "run_name", "save_steps", "save_total_limit", "log_samples")


def reads_world(recipe: Recipe, stage: Stage) -> bool:
    """Whether the stage depends on the embedded world: a tiny base model is built from it, a
    `world:` source reads it, and a stage without data reads its kind's default world split."""
    if recipe.model.name_or_path == "tiny":
        return True
    if stage.data is None:
        return get_kind(stage.kind).default_world is not None
    return any(src.world for src in [*stage.data.train, *stage.data.eval])


def presentation_args(stage: Stage) -> tuple[str, ...]:
    evaluates = stage.data is not None and (stage.data.eval or stage.data.eval_fraction > 0)
    if evaluates and "eval_steps" not in stage.args:
        return tuple(a for a in PRESENTATION_ARGS if a != "save_steps")
    return PRESENTATION_ARGS


def stage_config(recipe: Recipe, name: str) -> dict:
    """The resolved stage block plus the recipe defaults it depends on (hashed and recorded)."""
    stage = recipe.stages[name]
    block = stage.model_dump(mode="json", by_alias=True)
    shown = presentation_args(stage)
    block["args"] = {k: v for k, v in block["args"].items() if k not in shown}
    block.pop("push_to_hub", None)
    block.pop("keep_checkpoints", None)
    # Options with their defaults filled in, where the kind's check builds a config: a default
    # that changes in a new version changes what the stage makes, so it reruns.
    checked = get_kind(stage.kind).check_options(stage.options, f"stages.{name}.options")
    if dataclasses.is_dataclass(checked):
        block["options"] = dataclasses.asdict(checked)
    config = {
        "stage": block,
        "seed": recipe.seed,
        "model": recipe.model.model_dump(mode="json"),
        "world": recipe.world if reads_world(recipe, stage) else None,
    }
    if recipe.model.name_or_path == "tiny":
        # The tiny base's tokenizer learns from every model stage's files (base_model.py): an
        # edit to another stage's data changes this stage's base model.
        config["tiny_tokenizer_text"] = text_digest(tokenizer_texts(recipe))
    return config


def data_files(recipe: Recipe, name: str) -> list[Path]:
    """The local files the stage reads (their content is part of its hash)."""
    stage = recipe.stages[name]
    if stage.data is None:
        default = get_kind(stage.kind).default_world
        return [world_dir(recipe) / f"{default}.jsonl"] if default else []
    files = []
    for src in [*stage.data.train, *stage.data.eval]:
        if src.path:
            files.append(recipe.resolve_path(src.path))
        elif src.world:
            files.append(world_dir(recipe) / f"{src.world}.jsonl")
    return files


def stage_hash(recipe: Recipe, name: str, input_hashes: dict[str, str],
               config: dict | None = None) -> str:
    """`config`: the stage's `stage_config`, when the caller already computed it."""
    return config_hash(config or stage_config(recipe, name), input_hashes,
                       file_fingerprint(data_files(recipe, name)))


def rerun_reason(recipe: Recipe, name: str, old, input_hashes: dict[str, str]) -> str:
    """Why a stage whose older artifact (`old`, its manifest) is stale runs again: the keys of
    its config that changed, the upstream stages that changed, or else its data files."""
    before, now = old.config or {}, stage_config(recipe, name)
    changed = _changed_keys(before, now)
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        return f"changed: {shown}"
    upstream = sorted(n for n in set(old.inputs) | set(input_hashes)
                      if old.inputs.get(n) != input_hashes.get(n))
    if upstream:
        return "upstream stage" + ("s " if len(upstream) > 1 else " ") + ", ".join(upstream) + \
            " changed"
    files = [p.name for p in data_files(recipe, name)]
    return "its data changed" + (f" ({', '.join(files)})" if files else "")


def _changed_keys(before, now, prefix: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(before) | set(now), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in before or key not in now:
                out.append(path)
            else:
                out += _changed_keys(before[key], now[key], path)
        return out
    return [] if before == now else [prefix or "(config)"]
