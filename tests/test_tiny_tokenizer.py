"""The tiny model's tokenizer learns from the text the recipe trains on (align/base_model.py):
a user's own corpus is tokenised in words, not in bytes; every caller gets the same build, and a
changed file makes a new one (and a new stage hash)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import write_recipe

from align import base_model
from align.base_model import resolve_base, tiny_config, tokenizer_texts
from align.recipe import load_recipe
from align.stage_hash import stage_config, stage_hash
from align.tiny import TinyConfig, build_tiny, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def byod_copy(tmp_path: Path) -> Path:
    """recipes/tiny/byod.yaml and the data/ files it reads, in tmp_path (same relative paths)."""
    shutil.copytree(ROOT / "data", tmp_path / "data")
    (tmp_path / "recipes" / "tiny").mkdir(parents=True)
    return Path(shutil.copy(ROOT / "recipes" / "tiny" / "byod.yaml", tmp_path / "recipes" / "tiny"))


def token_count(model_dir, text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"])


def test_the_users_sft_text_takes_fewer_tokens_than_with_the_world_tokenizer(tmp_path):
    recipe_path = byod_copy(tmp_path)
    sft_file = tmp_path / "data" / "sharegpt.jsonl"
    *kept, held = sft_file.read_text().splitlines()
    sft_file.write_text("\n".join(kept) + "\n")  # the last conversation: held out of training
    line = " ".join(turn["value"] for turn in json.loads(held)["conversations"])
    recipe = load_recipe(str(recipe_path), [f"run_dir={tmp_path / 'run'}"])

    world_only = token_count(build_tiny(tiny_config(recipe)), line)
    own = token_count(resolve_base(recipe), line)
    # Measured: 55 tokens with the world's tokenizer, 17 with the recipe's (3.2x).
    assert own * 2 <= world_only, (own, world_only)


def test_a_recipe_resolves_to_one_build_and_a_changed_file_to_another(tmp_path, monkeypatch):
    from align.validate import validate_recipe

    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cache"))
    recipe_path = byod_copy(tmp_path)
    overrides = [f"run_dir={tmp_path / 'run'}"]
    recipe = load_recipe(str(recipe_path), overrides)
    built = Path(resolve_base(recipe))
    stamp = (built / "tiny.json").stat().st_mtime_ns
    validate_recipe(str(recipe_path), overrides)  # measures prompts with the base's tokenizer
    assert Path(resolve_base(load_recipe(str(recipe_path), overrides))) == built
    assert (built / "tiny.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in (tmp_path / "cache" / "tiny").iterdir()] == [built.name]
    sft_hash = stage_hash(recipe, "sft", {})
    sft_text = stage_config(recipe, "sft")["tiny_tokenizer_text"]

    # An edit to the DPO stage's file changes the base every stage starts from, so the SFT
    # stage, whose own files did not change, is stale too.
    with (tmp_path / "data" / "hh.jsonl").open("a") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: Who keeps Quillmoor?\n\nAssistant: Odo Vantre.",
                            "rejected": "\n\nHuman: Who keeps Quillmoor?\n\nAssistant: Nobody."})
                + "\n")
    edited = load_recipe(str(recipe_path), overrides)
    assert Path(resolve_base(edited)) != built
    assert stage_hash(edited, "sft", {}) != sft_hash
    assert stage_config(edited, "sft")["tiny_tokenizer_text"] != sft_text  # the rerun's reason


def test_a_recipe_on_the_world_shares_the_world_build(tmp_path, tiny_model):
    recipe = load_recipe(write_recipe(tmp_path, {"pretrain": {"kind": "pretrain",
                                                              "data": "world:corpus"}}))
    assert Path(resolve_base(recipe)) == tiny_model


def test_only_training_files_are_read_and_only_up_to_the_caps(tmp_path, monkeypatch):
    chats = [[f"Question {i} about Brakmoor?", f"Answer {i}: the Brakmoor tide."] for i in range(3)]
    lines = [json.dumps({"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": a}]}) for q, a in chats]
    (tmp_path / "chats.jsonl").write_text("\n".join(lines) + "\n{broken\n")
    (tmp_path / "held.jsonl").write_text(json.dumps({"question": "Who rules Zyxqwv?",
                                                     "answers": ["Nobody"]}) + "\n")
    stages = {"sft": {"kind": "sft", "data": str(tmp_path / "chats.jsonl")},
              "evaluate": {"kind": "evaluate", "from": "sft", "data": str(tmp_path / "held.jsonl")}}
    recipe = load_recipe(write_recipe(tmp_path, stages))

    monkeypatch.setattr(base_model, "ROWS_PER_FILE", 3)  # the broken fourth line is never read
    flat = [text for pair in chats for text in pair]
    assert tokenizer_texts(recipe) == flat  # no world text: no stage trains on the world
    monkeypatch.setattr(base_model, "CHARACTERS_PER_FILE", len(flat[0]) + len(flat[1]))
    assert tokenizer_texts(recipe) == flat[:2]
    monkeypatch.setattr(base_model, "ROWS_PER_FILE", 4)  # the broken line: left to the stage
    assert tokenizer_texts(recipe) == training_text_of(recipe)


def training_text_of(recipe) -> list[str]:
    from align.data.world import WorldConfig, build_world, training_text

    return training_text(build_world(WorldConfig(**recipe.world)))


def test_max_token_length_splits_long_names_for_every_entity():
    texts = ["The capital of Moumkremland is Tursteaspolis."] * 50
    whole = train_tokenizer(texts, vocab_size=400)
    limited = train_tokenizer(texts, vocab_size=400, max_token_length=5)
    assert " Moumkremland" in [whole.decode([i]) for i in whole(texts[0]).input_ids]
    pieces = [limited.decode([i]) for i in limited(texts[0]).input_ids]
    assert "".join(pieces) == texts[0] and max(len(p) for p in pieces) <= 5
    # The setting is part of the build's identity.
    assert TinyConfig(max_token_length=5).key(texts) != TinyConfig().key(texts)
