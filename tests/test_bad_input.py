"""Every bad input a user can give: exit code 2, one paragraph naming where, no traceback, and
nothing in the run directory that could be mistaken for a result.

Each case is one row of the table in docs/errors.md (the last test keeps the two in step). A case
builds its input in a temporary directory and returns the command line and the fragments its
message must contain (the file, the line / row, the key, what to do).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from align.cli import main
from conftest import SMALL_WORLD

DOCS = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
CASES: dict[str, callable] = {}

QA = {"role": "user", "content": "Who leads Kathilland?"}
ANSWER = {"role": "assistant", "content": "The leader of Kathilland is Shekris Vremmas."}
SFT_ROWS = [{"messages": [QA, ANSWER]}] * 2


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def recipe(tmp: Path, stages: dict | None = None, rows=SFT_ROWS, **top) -> str:
    """A one-stage SFT recipe on `sft.jsonl` (written from `rows`) unless `stages` says more."""
    if rows is not None:
        jsonl(tmp / "sft.jsonl", rows)
    data = {"name": "t", "run_dir": str(tmp / "run"), "model": {"name_or_path": "tiny"},
            "world": dict(SMALL_WORLD),
            "stages": stages or {"sft": {"kind": "sft", "data": "sft.jsonl",
                                         "args": {"max_steps": 1, "disable_tqdm": True}}},
            **top}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def sft_with(tmp: Path, **changes) -> str:
    stage = {"kind": "sft", "data": "sft.jsonl", "args": {"max_steps": 1}}
    stage.update(changes)
    return recipe(tmp, {"sft": stage})


def run(path: str, *more: str) -> list[str]:
    return ["run", path, *more]


# -- recipes -----------------------------------------------------------------------------------

@case("recipe file missing")
def _(tmp):
    return run(str(tmp / "nope.yaml")), ["recipe file not found", "nope.yaml"]


@case("YAML syntax error")
def _(tmp):
    (tmp / "broken.yaml").write_text("name: x\nstages:\n  sft: {kind: sft\n  other: 1\n")
    return run(str(tmp / "broken.yaml")), ["broken.yaml", "YAML syntax error at line 4"]


@case("YAML python tag")
def _(tmp):
    marker = tmp / "executed"
    (tmp / "evil.yaml").write_text(
        f"name: x\nseed: !!python/object/apply:os.system ['touch {marker}']\nstages: {{}}\n")
    return run(str(tmp / "evil.yaml")), ["evil.yaml", "unsupported YAML tag at line 2", "remove the tag"]


@case("recipe not a mapping")
def _(tmp):
    (tmp / "list.yaml").write_text("- sft\n- dpo\n")
    return run(str(tmp / "list.yaml")), ["list.yaml", "a YAML mapping with `name` and `stages`"]


@case("unknown top-level key")
def _(tmp):
    return run(recipe(tmp, seeds=3)), ["recipe.yaml", "unknown key 'seeds'", "Did you mean 'seed'"]


@case("unknown nested key")
def _(tmp):
    path = sft_with(tmp, method={"type": "lora", "lora": {"alpah": 4}})
    return run(path), ["recipe.yaml", "stages.sft.method.lora.alpah", "Did you mean 'alpha'"]


@case("unknown stage arg")
def _(tmp):
    path = sft_with(tmp, args={"learning_rat": 1e-3})
    return run(path), ["recipe.yaml", "stages.sft.args.learning_rat", "Did you mean 'learning_rate'"]


@case("arg set by align")
def _(tmp):
    return run(sft_with(tmp, args={"output_dir": "x"})), ["stages.sft.args.output_dir", "remove it"]


@case("wrong type of a field")
def _(tmp):
    return run(recipe(tmp, seed="forty-two")), ["recipe.yaml", "'seed'", "'forty-two'"]


@case("wrong type of a stage arg")
def _(tmp):
    path = sft_with(tmp, args={"learning_rate": "fast"})
    return run(path), ["stages.sft.args.learning_rate", "must be float", "'fast'"]


@case("unknown stage kind")
def _(tmp):
    return run(sft_with(tmp, kind="sftt")), ["stages.sft.kind", "'sftt'"]


@case("unknown method")
def _(tmp):
    return run(sft_with(tmp, method="lorra")), ["stages.sft.method.type", "'lorra'"]


@case("lora r <= 0")
def _(tmp):
    path = sft_with(tmp, method={"type": "lora", "lora": {"r": 0}})
    return run(path), ["recipe.yaml", "stages.sft.method.lora.r", "greater than 0"]


@case("negative learning rate")
def _(tmp):
    path = sft_with(tmp, args={"learning_rate": -1e-4})
    return run(path), ["stages.sft.args.learning_rate", "must be positive"]


@case("zero epochs")
def _(tmp):
    path = sft_with(tmp, args={"num_train_epochs": 0})
    return run(path), ["stages.sft.args.num_train_epochs", "must be positive"]


@case("eval_fraction out of range")
def _(tmp):
    path = sft_with(tmp, data={"train": "sft.jsonl", "eval_fraction": 1.5})
    return run(path), ["stages.sft.data.eval_fraction", "less than 1"]


@case("qlora with a freeze setting")
def _(tmp):
    path = sft_with(tmp, method={"type": "qlora", "trainable_layers": 2})
    return run(path), ["stages.sft.method", "`trainable_layers` is a setting of method freeze",
                       "the method is qlora"]


@case("full tuning with quantization settings")
def _(tmp):
    path = sft_with(tmp, method={"type": "full", "quantization": {"quant_type": "nf4"}})
    return run(path), ["stages.sft.method", "`quantization` is a setting of method qlora",
                       "the method is full"]


@case("early stopping without eval data")
def _(tmp):
    path = sft_with(tmp, early_stopping_patience=2)
    return run(path), ["stages.sft.early_stopping_patience", "needs eval data", "data.eval_fraction"]


@case("evaluation strategy without eval data")
def _(tmp):
    path = sft_with(tmp, args={"eval_strategy": "steps"})
    return run(path), ["stages.sft.args.eval_strategy", "no eval data"]


@case("from names no stage")
def _(tmp):
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "dpo": {"kind": "dpo", "from": "stf", "data": "world:preference_train"}}
    return run(recipe(tmp, stages)), ["stage 'dpo' has from: 'stf'", "Did you mean 'sft'"]


@case("stages form a cycle")
def _(tmp):
    stages = {"a": {"kind": "sft", "from": "b", "data": "sft.jsonl"},
              "b": {"kind": "sft", "from": "a", "data": "sft.jsonl"}}
    return run(recipe(tmp, stages)), ["cycle", "a -> b -> a"]


@case("probing stage without from")
def _(tmp):
    # dpo, kto, orpo, rm and ppo may start from the base model; idk and evaluate need a model
    stages = {"idk": {"kind": "idk", "data": "world:qa_train"}}
    return run(recipe(tmp, stages)), ["stage 'idk'", "needs `from:`"]


@case("stage data from a stage not in from")
def _(tmp):
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "idk": {"kind": "idk", "from": "sft"},
              "sft2": {"kind": "sft", "from": "sft", "data": {"stage": "idk", "file": "sft"}}}
    return run(recipe(tmp, stages)), ["stage 'sft2' reads data from stage 'idk'", "`from`"]


@case("assistant_only_loss on a template without generation markers")
def _(tmp):
    from test_sft_template import plain_template_model

    model = plain_template_model(tmp / "plain")
    path = recipe(tmp, {"sft": {"kind": "sft", "data": "sft.jsonl",
                                "args": {"max_steps": 1, "assistant_only_loss": True}}},
                  model={"name_or_path": str(model)})
    return run(path), ["recipe.yaml", "'stages.sft.args.assistant_only_loss' is true",
                       "no {% generation %} block",
                       "Remove the key", "set it to false"]


@case("invalid world settings")
def _(tmp):
    stages = {"sft": {"kind": "sft", "data": "world:sft"}}
    return run(recipe(tmp, stages, world={"n_entitys": 3})), ["invalid `world` settings", "n_entitys"]


@case("Hub token in the recipe")
def _(tmp):
    path = sft_with(tmp, options={"token": "hf_" + "A1b2" * 9})
    return run(path), ["stages.sft.options.token", "HF_TOKEN"]


# -- command line ------------------------------------------------------------------------------

@case("override without =")
def _(tmp):
    return run(recipe(tmp), "seed"), ["override 'seed'", "key.path=value"]


@case("override with a typo")
def _(tmp):
    return run(recipe(tmp), "stages.sft.args.learnin_rate=1e-4"), ["Did you mean 'learning_rate'"]


@case("unknown accelerate profile")
def _(tmp):
    return run(recipe(tmp), "--accelerate", "zero4"), ["unknown accelerate profile 'zero4'", "zero3"]


@case("accelerate profile file missing")
def _(tmp):
    return run(recipe(tmp), "--accelerate", str(tmp / "mine.yaml")), \
        ["accelerate profile file not found", "mine.yaml"]


@case("--only names no stage")
def _(tmp):
    return run(recipe(tmp), "--no-validate", "--only", "dpo"), ["no stage named ['dpo']", "sft"]


@case("stage --stage names no stage")
def _(tmp):
    return ["stage", recipe(tmp), "--stage", "dpo"], ["no stage 'dpo'", "stages: sft"]


@case("unknown command")
def _(tmp):
    return ["trian"], ["invalid choice: 'trian'"]


@case("missing required option")
def _(tmp):
    return ["eval", str(tmp / "sft")], ["the following arguments are required: --data, --out"]


@case("non-positive count option")
def _(tmp):
    return ["eval", str(tmp / "sft"), "--data", "qa.jsonl", "--out", "o", "--batch-size", "0"], \
        ["argument --batch-size: must be at least 1, got 0"]


@case("threshold out of range")
def _(tmp):
    return ["idk", "build", str(tmp / "sft"), "--data", "qa.jsonl", "--out", "o",
            "--known-threshold", "1.5"], ["argument --known-threshold: must be between 0 and 1"]


# -- datasets ----------------------------------------------------------------------------------

@case("dataset file missing")
def _(tmp):
    return run(sft_with(tmp, data="nope.jsonl")), ["nope.jsonl", "file not found"]


@case("dataset empty")
def _(tmp):
    return run(recipe(tmp, rows=[])), ["sft.jsonl", "the dataset is empty"]


@case("invalid JSON on line N")
def _(tmp):
    path = recipe(tmp)
    jsonl(tmp / "sft.jsonl", [SFT_ROWS[0], SFT_ROWS[0], '{"messages": [broken'])
    return run(path), ["sft.jsonl, row 3", "invalid JSON"]


@case("JSON line not an object")
def _(tmp):
    path = recipe(tmp)
    jsonl(tmp / "sft.jsonl", [SFT_ROWS[0], "[1, 2]"])
    return run(path), ["sft.jsonl, row 2", "must be a JSON object"]


@case("Hub dataset unreachable")
def _(tmp):
    return run(sft_with(tmp, data="hub:nobody/no-such-dataset")), \
        ["could not load Hub dataset 'nobody/no-such-dataset'", "use a local file"]


@case("unsupported file type")
def _(tmp):
    (tmp / "data.txt").write_text("hello\n")
    return run(sft_with(tmp, data="data.txt")), ["data.txt", "unsupported file type '.txt'"]


@case("missing columns")
def _(tmp):
    path = recipe(tmp, rows=[{"question_text": "Q?", "reply": "A."}])
    return run(path), ["sft.jsonl", "question_text", "Rename the columns", "`format`"]


@case("column mapping names a missing column")
def _(tmp):
    path = sft_with(tmp, data={"path": "sft.jsonl", "columns": {"conversation": "messages"}})
    return run(path), ["sft.jsonl, row 1", "['conversation']", "it has ['messages']"]


@case("QA data without a required column")
def _(tmp):
    jsonl(tmp / "qa.jsonl", [{"question": "Q?", "answers": ["A"]}])
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "evaluate": {"kind": "evaluate", "from": "sft", "data": "qa.jsonl"}}
    return run(recipe(tmp, stages)), ["qa.jsonl, row 1, column 'known'", "is missing"]


@case("abstain stage without an idk stage")
def _(tmp):
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "abstain": {"kind": "abstain", "from": "sft"}}
    return run(recipe(tmp, stages)), ["stage 'abstain' (kind abstain)", "a stage of kind idk"]


@case("abstain option out of range")
def _(tmp):
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "idk": {"kind": "idk", "from": "sft", "data": "world:qa_train"},
              "abstain": {"kind": "abstain", "from": ["sft", "idk"],
                          "options": {"max_hallucination": 15}}}
    return run(recipe(tmp, stages)), ["'stages.abstain.options.max_hallucination'", "[0, 1)"]


@case("wrong type in a column")
def _(tmp):
    path = recipe(tmp, rows=[SFT_ROWS[0], {"messages": "Who leads Kathilland?"}])
    return run(path), ["sft.jsonl, row 2, column 'messages'", "must be a list of messages"]


@case("empty string")
def _(tmp):
    path = recipe(tmp, rows=[SFT_ROWS[0], {"messages": [QA, {**ANSWER, "content": ""}]}])
    return run(path), ["sft.jsonl, row 2, column 'messages'", "is empty"]


@case("empty preference response")
def _(tmp):
    jsonl(tmp / "pairs.jsonl", [{"prompt": "Q?", "chosen": "A.", "rejected": "B."},
                                {"prompt": "Q?", "chosen": "", "rejected": "B."}])
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "dpo": {"kind": "dpo", "from": "sft", "data": "pairs.jsonl"}}
    return run(recipe(tmp, stages)), ["pairs.jsonl, row 2, column 'chosen'", "empty"]


@case("roles out of order")
def _(tmp):
    path = recipe(tmp, rows=[SFT_ROWS[0], {"messages": [ANSWER, QA]}])
    return run(path), ["sft.jsonl, row 2, column 'messages'", "role 'assistant' where 'user'"]


@case("prompt longer than max_length")
def _(tmp):
    long_question = {"role": "user", "content": "Who leads Kathilland? " * 40}
    path = sft_with(tmp, args={"max_steps": 1, "max_length": 64})
    jsonl(tmp / "sft.jsonl", [SFT_ROWS[0], {"messages": [long_question, ANSWER]}])
    return run(path), ["sft.jsonl, row 2, column 'prompt'", "max_length 64",
                       "stages.sft.args.max_length", "data.on_error: drop"]


@case("prompt longer than a later stage's max_length")
def _(tmp):
    # Found before the first stage trains, not when DPO starts after pretraining.
    long_prompt = "Who leads Kathilland? " * 40
    jsonl(tmp / "pairs.jsonl", [{"prompt": "Q?", "chosen": "A.", "rejected": "B."},
                                {"prompt": long_prompt, "chosen": "A.", "rejected": "B."}])
    stages = {"pretrain": {"kind": "pretrain", "data": "world:corpus", "args": {"max_steps": 1}},
              "dpo": {"kind": "dpo", "from": "pretrain", "data": "pairs.jsonl",
                      "args": {"max_steps": 1, "max_length": 64}}}
    return run(recipe(tmp, stages)), ["pairs.jsonl, row 2, column 'prompt'", "max_length 64",
                                      "stages.dpo.args.max_length"]


# -- artifacts ---------------------------------------------------------------------------------

def fake_artifact(directory: Path, kind: str, model: dict, world: dict | None,
                  vocab: dict | None = None, status: str = "complete",
                  tokenizer_text: str | None = None) -> Path:
    """An artifact directory as a finished stage leaves it (no weights: nothing loads them)."""
    (directory / "model").mkdir(parents=True)
    config = {"stage": {}, "seed": 42, "model": model, "world": world,
              **({"tiny_tokenizer_text": tokenizer_text} if tokenizer_text else {})}
    manifest = {"name": directory.name, "kind": kind, "status": status, "config_hash": "0" * 16,
                "config": config,
                "model": {"type": "full", "path": "model"}, "tokenizer": "model"}
    (directory / "artifact.json").write_text(json.dumps(manifest))
    tokenizer = {"model": {"type": "BPE", "vocab": vocab or {"a": 0, "b": 1}}, "added_tokens": []}
    (directory / "model" / "tokenizer.json").write_text(json.dumps(tokenizer))
    return directory


def recipe_model(path: str) -> dict:
    from align.recipe import load_recipe

    return load_recipe(path).model.model_dump(mode="json")


def dpo_recipe(tmp, with_rm: bool = False) -> str:
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "rm": {"kind": "rm", "from": "sft", "data": "world:preference_train"},
              "dpo": {"kind": "dpo", "from": ["sft", "rm"] if with_rm else "sft",
                      "data": "world:preference_train"}}
    return recipe(tmp, stages)


@case("artifact missing")
def _(tmp):
    return ["eval", str(tmp / "run" / "sft"), "--data", "qa.jsonl", "--out", str(tmp / "o")], \
        ["no artifact at", "run/sft", "does not exist"]


@case("artifact manifest incomplete")
def _(tmp):
    directory = fake_artifact(tmp / "run" / "sft", "sft", {}, None, status="running")
    return ["push", str(directory), "--repo-id", "me/x", "--dry-run"], \
        ["run/sft is not a finished artifact", "artifact.json is missing or incomplete", "rerun"]


@case("artifact manifest truncated")
def _(tmp):
    directory = fake_artifact(tmp / "run" / "sft", "sft", {}, None)
    text = (directory / "artifact.json").read_text()
    (directory / "artifact.json").write_text(text[: len(text) // 2])
    return ["eval", str(directory), "--data", "qa.jsonl", "--out", str(tmp / "o")], \
        ["run/sft is not a finished artifact", "missing or incomplete"]


@case("upstream artifact missing")
def _(tmp):
    return ["stage", dpo_recipe(tmp), "--stage", "dpo"], \
        ["stage 'dpo' needs the artifact of stage 'sft'", "run/sft", "run the recipe"]


@case("upstream from another base model")
def _(tmp):
    path = dpo_recipe(tmp)
    other = {**recipe_model(path), "name_or_path": "Qwen/Qwen2.5-0.5B"}
    fake_artifact(tmp / "run" / "sft", "sft", other, None)
    return ["stage", path, "--stage", "dpo"], \
        ["artifact of stage 'sft'", "run/sft", "'Qwen/Qwen2.5-0.5B'", "names base model 'tiny'",
         "Rerun `align run"]


@case("upstream from another tiny world")
def _(tmp):
    path = dpo_recipe(tmp)
    fake_artifact(tmp / "run" / "sft", "sft", recipe_model(path), {**SMALL_WORLD, "seed": 5})
    return ["stage", path, "--stage", "dpo"], \
        ["artifact of stage 'sft'", "world {'seed': 5", "another run_dir"]


@case("upstream tiny tokenizer from other text")
def _(tmp):
    path = dpo_recipe(tmp)
    fake_artifact(tmp / "run" / "sft", "sft", recipe_model(path), dict(SMALL_WORLD),
                  tokenizer_text="0123456789abcdef")
    return ["stage", path, "--stage", "dpo"], \
        ["artifact of stage 'sft'", "run/sft", "tokenizer learnt from other text",
         "without --only"]


@case("upstream tokenizers differ")
def _(tmp):
    path = dpo_recipe(tmp, with_rm=True)
    model = recipe_model(path)
    fake_artifact(tmp / "run" / "sft", "sft", model, dict(SMALL_WORLD))
    fake_artifact(tmp / "run" / "rm", "rm", model, dict(SMALL_WORLD), vocab={"a": 0, "c": 1})
    return ["stage", path, "--stage", "dpo"], \
        ["stages 'sft'", "'rm'", "tokenizers differ", "same base model"]


@case("stage file outside its artifact")
def _(tmp):
    jsonl(tmp / "outside.jsonl", SFT_ROWS)  # readable, but not named by the recipe
    stages = {"sft": {"kind": "sft", "data": "sft.jsonl"},
              "idk": {"kind": "idk", "from": "sft"},
              "sft2": {"kind": "sft", "from": "idk", "data": {"stage": "idk", "file": "sft"}}}
    path = recipe(tmp, stages)
    directory = fake_artifact(tmp / "run" / "idk", "idk", {}, None)
    manifest = json.loads((directory / "artifact.json").read_text())
    manifest.update(model=None, tokenizer=None, files={"sft": "../../outside.jsonl"})
    (directory / "artifact.json").write_text(json.dumps(manifest))
    return ["stage", path, "--stage", "sft2"], \
        ["artifact 'idk' file 'sft' is '../../outside.jsonl'", "points outside", "align run"]


# -- the checks every case must pass -----------------------------------------------------------

def results_in(run_dir: Path) -> list[str]:
    """Anything a reader could take for a stage's output."""
    if not run_dir.exists():
        return []
    found = [str(p.relative_to(run_dir)) for p in run_dir.rglob("artifact.json")
             if p.parent.name not in PLANTED]
    found += [p.name for p in run_dir.iterdir() if p.name.endswith(".partial")]
    found += [str(p) for p in run_dir.rglob("metrics.json")]
    found += [p.name for p in run_dir.glob("report.md")]  # the run report
    return found


PLANTED = ("sft", "rm", "idk")  # fake upstream artifacts some cases put there themselves


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_paragraph_and_no_result(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, expected = CASES[name](tmp_path)
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("align") and "error:" in line]
    assert len(starts) == 1, err  # one message, from its start to the end of stderr
    message = " ".join(lines[starts[0]:])
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert results_in(tmp_path / "run") == []
    assert not (tmp_path / "executed").exists()  # the YAML tag never ran
    assert not (tmp_path / "o").exists()


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(Exception, match="unknown key 'seeds'"):
        main(["--debug", "run", recipe(tmp_path, seeds=3)])


def test_errors_md_lists_every_case_and_only_those():
    text = DOCS.read_text()
    rows = [line for line in text.splitlines()
            if line.startswith("| ") and "test_bad_input.py::" in line]
    documented = {line.split("|")[2].strip().strip("`") for line in rows}
    assert documented == set(CASES), (documented ^ set(CASES))
