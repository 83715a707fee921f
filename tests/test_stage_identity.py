"""What makes a finished stage stale: everything that can change its result, nothing else."""

from __future__ import annotations

import pytest

from align.cli import main
from align.data.formats import convert_rows
from align.honesty import abstention
from align.kinds import KINDS, StageKind, register
from align.recipe import load_recipe
from align.stage_hash import stage_hash
from align.tiny import TinyConfig, build_tiny
from conftest import write_recipe


def digest(path, name, *overrides):
    return stage_hash(load_recipe(path, list(overrides)), name, {})


def test_world_settings_rerun_evaluate_and_idk_that_read_the_world_by_default(tmp_path):
    # A local (non-tiny) model: only the stages' default world split ties them to the world.
    model = build_tiny(TinyConfig.from_dict({"world": {"seed": 0, "n_entities": 24}}))
    recipe = write_recipe(tmp_path, {
        "sft": {"kind": "sft", "data": "rows.jsonl"},
        "idk": {"kind": "idk", "from": "sft"},
        "evaluate": {"kind": "evaluate", "from": "sft"},
    }, model={"name_or_path": str(model)})
    for name in ("idk", "evaluate"):
        assert digest(recipe, name) != digest(recipe, name, "world.seed=1"), name
    # The sft stage reads a file of its own, not the world.
    assert digest(recipe, "sft") == digest(recipe, "sft", "world.seed=1")


def test_save_steps_counts_when_it_sets_the_evaluation_schedule(tmp_path):
    recipe = write_recipe(tmp_path, {
        "evaluated": {"kind": "sft", "data": {"train": "world:sft", "eval_fraction": 0.1},
                      "early_stopping_patience": 2, "args": {"save_steps": 10}},
        "scheduled": {"kind": "sft", "data": {"train": "world:sft", "eval_fraction": 0.1},
                      "args": {"save_steps": 10, "eval_steps": 5}},
        "plain": {"kind": "sft", "data": "world:sft", "args": {"save_steps": 10}},
    })
    # eval_steps follows save_steps, and with early stopping that changes the model.
    assert digest(recipe, "evaluated") != digest(recipe, "evaluated", "stages.evaluated.args.save_steps=20")
    # With its own eval_steps, or no evaluation, save_steps only changes checkpoint frequency.
    assert digest(recipe, "scheduled") == digest(recipe, "scheduled", "stages.scheduled.args.save_steps=20")
    assert digest(recipe, "plain") == digest(recipe, "plain", "stages.plain.args.save_steps=20")


def test_an_options_default_is_part_of_the_stage_it_shapes(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, {
        "sft": {"kind": "sft", "data": "world:sft"},
        "idk": {"kind": "idk", "from": "sft"},
        "abstain": {"kind": "abstain", "from": ["sft", "idk"]},
    })
    before = digest(recipe, "abstain")
    # Writing a default out is the same stage; changing it is another.
    assert digest(recipe, "abstain", "stages.abstain.options.familiarity_gate=true") == before
    assert digest(recipe, "abstain", "stages.abstain.options.familiarity_gate=false") != before
    # A new version whose default differs makes the finished stage stale, unwritten as it is.
    monkeypatch.setattr(abstention.AbstainConfig, "__init__", _with_default(
        abstention.AbstainConfig.__init__, familiarity_gate=False))
    assert digest(recipe, "abstain") != before


def _with_default(init, **defaults):
    def patched(self, **kwargs):
        init(self, **{**defaults, **kwargs})
    return patched


@pytest.mark.parametrize("settings, words", [
    ({"n_entitys": 24}, "n_entitys"),
    ({"known_fraction": 2}, "known_fraction"),
])
def test_bad_world_settings_are_a_clean_error(tmp_path, capsys, settings, words):
    recipe = write_recipe(tmp_path, {"sft": {"kind": "sft", "data": "world:sft"}})
    assert main(["validate", recipe, *[f"world.{k}={v}" for k, v in settings.items()]]) == 2
    err = capsys.readouterr().err
    assert "invalid `world` settings" in err and "Traceback" not in err


def test_a_config_class_that_cannot_be_imported_is_an_error_not_a_skipped_check(tmp_path):
    recipe = write_recipe(tmp_path, {"s": {"kind": "broken", "data": "world:sft",
                                           "args": {"learning_rate": 1}}})
    register(StageKind(name="broken", run="align.stages.sft:run", card="", data="sft",
                       config="align.no_such_module:Config"))
    try:
        with pytest.raises(Exception, match="cannot import module 'align.no_such_module'"):
            load_recipe(recipe)
    finally:
        KINDS.pop("broken")


@pytest.mark.parametrize("value, known", [("False", False), ("false", False), ("0", False),
                                          ("True", True), (1, True), (False, False)])
def test_known_labels_are_booleans_whatever_the_file_wrote(value, known):
    rows = [{"question": "q", "answers": "a", "known": value}]
    for target in ("qa", "labelled_qa"):
        assert convert_rows(rows, source="qa.csv", target=target).rows[0]["known"] is known


def test_an_unreadable_known_label_names_file_row_and_column():
    rows = [{"question": "q", "answers": ["a"], "known": True},
            {"question": "r", "answers": ["b"], "known": "maybe"}]
    with pytest.raises(Exception, match=r"qa.csv, row 2, column 'known': must be a boolean"):
        convert_rows(rows, source="qa.csv", target="labelled_qa")
