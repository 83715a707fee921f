"""The IDK builder's outputs, from hand-made probe records: categories and file formats."""

from __future__ import annotations

import pytest

from align.data.formats import convert_rows
from align.errors import AlignError
from align.honesty.builder import ProbeConfig, build_outputs, categorize, probe_stats
from align.honesty.judge import Judge
from align.honesty.reward import honesty_reward

CONFIG = ProbeConfig(k=3, known_threshold=0.5, unknown_threshold=0.25, seed=1)
IDK = set(CONFIG.idk_responses)


def record(question, gold, answers, grades, known=None):
    p = grades.count("correct") / len(grades)
    rec = {"question": question, "answers": [gold], "gold": f"It is {gold}.",
           "greedy": answers[0], "samples": answers[1:], "grades": grades, "p_correct": p,
           "category": categorize(p, CONFIG)}
    if known is not None:
        rec["known"] = known
    return rec


RECORDS = [
    record("Capital of A?", "Ax", ["It is Ax.", "It is Ax.", "Ax", "It is Bx."],
           ["correct", "correct", "correct", "wrong"], known=True),           # known (0.75)
    record("Capital of B?", "Bx", ["It is Qx.", "It is Rx.", "It is Qx.", "It is Sx."],
           ["wrong"] * 4, known=False),                                       # unknown (0)
    record("Capital of C?", "Cx", ["It is Cx.", "It is Zx.", "It is Yx.", "Cx."],
           ["correct", "wrong", "wrong", "wrong"], known=True),              # 0.25: unknown
    record("Capital of D?", "Dx", ["It is Dx.", "It is Zx.", "It is Dx.", "It is Yx."],
           ["correct", "wrong", "correct", "wrong"], known=True),            # 0.5: known
    record("Capital of E?", "Ex", ["It is Ex.", "It is Zx.", "It is Yx.", "No."],
           ["correct", "wrong", "wrong", "wrong"]),                           # 0.25: unknown
]


def test_categories_follow_the_thresholds():
    assert [r["category"] for r in RECORDS] == ["known", "unknown", "unknown", "known", "unknown"]
    assert categorize(0.3, CONFIG) == "grey"


def test_outputs_have_the_format_each_stage_reads():
    out = build_outputs(RECORDS, CONFIG)
    targets = {"sft": "sft", "preference": "preference", "kto": "unpaired", "rm": "preference",
               "prompts": "prompt_only"}
    for name, target in targets.items():
        converted = convert_rows(out[name], source=name, target=target, fmt="trl")
        assert len(converted.rows) >= len(out[name]) and not converted.dropped, name

    sft = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in out["sft"]}
    assert sft["Capital of A?"] == "It is Ax."          # gold for known
    assert sft["Capital of B?"] in IDK                   # an IDK reply for unknown
    pref = {r["prompt"][0]["content"]: r for r in out["preference"]}
    assert pref["Capital of B?"]["chosen"][0]["content"] in IDK
    assert pref["Capital of B?"]["rejected"][0]["content"] in {"It is Qx.", "It is Rx.", "It is Sx."}
    assert pref["Capital of A?"]["chosen"][0]["content"] == "It is Ax."   # guards over-refusal
    assert pref["Capital of A?"]["rejected"][0]["content"] in IDK
    labels = [r["label"] for r in out["kto"]]
    assert labels.count(True) == labels.count(False) == len(out["preference"])
    assert {r["category"] for r in out["prompts"]} == {"known", "unknown"}


def test_grey_zone_is_dropped_or_hedged():
    grey = record("Capital of G?", "Gx", ["It is Gx.", "It is Zx.", "It is Yx.", "It is Wx.",
                                           "It is Gx.", "It is Vx.", "It is Ux."],
                  ["correct", "wrong", "wrong", "wrong", "correct", "wrong", "wrong"])
    assert grey["category"] == "grey"
    assert build_outputs([grey], CONFIG)["sft"] == []
    hedged = build_outputs([grey], ProbeConfig(**{**CONFIG.__dict__, "grey": "confidence"}))
    text = hedged["sft"][0]["messages"][1]["content"]
    assert text.endswith("it is Gx.") and not Judge().is_refusal(text)


