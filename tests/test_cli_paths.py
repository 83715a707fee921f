"""`align ls` prints recipe paths that work from any directory; `align validate` without a
recipe validates the default one."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.cli import main


def test_ls_paths_work_from_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["ls"]) == 0
    paths = [line for line in capsys.readouterr().out.splitlines() if line.endswith(".yaml")]
    assert paths and all(Path(p).is_file() for p in paths)
    assert any(p.endswith("recipes/tiny/byod.yaml") for p in paths)


def test_validate_without_a_recipe_validates_the_default(monkeypatch, capsys):
    import align.validate

    seen = []
    monkeypatch.setattr(align.validate, "validate_recipe",
                        lambda recipe, overrides, accelerate=None: seen.append(recipe) or [])
    assert main(["validate"]) == 0
    assert seen and seen[0].endswith("tiny/honesty.yaml")
    assert capsys.readouterr().out.strip().endswith(": valid")


@pytest.mark.slow
def test_the_wheel_carries_recipes_profiles_and_example_data(tmp_path):
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path)], check=True,
                   capture_output=True, timeout=600)
    names = zipfile.ZipFile(next(tmp_path.glob("align-*.whl"))).namelist()
    share = next(n for n in names if "/share/align/" in n).split("/share/align/")[0] + "/share/align/"
    for rel in ("recipes/tiny/honesty.yaml", "recipes/tiny/byod.yaml", "recipes/accelerate/cpu.yaml",
                "data/triviaqa.jsonl", "data/sharegpt.jsonl"):
        assert share + rel in names, rel
