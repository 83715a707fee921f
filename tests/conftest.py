"""Shared fixtures: no network, a private cache, and small recipes on the tiny model."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def align_cache(tmp_path_factory):
    """Tiny-model builds are cached per test session, never in the user's home."""
    path = tmp_path_factory.mktemp("align-cache")
    old = os.environ.get("ALIGN_CACHE")
    os.environ["ALIGN_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ALIGN_CACHE", None)
    else:
        os.environ["ALIGN_CACHE"] = old


SMALL_WORLD = {"seed": 0, "n_entities": 24}


def write_recipe(tmp_path, stages: dict, name: str = "t", **top) -> str:
    recipe = {"name": name, "run_dir": str(tmp_path / "run"), "model": {"name_or_path": "tiny"},
              "world": dict(SMALL_WORLD), "stages": stages, **top}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)
