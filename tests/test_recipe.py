"""The recipe engine: bad recipes are refused with exit code 2, one paragraph, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align.recipe import RecipeError, apply_overrides, coerce_scalar, load_recipe

GOOD = {
    "name": "t",
    "model": {"name_or_path": "tiny"},
    "world": {"n_entities": 20},
    "stages": {
        "pretrain": {"kind": "pretrain", "data": "world:corpus", "args": {"max_steps": 2}},
        "sft": {"kind": "sft", "from": "pretrain", "data": "sft.jsonl",
                "method": {"type": "lora", "lora": {"r": 4}}, "args": {"learning_rate": 1e-3}},
    },
}
SFT_ROW = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}


def write(tmp_path: Path, recipe: dict, rows: list | None = None, name="recipe.yaml") -> Path:
    if rows is not None:
        (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def mutate(**changes) -> dict:
    recipe = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        node = recipe
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node[k]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return recipe


DELETE = object()


def validate_cli(path: Path, capsys) -> subprocess.CompletedProcess:
    """`align validate PATH` in this process (the subprocess path is tested once below)."""
    from align.cli import main

    code = main(["validate", str(path)])
    out = capsys.readouterr()
    return subprocess.CompletedProcess([], code, out.out, out.err)


BAD = {
    "unknown top-level key": (mutate(stagess={}), None, ["unknown key 'stagess'", "Did you mean 'stages'"]),
    "typo in stage arg": (mutate(stages__sft__args={"learning_rat": 1e-3}), None,
                          ["stages.sft.args.learning_rat", "Did you mean 'learning_rate'"]),
    "missing from stage": (mutate(stages__sft__from="pretrian"), None,
                           ["from: 'pretrian'", "Did you mean 'pretrain'"]),
    "cycle": (mutate(stages__pretrain__from="sft"), None, ["cycle", "pretrain -> sft -> pretrain"]),
    "wrong type": (mutate(stages__sft__args={"learning_rate": "fast"}), None,
                   ["stages.sft.args.learning_rate", "must be float", "'fast'"]),
    "missing dataset file": (mutate(stages__sft__data="nope.jsonl"), None, ["nope.jsonl", "file not found"]),
    "missing column": (mutate(), [{"prompt_text": "Q?", "reply": "A."}], ["sft.jsonl", "columns"]),
    "empty dataset": (mutate(), [], ["sft.jsonl", "empty"]),
    "unknown kind": (mutate(stages__sft__kind="sftt"), None, ["stages.sft.kind", "'sftt'"]),
    "unknown method": (mutate(stages__sft__method={"type": "lorra"}), None,
                       ["stages.sft.method.type", "'lorra'"]),
    "unknown nested key": (mutate(stages__sft__method={"type": "lora", "lora": {"alpah": 4}}), None,
                           ["stages.sft.method.lora.alpah", "Did you mean 'alpha'"]),
    "negative lora r": (mutate(stages__sft__method={"type": "lora", "lora": {"r": 0}}), None,
                        ["stages.sft.method.lora.r", "greater than 0"]),
    "negative learning rate": (mutate(stages__sft__args={"learning_rate": -1.0}), None,
                               ["learning_rate", "positive"]),
    "reserved arg": (mutate(stages__sft__args={"output_dir": "x"}), None, ["output_dir", "set by align"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_recipe_is_refused_with_a_clear_message(tmp_path, case, capsys):
    recipe, rows, expected = BAD[case]
    path = write(tmp_path, recipe, rows if rows is not None else [SFT_ROW])
    proc = validate_cli(path, capsys)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()
    message = [m for m in message if m.startswith("align: error")]
    assert len(message) == 1, proc.stderr  # one paragraph
    for fragment in expected:
        assert fragment in message[0], message[0]


def test_good_recipe_validates(tmp_path, capsys):
    proc = validate_cli(write(tmp_path, GOOD, [SFT_ROW]), capsys)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout


def test_cli_error_exits_2_without_traceback_in_a_real_process(tmp_path):
    path = write(tmp_path, mutate(stages__sft__kind="sftt"), [SFT_ROW])
    proc = subprocess.run([sys.executable, "-m", "align", "validate", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "'sftt'" in proc.stderr


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nstages:\n  sft: {kind: sft\n  other: 1\n")
    with pytest.raises(RecipeError, match=r"broken.yaml: YAML syntax error at line \d+"):
        load_recipe(path)


def test_overrides_are_typed_and_reach_stage_args(tmp_path):
    path = write(tmp_path, GOOD, [SFT_ROW])
    recipe = load_recipe(path, ["stages.sft.args.learning_rate=1e-4", "seed=7",
                                "stages.sft.method.lora.r=8", "stages.sft.args.bf16=false"])
    assert recipe.stages["sft"].args["learning_rate"] == pytest.approx(1e-4)
    assert recipe.seed == 7
    assert recipe.stages["sft"].method.lora.r == 8
    assert recipe.stages["sft"].args["bf16"] is False


def test_exponent_floats_in_a_recipe_file_are_numbers(tmp_path):
    """`1e-4` is a string to YAML 1.1 (PyYAML); a recipe reads it as the number everyone means."""
    path = write(tmp_path, GOOD, [SFT_ROW])
    path.write_text(path.read_text().replace("learning_rate: 0.001", "learning_rate: 1e-4")
                    .replace("max_steps: 2", "max_steps: 2\n      weight_decay: 5E-3"))
    assert "learning_rate: 1e-4" in path.read_text()
    recipe = load_recipe(path)
    assert recipe.stages["sft"].args["learning_rate"] == 1e-4
    assert recipe.stages["pretrain"].args["weight_decay"] == 5e-3
    assert load_recipe(path, ["stages.sft.args.run_name=1e4x"]).stages["sft"].args["run_name"] == "1e4x"


def test_override_typo_is_caught_like_a_recipe_typo(tmp_path):
    path = write(tmp_path, GOOD, [SFT_ROW])
    with pytest.raises(RecipeError, match="Did you mean 'learning_rate'"):
        load_recipe(path, ["stages.sft.args.learnin_rate=1e-4"])


def test_coerce_scalar():
    assert coerce_scalar("1e-4") == pytest.approx(1e-4)
    assert coerce_scalar("3") == 3 and isinstance(coerce_scalar("3"), int)
    assert coerce_scalar("true") is True
    assert coerce_scalar("[a, b]") == ["a", "b"]
    assert coerce_scalar("cosine") == "cosine"


def test_apply_overrides_refuses_to_descend_into_a_scalar():
    with pytest.raises(RecipeError, match="'seed' is not a mapping"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_stage_order_follows_dependencies_not_listing(tmp_path):
    recipe = mutate()
    recipe["stages"] = {"sft": recipe["stages"]["sft"], "pretrain": recipe["stages"]["pretrain"]}
    loaded = load_recipe(write(tmp_path, recipe, [SFT_ROW]))
    assert loaded.order() == ["pretrain", "sft"]


def test_every_shipped_recipe_validates():
    from align.validate import validate_recipe

    root = Path(__file__).resolve().parent.parent / "recipes"
    recipes = [p for p in root.rglob("*.yaml") if p.parent.name != "accelerate"]
    assert recipes
    for path in recipes:
        validate_recipe(str(path))


def test_every_shipped_profile_validates_and_launches_through_accelerate():
    from align.profiles import PROFILE_DIR, is_single_process, profile_path
    from align.runner import launch_command
    from align.validate import validate_recipe

    recipe = str(Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "sft.yaml")
    profiles = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
    assert {"cpu", "cpu-ddp", "ddp", "zero2", "zero3", "fsdp", "fsdp-qlora"} <= set(profiles)
    for name in profiles:
        validate_recipe(recipe, accelerate=name)
        profile = profile_path(name)
        assert is_single_process(profile) == (name == "cpu")
        cmd = launch_command(recipe, "sft", ["seed=1"], profile)
        assert cmd[1:6] == ["-m", "accelerate.commands.launch", "--config_file", str(profile), "-m"]
        assert cmd[6:] == ["align", "stage", recipe, "--stage", "sft", "seed=1"]
    with pytest.raises(Exception, match="unknown accelerate profile 'zero4'.*zero3"):
        profile_path("zero4")


def test_overrides_after_only_are_overrides_not_stage_names():
    from align.cli import build_parser, split_only

    args = build_parser().parse_args(["run", "r.yaml", "--only", "sft", "rm", "seed=1",
                                      "stages.sft.args.learning_rate=1e-4"])
    assert args.only == ["sft", "rm", "seed=1", "stages.sft.args.learning_rate=1e-4"]
    assert split_only(args.only, args.overrides) == (
        ["sft", "rm"], ["seed=1", "stages.sft.args.learning_rate=1e-4"])
