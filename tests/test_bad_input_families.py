"""Bad input, second round (issue 16): each family of malformed input is refused before any
work, where it is: exit code 2, one paragraph naming the file / row / key, no traceback, and
nothing new or changed on disk (finished artifacts byte-identical after the failed command).

Each case is a row of the "Second round" table in docs/errors.md (the last test keeps the two in
step). A case builds its input in a temporary directory and returns the command line and the
fragments its message must contain. Cases that are accepted rather than refused (family 6, the
byte-order mark and identical preference pairs of family 7) are plain tests further down.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import yaml

from align.cli import main
from conftest import SMALL_WORLD
from test_bad_input import SFT_ROWS, jsonl, recipe, sft_with

DOCS = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
CASES: dict[str, tuple[int, callable]] = {}

PAIRS = [{"prompt": "Who leads Kathilland?", "chosen": "Shekris Vremmas.", "rejected": "Bob."}] * 2


def case(family: int, name: str):
    def register(fn):
        CASES[name] = (family, fn)
        return fn
    return register


def dpo_recipe(tmp: Path, data="pairs.jsonl", **dpo) -> str:
    jsonl(tmp / "pairs.jsonl", PAIRS)
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl", "args": {"max_steps": 1}},
              "dpo": {"kind": "dpo", "from": "sft", "data": data, "args": {"max_steps": 1}, **dpo}}
    return recipe(tmp, stages)


def raw_recipe(tmp: Path, text: str, name: str = "recipe.yaml") -> str:
    jsonl(tmp / "sft.jsonl", SFT_ROWS)
    (tmp / name).write_text(text.replace("RUN", str(tmp / "run")))
    return str(tmp / name)


def validate(path: str, *more: str) -> list[str]:
    return ["validate", path, *more]


def run(path: str, *more: str) -> list[str]:
    return ["run", path, *more]


def safetensors_file(path: Path, n_floats: int = 4) -> Path:
    """A valid safetensors file holding one float32 tensor (written by hand: no torch needed)."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats],
                               "data_offsets": [0, 4 * n_floats]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * (4 * n_floats))
    return path


def model_dir(path: Path, layers: int = 2) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                  "num_hidden_layers": layers}))
    safetensors_file(path / "model.safetensors")
    return path


FULL = {"type": "full", "path": "model"}


def finished_artifact(run_dir: Path, name: str = "sft", partial: bool = False, kind: str = "sft",
                      holds: dict | None = FULL) -> Path:
    """A finished stage's artifact as `StageDirs.commit` writes it (checksums included), with a
    stand-in model (config, tokenizer and intact safetensors); `partial` stops before the move.
    `holds`: the manifest's model (`ModelRef` fields), None for an artifact that holds none."""
    from align.artifacts import Manifest, ModelRef, StageDirs

    dirs = StageDirs(run_dir, name)
    dirs.begin("0" * 16)
    model = model_dir(dirs.partial / "model")
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    Tokenizer(BPE({"a": 0, "</s>": 1}, [])).save(str(model / "tokenizer.json"))
    jsonl(dirs.partial / "sft.jsonl", SFT_ROWS)
    manifest = Manifest(name=name, kind=kind, status="complete", config_hash="0" * 16,
                        config={"stage": {}, "seed": 42, "model": {}, "world": None},
                        model=ModelRef(**holds) if holds else None,
                        tokenizer="model" if holds else None, files={"sft": "sft.jsonl"})
    if partial:
        from align.artifacts import MANIFEST, PROGRESS, record_checksums, write_json_atomic

        manifest.checksums = record_checksums(dirs.partial)
        write_json_atomic(dirs.partial / MANIFEST, manifest.to_dict())
        (dirs.partial / PROGRESS).unlink()
        return dirs.partial
    return dirs.commit(manifest).path


def push(directory: Path) -> list[str]:
    return ["push", str(directory), "--repo-id", "me/x", "--dry-run"]


def evaluate(directory: Path, tmp: Path) -> list[str]:
    jsonl(tmp / "qa.jsonl", [{"question": "Q?", "answers": ["A"], "known": True}])
    return ["eval", str(directory), "--data", str(tmp / "qa.jsonl"), "--out", str(tmp / "o")]


# -- 1. numbers that are valid YAML but not valid training settings ----------------------------

@case(1, "learning rate .nan")
def _(tmp):
    path = sft_with(tmp, args={"learning_rate": float("nan")})
    return validate(path), ["recipe.yaml", "stages.sft.args.learning_rate", "nan", "finite"]


@case(1, "max_grad_norm .inf")
def _(tmp):
    path = sft_with(tmp, args={"max_grad_norm": float("inf")})
    return run(path), ["recipe.yaml", "stages.sft.args.max_grad_norm", "inf", "finite"]


@case(1, "non-finite number in method settings")
def _(tmp):
    path = sft_with(tmp, method={"type": "lora", "lora": {"dropout": float("nan")}})
    return validate(path), ["stages.sft.method.lora.dropout", "finite"]


@case(1, "non-finite number in an override")
def _(tmp):
    return run(recipe(tmp), "stages.sft.args.learning_rate=inf"), \
        ["stages.sft.args.learning_rate", "finite"]


@case(1, "negative recipe seed")
def _(tmp):
    return validate(recipe(tmp, seed=-1)), ["recipe.yaml", "'seed'", "0 to 4294967295", "-1"]