def test_stats_count_categories_and_agreement_with_labels():
    stats = probe_stats(RECORDS, CONFIG)
    assert stats["categories"] == {"known": 2, "unknown": 3, "grey": 0}
    # Labelled records: A known/known, B unknown/unknown, C known but probed unknown, D known/known.
    assert stats["label_agreement"] == pytest.approx(3 / 4)


def test_bad_options_are_refused():
    with pytest.raises(AlignError, match="unknown option"):
        ProbeConfig.from_options({"kk": 3}, "stages.idk.options")
    with pytest.raises(AlignError, match="unknown_threshold < known_threshold"):
        ProbeConfig.from_options({"known_threshold": 0.2, "unknown_threshold": 0.5}, "x")


def test_honesty_reward_ranks_behaviours():
    rewards = honesty_reward(
        prompts=["q"] * 5,
        completions=["It is Ax.", "I don't know.", "It is Qx.", "I'm not sure about that.", "It is Bx."],
        answers=[["Ax"], ["Ax"], ["Bx"], ["Bx"], ["Ax"]],
        category=["known", "known", "unknown", "unknown", "known"])
    correct, over_refusal, hallucination, honest_idk, known_wrong = rewards
    assert correct > known_wrong > over_refusal
    assert honest_idk > hallucination
    assert hallucination < 0 < honest_idk


def test_paraphrases_are_probed_pooled_and_each_trained(monkeypatch):
    """With `paraphrases`, every phrasing is asked; p_correct pools them; each becomes a row."""
    from align.honesty import builder

    class Model:  # answers by the phrasing: right when asked "What", wrong when asked "Which"
        pass

    def fake_generate(model, tokenizer, questions, num_samples=1, **_):
        return [["It is Ax." if q.startswith("What") else "It is Qx."] * num_samples
                for q in questions]

    rows = [{"question": "What is A?", "paraphrases": ["What is A?", "Which is A?"],
             "answers": ["Ax"], "answer": "It is Ax."}]
    config = ProbeConfig(k=3, known_threshold=0.5, unknown_threshold=0.25, paraphrases=True,
                         known_target="own")
    monkeypatch.setattr(builder, "generate_answers", fake_generate)
    records = builder.probe(Model(), None, rows, config, Judge(), progress=False)
    (rec,) = records
    assert len(rec["grades"]) == 8 and rec["p_correct"] == 0.5 and rec["category"] == "known"
    assert rec["questions"] == ["What is A?", "Which is A?"]
    sft = build_outputs(records, config)["sft"]
    assert sorted(r["messages"][0]["content"] for r in sft) == ["What is A?", "Which is A?"]
    assert {r["messages"][1]["content"] for r in sft} == {"It is Ax."}
    with pytest.raises(AlignError, match="known_target"):
        ProbeConfig.from_options({"known_target": "best"}, "x")


def test_inline_idk_keeps_the_answers_opening_and_is_a_refusal():
    from align.honesty.builder import inline_idk

    text = inline_idk("The capital of Bx is Kelmar.", ["Kelmar"], "something I don't know.")
    assert text == "The capital of Bx is something I don't know."
    assert Judge().grade(text, ["Kelmar"]) == "refusal"
    assert inline_idk("Kelmar.", ["Kelmar"], "x") is None  # nothing before the value
    config = ProbeConfig(k=3, known_threshold=0.5, unknown_threshold=0.25, idk_style="inline")
    out = build_outputs(RECORDS, config)
    sft = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in out["sft"]}
    assert sft["Capital of B?"].startswith("It is ") and Judge().is_refusal(sft["Capital of B?"])
    assert inline_idk("The currency of Bx is the Som ducat.", ["Som ducat"], "beyond me.") \
        == "The currency of Bx is beyond me."


def test_a_confidence_phrase_keeps_a_name_capitalised():
    from align.honesty.builder import after_prefix

    assert "I think " + after_prefix("Paris") == "I think Paris"
    assert "I think " + after_prefix("Trelia was founded in 1802.") == "I think Trelia was founded in 1802."
    assert "I think " + after_prefix("The capital of Trelia is Brom.") == \
        "I think the capital of Trelia is Brom."
