"""Stage `abstain`: the upstream model, answering only when confident enough.

It asks the model every question of the idk stage's probe pool and reads three things: how
familiar each question's words are to it, which words its greedy answer adds to the question,
and its confidence in that answer. The gate refuses questions less familiar than every one the
probe found it knows (names it never read); the subject check refuses answers that name a
subject of another probe question (answers about another entity); the threshold, under which it
says "I don't know" instead of answering, is the lowest that answers at most
`max_hallucination` of the questions the probe found it does not know, those two refusals
counted. Its artifact is the upstream model (files linked, not copied, where the disk allows)
with the policy beside the weights as `abstention.json`; the evaluate stage and `align chat`
apply it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from collections import Counter

from align.generation import generate_answers, words
from align.honesty.abstention import (AbstentionPolicy, answer_confidence, check_abstain_options,
                                      error_rates, fit_familiarity, fit_subject_check,
                                      fit_threshold)
from align.jsonl import read_jsonl
from align.modeling import load_artifact_model
from align.stages.context import StageContext


def run(ctx: StageContext):
    config = check_abstain_options(ctx.stage.options, f"stages.{ctx.name}.options")
    upstream, idk = ctx.model_input(), ctx.input_of_kind("idk")  # both checked at validation

    probed = [r for r in read_jsonl(idk.file("probe")) if r["category"] in ("known", "unknown")]
    model = load_artifact_model(upstream, trust_remote_code=ctx.recipe.model.trust_remote_code)
    tokenizer = ctx.load_tokenizer_of(upstream)
    answers = generate_answers(model, tokenizer, [r["question"] for r in probed],
                               max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                               token_probs=True,
                               progress="abstain (probe pool)" if ctx.is_main else None)
    answers = [a for [a] in answers]
    gate = 0.0
    if config.familiarity_gate and not getattr(tokenizer, "is_fast", False):
        ctx.log("familiarity gate off: the tokenizer is not a fast one, so its tokens cannot be "
                "placed in the question (set familiarity_gate: false to silence this)")
    elif config.familiarity_gate:
        gate = fit_familiarity([a.familiarity for r, a in zip(probed, answers)
                                if r["category"] == "known"])
    names, cost = [], 0.0
    if config.subject_check:
        names, cost = fit_subject_check(
            [words(r["question"]) for r in probed],
            [a.added_words for r, a in zip(probed, answers) if r["category"] == "known"],
            config.max_subject_over_refusal)
        if cost > config.max_subject_over_refusal:
            ctx.log(f"subject check off: fitted without each known probe answer in turn, it would "
                    f"refuse {cost:.1%} of them (max_subject_over_refusal "
                    f"{config.max_subject_over_refusal:.1%}); this model's answers name other "
                    "subjects of the probe as a matter of course")
    policy = AbstentionPolicy(threshold=math.inf, signal=config.signal, reply=config.reply,
                              min_familiarity=gate, subject_names=names)
    # A question the gate or the subject check refuses is never answered, whatever the
    # threshold: confidence -inf.
    scores = {"known": [], "unknown": []}
    refused = {"unfamiliar": Counter(), "another_subject": Counter()}
    for record, answer in zip(probed, answers):
        kind = record["category"]
        if answer.familiarity < gate:
            refused["unfamiliar"][kind] += 1
        elif policy.answers_another_subject(answer):
            refused["another_subject"][kind] += 1
        else:
            scores[kind].append(answer_confidence(answer.token_probs, answer.copied, config.signal))
            continue
        scores[kind].append(-math.inf)
    threshold = fit_threshold(scores["unknown"], config.max_hallucination)
    over, hallucination = error_rates(scores["known"], scores["unknown"], threshold)
    fitted = {"from": upstream.name, "probe": idk.name, "known": len(scores["known"]),
              "unknown": len(scores["unknown"]), "max_hallucination": config.max_hallucination,
              **{f"{why}_{kind}": refused[why][kind] for why in refused
                 for kind in ("unknown", "known")},
              "subject_names": len(names), "subject_check_cost": round(cost, 4),
              "pool_over_refusal": round(over, 4), "pool_hallucination": round(hallucination, 4)}
    policy = dataclasses.replace(policy, threshold=threshold, fitted=fitted)
    ctx.log(f"familiarity gate {gate:.3g} (refuses {refused['unfamiliar']['unknown']} unknown and "
            f"{refused['unfamiliar']['known']} known questions unanswered), subject check over "
            f"{len(names)} words (refuses {refused['another_subject']['unknown']} unknown and "
            f"{refused['another_subject']['known']} known answers), threshold {threshold:.3g} on "
            f"{config.signal} confidence: on the probe pool it refuses {over:.1%} of "
            f"{len(scores['known'])} known questions and answers {hallucination:.1%} of "
            f"{len(scores['unknown'])} unknown ones")
    if ctx.is_main:
        link_tree(upstream.model_path(), ctx.dirs.partial / "model")
        if upstream.tokenizer_path() != upstream.model_path():
            link_tree(upstream.tokenizer_path(), ctx.dirs.partial / "model")
        policy.save(ctx.dirs.partial / "model")
    model_ref = dataclasses.replace(upstream.manifest.model, path="model")
    return ctx.finish(model=model_ref, tokenizer="model",
                      metrics={"threshold": threshold, "min_familiarity": gate, **fitted})


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def link_tree(source, target) -> None:
    """A copy of a model directory whose weight files are hard links (copies where the file
    system has none), so a large model is not stored twice. The small files are copied: a
    stage may rewrite one (an adapter's config) in place, and a link would change both."""

    def link(src, dst):
        if str(src).endswith(WEIGHT_SUFFIXES):
            try:
                return os.link(src, dst)
            except OSError:
                pass
        shutil.copy2(src, dst)

    shutil.copytree(source, target, copy_function=link, dirs_exist_ok=True)