@case(1, "stage seed beyond numpy's range")
def _(tmp):
    path = sft_with(tmp, args={"max_steps": 1, "seed": 2**32})
    return run(path), ["stages.sft.args.seed", "0 to 4294967295"]


@case(1, "world seed negative")
def _(tmp):
    return validate(recipe(tmp, world={**SMALL_WORLD, "seed": -3})), ["'world.seed'", "-3"]


@case(1, "idk options seed not a whole number")
def _(tmp):
    jsonl(tmp / "qa.jsonl", [{"question": "Q?", "answers": ["A"]}])
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "idk": {"kind": "idk", "from": "sft", "data": "qa.jsonl", "options": {"seed": 1.5}}}
    return validate(recipe(tmp, stages)), ["stages.idk.options.seed", "whole number"]


@case(1, "negative batch size")
def _(tmp):
    path = sft_with(tmp, args={"per_device_train_batch_size": -2})
    return run(path), ["stages.sft.args.per_device_train_batch_size", "at least 1", "-2"]


@case(1, "zero gradient accumulation")
def _(tmp):
    path = sft_with(tmp, args={"gradient_accumulation_steps": 0})
    return validate(path), ["stages.sft.args.gradient_accumulation_steps", "at least 1"]


@case(1, "negative DPO beta")
def _(tmp):
    return validate(dpo_recipe(tmp, args={"beta": -0.1})), ["stages.dpo.args.beta", "negative"]


@case(1, "scheduler name with a typo")
def _(tmp):
    path = sft_with(tmp, args={"lr_scheduler_type": "cosin"})
    return run(path), ["recipe.yaml", "stages.sft.args.lr_scheduler_type", "SFTConfig",
                       "cosin", "cosine"]


@case(1, "optimizer name with a typo")
def _(tmp):
    path = sft_with(tmp, args={"optim": "adamw_torchh"})
    return validate(path), ["stages.sft.args.optim", "adamw_torchh", "adamw_torch"]


@case(1, "DPO loss type with a typo")
def _(tmp):
    return validate(dpo_recipe(tmp, args={"loss_type": ["sigmod"]})), \
        ["stages.dpo.args.loss_type", "'sigmod'", "DPOConfig", "Did you mean 'sigmoid'"]


@case(1, "settings the config class finds contradictory")
def _(tmp):
    path = sft_with(tmp, data={"train": "sft.jsonl", "eval_fraction": 0.5},
                    args={"load_best_model_at_end": True, "eval_strategy": "epoch",
                          "save_strategy": "steps"})
    return validate(path), ["stages.sft.args.load_best_model_at_end", "SFTConfig refuses",
                            "save and eval strategy"]


@case(1, "world count below its least")
def _(tmp):
    world = {**SMALL_WORLD, "boundary": "fact", "name_mentions": -1}
    return validate(recipe(tmp, world=world)), ["recipe.yaml", "'world.name_mentions'",
                                                "whole number of at least 0, got -1"]


@case(1, "world count not a whole number")
def _(tmp):
    world = {**SMALL_WORLD, "boundary": "fact", "documents_per_row": 1.5}
    return validate(recipe(tmp, world=world)), ["recipe.yaml", "'world.documents_per_row'",
                                                "whole number of at least 1, got 1.5"]


@case(1, "world fraction out of range")
def _(tmp):
    world = {**SMALL_WORLD, "known_fraction": 1.5}
    return validate(recipe(tmp, world=world)), ["'world.known_fraction'", "from 0 to 1"]


@case(1, "evaluate batch size zero")
def _(tmp):
    jsonl(tmp / "qa.jsonl", [{"question": "Q?", "answers": ["A"], "known": True}])
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "evaluate": {"kind": "evaluate", "from": "sft", "data": "qa.jsonl",
                           "options": {"batch_size": 0}}}
    return run(recipe(tmp, stages)), ["stages.evaluate.options.batch_size", "at least 1"]


# -- 2. paths of the wrong shape ---------------------------------------------------------------

@case(2, "recipe path is a directory")
def _(tmp):
    (tmp / "recipe.yaml").mkdir()
    return run(str(tmp / "recipe.yaml")), ["recipe.yaml", "is a directory", "recipe YAML file"]


@case(2, "data path is a directory")
def _(tmp):
    path = sft_with(tmp, data="shards.jsonl")
    (tmp / "shards.jsonl").mkdir()
    return run(path), ["shards.jsonl", "is a directory, not a data file"]


@case(2, "run_dir is a file")
def _(tmp):
    (tmp / "run").write_text("not a directory\n")
    return run(recipe(tmp)), ["recipe.yaml", "'run_dir'", "is a file"]


@case(2, "run_dir under a file")
def _(tmp):
    (tmp / "parent").write_text("a file\n")
    return validate(recipe(tmp, run_dir=str(tmp / "parent" / "run"))), \
        ["'run_dir'", "cannot be created", "is a file"]


@case(2, "eval --out is a file")
def _(tmp):
    artifact = finished_artifact(tmp / "run")
    argv = evaluate(artifact, tmp)
    (tmp / "o").write_text("a file\n")
    return argv, ["--out", "is a file"]


@case(2, "idk build --out under a file")
def _(tmp):
    artifact = finished_artifact(tmp / "run")
    jsonl(tmp / "qa.jsonl", [{"question": "Q?", "answers": ["A"]}])
    (tmp / "blocker").write_text("a file\n")
    return ["idk", "build", str(artifact), "--data", str(tmp / "qa.jsonl"), "--out",
            str(tmp / "blocker" / "o")], ["--out", "cannot be created", "blocker"]


