"""Stage `ppo`: the project's own PPO (align.ppo) from an SFT model against reward sources.

`from:` names the SFT stage (the policy starts from it, and it is the reference; without one, the
recipe's base model is both) and optionally
an `rm` stage (reward source `rm`, the value model's starting point, `rm_stats`). Prompts come
from the stage's data, as prompt-only, SFT or preference rows; their other columns reach reward
callables. With lora/qlora the reference is the policy with its adapter disabled and the value
model gets its own adapter; with full/freeze the reference is a frozen copy.
"""

from __future__ import annotations

import math

from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers.utils import logging as hf_logging

from align.errors import AlignError
from align.kinds import get_kind
from align.modeling import freeze_bottom_layers, peft_config, torch_dtype
from align.ppo.config import PPOConfig
from align.rewards.sources import (RewardModelSource, build_reward, check_callables, classifier_parts,
                                   specs_of)
from align.ppo.trainer import PPOTrainer
from align.profiles import check_stage, running_class
from align.stages.context import StageContext
from align.stages.summary import finite_mean, fmt, quarters

STATS_FILE = "stats.jsonl"
SAMPLES_FILE = "samples.jsonl"


def run(ctx: StageContext):
    # `align validate` refuses such a profile already; this covers `accelerate launch` by hand.
    profile_class = running_class()
    check_stage(ctx.name, get_kind(ctx.stage.kind), profile_class, profile_class)
    where = f"stages.{ctx.name}.args"
    config = PPOConfig.from_args(ctx.stage.args, where, ctx.recipe.source)
    check_callables(specs_of(config), f"{where}.rewards")  # before any model loads: a typo should fail fast
    seed = config.seed if config.seed is not None else ctx.recipe.seed
    accelerator = Accelerator(gradient_accumulation_steps=config.gradient_accumulation_steps)
    set_seed(seed)

    rm_artifact = ctx.input_of_kind("rm")
    if ctx.model_input() is None:
        ctx.log("no upstream policy in `from`: the policy and its reference start from the "
                "recipe's base model")
    value_start = config.value_model or ("rm" if rm_artifact is not None else "policy")
    if (config.uses_rm or value_start == "rm") and rm_artifact is None:
        raise AlignError(f"stage '{ctx.name}': {'reward source rm' if config.uses_rm else 'value_model: rm'} "
                         "needs a reward model: add the rm stage to `from`, or use a module:function "
                         "reward and value_model: policy.")

    tokenizer = ctx.load_tokenizer()
    prompts = ctx.rows("prompt_only")
    if not prompts:
        raise AlignError(f"stage '{ctx.name}' has no prompts.")
    policy, reference = load_policy(ctx)
    value_model = load_value_model(ctx, value_start, rm_artifact)

    rm_source = None
    if config.uses_rm:
        rm_source = RewardModelSource.from_artifact(
            rm_artifact, policy_tokenizer=tokenizer, device=accelerator.device,
            dtype=torch_dtype(ctx.recipe.model.dtype), normalize=config.score_normalization == "rm_stats",
            batch_size=config.rollout_forward_batch_size,
            trust_remote_code=ctx.recipe.model.trust_remote_code)
    reward = build_reward(config, rm_source=rm_source)

    trainer = PPOTrainer(config, policy=policy, value_model=value_model, tokenizer=tokenizer, reward=reward,
                         prompts=prompts, ref_policy=reference, output_dir=ctx.dirs.partial,
                         accelerator=accelerator, seed=seed, log_prefix=f"[{ctx.name}] ")
    counts = ctx.describe_training(trainer.unwrapped.policy, prompts, unit="prompts")
    ctx.log(f"value model from {value_start}; {trainer.total_steps} steps of "
            f"{trainer.episodes_per_step} episodes; rewards: "
            + ", ".join(f"{r['source']} x{r.get('weight', 1.0)}" for r in config.rewards))
    history = trainer.train(resume_from=ctx.resume_checkpoint())

    out = ctx.dirs.partial / "model"
    if ctx.is_main:
        trainer.unwrapped.policy.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    metrics = {**summarise(history), **counts, "prompts": len(prompts), "value_model": value_start}
    # Every rank must have shaped rewards alike: the running score moments, the KL coefficient
    # and the logged statistics are reduced over all ranks, so they must agree exactly.
    metrics.update(ctx.replica_check(trainer.unwrapped, step=trainer.step, kl_coef=trainer.kl_ctl.value,
                                     score_moments=trainer.shaper.state_dict(),
                                     scores=[row["score_raw"] for row in history]))
    ctx.log("score by quarter: " + " -> ".join(fmt(s) for s in metrics["score_by_quarter"])
            + f" | kl last {fmt(metrics['kl_last'], 4)} | eos rate last {fmt(metrics['eos_rate_last'], 2)}")
    return ctx.finish(model=ctx.model_ref(), tokenizer="model", metrics=metrics,
                      files={"stats": STATS_FILE, "samples": SAMPLES_FILE})


