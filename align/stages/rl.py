"""Stages `grpo` and `rloo` on TRL's GRPOTrainer / RLOOTrainer, against align's reward sources.

The policy starts from the upstream model stage exactly (`ctx.load_start_model`, adapters
merged), or from the recipe's base model when `from` names none (R1-Zero style). Prompts are the
stage's data read as `prompt_only` (prompt-only, conversational or preference rows, or the idk
stage's `prompts` file); their other columns (gold `answers`, the probe's `category`) reach the
reward sources. `options.rewards` lists the sources (align.rewards.spec); each becomes one of
TRL's `reward_funcs` with its weight in `reward_weights`, so TRL logs each one's mean.

The reference is the start model:
- lora / qlora: TRL wraps the policy in a fresh adapter and scores the reference with the
  adapter disabled (the same weights, no copy).
- full / freeze: TRL would reload `config._name_or_path`, which for a merged adapter upstream
  is the raw base; the stage hands it a copy loaded as the policy was instead.

align sets `beta` (the KL coefficient) to 0.04 for grpo when `args` do not, where TRL's default
0.0 would load no reference and log no KL; rloo keeps TRL's 0.05.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Any

from accelerate.utils import gather_object

from align.errors import AlignError
from align.kinds import get_kind
from align.modeling import freeze_bottom_layers, peft_config, torch_dtype
from align.rewards.sources import RewardModelSource, check_callables
from align.rewards.spec import check_rl_options, uses_rm
from align.rewards.trl import trl_reward_funcs
from align.stages.context import StageContext
from align.stages.summary import finite_mean, fmt, loss_summary, quarters

# Stage defaults where align's differ from TRL's (any of them can be set in `args`).
DEFAULTS = {"grpo": {"beta": 0.04, "logging_steps": 1}, "rloo": {"logging_steps": 1}}


@dataclass
class Setup:
    trainer: Any
    tokenizer: Any
    train: Any
    evaluation: Any
    reward_funcs: list


def run(ctx: StageContext):
    setup = build_trainer(ctx)
    trainer = setup.trainer
    counts = ctx.describe_training(trainer.model, setup.train, setup.evaluation, unit="prompts")
    ctx.log("rewards: " + ", ".join(f"{f.__name__} x{w}" for f, w in
                                     zip(setup.reward_funcs, trainer.reward_weights.tolist()))
            + f"; beta {trainer.beta}")
    trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    names = [f.__name__ for f in setup.reward_funcs]
    metrics = {**loss_summary(trainer.state.log_history), **summarise(trainer.state.log_history, names),
               **counts, "non_finite": non_finite_counts(ctx, setup.reward_funcs)}
    ctx.log("reward by quarter: " + " -> ".join(fmt(v) for v in metrics["reward_by_quarter"])
            + f" | kl last {fmt(metrics.get('kl_last'), 4)}")
    return ctx.finish_model(trainer, setup.tokenizer, metrics)


def non_finite_counts(ctx: StageContext, funcs) -> dict[str, int]:
    """Each source's non-finite values over all processes (each scored its own rows)."""
    mine = [f.non_finite for f in funcs]
    if ctx.state.num_processes > 1:
        everyone = gather_object([mine])
        mine = [sum(column) for column in zip(*everyone)]
    return {f.__name__: n for f, n in zip(funcs, mine)}