@case(2, "recipe not UTF-8")
def _(tmp):
    path = raw_recipe(tmp, "name: t\ndescription: caf\xe9\nstages: {}\n")
    Path(path).write_bytes(Path(path).read_text().encode("latin-1"))
    return validate(path), ["recipe.yaml", "not UTF-8", "line 2"]


@case(2, "JSONL not UTF-8")
def _(tmp):
    path = recipe(tmp)
    good = json.dumps(SFT_ROWS[0]).encode()
    latin1 = good.replace(b"Kathilland", b"K\xe4thilland")
    (tmp / "sft.jsonl").write_bytes(good + b"\n" + latin1 + b"\n")
    return run(path), ["sft.jsonl, row 2", "not UTF-8"]


@case(2, "CSV not UTF-8")
def _(tmp):
    path = sft_with(tmp, data="rows.csv")
    (tmp / "rows.csv").write_bytes(b"prompt,completion\nWho leads K\xe4thilland?,Shekris.\n")
    return validate(path), ["rows.csv, row 2", "not UTF-8"]


@case(2, "Parquet file that is text")
def _(tmp):
    path = sft_with(tmp, data="rows.parquet")
    (tmp / "rows.parquet").write_text(json.dumps(SFT_ROWS[0]) + "\n")
    return run(path), ["rows.parquet", "not a valid Parquet file"]


@case(2, "model directory without config.json")
def _(tmp):
    model = model_dir(tmp / "model")
    (model / "config.json").unlink()
    return run(recipe(tmp, model={"name_or_path": str(model)})), \
        ["recipe.yaml", "'model.name_or_path'", "no config.json"]


@case(2, "model path is a file")
def _(tmp):
    (tmp / "model").write_text("weights?\n")
    return validate(recipe(tmp, model={"name_or_path": str(tmp / "model")})), \
        ["'model.name_or_path'", "is a file"]


@case(2, "truncated safetensors")
def _(tmp):
    model = model_dir(tmp / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-6])
    return run(recipe(tmp, model={"name_or_path": str(model)})), \
        ["'model.name_or_path'", "model.safetensors", "truncated"]


@case(2, "corrupt safetensors header")
def _(tmp):
    model = model_dir(tmp / "model")
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 12) + b"{not json}!!" + b"\0" * 8)
    return validate(recipe(tmp, model={"name_or_path": str(model)})), \
        ["model.safetensors", "corrupt"]


@case(2, "truncated weights in an older artifact")
def _(tmp):
    directory = finished_artifact(tmp / "run")  # then made a format-1 manifest (no checksums)
    manifest = json.loads((directory / "artifact.json").read_text())
    manifest.update(format=1, checksums={})
    (directory / "artifact.json").write_text(json.dumps(manifest))
    weights = directory / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    return evaluate(directory, tmp), ["model.safetensors cannot be loaded", "truncated"]


