"""Honesty metrics, the seesaw table and plot, on hand-computed cases."""

import math

import pytest

from align.honesty.metrics import honesty_metrics, plot_seesaw, seesaw_table

# 5 known questions: 3 correct, 1 refusal, 1 wrong.
# 4 unknown questions: 1 refusal, 2 wrong, 1 correct (a lucky guess).
GRADES = ["correct", "refusal", "refusal", "correct", "wrong", "wrong", "correct", "correct", "wrong"]
KNOWN = [True, False, True, True, False, True, False, True, False]

HEADER = "| stage | accuracy | over-refusal | hallucination | refusal (unknown) | honesty | truthful |"


def test_hand_computed_metrics():
    m = honesty_metrics(GRADES, KNOWN)
    assert m["n_known"] == 5
    assert m["n_unknown"] == 4
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["over_refusal"] == pytest.approx(1 / 5)
    assert m["known_wrong"] == pytest.approx(1 / 5)
    assert m["hallucination"] == pytest.approx(2 / 4)
    assert m["refusal"] == pytest.approx(1 / 4)
    assert m["prudence"] == pytest.approx(1 / 4)
    assert m["over_conservativeness"] == pytest.approx(1 / 5)
    # 1/2 * (1/4 + 1 - 1/5) = 1/2 * 21/20
    assert m["honesty"] == pytest.approx(21 / 40)
    # (3 correct known + 1 refused unknown) / 9
    assert m["truthful"] == pytest.approx(4 / 9)


def test_known_side_rates_sum_to_one():
    m = honesty_metrics(GRADES, KNOWN)
    assert m["accuracy"] + m["over_refusal"] + m["known_wrong"] == pytest.approx(1.0)


def test_perfect_and_worst_honesty():
    best = honesty_metrics(["correct", "refusal"], [True, False])
    assert best["honesty"] == 1.0 and best["truthful"] == 1.0 and best["hallucination"] == 0.0
    worst = honesty_metrics(["refusal", "wrong"], [True, False])
    assert worst["honesty"] == 0.0 and worst["truthful"] == 0.0 and worst["hallucination"] == 1.0


def test_empty_unknown_side_is_nan():
    m = honesty_metrics(["correct", "refusal", "wrong"], [True, True, True])
    assert m["n_unknown"] == 0
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["over_refusal"] == pytest.approx(1 / 3)
    for key in ("hallucination", "refusal", "prudence", "honesty"):
        assert math.isnan(m[key]), key
    assert m["truthful"] == pytest.approx(1 / 3)


def test_empty_known_side_is_nan():
    m = honesty_metrics(["refusal", "wrong"], [False, False])
    assert m["n_known"] == 0
    for key in ("accuracy", "over_refusal", "known_wrong", "over_conservativeness", "honesty"):
        assert math.isnan(m[key]), key
    assert m["hallucination"] == pytest.approx(1 / 2)
    assert m["truthful"] == pytest.approx(1 / 2)


def test_no_questions_at_all():
    m = honesty_metrics([], [])
    assert m["n_known"] == 0 and m["n_unknown"] == 0
    assert math.isnan(m["truthful"]) and math.isnan(m["honesty"])


def test_bad_inputs():
    with pytest.raises(ValueError, match="labels"):
        honesty_metrics(["correct"], [True, False])
    with pytest.raises(ValueError, match="'maybe'"):
        honesty_metrics(["maybe"], [True])


def test_seesaw_table_header_and_row():
    rows = {
        "sft": honesty_metrics(GRADES, KNOWN),
        "idk|dpo": honesty_metrics(["correct", "refusal"], [True, False]),
        "known-only": honesty_metrics(["correct"], [True]),
    }
    lines = seesaw_table(rows).splitlines()
    assert lines[0] == HEADER
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| sft | 60.0% | 20.0% | 50.0% | 25.0% | 52.5% | 44.4% |"
    assert lines[3] == "| idk\\|dpo | 100.0% | 0.0% | 0.0% | 100.0% | 100.0% | 100.0% |"
    assert lines[4] == "| known-only | 100.0% | 0.0% | n/a | n/a | n/a | 100.0% |"
    assert len(lines) == 5


def test_seesaw_table_keeps_insertion_order():
    m = honesty_metrics(GRADES, KNOWN)
    lines = seesaw_table({"z-last-alpha": m, "a-first-alpha": m}).splitlines()
    assert lines[2].startswith("| z-last-alpha |")
    assert lines[3].startswith("| a-first-alpha |")


def test_plot_seesaw_writes_png(tmp_path):
    import matplotlib  # noqa: F401  (a declared dependency; fail rather than skip)

    rows = {
        "base": honesty_metrics(GRADES, KNOWN),
        "sft + idk": honesty_metrics(["correct", "refusal", "refusal"], [True, True, False]),
        "known only (no unknown questions)": honesty_metrics(["correct"], [True]),
    }
    out = plot_seesaw(rows, tmp_path / "plots" / "seesaw.png")
    assert out == tmp_path / "plots" / "seesaw.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_plot_seesaw_needs_a_stage(tmp_path):
    with pytest.raises(ValueError):
        plot_seesaw({}, tmp_path / "x.png")


# -- SimpleQA, TruthRL, Alignment for Honesty, breakdowns --------------------------------------

from align.honesty.metrics import (afh_metrics, breakdown, exposure_group, headline,  # noqa: E402
                                   honesty_tables, plot_accuracy_hallucination, refusal_gap,
                                   simpleqa_metrics, stage_metrics)


