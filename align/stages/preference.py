"""Stages `dpo`, `kto` and `orpo` on TRL's trainers, starting from the SFT model.

The policy is the upstream model exactly: `ctx.load_start_model` merges an upstream adapter
into its base in the compute dtype (a QLoRA upstream's base is reloaded unquantised first).
DPO and KTO measure the policy against a reference, and the reference IS that upstream model:

- lora: TRL gets a `peft_config`, wraps the policy in a fresh adapter and computes the reference
  with the adapter disabled: the same weights, no second copy.
- qlora: the same, so the reference is the 4-bit quantisation of the upstream model, which is
  also where the policy starts (on the tiny model it is ~0.6 nats per sequence from the exact
  upstream; tests/test_handoff.py measures it).
- full / freeze: a second copy loaded the same way is passed as `ref_model`. Left to itself TRL
  would reload `config._name_or_path`, which for a merged LoRA upstream is the raw base.

ORPO has no reference (TRL's experimental ORPOTrainer tokenises on its own: it prepends BOS and
appends EOS when the chat template does not). Before and after training, the chosen-over-
rejected log-prob margin on held-out pairs is measured on the policy (`heldout_margin_sft`,
`heldout_margin`), so every run shows whether preference training moved what it should.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch

from align.distributed import full_parameters
from align.errors import AlignError
from align.kinds import get_kind
from align.modeling import freeze_bottom_layers, peft_config
from align.stages.context import StageContext
from align.stages.rm import pad_right
from align.stages.summary import loss_summary


@dataclass
class Setup:
    """A stage ready to train: the trainer and the data it was built from."""

    trainer: Any
    tokenizer: Any
    train: Any
    evaluation: Any
    heldout: list[dict] | None  # paired rows the margins are measured on


def run(ctx: StageContext):
    setup = build_trainer(ctx)
    trainer = setup.trainer
    counts = ctx.describe_training(trainer.model, setup.train, setup.evaluation)

    before = heldout_margin(trainer.model, setup.tokenizer, setup.heldout)
    trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    after = heldout_margin(trainer.model, setup.tokenizer, setup.heldout)

    metrics = {**loss_summary(trainer.state.log_history), **counts}
    if setup.heldout:
        metrics.update(heldout_margin_sft=before["margin"], heldout_margin=after["margin"],
                       heldout_accuracy_sft=before["accuracy"], heldout_accuracy=after["accuracy"],
                       heldout_pairs=len(setup.heldout))
        ctx.log(f"held-out margin {before['margin']:.3f} -> {after['margin']:.3f}, chosen "
                f"preferred {before['accuracy']:.3f} -> {after['accuracy']:.3f} "
                f"({len(setup.heldout)} pairs)")
    else:
        ctx.log("no held-out pairs (paired data.eval, or data.eval_fraction for dpo/orpo): the "
                "margin is not measured")
    return ctx.finish_model(trainer, setup.tokenizer, metrics)


def build_trainer(ctx: StageContext) -> Setup:
    """Everything up to `train()`; tests use it to inspect the reference model the stage uses."""
    kind, method = get_kind(ctx.stage.kind), ctx.stage.method
    tokenizer = ctx.load_tokenizer()
    train, evaluation = ctx.datasets(kind.data)
    # Mixed precision follows the recipe's dtype, so a float32 reference is scored in float32.
    args = ctx.training_args(kind.config_class(), has_eval=evaluation is not None,
                             bf16=ctx.recipe.model.dtype == "bfloat16")

    model = ctx.load_start_model(quantized=method.type == "qlora")
    if method.type == "freeze":
        freeze_bottom_layers(model, method.trainable_layers)
    peft = peft_config(method)
    extra = {}
    if kind.reference and peft is None:
        extra["ref_model"] = ctx.load_start_model()
    trainer = kind.trainer_class()(model=model, args=args, train_dataset=train,
                                   eval_dataset=evaluation, processing_class=tokenizer,
                                   peft_config=peft, callbacks=ctx.callbacks(), **extra)
    return Setup(trainer, tokenizer, train, evaluation, heldout_pairs(ctx, evaluation))


def heldout_pairs(ctx: StageContext, evaluation) -> list[dict] | None:
    """Paired held-out rows: the eval sources read as pairs (KTO trains on them unpaired), or the
    eval split of a paired stage. None when the eval data has no pairs to compare."""
    spec = ctx.stage.data
    if spec.eval:
        try:
            return ctx.rows("preference", spec.eval)
        except AlignError:
            return None
    if get_kind(ctx.stage.kind).data == "preference" and evaluation is not None:
        return evaluation.to_list()
    return None


# -- measuring -------------------------------------------------------------------------------

def heldout_margin(model, tokenizer, pairs: list[dict] | None) -> dict:
    """Mean log p(chosen) - log p(rejected) over the pairs, and the share where chosen wins."""
    if not pairs:
        return {}
    prompts = [p["prompt"] for p in pairs]
    with full_parameters(model):  # ZeRO-3 partitions the policy before training starts
        chosen = completion_logps(model, tokenizer, prompts, [p["chosen"] for p in pairs])
        rejected = completion_logps(model, tokenizer, prompts, [p["rejected"] for p in pairs])
    return {"margin": statistics.fmean(c - r for c, r in zip(chosen, rejected)),
            "accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)}


def completion_logps(model, tokenizer, prompts: list[list[dict]], completions: list[list[dict]],
                     batch_size: int = 32) -> list[float]:
    """Summed log-probability of each completion after its prompt, tokenised as TRL's DPO does
    (the completion starts where prompt-with-generation-prompt and the whole dialogue diverge)."""
    sequences = []
    for prompt, completion in zip(prompts, completions):
        head = tokenizer.apply_chat_template(prompt, tokenize=True, return_dict=True,
                                             add_generation_prompt=True)["input_ids"]
        whole = tokenizer.apply_chat_template(prompt + completion, tokenize=True,
                                              return_dict=True)["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(head, whole)) if a != b),
                     min(len(head), len(whole)))
        sequences.append((whole, start))

    was_training = model.training
    model.eval()
    out: list[float] = []
    for first in range(0, len(sequences), batch_size):
        batch = sequences[first:first + batch_size]
        input_ids, attention_mask = pad_right([s for s, _ in batch], tokenizer.pad_token_id)
        completion_mask = attention_mask.clone()
        for i, (_, start) in enumerate(batch):
            completion_mask[i, :start] = 0
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device),
                           attention_mask=attention_mask.to(model.device)).logits.float().cpu()
        out += sequence_logps(logits, input_ids, completion_mask).tolist()
    model.train(was_training)
    return out


def sequence_logps(logits, input_ids, completion_mask):
    """Sum over the masked positions of log p(token | everything before it)."""
    logps = torch.log_softmax(logits[:, :-1], dim=-1)
    token_logps = logps.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token_logps * completion_mask[:, 1:]).sum(dim=-1)
