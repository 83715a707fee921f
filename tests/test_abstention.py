"""Abstention: the confidence signals, the threshold fit, the policy file and its options."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.errors import AlignError
from align.generation import (ScoredAnswer, chat_prompts, copied_tokens, question_familiarity,
                              added_words, scored_answers, word_familiarity, words)
from align.honesty.abstention import (POLICY_FILE, AbstentionPolicy, answer_confidence,
                                      check_abstain_options, copy_policy, error_rates,
                                      fit_familiarity, fit_subject_check, fit_subject_names,
                                      fit_threshold, load_policy, subject_check_cost)


def test_added_confidence_leaves_out_the_names_the_answer_copies():
    probs, copied = [0.9, 0.2, 1.0, 0.5], [False, True, False, False]
    assert answer_confidence(probs, copied, "answer") == pytest.approx(0.9 * 0.2 * 0.5)
    assert answer_confidence(probs, copied, "added") == pytest.approx(0.9 * 0.5)
    assert answer_confidence(probs, copied, "min_token") == 0.2
    # Nothing said, or nothing but the question's words: no confidence in any claim.
    assert answer_confidence([], [], "added") == 0.0
    assert answer_confidence([0.9], [True], "added") == 0.0
    with pytest.raises(AlignError, match="signal"):
        answer_confidence(probs, copied, "entropy")


def test_threshold_is_the_lowest_that_keeps_hallucination_within_budget():
    unknown = [0.1, 0.2, 0.3, 0.4, 0.9]
    known = [0.25, 0.5, 0.8, 0.95]
    # Refusing below 0.4 still answers 0.4 and 0.9: 40% of the unknown questions.
    assert fit_threshold(unknown, 0.4) == 0.4
    t = fit_threshold(unknown, 0.2)
    assert t == 0.9 and error_rates(known, unknown, t) == (0.75, 0.2)
    # No hallucination allowed: above every unknown score, whatever it costs on known ones.
    assert fit_threshold(unknown, 0.0) == math.inf
    with pytest.raises(AlignError, match="does not know"):
        fit_threshold([], 0.1)


def test_familiarity_is_the_least_familiar_word_s_continuation():
    text = "hello Who leads Voumovia?"
    pieces = ["hel", "lo", " Who", " leads", " V", "oum", "ovia", "?"]
    offsets, at = [], 0
    for piece in pieces:
        offsets.append([at, at + len(piece)])
        at += len(piece)
    probs = [1.0, 0.01, 0.5, 0.9, 0.01, 0.2, 0.3, 0.9]
    start = text.index("Who")
    # Only "oum" and "ovia" continue a word of the question; "lo" continues one before it.
    assert word_familiarity(text, offsets, probs, start, len(text)) == pytest.approx(0.2 * 0.3)
    assert word_familiarity(text, offsets, probs, 0, len(text)) == pytest.approx(0.01)
    assert word_familiarity(text, offsets, probs, start, start + len("Who leads")) == 1.0
    # The gate: below the least familiar known question, refused without reading the answer.
    assert fit_familiarity([1.0, 0.4, 0.9]) == 0.4
    with pytest.raises(AlignError, match="knows"):
        fit_familiarity([])
    policy = AbstentionPolicy(threshold=0.5, min_familiarity=0.4)
    sure = ScoredAnswer("The leader of Voumovia is Tomas Vell.", [0.99, 0.9], [False, False])
    assert policy.decide(sure) == sure.text
    assert policy.decide(ScoredAnswer(sure.text, sure.token_probs, sure.copied, 0.06)) == \
        "I don't know."


def test_question_familiarity_reads_the_question_in_its_prompt(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    plain = "What is the capital?"  # one token a word in the test world's tokenizer
    odd = "Who leads Zqxvjkw?"
    prompts = chat_prompts(tokenizer, [plain, odd])
    tokenizer.padding_side = "left"
    batched = question_familiarity(model, tokenizer, prompts, [plain, odd])
    assert batched[0] == 1.0  # every word one token: nothing to continue
    # The odd name's pieces after its first, by hand from the prompt alone.
    ids = tokenizer(prompts[1], add_special_tokens=False, return_offsets_mapping=True)
    name_at = prompts[1].rindex("Zqxvjkw")
    pieces = [i for i, (a, b) in enumerate(ids.offset_mapping)
              if name_at < a < name_at + len("Zqxvjkw")]
    assert pieces, "the tiny tokenizer spells an unseen name in several pieces"
    with torch.no_grad():
        logits = model(torch.tensor([ids.input_ids])).logits[0].log_softmax(-1)
    by_hand = math.exp(sum(logits[i - 1, ids.input_ids[i]].item() for i in pieces))
    # The same in a left-padded batch as alone: positions start at each prompt's first token.
    assert batched[1] == pytest.approx(by_hand, rel=1e-4)
    assert batched[1] < 1.0
    # Surrounding whitespace a template may trim does not lose the question; a question its
    # prompt does not hold has no word to place, so it is not read from the template's words.
    assert question_familiarity(model, tokenizer, prompts[1:], [f" {odd}\n"]) == \
        pytest.approx([by_hand], rel=1e-4)
    assert question_familiarity(model, tokenizer, prompts[1:], ["Who leads Qwzx?"]) == [1.0]
    # A tokenizer without character offsets cannot place the question: fully familiar, no gate.
    tokenizer_without_offsets = type("PythonTokenizer", (), {"is_fast": False})()
    assert question_familiarity(model, tokenizer_without_offsets, prompts, [plain, odd]) == [1.0, 1.0]


def test_policy_replaces_only_unsure_answers_and_survives_a_round_trip(tmp_path):
    policy = AbstentionPolicy(threshold=0.5, fitted={"known": 3})
    sure = ScoredAnswer("The capital of Vanland is Kelmar.", [0.99, 0.9], [False, False])
    unsure = ScoredAnswer("The capital of Vanland is Rethmar.", [0.99, 0.3], [False, False])
    assert policy.decide(sure) == sure.text
    assert policy.decide(unsure) == "I don't know."
    policy.save(tmp_path)
    assert load_policy(tmp_path) == policy
    assert load_policy(tmp_path / "elsewhere") is None
    (tmp_path / "export").mkdir()
    assert load_policy(copy_policy(tmp_path, tmp_path / "export").parent) == policy
    assert copy_policy(tmp_path / "export" / "none", tmp_path) is None
    (tmp_path / POLICY_FILE).write_text('{"threshold": 0.5, "signal": "vibes"}')
    with pytest.raises(AlignError, match=POLICY_FILE):
        load_policy(tmp_path)


def test_subject_check_refuses_an_answer_about_another_probe_subject(tmp_path):
    pool = ["Who is the leader of Stetakovia?", "When was Kourvroland founded?",
            "Who is the leader of Kourvroland?", "Which currency is used in Tesia?"]
    known_answers = {pool[1]: "The founding year of Kourvroland is 1529.",
                     pool[2]: "The leader of Kourvroland is Trimsti Theamstoun."}
    names = fit_subject_names([words(q) for q in pool],
                              [added_words(q, a) for q, a in known_answers.items()])
    # The words the known answers add ("the", "of", "is") are their phrasing, not a subject;
    # every other word of the questions counts, "used" included, which no answer says.
    assert names == ["currency", "founded", "in", "kourvroland", "leader", "stetakovia", "tesia",
                     "used", "was", "when", "which", "who"]
    policy = AbstentionPolicy(threshold=0.5, subject_names=names)

    def answer(question, text):
        return ScoredAnswer(text, [0.99, 0.9], [False, False],
                            added_words=added_words(question, text))

    # Asked of Stetakovia, the model recalls Kourvroland's leader, sure of every token.
    swapped = answer(pool[0], "The leader of Kourvroland is Trimsti Theamstoun.")
    assert policy.decide(swapped) == "I don't know."
    # The same sentence is the answer when Kourvroland is what was asked about.
    assert policy.decide(answer(pool[2], swapped.text)) == swapped.text
    # A name the probe never asked about is no evidence either way; confidence decides.
    assert policy.decide(answer(pool[0], "The leader of Stetakovia is Moun Krimkeal.")) == \
        "The leader of Stetakovia is Moun Krimkeal."
    # Without names (a policy saved before the check, or subject_check: false) nothing changes.
    assert AbstentionPolicy(threshold=0.5).decide(swapped) == swapped.text
    policy.save(tmp_path)
    assert load_policy(tmp_path) == policy
    (tmp_path / POLICY_FILE).write_text('{"threshold": 0.5, "subject_names": [1, 2]}')
    with pytest.raises(AlignError, match="subject_names"):
        load_policy(tmp_path)


def test_subject_check_is_left_off_where_known_answers_name_other_subjects():
    def fit(pairs, max_cost=0.02):
        return fit_subject_check([words(q) for q, _ in pairs],
                                 [added_words(q, a) for q, a in pairs], max_cost)

    # Answers that restate their own subject: no known answer would be refused, whichever is
    # left out of the fit, so the check is on.
    countries = [(f"Who is the leader of {c}?", f"The leader of {c} is {n}.")
                 for c, n in [("Tesia", "Brun Faigal"), ("Boia", "Moun Krimkeal"),
                              ("Vanland", "Tomas Vell")]]
    names, cost = fit(countries)
    assert cost == 0.0 and "tesia" in names
    # Relations: each answer names another subject the probe asks about. Left out of the fit,
    # every one of them would be refused, so the check stays off rather than refuse them.
    spouses = [("Who is Ada's spouse?", "Ada is married to Bran."),
               ("Who is Bran's spouse?", "Bran is married to Ada."),
               ("Who is Cato's spouse?", "Cato is married to Dora."),
               ("Who is Dora's spouse?", "Dora is married to Cato.")]
    assert subject_check_cost([words(q) for q, _ in spouses],
                              [added_words(q, a) for q, a in spouses]) == 1.0
    assert fit(spouses) == ([], 1.0)
    # One such answer among many known ones is within the tolerance; the cost says so.
    names, cost = fit(countries + spouses[:1] + [("Who is Bran's father?", "Bran's father is Edo.")],
                      max_cost=0.2)
    assert cost == pytest.approx(1 / 5) and names


def test_scored_answers_carry_the_words_the_answer_adds(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    question, text = "When was Benland founded?", "Benland was founded in 1802."
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    logits = tuple(torch.zeros(1, len(tokenizer)) for _ in range(ids.shape[1]))
    [scored] = scored_answers(tokenizer, [question], [text], logits, ids)
    assert scored.added_words == {"in", "1802"}


@pytest.mark.parametrize("options, message", [
    ({"treshold": 0.5}, "unknown key 'opts.treshold'"),
    ({"max_hallucination": 1.5}, "max_hallucination"),
    ({"signal": "entropy"}, "signal"),
    ({"reply": "Kelmar, probably."}, "refusal the judge recognises"),
    ({"batch_size": 0}, "batch_size"),
    ({"familiarity_gate": "yes"}, "familiarity_gate"),
    ({"subject_check": 1}, "subject_check"),
    ({"max_subject_over_refusal": -0.1}, "max_subject_over_refusal"),
])
def test_options_are_checked_with_the_key_named(options, message):
    with pytest.raises(AlignError, match=message):
        check_abstain_options(options, "opts")


def test_copied_tokens_mark_the_question_s_words_only(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    answer = "Benland was founded in 1802."
    ids = tokenizer(answer, add_special_tokens=False).input_ids
    copied = copied_tokens(tokenizer, ids, "When was Benland founded?")
    spelled = [tokenizer.decode(ids[:i + 1]) for i in range(len(ids))]
    # Every token up to "founded" spells a word of the question; " in", the year and "." do not.
    first_new = next(i for i, text in enumerate(spelled) if text.endswith(" in"))
    assert copied[:first_new] == [True] * first_new
    assert not any(copied[first_new:])
