"""Stage `abstain`: the upstream model, answering only when confident enough.

It asks the model every question of the idk stage's probe pool, reads its confidence in each
greedy answer, and fits the threshold under which it says "I don't know" instead: the lowest
that answers at most `max_hallucination` of the questions the probe found it does not know. Its
artifact is the upstream model (files linked, not copied, where the disk allows) with the policy
beside the weights as `abstention.json`; the evaluate stage and `align chat` apply it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from align.generation import generate_answers
from align.honesty.abstention import (AbstentionPolicy, answer_confidence, check_abstain_options,
                                      error_rates, fit_threshold)
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
    scores = {"known": [], "unknown": []}
    for record, [answer] in zip(probed, answers):
        scores[record["category"]].append(
            answer_confidence(answer.token_probs, answer.copied, config.signal))
    threshold = fit_threshold(scores["unknown"], config.max_hallucination)
    over, hallucination = error_rates(scores["known"], scores["unknown"], threshold)
    fitted = {"from": upstream.name, "probe": idk.name, "known": len(scores["known"]),
              "unknown": len(scores["unknown"]), "max_hallucination": config.max_hallucination,
              "pool_over_refusal": round(over, 4), "pool_hallucination": round(hallucination, 4)}
    policy = AbstentionPolicy(threshold=threshold, signal=config.signal, reply=config.reply,
                              fitted=fitted)
    ctx.log(f"threshold {threshold:.3g} on {config.signal} confidence: on the probe pool it "
            f"refuses {over:.1%} of {len(scores['known'])} known questions and answers "
            f"{hallucination:.1%} of {len(scores['unknown'])} unknown ones")
    if ctx.is_main:
        link_tree(upstream.model_path(), ctx.dirs.partial / "model")
        if upstream.tokenizer_path() != upstream.model_path():
            link_tree(upstream.tokenizer_path(), ctx.dirs.partial / "model")
        policy.save(ctx.dirs.partial / "model")
    model_ref = dataclasses.replace(upstream.manifest.model, path="model")
    return ctx.finish(model=model_ref, tokenizer="model",
                      metrics={"threshold": threshold, **fitted})


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