# -- models ----------------------------------------------------------------------------------------


def load_policy(ctx: StageContext):
    """(policy, reference): a reference copy for full/freeze; None (adapter disabled) for LoRA."""
    method = ctx.stage.method
    quantized = method.type == "qlora"
    policy = ctx.load_start_model(quantized=quantized)
    if method.type in ("lora", "qlora"):
        if quantized:
            policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=False)
        return get_peft_model(policy, peft_config(method)), None
    reference = ctx.load_start_model()
    if method.type == "freeze":
        freeze_bottom_layers(policy, method.trainable_layers)
    return policy, reference


def load_value_model(ctx: StageContext, start: str, rm_artifact):
    """A scalar-head model from the RM (its head included) or from the SFT weights (a new head,
    zeroed so the first values are 0 instead of noise); LoRA-tuned when the policy is."""
    method = ctx.stage.method
    quantized = method.type == "qlora"
    task = "sequence-classification"
    if start == "policy":
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "score.weight newly initialised" is the point here
        try:
            model = ctx.load_start_model(task=task, quantized=quantized)
        finally:
            hf_logging.set_verbosity(verbosity)
        _, head = classifier_parts(model)
        head.weight.data.zero_()
        if getattr(head, "bias", None) is not None:
            head.bias.data.zero_()
    else:
        model = ctx.load_start_model(task=task, quantized=quantized, start=rm_artifact,
                                     merged_as="value_base")
    if model.config.pad_token_id is None:
        model.config.pad_token_id = ctx.load_tokenizer().pad_token_id
    if method.type in ("lora", "qlora"):
        if quantized:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, peft_config(method, task=task))
    return model


# -- summary ---------------------------------------------------------------------------------------


def summarise(history: list[dict]) -> dict:
    """First/last quarter means of the raw score (the numbers a reader compares), KL and more."""
    if not history:
        return {"steps": 0}
    quarter = max(1, len(history) // 4)
    mean = finite_mean
    by_quarter = [mean("score_raw", part) for part in quarters(history)]
    first, last = history[:quarter], history[-quarter:]
    return _finite_or_none({
        "steps": history[-1]["step"], "episodes": history[-1]["episodes"],
        "mean_score_first": mean("score_raw", first), "mean_score_last": mean("score_raw", last),
        "shaped_score_first": mean("score", first), "shaped_score_last": mean("score", last),
        "score_by_quarter": by_quarter,
        "kl_last": mean("kl", last), "kl_max": max(r["kl"] for r in history),
        "entropy_last": mean("entropy", last), "response_length_last": mean("response_length", last),
        "eos_rate_last": mean("eos_rate", last), "kl_coef_last": history[-1]["kl_coef"],
        "non_finite_rows": sum(r.get("non_finite", 0) for r in history),
        "episodes_per_s": mean("episodes_per_s", history),
        # Each reward source's mean over the first and last quarter: which part of a weighted
        # reward actually rose.
        "reward_sources": {key.split("/", 1)[1]: {"first": mean(key, first), "last": mean(key, last)}
                           for key in history[0] if key.startswith("reward/")},
    })


def _finite_or_none(value):
    """nan (e.g. no finite score in a quarter) becomes null: artifact.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
