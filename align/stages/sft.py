"""Stages `pretrain` and `sft` on TRL's SFTTrainer.

pretrain: language modelling on a text corpus. sft: conversations, loss on assistant turns only
(when the chat template marks them). Both support every tuning method: full, freeze, lora,
qlora, ptuning, prefix.
"""

from __future__ import annotations

from align.artifacts import ModelRef
from align.stages.context import StageContext
from align.stages.summary import loss_summary


def run(ctx: StageContext):
    from trl import SFTConfig, SFTTrainer

    from align.modeling import count_trainable, freeze_bottom_layers, peft_config

    method = ctx.stage.method
    tokenizer = ctx.load_tokenizer()
    pretraining = ctx.stage.kind == "pretrain"
    train, evaluation = ctx.datasets("language_modeling" if pretraining else "sft")

    defaults = {"dataset_text_field": "text"} if pretraining else {}
    if not pretraining and "assistant_only_loss" not in ctx.stage.args:
        # Loss on the answers only, when the chat template marks assistant turns.
        defaults["assistant_only_loss"] = "generation" in (tokenizer.chat_template or "")
    args = ctx.training_args(SFTConfig, has_eval=evaluation is not None, **defaults)

    model = ctx.load_start_model(quantized=method.type == "qlora")
    if method.type == "freeze":
        freeze_bottom_layers(model, method.trainable_layers)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                         processing_class=tokenizer, peft_config=peft_config(method),
                         callbacks=ctx.callbacks())
    trainable, total = count_trainable(trainer.model)
    ctx.log(f"{method.type}: {trainable:,} of {total:,} parameters train; "
            f"{len(train)} train rows" + (f", {len(evaluation)} eval rows" if evaluation else ""))
    trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())

    ctx.save_trainer_model(trainer, tokenizer)
    metrics = {**loss_summary(trainer.state.log_history),
               **ctx.replica_check(trainer.model, **ctx.trainer_decisions(trainer))}
    metrics.update(trainable_parameters=trainable, total_parameters=total, train_rows=len(train))
    adapter = method.type not in ("full", "freeze")
    ref = ModelRef(type="adapter" if adapter else "full", path="model",
                   base=ctx.adapter_base() if adapter else None, root=ctx.root_model(),
                   method=method.type)
    return ctx.finish(model=ref, tokenizer="model", metrics=metrics,
                      history=trainer.state.log_history)

