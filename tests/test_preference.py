"""DPO, KTO and ORPO on the tiny model, each starting from the SFT model of the preference recipe:
the chosen-over-rejected log-prob margin on held-out pairs rises above the SFT model's, measured
here from the artifacts alone; the recipe prints the table; every kind also trains with full
weights and with QLoRA and reloads; the world's pairs are what they claim to be."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stdout

import pytest

from align.artifacts import load_artifact
from align.data.formats import convert_rows
from align.data.world import WorldConfig, build_world, make_splits
from align.data.world_text import ANSWER_TEMPLATES, QUESTION_TEMPLATES
from align.modeling import load_artifact_model, load_tokenizer
from align.runner import run_recipe
from align.stages.preference import heldout_margin
from align.validate import validate_recipe
from preference_pipeline import RECIPE, TRAINED, WORLD, derived_recipe, overrides, world_rows

# The smallest rise that counts. The held-out margins are sums over ~10 answer tokens; in the
# test-size run the SFT model's 9.06 nats rose by 1.33 (DPO), 0.77 (KTO) and 1.05 (ORPO).
MIN_RISE = 0.1


@pytest.fixture(scope="module")
def sft_margin(preference_run):
    artifact = load_artifact(preference_run["artifacts"]["sft"].path)
    tokenizer = load_tokenizer(artifact.path / artifact.manifest.tokenizer)
    return heldout_margin(load_artifact_model(artifact), tokenizer,
                          world_rows(preference_run, "preference_eval"))


def greedy_recall(artifact, rows) -> float:
    """Share of questions whose greedy answer states the chosen (true) sentence."""
    from align.generation import generate_answers

    artifact = load_artifact(artifact.path)
    tokenizer = load_tokenizer(artifact.path / artifact.manifest.tokenizer)
    answers = generate_answers(load_artifact_model(artifact), tokenizer,
                               [r["prompt"][0]["content"] for r in rows], max_new_tokens=24)
    return sum(r["chosen"][0]["content"].rstrip(".") in a[0]
               for r, a in zip(rows, answers)) / len(rows)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dpo", "kto", "orpo"])
def test_stage_raises_the_heldout_margin_over_sft(preference_run, sft_margin, kind):
    artifact = load_artifact(preference_run["artifacts"][kind].path)
    ref, metrics = artifact.manifest.model, artifact.manifest.metrics
    assert (ref.type, ref.method, ref.task) == ("adapter", "lora", "causal-lm")
    assert load_artifact(artifact.path / ref.base).name == "sft"  # the adapter is on the SFT model

    tokenizer = load_tokenizer(artifact.path / artifact.manifest.tokenizer)
    trained = heldout_margin(load_artifact_model(artifact), tokenizer,
                             world_rows(preference_run, "preference_eval"))
    print(f"{kind}: held-out margin {sft_margin['margin']:.3f} -> {trained['margin']:.3f}, "
          f"chosen preferred {sft_margin['accuracy']:.3f} -> {trained['accuracy']:.3f}")
    assert trained["margin"] > sft_margin["margin"] + MIN_RISE

    # The stage's own report agrees with the artifacts: its "before" is the SFT model, its "after"
    # the model it saved.
    assert metrics["heldout_margin_sft"] == pytest.approx(sft_margin["margin"], abs=1e-3)
    assert metrics["heldout_margin"] == pytest.approx(trained["margin"], abs=1e-3)
    assert metrics["heldout_pairs"] == 48

    # A margin can also grow by wrecking the model (both answers' log-probs falling, the rejected
    # faster): the trained model must still say the true fact about as often as the SFT model.
    rows = world_rows(preference_run, "preference_eval")
    sft_recall = greedy_recall(preference_run["artifacts"]["sft"], rows)
    recall = greedy_recall(artifact, rows)
    print(f"{kind}: greedy answers state the true fact {sft_recall:.3f} -> {recall:.3f}")
    assert recall >= sft_recall - 0.1


@pytest.mark.slow
def test_recipe_prints_the_heldout_table_and_reruns_as_up_to_date(preference_run):
    if " | " not in preference_run["output"]:
        pytest.skip("every stage was up to date (ALIGN_TEST_PREFERENCE_DIR): nothing printed")
    lines = {name: next(line for line in preference_run["output"].splitlines()
                        if f"] {name} ({name})" in line and " | " in line)
             for name in TRAINED}
    assert "accuracy" in lines["rm"] and "margin" in lines["rm"]
    for kind in ("dpo", "kto", "orpo"):
        assert "heldout_margin_sft" in lines[kind] and "heldout_margin " in lines[kind], lines[kind]

    printed = io.StringIO()
    with redirect_stdout(printed):
        run_recipe(str(RECIPE), overrides(preference_run["run_dir"]), only=list(TRAINED))
    skipped = [line for line in printed.getvalue().splitlines() if "up to date, skipped" in line]
    assert len(skipped) == len(TRAINED), printed.getvalue()


def test_recipe_validates():
    checked = validate_recipe(str(RECIPE))  # raises on the first problem
    assert any("world:preference_eval" in line for line in checked)


def test_world_pairs_differ_only_in_a_value_another_fact_holds():
    world = build_world(WorldConfig(**WORLD))
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
        # preference_wrong_values of them in training, or all the world has but the held-out one.
        others = len(values[pair["attribute"]]) - 1
        assert len(set(wrongs[:-1])) == min(WORLD["preference_wrong_values"], others - 1)
    # Each fact's training pairs ask in every phrasing: what is held out is the wrong value.
    asked = {}
    for pair in train:
        fact = (pair["entity"], pair["attribute"])
        asked.setdefault(fact, set()).add(pair["prompt"][0]["content"])
    for (entity, attribute), questions in asked.items():
        assert questions == {q.format(e=entity) for q in QUESTION_TEMPLATES[attribute]}

    # They feed every preference target: pairs as they are, KTO rows doubled (chosen first).
    assert len(convert_rows(train, source="t", target="preference").rows) == len(train)
    kto = convert_rows(train, source="t", target="unpaired").rows
    assert len(kto) == 2 * len(train) and kto[0]["label"] and not kto[1]["label"]


METHOD_STAGES = {f"{kind}_{method}": {
    "kind": kind, "from": "sft", "method": {"type": method, "lora": {"r": 8, "alpha": 16}},
    "data": {"train": "world:preference_train", "eval": "world:preference_eval"},
    "args": {"disable_tqdm": True, "save_steps": 1000, "max_steps": 2,
             "per_device_train_batch_size": 8, "learning_rate": 1e-4}}
    for kind in ("dpo", "kto", "orpo", "rm") for method in ("full", "qlora")
    if (kind, method) != ("rm", "full")}  # the preference run trains a full reward model


@pytest.fixture(scope="module")
def methods(preference_run):
    path = derived_recipe(preference_run, METHOD_STAGES, "methods", keep=("pretrain", "sft"))
    return run_recipe(path, only=["pretrain", "sft", *METHOD_STAGES])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(METHOD_STAGES))
def test_every_method_trains_saves_and_reloads(methods, name):
    """Two steps of each kind with full weights and with QLoRA: the artifact says what it holds
    and loads back (a QLoRA adapter onto the float32 merge of its upstream, kept in `base`)."""
    artifact = load_artifact(methods[name].path)
    ref, kind = artifact.manifest.model, artifact.manifest.kind
    method = name.split("_")[1]
    assert (ref.type, ref.method) == ("full" if method == "full" else "adapter", method)
    assert ref.task == ("sequence-classification" if kind == "rm" else "causal-lm")
    if method == "qlora":
        # The upstream is a full model, so the 4-bit base was quantised from its weights and the
        # adapter's base is that artifact.
        assert load_artifact(artifact.path / ref.base).name == "sft"
    model = load_artifact_model(artifact)
    assert not getattr(model, "is_loaded_in_4bit", False)
    assert math.isfinite(artifact.manifest.metrics["accuracy" if kind == "rm" else "heldout_margin"])
