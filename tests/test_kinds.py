"""A stage kind lives in one place: the registry entry and its run function.

The kind below is declared here alone; validation, the runner, the stage hash (skip on rerun),
the accelerate profile check and the Hub card all find it through `align.kinds`.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from align.cli import main
from align.kinds import KINDS, StageKind, get_kind, register
from align.stages.context import StageContext
from conftest import write_recipe


def snapshot(ctx: StageContext):
    """A model stage that trains nothing: its artifact is its start model, saved."""
    model = ctx.load_start_model()
    out = ctx.dirs.partial / "model"
    if ctx.is_main:
        model.save_pretrained(out)
        ctx.load_tokenizer().save_pretrained(out)
    return ctx.finish(model=ctx.model_ref(), tokenizer="model", metrics={"snapshots": 1})


@pytest.fixture
def snapshot_kind():
    register(StageKind(name="snapshot", run=snapshot, card="a snapshot of its start model",
                       data=None, methods=("full",), profiles=("single",)))
    yield get_kind("snapshot")
    KINDS.pop("snapshot")


def test_a_kind_declared_in_one_place_validates_runs_skips_and_pushes(tmp_path, capsys, snapshot_kind):
    recipe = write_recipe(tmp_path, {"snap": {"kind": "snapshot"}})

    assert main(["validate", recipe]) == 0
    assert "order snap" in capsys.readouterr().out

    assert main(["run", recipe]) == 0
    out = capsys.readouterr().out
    assert "snap (snapshot): running" in out
    artifact = tmp_path / "run" / "snap"
    saved = load_file(artifact / "model" / "model.safetensors")
    from align.base_model import resolve_base
    from align.modeling import load_full
    from align.recipe import load_recipe

    base = load_full(resolve_base(load_recipe(recipe)), dtype=torch.float32).state_dict()
    assert saved and all(torch.equal(saved[k], base[k]) for k in saved)

    assert main(["run", recipe]) == 0
    assert "snap: up to date, skipped" in capsys.readouterr().out

    assert main(["push", str(artifact), "--repo-id", "me/snap", "--dry-run"]) == 0
    card = capsys.readouterr().out
    assert "model.safetensors" in card and "(a snapshot of its start model)" in card


def test_the_kinds_table_is_checked_by_validation(tmp_path, capsys, snapshot_kind):
    # Its profiles: single only, so a data-parallel run is refused before anything starts.
    recipe = write_recipe(tmp_path, {"snap": {"kind": "snapshot"}})
    assert main(["validate", recipe, "--accelerate", "cpu-ddp"]) == 2
    assert "stage 'snap' (kind snapshot) does not run under accelerate profile 'cpu-ddp'" in \
        capsys.readouterr().err
    # Its methods: full only.
    recipe = write_recipe(tmp_path, {"snap": {"kind": "snapshot", "method": "lora"}})
    assert main(["validate", recipe]) == 2
    assert "lora is not supported by snapshot stages (they take full)" in capsys.readouterr().err
    # No config class: `args` are refused, not ignored.
    recipe = write_recipe(tmp_path, {"snap": {"kind": "snapshot", "args": {"max_steps": 3}}})
    assert main(["validate", recipe]) == 2
    assert "a snapshot stage takes no `args`" in capsys.readouterr().err


def test_an_unknown_kind_names_the_registered_ones(tmp_path, capsys):
    recipe = write_recipe(tmp_path, {"s": {"kind": "sfft", "data": "world:sft"}})
    assert main(["validate", recipe]) == 2
    err = capsys.readouterr().err
    assert "stages.s.kind" in err and "did you mean 'sft'?" in err and "Traceback" not in err


def test_every_shipped_kind_resolves_its_classes_and_run_function():
    for kind in KINDS.values():
        assert callable(kind.run_function()), kind.name
        cls = kind.config_class()
        assert (cls is None) == (kind.config is None), kind.name
        if kind.trainer:
            assert callable(kind.trainer_class()), kind.name