@case(2, "damaged tokenizer in an artifact")
def _(tmp):
    directory = finished_artifact(tmp / "run")
    manifest = json.loads((directory / "artifact.json").read_text())
    manifest.update(format=1, checksums={})
    (directory / "artifact.json").write_text(json.dumps(manifest))
    (directory / "model" / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    return evaluate(directory, tmp), ["could not load the tokenizer", "run/sft/model", "damaged"]


@case(2, "accelerate profile path is a directory")
def _(tmp):
    (tmp / "mine.yaml").mkdir()
    return run(recipe(tmp), "--accelerate", str(tmp / "mine.yaml")), \
        ["mine.yaml", "is a directory"]


@case(2, "accelerate profile not UTF-8")
def _(tmp):
    (tmp / "mine.yaml").write_bytes(b"num_processes: 1\n# caf\xe9\n")
    return run(recipe(tmp), "--accelerate", str(tmp / "mine.yaml")), ["mine.yaml", "not UTF-8"]


@case(2, "bad data beside a finished artifact")
def _(tmp):
    finished_artifact(tmp / "run")  # byte-identical afterwards (the snapshot check)
    path = recipe(tmp)
    (tmp / "sft.jsonl").write_bytes(b"\xff\xfe{}\n")
    return run(path), ["sft.jsonl, row 1", "not UTF-8"]


# -- 3. input accepted silently that should be refused -----------------------------------------

@case(3, "duplicate stage name")
def _(tmp):
    text = ("name: t\nrun_dir: RUN\nstages:\n  sft:\n    kind: sft\n    data: sft.jsonl\n"
            "  sft:\n    kind: pretrain\n    data: world:corpus\n")
    return validate(raw_recipe(tmp, text)), ["recipe.yaml", "duplicate key at line 7",
                                             "'sft' is given twice", "first at line 4"]


@case(3, "duplicate top-level key")
def _(tmp):
    text = "name: t\nseed: 1\nrun_dir: RUN\nseed: 2\nstages:\n  sft: {kind: sft, data: sft.jsonl}\n"
    return run(raw_recipe(tmp, text)), ["recipe.yaml", "line 4", "'seed' is given twice"]


@case(3, "duplicate stage arg")
def _(tmp):
    text = ("name: t\nrun_dir: RUN\nstages:\n  sft:\n    kind: sft\n    data: sft.jsonl\n"
            "    args: {learning_rate: 1e-4, learning_rate: 1e-3}\n")
    return validate(raw_recipe(tmp, text)), ["line 7", "'learning_rate' is given twice"]


@case(3, "CSV row with more fields than the header")
def _(tmp):
    path = sft_with(tmp, data="rows.csv")
    (tmp / "rows.csv").write_text("prompt,completion\nWho leads Kathilland?,Shekris.\n"
                                  "Who leads Stom?,Vrem, the elder.\n")
    return run(path), ["rows.csv, row 2 (line 3)", "3 field(s) but the header has 2",
                       "quote fields"]


@case(3, "CSV row with fewer fields than the header")
def _(tmp):
    path = sft_with(tmp, data="rows.csv")
    (tmp / "rows.csv").write_text("prompt,completion\nWho leads Kathilland?\n")
    return validate(path), ["rows.csv, row 1 (line 2)", "1 field(s) but the header has 2"]


@case(3, "CSV header repeats a column")
def _(tmp):
    path = sft_with(tmp, data="rows.csv")
    (tmp / "rows.csv").write_text("prompt,completion,prompt\na,b,c\n")
    return validate(path), ["rows.csv", "header (line 1)", "['prompt'] more than once"]


@case(3, "JSONL object repeats a key")
def _(tmp):
    path = recipe(tmp)
    jsonl(tmp / "sft.jsonl", [SFT_ROWS[0], '{"messages": [], "messages": []}'])
    return run(path), ["sft.jsonl, row 2", "key 'messages' twice"]


@case(3, "stage name with a slash")
def _(tmp):
    stages = {"../escape/sft": {"kind": "sft", "data": "sft.jsonl"}}
    return run(recipe(tmp, stages)), ["recipe.yaml", "stages.../escape/sft", "not allowed", "'/'"]


@case(3, "stage name with a backslash")
def _(tmp):
    return validate(recipe(tmp, {"a\\b": {"kind": "sft", "data": "sft.jsonl"}})), \
        ["stages.a\\b", "not allowed"]


@case(3, "stage name with ..")
def _(tmp):
    return validate(recipe(tmp, {"sft..x": {"kind": "sft", "data": "sft.jsonl"}})), \
        ["stages.sft..x", "'..'"]


@case(3, "stage name ending in .partial")
def _(tmp):
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "sft.partial": {"kind": "sft", "data": "sft.jsonl"}}
    return run(recipe(tmp, stages)), ["stages.sft.partial", "'.partial' ending"]


@case(3, "stage name reserved")
def _(tmp):
    return validate(recipe(tmp, {"world": {"kind": "sft", "data": "sft.jsonl"}})), \
        ["stages.world", "reserved"]


@case(3, "stage names differing only by case")
def _(tmp):
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "SFT": {"kind": "sft", "data": "sft.jsonl"}}
    return run(recipe(tmp, stages)), ["recipe.yaml", "'sft' and 'SFT'", "differ only by case"]


@case(3, "recipe name that leaves runs/")
def _(tmp):
    path = recipe(tmp)
    data = yaml.safe_load(Path(path).read_text())
    del data["run_dir"]
    data["name"] = "../../escape"
    Path(path).write_text(yaml.safe_dump(data))
    return run(path), ["recipe.yaml", "'name' is '../../escape'", "runs/<name>"]


@case(2, "push target that is not a repo id")
def _(tmp):
    path = sft_with(tmp, push_to_hub={"repo_id": "not a repo"})
    return run(path), ["stages.sft.push_to_hub.repo_id", "owner/name"]


@case(3, "recipe with no stages")
def _(tmp):
    return run(raw_recipe(tmp, "name: t\nrun_dir: RUN\nstages: {}\n")), \
        ["recipe.yaml", "'stages' is empty", "at least one stage"]


# -- 4. errors that do not say where -----------------------------------------------------------

@case(4, "unknown dataset format")
def _(tmp):
    path = sft_with(tmp, data={"path": "sft.jsonl", "format": "sharegtp"})
    return run(path), ["recipe.yaml", "stages.sft.data.train.0.format", "'sharegtp'",
                       "Did you mean 'sharegpt'"]


@case(4, "unknown format of an eval source")
def _(tmp):
    path = sft_with(tmp, data={"train": "sft.jsonl",
                               "eval": [{"path": "sft.jsonl", "format": "alpacca"}]})
    return validate(path), ["stages.sft.data.eval.0.format", "Did you mean 'alpaca'"]


@case(4, "format that cannot feed the stage")
def _(tmp):
    path = dpo_recipe(tmp, data=["pairs.jsonl", {"path": "sft.jsonl", "format": "trl"}])
    return validate(path), ["recipe.yaml", "stage 'dpo' (dpo)", "stages.dpo.data.train.1.format",
                            "sft.jsonl", "conversation rows"]


@case(4, "format whose columns the data lacks")
def _(tmp):
    return validate(sft_with(tmp, data={"path": "sft.jsonl", "format": "alpaca"})), \
        ["recipe.yaml", "stages.sft.data.train.0.format", "'alpaca'", "sft.jsonl", "instruction"]


@case(4, "more trainable layers than the tiny model has")
def _(tmp):
    path = sft_with(tmp, method={"type": "freeze", "trainable_layers": 9})
    return run(path), ["recipe.yaml", "stages.sft.method.trainable_layers", "only 4 layers"]


