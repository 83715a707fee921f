"""Upstream artifacts a stage is about to use must come from the model the recipe names.

`align run` rebuilds a stale upstream stage before using it, but `align stage` (what
`accelerate launch` runs) and a run directory shared by two recipes can meet an artifact that
was trained from another base model, or whose tokenizer differs from the other inputs': its
token ids would mean other words. Both are refused with the artifact's path and what differs.
"""

from __future__ import annotations

import hashlib
import json

from align.artifacts import Artifact
from align.errors import AlignError
from align.kinds import model_kinds
from align.recipe import Recipe

# The parts of the recipe's `model` block that decide which weights and tokenizer a lineage has.
IDENTITY_KEYS = ("name_or_path", "revision", "tiny")


def base_identity(model: dict, world: dict | None) -> dict:
    identity = {k: model.get(k) or None for k in IDENTITY_KEYS}  # unset, {} and None alike
    if model.get("name_or_path") == "tiny":
        identity["world"] = world or None  # the tiny model's tokenizer is trained on the world
    return identity


def describe(identity: dict) -> str:
    parts = [f"'{identity['name_or_path']}'"]
    parts += [f"{k} {identity[k]}" for k in ("revision", "tiny", "world") if identity.get(k)]
    return ", ".join(parts)


def check_base_model(recipe: Recipe, stage: str, upstream: str, artifact: Artifact,
                     tokenizer_text: str | None = None) -> None:
    """The upstream artifact was built from the recipe's base model: the same model settings and
    world, and on the tiny model a tokenizer learnt from the same text (`tokenizer_text`, the
    digest the stage hash records; it changes with any model stage's training file)."""
    config = artifact.manifest.config or {}
    recorded = config.get("model")
    if not isinstance(recorded, dict):
        return  # an artifact of an older format: nothing to compare
    have = base_identity(recorded, config.get("world"))
    want = base_identity(recipe.model.model_dump(mode="json"), recipe.world)
    if have != want:
        raise AlignError(f"stage '{stage}' would start from the artifact of stage '{upstream}' at "
                         f"{artifact.path}, built from base model {describe(have)}, but "
                         f"{recipe.source} names base model {describe(want)}. Rerun `align run "
                         f"{recipe.source}` to rebuild it, or give this recipe another run_dir.")
    recorded_text = config.get("tiny_tokenizer_text")
    if tokenizer_text and recorded_text and recorded_text != tokenizer_text:
        raise AlignError(f"stage '{stage}' would start from the artifact of stage '{upstream}' at "
                         f"{artifact.path}, whose tiny tokenizer learnt from other text than the "
                         f"training files of {recipe.source} give now (one changed since it was "
                         "built), so its token ids would not mean the same words. Rerun `align "
                         f"run {recipe.source}` without --only to rebuild it.")


def tokenizer_fingerprint(artifact: Artifact) -> str | None:
    """Hash of the vocabulary and added tokens (what token ids mean), or None if unknown."""
    if not artifact.manifest.tokenizer:
        return None
    file = artifact.path / artifact.manifest.tokenizer / "tokenizer.json"
    if not file.is_file():
        return None
    data = json.loads(file.read_text())
    vocab = (data.get("model") or {}).get("vocab")
    added = sorted((t.get("id"), t.get("content")) for t in data.get("added_tokens") or [])
    blob = json.dumps([vocab, added], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_tokenizers(stage: str, inputs: dict[str, Artifact]) -> None:
    seen: dict[str, tuple[str, Artifact]] = {}
    for name, artifact in inputs.items():
        if artifact.manifest.kind not in model_kinds():
            continue
        fingerprint = tokenizer_fingerprint(artifact)
        if fingerprint is None:
            continue
        for other, (theirs, other_artifact) in seen.items():
            if theirs != fingerprint:
                raise AlignError(
                    f"stage '{stage}' uses the artifacts of stages '{other}' "
                    f"({other_artifact.path}) and '{name}' ({artifact.path}), whose tokenizers "
                    "differ (another vocabulary): the same token ids would mean different words. "
                    "Train both from the same base model; rerun `align run` to rebuild them.")
        seen[name] = (fingerprint, artifact)


def check_inputs(recipe: Recipe, stage: str, inputs: dict[str, Artifact],
                 tokenizer_text: str | None = None) -> None:
    for upstream, artifact in inputs.items():
        if artifact.manifest.kind in model_kinds():
            check_base_model(recipe, stage, upstream, artifact, tokenizer_text)
    check_tokenizers(stage, inputs)
