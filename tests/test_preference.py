"""DPO, KTO and ORPO on the tiny model, each starting from the SFT model of the preference recipe:
the chosen-over-rejected log-prob margin on held-out pairs rises above the SFT model's, measured
here from the artifacts alone; the recipe prints the table; the world's pairs are what they
claim to be."""

from __future__ import annotations

import io
from collections import Counter
from contextlib import redirect_stdout

import pytest

from align.artifacts import load_artifact
from align.data.formats import convert_rows
from align.data.world import ANSWER_TEMPLATES, WorldConfig, build_world, make_splits
from align.modeling import load_artifact_model, load_tokenizer
from align.runner import run_recipe
from align.stages.preference import heldout_margin
from align.validate import validate_recipe
from conftest import SMALL_WORLD
from preference_pipeline import RECIPE, TRAINED, overrides, preference_run, torch_threads, world_rows

# The smallest rise that counts: the held-out margins are sums over ~10 answer tokens and move by
# 0.3 (ORPO) to 3.5 (DPO) nats in the test-size run; float noise is ~1e-5.
MIN_RISE = 0.1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return preference_run(tmp_path_factory)


@pytest.fixture(scope="module")
def sft_margin(run):
    artifact = load_artifact(run["artifacts"]["sft"].path)
    tokenizer = load_tokenizer(artifact.path / artifact.manifest.tokenizer)
    return heldout_margin(load_artifact_model(artifact), tokenizer,
                          world_rows(run, "preference_eval"))


@pytest.mark.parametrize("kind", ["dpo", "kto", "orpo"])
def test_stage_raises_the_heldout_margin_over_sft(run, sft_margin, kind):
    artifact = load_artifact(run["artifacts"][kind].path)
    ref, metrics = artifact.manifest.model, artifact.manifest.metrics
    assert (ref.type, ref.method, ref.task) == ("adapter", "lora", "causal-lm")
    assert load_artifact(artifact.path / ref.base).name == "sft"  # the adapter sits on the SFT model

    tokenizer = load_tokenizer(artifact.path / artifact.manifest.tokenizer)
    trained = heldout_margin(load_artifact_model(artifact), tokenizer,
                             world_rows(run, "preference_eval"))
    print(f"{kind}: held-out margin {sft_margin['margin']:.3f} -> {trained['margin']:.3f}, "
          f"chosen preferred {sft_margin['accuracy']:.3f} -> {trained['accuracy']:.3f}")
    assert trained["margin"] > sft_margin["margin"] + MIN_RISE

    # The stage's own report agrees with the artifacts: its "before" is the SFT model, its "after"
    # the model it saved.
    assert metrics["heldout_margin_sft"] == pytest.approx(sft_margin["margin"], abs=1e-3)
    assert metrics["heldout_margin"] == pytest.approx(trained["margin"], abs=1e-3)
    assert metrics["heldout_pairs"] == 24


def test_recipe_prints_the_heldout_table_and_reruns_as_up_to_date(run):
    if " | " not in run["output"]:
        pytest.skip("every stage was up to date (ALIGN_TEST_PREFERENCE_DIR): nothing printed")
    lines = {name: next(line for line in run["output"].splitlines()
                        if f"] {name} ({name})" in line and " | " in line)
             for name in TRAINED}
    assert "accuracy" in lines["rm"] and "margin" in lines["rm"]
    for kind in ("dpo", "kto", "orpo"):
        assert "heldout_margin_sft" in lines[kind] and "heldout_margin " in lines[kind], lines[kind]

    printed = io.StringIO()
    with redirect_stdout(printed):
        run_recipe(str(RECIPE), overrides(run["run_dir"]), only=list(TRAINED))
    skipped = [line for line in printed.getvalue().splitlines() if "up to date, skipped" in line]
    assert len(skipped) == len(TRAINED), printed.getvalue()


def test_recipe_validates():
    checked = validate_recipe(str(RECIPE))  # raises on the first problem
    assert any("world:preference_eval" in line for line in checked)


def test_world_pairs_differ_only_in_a_value_another_fact_holds():
    world = build_world(WorldConfig(**SMALL_WORLD))
    splits = make_splits(world)
    train, heldout = splits["preference_train"], splits["preference_eval"]
    by_name = {c.name: c for c in world.countries}
    sft_facts = {(r["entity"], r["attribute"]) for r in splits["qa_train"] if r["known"]}
    values = {a: {getattr(by_name[e], a) for e, a2 in sft_facts if a2 == a}
              for _, a in sft_facts}

    seen = {}
    for pair in train + heldout:
        entity, attribute = pair["entity"], pair["attribute"]
        assert (entity, attribute) in sft_facts
        right = getattr(by_name[entity], attribute)
        template = ANSWER_TEMPLATES[attribute]
        assert pair["chosen"][0]["content"] == template.format(e=entity, v=right)
        wrong = next(v for v in values[attribute] - {right}
                     if pair["rejected"][0]["content"] == template.format(e=entity, v=v))
        seen.setdefault((entity, attribute), []).append(wrong)
    # One held-out pair per fact, with a wrong value none of that fact's training pairs used.
    assert len(heldout) == len(sft_facts)
    for pair in heldout:
        wrongs = seen[(pair["entity"], pair["attribute"])]
        assert wrongs.count(wrongs[-1]) == 1
    # Each fact's training pairs ask in every phrasing, so the held-out pair's question is known.
    questions = Counter((p["entity"], p["attribute"], p["prompt"][0]["content"]) for p in train)
    assert len({(e, a) for e, a, _ in questions}) == len(sft_facts)

    # They feed every preference target: pairs as they are, KTO rows doubled (chosen first).
    assert len(convert_rows(train, source="t", target="preference").rows) == len(train)
    kto = convert_rows(train, source="t", target="unpaired").rows
    assert len(kto) == 2 * len(train) and kto[0]["label"] and not kto[1]["label"]