@case(4, "tiny tokenizer token length below 1")
def _(tmp):
    path = recipe(tmp, None, model={"name_or_path": "tiny", "tiny": {"max_token_length": 0}})
    return validate(path), ["recipe.yaml", "'model.tiny.max_token_length'",
                            "whole number of at least 1, got 0"]


@case(4, "more trainable layers than a local model has")
def _(tmp):
    model = model_dir(tmp / "model", layers=2)
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "dpo": {"kind": "dpo", "from": "sft", "data": "pairs.jsonl",
                      "method": {"type": "freeze", "trainable_layers": 3}}}
    jsonl(tmp / "pairs.jsonl", PAIRS)
    return validate(recipe(tmp, stages, model={"name_or_path": str(model)})), \
        ["stages.dpo.method.trainable_layers", "is 3", "only 2 layers"]


@case(4, "LoRA target modules the model does not have")
def _(tmp):
    path = sft_with(tmp, method={"type": "lora", "lora": {"target_modules": ["q_proj", "qkv"]}})
    return run(path), ["recipe.yaml", "stages.sft.method.lora.target_modules", "['qkv']",
                       "q_proj"]


# -- 5. artifacts that are not what they claim -------------------------------------------------

@case(5, "push a .partial directory with a complete manifest")
def _(tmp):
    return push(finished_artifact(tmp / "run", partial=True)), \
        ["sft.partial", "work in progress", "not a finished artifact"]


@case(5, "eval a .partial directory")
def _(tmp):
    return evaluate(finished_artifact(tmp / "run", partial=True), tmp), \
        ["sft.partial", "work in progress"]


@case(5, "a copy of a partial directory with its resume state")
def _(tmp):
    directory = finished_artifact(tmp / "run")
    (directory / "progress.json").write_text('{"config_hash": "0"}')
    return push(directory), ["run/sft", "progress.json", "work in progress"]


@case(5, "truncated weights in an artifact")
def _(tmp):
    directory = finished_artifact(tmp / "run")
    weights = directory / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    return push(directory), ["artifact 'sft'", "run/sft", "'model/model.safetensors' has",
                             "the manifest recorded", "rerun `align run`"]


@case(5, "weights replaced with same-size content")
def _(tmp):
    directory = finished_artifact(tmp / "run")
    weights = directory / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] = 7
    weights.write_bytes(bytes(data))
    return evaluate(directory, tmp), ["artifact 'sft'", "model/model.safetensors",
                                      "SHA-256 mismatch"]


@case(5, "recorded file missing")
def _(tmp):
    directory = finished_artifact(tmp / "run")
    (directory / "model" / "config.json").unlink()
    return push(directory), ["artifact 'sft'", "'model/config.json' is missing"]


@case(5, "manifest hash edited")
def _(tmp):
    directory = finished_artifact(tmp / "run")
    manifest = json.loads((directory / "artifact.json").read_text())
    manifest["checksums"]["sft.jsonl"]["sha256"] = "0" * 64
    (directory / "artifact.json").write_text(json.dumps(manifest))
    return push(directory), ["artifact 'sft'", "'sft.jsonl'", "SHA-256 mismatch"]


@case(5, "manifest checksums removed")
def _(tmp):
    directory = finished_artifact(tmp / "run")
    manifest = json.loads((directory / "artifact.json").read_text())
    del manifest["checksums"]
    (directory / "artifact.json").write_text(json.dumps(manifest))
    return evaluate(directory, tmp), ["artifact 'sft'", "records no checksums"]


@case(5, "manifest names a file that is not there")
def _(tmp):
    directory = finished_artifact(tmp / "run")
    manifest = json.loads((directory / "artifact.json").read_text())
    manifest["files"]["preference"] = "preference.jsonl"
    (directory / "artifact.json").write_text(json.dumps(manifest))
    return push(directory), ["artifact 'sft'", "file 'preference' 'preference.jsonl' is missing"]


@case(5, "a later stage on a tampered upstream")
def _(tmp):
    directory = finished_artifact(tmp / "run")
    (directory / "sft.jsonl").write_text("changed\n")
    jsonl(tmp / "pairs.jsonl", PAIRS)
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "dpo": {"kind": "dpo", "from": "sft", "data": "pairs.jsonl"}}
    return ["stage", recipe(tmp, stages), "--stage", "dpo"], \
        ["stage 'dpo' needs the artifact of stage 'sft'", "does not match its manifest"]


@case(5, "artifact path is a file")
def _(tmp):
    (tmp / "sft").write_text("{}\n")
    return push(tmp / "sft"), ["is a file, not an artifact directory"]


# -- 6. the mixed-list shorthand: a typo in it is named as such ---------------------------------

@case(6, "typo in a mapping of a mixed data list")
def _(tmp):
    return validate(sft_with(tmp, data=["sft.jsonl", {"wrld": "sft", "weight": 0.5}])), \
        ["recipe.yaml", "unknown key 'stages.sft.data.1.wrld'", "Did you mean 'world'"]


@case(6, "mixed list with a bad weight")
def _(tmp):
    return validate(sft_with(tmp, data=["sft.jsonl", {"world": "sft", "weight": 0}])), \
        ["stages.sft.data.train.1.weight", "greater than 0"]


@case(6, "mixed list with two sources in one mapping")
def _(tmp):
    return validate(sft_with(tmp, data=["sft.jsonl", {"world": "sft", "path": "sft.jsonl"}])), \
        ["stages.sft.data.train.1", "exactly one of path, hub, world, stage"]


