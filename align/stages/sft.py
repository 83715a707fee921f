"""Stages `pretrain` and `sft` on TRL's SFTTrainer.

pretrain: language modelling on a text corpus. sft: conversations, loss on assistant turns only
(when the chat template marks them with `{% generation %}`; otherwise on the last assistant turn
of each conversation, as TRL's prompt/completion rows with `completion_only_loss`). Both support every tuning method: full, freeze, lora,
qlora, ptuning, prefix.
"""

from __future__ import annotations

import re

from align.errors import AlignError
from align.kinds import get_kind
from align.modeling import freeze_bottom_layers, peft_config
from align.stages.context import StageContext
from align.stages.summary import loss_summary


def run(ctx: StageContext):
    kind, method = get_kind(ctx.stage.kind), ctx.stage.method
    tokenizer = ctx.load_tokenizer()
    pretraining = ctx.stage.kind == "pretrain"
    train, evaluation = ctx.datasets(kind.data)

    defaults = {"dataset_text_field": "text"} if pretraining else {}
    if not pretraining:
        train, evaluation, defaults = answer_only_loss(ctx, tokenizer, train, evaluation)
    args = ctx.training_args(kind.config_class(), has_eval=evaluation is not None, **defaults)

    model = ctx.load_start_model(quantized=method.type == "qlora")
    if method.type == "freeze":
        freeze_bottom_layers(model, method.trainable_layers)
    trainer = kind.trainer_class()(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                                   processing_class=tokenizer, peft_config=peft_config(method),
                                   callbacks=ctx.callbacks())
    counts = ctx.describe_training(trainer.model, train, evaluation)
    trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    return ctx.finish_model(trainer, tokenizer, {**loss_summary(trainer.state.log_history), **counts})


GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def marks_generation(template: str | None) -> bool:
    """Whether a chat template wraps assistant turns in `{% generation %}` (what TRL's
    `assistant_only_loss` needs); `add_generation_prompt` alone does not count."""
    return bool(template) and bool(GENERATION_BLOCK.search(template))


def answer_only_loss(ctx: StageContext, tokenizer, train, evaluation):
    """(train, eval, SFTConfig defaults) so the loss falls on answers only.

    With `{% generation %}` markers: `assistant_only_loss`. Without: every conversation that
    ends in an assistant turn becomes a prompt/completion row (the dialogue before it, that
    turn), trained with `completion_only_loss`. `assistant_only_loss: true` on such a template
    is refused before anything loads; `assistant_only_loss: false` trains on whole dialogues."""
    args = ctx.stage.args
    marked = marks_generation(tokenizer.chat_template)
    if "assistant_only_loss" in args:
        if args["assistant_only_loss"] and not marked:
            raise AlignError(
                f"{ctx.recipe.source}: 'stages.{ctx.name}.args.assistant_only_loss' is true but "
                "the chat template has no {% generation %} block marking assistant turns, which "
                "TRL needs for it. Remove the key (align then trains on each conversation's last "
                "answer as a prompt/completion row), set it to false (loss on the whole "
                "dialogue), or use a template with {% generation %} ... {% endgeneration %} "
                "around assistant turns.")
        return train, evaluation, {}
    if marked:
        return train, evaluation, {"assistant_only_loss": True}
    if "completion_only_loss" in args and not args["completion_only_loss"]:
        return train, evaluation, {}
    ctx.log("the chat template has no {% generation %} markers: training on each "
            "conversation's last assistant turn (prompt/completion rows, completion_only_loss)")
    return (to_prompt_completion(train), to_prompt_completion(evaluation),
            {"completion_only_loss": True})


def to_prompt_completion(dataset):
    if dataset is None:
        return None

    def split(row):
        messages = row["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise AlignError("an SFT conversation does not end with an assistant turn, so it "
                             "has no completion to train on.")
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    return dataset.map(split, remove_columns=dataset.column_names)
