"""What a recipe, a model directory or an artifact could make align run or read: model code only
when the recipe trusts it, weights only from safetensors, YAML only safely, files only inside
the artifact that names them."""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest

from align.cli import main
from align.errors import AlignError
from conftest import write_recipe

ALIGN = Path(__file__).resolve().parent.parent / "align"


def model_with_code(tiny_dir: Path, out: Path, marker: Path) -> Path:
    """The tiny model, re-declared as a model type only its own (shipped) code defines."""
    shutil.copytree(tiny_dir, out)
    config = json.loads((out / "config.json").read_text())
    config.update(model_type="shipped-code", auto_map={
        "AutoConfig": "configuration_shipped.ShippedConfig",
        "AutoModelForCausalLM": "modeling_shipped.ShippedModel"})
    (out / "config.json").write_text(json.dumps(config))
    code = f"open({str(marker)!r}, 'w').write('the model code ran')\n"
    (out / "configuration_shipped.py").write_text(code)
    (out / "modeling_shipped.py").write_text(code)
    return out


def test_remote_code_is_refused_unless_the_recipe_trusts_it(tmp_path, tiny_model, capsys):
    marker = tmp_path / "code-ran"
    model = model_with_code(tiny_model, tmp_path / "model", marker)
    from align.modeling import load_full

    with pytest.raises(AlignError, match="ships its own Python code.*`model.trust_remote_code: true`"):
        load_full(model)
    # The same through a recipe that does not set trust_remote_code.
    stages = {"sft": {"kind": "sft", "data": "world:sft", "args": {"max_steps": 1}}}
    path = write_recipe(tmp_path, stages, model={"name_or_path": str(model)})
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    assert "model.trust_remote_code: true" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "run" / "sft").exists() and not (tmp_path / "run" / "sft.partial").exists()


class RunsCode:
    """A pickle that creates a file when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_weights_are_refused_and_never_unpickled(tmp_path, tiny_model):
    from align.modeling import load_full

    marker = tmp_path / "unpickled"
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(tiny_model / "config.json", model / "config.json")
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(AlignError, match="safetensors only"):
        load_full(model)
    assert not marker.exists()


def test_yaml_is_only_ever_loaded_safely():
    """No call in align reaches a YAML loader that can build Python objects: `yaml.load` only
    with the recipe loader, a SafeLoader that also reads `1e-4` as a number."""
    import yaml

    from align.recipe import RecipeLoader

    assert issubclass(RecipeLoader, yaml.SafeLoader)
    unsafe = []
    for file in ALIGN.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id == "yaml":
                loader = [ast.unparse(a) for a in node.args[1:]]
                loader += [ast.unparse(k.value) for k in node.keywords if k.arg == "Loader"]
                if node.func.attr == "load" and loader == ["RecipeLoader"]:
                    continue
                if node.func.attr not in ("safe_load", "safe_dump", "dump", "YAMLError"):
                    unsafe.append(f"{file.relative_to(ALIGN)}:{node.lineno} yaml.{node.func.attr}")
    assert unsafe == []


def test_artifact_paths_stay_inside_the_artifact(tmp_path):
    from align.artifacts import Artifact, Manifest, ModelRef

    directory = tmp_path / "art"
    (directory / "model").mkdir(parents=True)
    (directory / "data.jsonl").write_text("{}\n")
    (tmp_path / "secret.jsonl").write_text("{}\n")
    (directory / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    files = {"ok": "data.jsonl", "up": "../secret.jsonl", "absolute": str(tmp_path / "secret.jsonl"),
             "link": "link.jsonl"}
    artifact = Artifact(directory, Manifest(name="idk", kind="idk", status="complete",
                                            config_hash="x", config={}, files=files,
                                            model=ModelRef(type="full", path="../elsewhere")))
    assert artifact.file("ok") == directory / "data.jsonl"
    for role in ("up", "absolute", "link"):
        with pytest.raises(AlignError, match=f"file '{role}' .*points outside"):
            artifact.file(role)
    with pytest.raises(AlignError, match="model is '../elsewhere', which points outside"):
        artifact.model_path()