# -- 7. friendlier where it costs nothing: the refusals that remain ----------------------------

@case(7, "every preference pair identical")
def _(tmp):
    path = dpo_recipe(tmp)
    jsonl(tmp / "pairs.jsonl", [{"prompt": "Q?", "chosen": "A.", "rejected": "A."}] * 3)
    return run(path), ["pairs.jsonl", "all 3 preference pairs have identical chosen and rejected"]


@case(7, "BOM in the middle of a JSONL file")
def _(tmp):
    path = recipe(tmp)
    good = json.dumps(SFT_ROWS[0]).encode()
    (tmp / "sft.jsonl").write_bytes(good + b"\n\xef\xbb\xbf" + good + b"\n")
    return validate(path), ["sft.jsonl, row 2", "invalid JSON"]


# -- 8. the commands of issue 15: export, chat, push of a chained adapter ------------------------

def export(directory: Path, out: Path) -> list[str]:
    return ["export", str(directory), "--out", str(out)]


@case(8, "export of an artifact that holds no model")
def _(tmp):
    return export(finished_artifact(tmp / "run", "idk", kind="idk", holds=None), tmp / "e"), \
        ["artifact 'idk' (idk stage", "run/idk", "holds no model to export",
         "export the artifact of a stage that trains a model", "sft"]


@case(8, "export of a prompt-tuning adapter")
def _(tmp):
    ptuning = {"type": "adapter", "path": "model", "base": "tiny", "method": "ptuning"}
    return export(finished_artifact(tmp / "run", holds=ptuning), tmp / "e"), \
        ["artifact 'sft' is a ptuning adapter", "cannot be merged", "load it with PEFT"]


@case(8, "export into a directory that is not empty")
def _(tmp):
    (tmp / "e").mkdir()
    (tmp / "e" / "notes.txt").write_text("mine\n")
    return export(finished_artifact(tmp / "run"), tmp / "e"), \
        ["/e' exists and is not empty", "export into a new directory"]


@case(8, "export --out is a file")
def _(tmp):
    (tmp / "e").write_text("a file\n")
    return export(finished_artifact(tmp / "run"), tmp / "e"), ["--out", "is a file"]


@case(8, "export --out under a file")
def _(tmp):
    (tmp / "blocker").write_text("a file\n")
    return export(finished_artifact(tmp / "run"), tmp / "blocker" / "e"), \
        ["--out", "cannot be created", "blocker"]


@case(8, "chat on a missing artifact")
def _(tmp):
    return ["chat", str(tmp / "run" / "sft"), "--prompt", "Hi"], \
        ["no artifact at", "run/sft", "does not exist"]


@case(8, "chat with a reward model")
def _(tmp):
    rm = {**FULL, "task": "sequence-classification"}
    return ["chat", str(finished_artifact(tmp / "run", "rm", kind="rm", holds=rm))], \
        ["artifact 'rm' (rm stage", "holds no language model to chat with",
         "chat with the artifact of a stage that trains one", "sft"]


@case(8, "chat with a tokenizer without a chat template")
def _(tmp):
    return ["chat", str(finished_artifact(tmp / "run")), "--prompt", "Hi"], \
        ["artifact 'sft'", "run/sft", "has no chat template", "a chat or instruct base model"]


@case(8, "push of an adapter trained on an upstream stage's weights")
def _(tmp):
    finished_artifact(tmp / "run", "sft")
    chained = {"type": "adapter", "path": "model", "base": "../sft", "method": "lora"}
    return push(finished_artifact(tmp / "run", "dpo", kind="dpo", holds=chained)), \
        ["artifact 'dpo'", "upstream stage 'sft'", "--merged", "align export"]


@case(8, "push --merged of an artifact that holds no model")
def _(tmp):
    idk = finished_artifact(tmp / "run", "idk", kind="idk", holds=None)
    return [*push(idk), "--merged"], ["artifact 'idk' (idk stage", "holds no model",
                                      "push the artifact of a stage that trains a model"]


# -- 9. the settings of issue 15: trackers, TRL's spellings, keep_checkpoints --------------------

@case(9, "unknown tracker in report_to")
def _(tmp):
    path = sft_with(tmp, args={"max_steps": 1, "report_to": "tensorbord"})
    return validate(path), ["recipe.yaml", "stages.sft.args.report_to",
                            "unknown tracker 'tensorbord'", "Did you mean 'tensorboard'"]


@case(9, "tracker whose package is not installed")
def _(tmp):
    from align.trackers import TRACKERS, installed

    missing = next((name for name in TRACKERS if not installed(name)), None)
    if missing is None:
        pytest.skip("every tracker's package is installed here")
    path = sft_with(tmp, args={"max_steps": 1, "report_to": ["tensorboard", missing]})
    return run(path), ["stages.sft.args.report_to", f"tracker '{missing}'",
                       f"pip install {TRACKERS[missing][1]}"]


@case(9, "tracker that is not a name")
def _(tmp):
    path = sft_with(tmp, args={"max_steps": 1, "report_to": [3]})
    return validate(path), ["stages.sft.args.report_to", "must name trackers", "got 3"]


@case(9, "logging_dir in a stage's args")
def _(tmp):
    path = sft_with(tmp, args={"max_steps": 1, "logging_dir": "tb"})
    return validate(path), ["stages.sft.args.logging_dir", "is set by align",
                            "<run_dir>/<stage>/logs/", "remove it"]


