"""Stages `pretrain` and `sft` on TRL's SFTTrainer.

pretrain: language modelling on a text corpus. sft: conversations, loss on assistant turns only
(when the chat template marks them). Both support every tuning method: full, freeze, lora,
qlora, ptuning, prefix.
"""

from __future__ import annotations

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
    if not pretraining and "assistant_only_loss" not in ctx.stage.args:
        # Loss on the answers only, when the chat template marks assistant turns.
        defaults["assistant_only_loss"] = "generation" in (tokenizer.chat_template or "")
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