def build_trainer(ctx: StageContext) -> Setup:
    """Everything up to `train()`; tests use it to inspect the reference the stage uses."""
    kind, method = get_kind(ctx.stage.kind), ctx.stage.method
    where = f"stages.{ctx.name}.options"
    specs = check_rl_options(ctx.stage.options, where, ctx.recipe.source)
    check_callables(specs, f"{where}.rewards")  # before any model loads
    if "reward_weights" in ctx.stage.args:
        raise AlignError(f"stages.{ctx.name}.args.reward_weights: the weights are the `weight` of each "
                         f"entry of {where}.rewards; remove reward_weights.")
    rm_artifact = ctx.input_of_kind("rm")
    if uses_rm(specs) and rm_artifact is None:
        raise AlignError(f"stage '{ctx.name}': reward source rm needs a reward model: add the rm stage "
                         "to `from`, or use another reward source.")

    tokenizer = ctx.load_tokenizer()
    train, evaluation = ctx.datasets(kind.data)
    config_cls = kind.config_class()
    defaults = {k: v for k, v in DEFAULTS.get(kind.name, {}).items() if k not in ctx.stage.args}
    args = ctx.training_args(config_cls, has_eval=evaluation is not None,
                             bf16=ctx.recipe.model.dtype == "bfloat16", **defaults)

    rm_source = None
    if uses_rm(specs):
        rm_source = RewardModelSource.from_artifact(
            rm_artifact, policy_tokenizer=tokenizer, device=args.device,
            dtype=torch_dtype(ctx.recipe.model.dtype),
            trust_remote_code=ctx.recipe.model.trust_remote_code)
    funcs, weights = trl_reward_funcs(specs, rm_source=rm_source, log=ctx.log, where=f"{where}.rewards")
    args.reward_weights = weights

    model = ctx.load_start_model(quantized=method.type == "qlora")
    if method.type == "freeze":
        freeze_bottom_layers(model, method.trainable_layers)
    peft = peft_config(method)
    trainer_cls = kind.trainer_class()
    reference = None
    if peft is None and args.beta != 0.0:
        reference = ctx.load_start_model()
    with reference_as(trainer_cls, reference):
        trainer = trainer_cls(model=model, reward_funcs=funcs, args=args, train_dataset=train,
                              eval_dataset=evaluation, processing_class=tokenizer,
                              peft_config=peft, callbacks=ctx.callbacks())
    return Setup(trainer, tokenizer, train, evaluation, funcs)


@contextlib.contextmanager
def reference_as(trainer_cls, reference):
    """While the trainer is built, its reference model is `reference` (not a reload of
    `config._name_or_path`); TRL still prepares it (DeepSpeed, FSDP, device) as its own."""
    if reference is None:
        yield
        return
    module = sys.modules[trainer_cls.__module__]
    original = getattr(module, "create_model_from_path", None)
    if original is None:
        raise AlignError(f"{trainer_cls.__name__}'s module no longer builds its reference with "
                         "create_model_from_path; align cannot hand it the start model.")
    used = []

    def create(model_id, *args, **kwargs):
        used.append(model_id)
        return reference

    module.create_model_from_path = create
    try:
        yield
    finally:
        module.create_model_from_path = original
    if len(used) != 1:
        raise AlignError(f"{trainer_cls.__name__} asked for {len(used)} reference models, expected 1.")


# -- summary ---------------------------------------------------------------------------------------

def summarise(history: list[dict], names: list[str]) -> dict:
    """Reward by quarter of training, first/last quarter means of the reward, each source's
    mean, KL, entropy, completion length and the honesty reward's rates."""
    rows = [h for h in history if "reward" in h]
    if not rows:
        return {"reward_by_quarter": []}
    parts = quarters(rows)
    first, last = parts[0], parts[-1]
    mean = finite_mean
    out = {
        "reward_by_quarter": [mean("reward", q) for q in parts],
        "reward_first": mean("reward", first), "reward_last": mean("reward", last),
        "kl_last": mean("kl", last), "kl_max": max((r["kl"] for r in rows if "kl" in r), default=None),
        "entropy_last": mean("entropy", last),
        "completion_length_last": mean("completions/mean_length", last),
        "reward_sources": {name: {"first": mean(f"rewards/{name}/mean", first),
                                  "last": mean(f"rewards/{name}/mean", last)} for name in names},
    }
    for key in sorted({k for r in rows for k in r if k.startswith("honesty/")}):
        out[key.replace("/", "_")] = [mean(key, q) for q in parts]
    return out