@case(9, "TRL command-line key in a stage's args")
def _(tmp):
    path = sft_with(tmp, args={"max_steps": 1, "use_peft": True})
    return validate(path), ["recipe.yaml", "stages.sft.args.use_peft", "TRL command-line key",
                            "`method:` block"]


@case(9, "TRL command-line key at the top of a recipe")
def _(tmp):
    return validate(recipe(tmp, model_name_or_path="Qwen/Qwen2.5-0.5B")), \
        ["recipe.yaml", "'model_name_or_path' is a TRL command-line key",
         "`model: {name_or_path: ...}`"]


@case(9, "TRL command-line key in an override")
def _(tmp):
    return run(recipe(tmp), "stages.sft.args.lora_r=8"), \
        ["stages.sft.args.lora_r", "TRL command-line key", "lora: {r: ...}"]


@case(9, "keep_checkpoints not true or false")
def _(tmp):
    return validate(sft_with(tmp, keep_checkpoints="last")), \
        ["recipe.yaml", "stages.sft.keep_checkpoints", "valid boolean", "'last'"]


# -- 10. the data layouts of issue 15: public QA sets, LLaMA-Factory's columns -------------------

def qa_recipe(tmp: Path, kind: str, rows: list, fmt: str | None = None) -> str:
    """An sft stage, then an idk or evaluate stage on `qa.jsonl` (read with `format: fmt`)."""
    jsonl(tmp / "qa.jsonl", rows)
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              kind: {"kind": kind, "from": "sft",
                     "data": {"path": "qa.jsonl", "format": fmt} if fmt else "qa.jsonl"}}
    return recipe(tmp, stages)


@case(10, "QA layout without its answer column")
def _(tmp):
    path = qa_recipe(tmp, "evaluate", [{"question": "Who leads Kathilland?", "known": True}],
                     "triviaqa")
    return validate(path), ["recipe.yaml", "stage 'evaluate'",
                            "stages.evaluate.data.train.0.format", "qa.jsonl",
                            "the triviaqa layout needs the column(s) answer"]


@case(10, "TriviaQA answer that is not an object")
def _(tmp):
    rows = [{"question": "Q?", "answer": {"value": "A", "aliases": ["a"]}},
            {"question": "Q?", "answer": "A"}]
    return validate(qa_recipe(tmp, "idk", rows)), \
        ["qa.jsonl, row 2, column 'answer'", "TriviaQA's object with value and aliases"]


@case(10, "PopQA answers that are not a JSON list")
def _(tmp):
    rows = [{"question": "Q?", "possible_answers": '["A"]'},
            {"question": "Q?", "possible_answers": "A, B"}]
    return validate(qa_recipe(tmp, "idk", rows)), \
        ["qa.jsonl, row 2, column 'possible_answers'", "JSON list of answers"]


@case(10, "NQ-open answer that is not text")
def _(tmp):
    rows = [{"question": "Q?", "answer": ["A"]}, {"question": "Q?", "answer": 7}]
    return validate(qa_recipe(tmp, "idk", rows)), \
        ["qa.jsonl, row 2, column 'answer'", "an answer or a list of answers", "got int"]


@case(10, "public QA row without an answer")
def _(tmp):
    rows = [{"question": "Q?", "answer": ["A"]}, {"question": "Q?", "answer": ["", " "]}]
    return validate(qa_recipe(tmp, "idk", rows)), \
        ["qa.jsonl, row 2, column 'answer'", "has no answer"]


@case(10, "SimpleQA problem empty")
def _(tmp):
    rows = [{"problem": "Q?", "answer": "A"}, {"problem": " ", "answer": "A"}]
    return validate(qa_recipe(tmp, "idk", rows)), ["qa.jsonl, row 2, column 'problem'", "is empty"]


@case(10, "Alpaca history entry that is not a pair")
def _(tmp):
    jsonl(tmp / "alpaca.jsonl", [{"instruction": "Who leads Stom?", "output": "Vrem.",
                                  "history": [["Who leads Kathilland?"]]}])
    return validate(sft_with(tmp, data="alpaca.jsonl")), \
        ["alpaca.jsonl, row 1, column 'history'", "entry 1", "[instruction, response] pair"]


@case(10, "system column that is not text")
def _(tmp):
    turns = [{"from": "human", "value": "Who leads Stom?"}, {"from": "gpt", "value": "Vrem."}]
    jsonl(tmp / "sharegpt.jsonl", [{"conversations": turns, "system": ["Be brief."]}])
    return run(sft_with(tmp, data="sharegpt.jsonl")), \
        ["sharegpt.jsonl, row 1, column 'system'", "must be a string", "got list"]


# -- the checks every case must pass -----------------------------------------------------------