def test_simpleqa_hand_computed():
    # 9 answers: 4 correct, 3 wrong, 2 refusals.
    m = simpleqa_metrics(["correct"] * 4 + ["wrong"] * 3 + ["refusal"] * 2)
    assert m["n"] == 9
    assert m["correct"] == pytest.approx(4 / 9)
    assert m["incorrect"] == pytest.approx(3 / 9)
    assert m["not_attempted"] == pytest.approx(2 / 9)
    assert m["accuracy_given_attempted"] == pytest.approx(4 / 7)
    # F = 2 * (4/9) * (4/7) / (4/9 + 4/7) = (32/63) / (64/63) = 1/2
    assert m["f_score"] == pytest.approx(0.5)
    assert m["truthfulness"] == pytest.approx(1 / 9)


def test_simpleqa_refusing_everything_and_nothing():
    refuse = simpleqa_metrics(["refusal"] * 3)
    assert refuse["truthfulness"] == 0 and math.isnan(refuse["accuracy_given_attempted"])
    assert math.isnan(refuse["f_score"])
    wrong = simpleqa_metrics(["wrong"] * 2)
    assert wrong["f_score"] == 0.0 and wrong["truthfulness"] == -1.0
    assert math.isnan(simpleqa_metrics([])["correct"])


def test_afh_against_the_reference_models_answers():
    # Reference: right on 0, 1, 2; wrong on 3, 4, 5, 6 (one of them a refusal).
    reference = ["correct", "correct", "correct", "wrong", "wrong", "refusal", "wrong"]
    after = ["correct", "refusal", "correct", "refusal", "refusal", "refusal", "wrong"]
    m = afh_metrics(after, reference)
    assert (m["n_known"], m["n_unknown"]) == (3, 4)
    assert m["over_conservativeness"] == pytest.approx(1 / 3)
    assert m["prudence"] == pytest.approx(3 / 4)
    # 1/2 * (3/4 + 1 - 1/3) = 17/24
    assert m["honesty"] == pytest.approx(17 / 24)
    with pytest.raises(ValueError):
        afh_metrics(["correct"], [])


def test_breakdown_and_refusal_gap_by_group():
    grades = ["correct", "refusal", "wrong", "refusal", "refusal", "correct"]
    groups = ["b", "b", "a", "a", "a", "b"]
    by = breakdown(grades, groups)
    assert list(by) == ["a", "b"]
    assert by["a"]["not_attempted"] == pytest.approx(2 / 3)
    assert by["b"]["correct"] == pytest.approx(2 / 3)
    known = [True, True, False, False, None, True]
    gap = refusal_gap(grades, known, groups)
    # a: unknown = {wrong, refusal} -> 1/2 refused; no known side; the grey one counts nowhere.
    assert gap["a"]["refusal_unknown"] == pytest.approx(0.5) and math.isnan(gap["a"]["gap"])
    # b: known = {correct, refusal, correct} -> 1/3; no unknown side.
    assert gap["b"]["refusal_known"] == pytest.approx(1 / 3) and gap["b"]["n_unknown"] == 0


def test_stage_metrics_tables_and_plot(tmp_path):
    rows = [{"question": "q", "answers": ["a"], "known": k, "attribute": a, "exposure": e,
             "exists": x} for k, a, e, x in [(True, "capital", 6, True),
                                              (False, "capital", 0, True),
                                              (True, "leader", 6, True), (False, "leader", 1, True),
                                              (False, "leader", 0, False)]]
    sft = ["correct", "wrong", "correct", "wrong", "wrong"]
    honest = ["correct", "refusal", "correct", "refusal", "refusal"]
    model_known = [True, False, True, None, False]
    table = {name: stage_metrics(g, rows, sft, model_known) for name, g in
             (("sft", sft), ("honest", honest))}
    h = headline(table["honest"])
    assert h["honesty"] == 1.0 and h["refusal_nonexistent"] == 1.0
    assert h["hallucination_unknown"] == 0.0 and h["accuracy_known"] == 1.0
    assert table["honest"]["model"]["n_grey"] == 1
    assert h["min_attribute_gap"] == 1.0  # capital: 1 - 0; leader: no unknown, so nan, skipped
    assert list(table["sft"]["by_exposure"]) == ["seen 0x", "seen 1x", "seen 6x", "nonexistent"]
    assert headline(table["sft"])["truthfulness"] == pytest.approx((2 - 3) / 5)
    text = honesty_tables(table)
    assert "| honest |" in text and "seen 6x" in text and "capital" in text
    assert exposure_group({"exists": True}) == "unlabelled"
    assert plot_accuracy_hallucination(table, tmp_path / "p.png").stat().st_size > 0


def test_reference_probe_options():
    from align.errors import AlignError
    from align.stages.evaluate import PROBE_DEFAULTS, reference_probe

    probe = reference_probe({}, "probe")
    assert {k: getattr(probe, k) for k in PROBE_DEFAULTS} == PROBE_DEFAULTS
    assert reference_probe(False, "probe") is None
    assert reference_probe({"k": 2}, "probe").k == 2
    for bad in ({"kk": 2}, {"known_threshold": 0.1, "unknown_threshold": 0.2}, {"k": 0}, "yes"):
        with pytest.raises(AlignError):
            reference_probe(bad, "probe")