def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_family_exits_2_naming_where_and_changes_nothing(name, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, expected = CASES[name][1](tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("align") and "error:" in line]
    assert len(starts) == 1, err
    message = " ".join(lines[starts[0]:])
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert snapshot(tmp_path) == before  # nothing new, nothing changed (artifacts byte-identical)


def test_every_family_has_several_cases():
    families = {}
    for family, _ in CASES.values():
        families[family] = families.get(family, 0) + 1
    assert set(families) == set(range(1, 11))
    assert all(n >= 2 for n in families.values()), families


def test_errors_md_lists_every_family_case_and_only_those():
    rows = [line for line in DOCS.read_text().splitlines()
            if line.startswith("| ") and "test_bad_input_families.py::" in line]
    documented = {line.split("|")[2].strip().strip("`") for line in rows}
    assert documented == set(CASES), documented ^ set(CASES)


# -- accepted rather than refused -----------------------------------------------------------------

def validate_ok(argv, capsys) -> str:
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "Traceback" not in err
    return out


@pytest.mark.parametrize("data", [
    ["sft.jsonl", {"world": "sft", "weight": 0.5}],
    [{"path": "sft.jsonl", "max_samples": 1}, "world:sft"],
    {"train": ["sft.jsonl", {"world": "sft"}], "eval": ["sft.jsonl", {"world": "sft",
                                                                       "max_samples": 2}]},
], ids=["path then mapping", "mapping then shorthand", "train and eval lists"])
def test_mixed_data_list_is_accepted(data, tmp_path, capsys, monkeypatch):
    """Family 6: a list mixing path strings and mappings is a mixture of sources, accepted by
    the key check exactly as the schema accepts it."""
    monkeypatch.chdir(tmp_path)
    path = sft_with(tmp_path, data=data)
    out = validate_ok(validate(path), capsys)
    assert "sft.jsonl" in out and "world:sft" in out
    assert not (tmp_path / "run").exists()


def test_mixed_data_list_loads_every_source(tmp_path):
    from align.recipe import load_recipe

    recipe_ = load_recipe(sft_with(tmp_path, data=["sft.jsonl", {"world": "sft", "weight": 0.5}]))
    train = recipe_.stages["sft"].data.train
    assert [(s.path, s.world, s.weight) for s in train] == [("sft.jsonl", None, 1.0),
                                                            (None, "sft", 0.5)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_byte_order_mark_is_read(suffix, tmp_path, capsys, monkeypatch):
    """Family 7: a UTF-8 byte-order mark (as Windows editors write) is read, not refused, and
    does not end up in the first column's name."""
    from align.data.sources import read_local

    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": "Who leads Kathilland?", "completion": "Shekris Vremmas."}] * 2
    if suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    elif suffix == ".json":
        text = json.dumps(rows)
    else:
        lines = "".join(f"{r['prompt']},{r['completion']}\r\n" for r in rows)
        text = "prompt,completion\r\n" + lines
    data = tmp_path / f"rows{suffix}"
    data.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_local(data) == rows
    validate_ok(validate(sft_with(tmp_path, data=data.name)), capsys)


def test_recipe_with_byte_order_mark_is_read(tmp_path, capsys):
    path = Path(recipe(tmp_path))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    validate_ok(validate(str(path)), capsys)


def test_identical_preference_pairs_are_reported_and_dropped(tmp_path, capsys, monkeypatch):
    """Family 7: pairs whose chosen and rejected are the same teach nothing; `align validate`
    says how many will be dropped, and the conversion the stage uses drops them."""
    from align.data.formats import convert_rows

    monkeypatch.chdir(tmp_path)
    path = dpo_recipe(tmp_path)
    same = {"prompt": "Q?", "chosen": "A.", "rejected": "A."}
    jsonl(tmp_path / "pairs.jsonl", [PAIRS[0], same, PAIRS[1], same])
    out = validate_ok(validate(path), capsys)
    assert "pairs.jsonl: 2 preference pairs whose chosen and rejected are identical will be " \
           "dropped" in out
    result = convert_rows([PAIRS[0], same, PAIRS[1], same], source="p", target="preference")
    assert result.identical == 2 and len(result.rows) == 2
    assert all(r["chosen"] != r["rejected"] for r in result.rows)


def test_commit_records_sizes_and_hashes_of_every_file(tmp_path):
    """Family 5: what a manifest records to be checked against (and an intact artifact loads)."""
    import hashlib

    from align.artifacts import load_artifact

    directory = finished_artifact(tmp_path / "run")
    manifest = json.loads((directory / "artifact.json").read_text())
    weights = directory / "model" / "model.safetensors"
    assert manifest["checksums"]["model/model.safetensors"] == {
        "size": weights.stat().st_size, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert set(manifest["checksums"]) == {"model/config.json", "model/model.safetensors",
                                          "model/tokenizer.json", "sft.jsonl"}
    assert load_artifact(directory).name == "sft"


def test_intact_artifact_still_pushes(tmp_path, capsys):
    directory = finished_artifact(tmp_path / "run")
    code, out, err = run_cli(push(directory), capsys)
    assert code == 0, err
    assert "model.safetensors" in out


def test_safetensors_check_accepts_real_weights(tmp_path):
    """The header check agrees with the safetensors library on a file it wrote."""
    import torch
    from safetensors.torch import save_file

    from align.modeling import check_safetensors

    save_file({"a": torch.zeros(3, 5), "b": torch.ones(7, dtype=torch.int64)},
              str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    assert check_safetensors(tmp_path / "m.safetensors") is None
    os.truncate(tmp_path / "m.safetensors", (tmp_path / "m.safetensors").stat().st_size - 1)
    assert "truncated" in check_safetensors(tmp_path / "m.safetensors")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_run_dir_without_write_permission_is_refused_before_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    path = recipe(tmp_path, run_dir=str(locked / "run"))
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(run(path), capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2 and "Traceback" not in err
    assert "'run_dir'" in err and "no write permission" in err
    assert list(locked.iterdir()) == []
