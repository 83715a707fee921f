"""Stage `rm`: a reward model on TRL's RewardTrainer, trained from the SFT model.

The SFT model (its adapter merged, exactly as the SFT stage left it) gets a one-output
sequence-classification head and learns to score the chosen response of a pair above the
rejected one (full, freeze, lora or qlora). Afterwards it scores held-out pairs, and the
artifact keeps what later stages rely on: `accuracy` (chosen scored above rejected), `margin`
(mean chosen - rejected) and `score_mean` / `score_std` over every held-out score, which PPO
uses to normalise rewards. The held-out pairs are the stage's eval data, or `eval_fraction` of
its training rows; without either the training pairs are scored and `scored_on` says so. (They
are scored by the model in memory: with qlora that is the 4-bit one, while the artifact reloads
its adapter onto unquantised weights, so its scores differ by the quantisation error.)
"""

from __future__ import annotations

import statistics

import torch
from transformers import set_seed

from align.jsonl import write_jsonl
from align.kinds import get_kind
from align.modeling import freeze_bottom_layers, peft_config, torch_dtype
from align.stages.context import StageContext
from align.stages.summary import loss_summary

SCORES_FILE = "scores.jsonl"


def run(ctx: StageContext):
    kind, method = get_kind(ctx.stage.kind), ctx.stage.method
    tokenizer = ctx.load_tokenizer()
    train, evaluation = ctx.datasets(kind.data)
    # Mixed precision follows the recipe's dtype: float32 weights are scored in float32.
    args = ctx.training_args(kind.config_class(), has_eval=evaluation is not None,
                             bf16=ctx.recipe.model.dtype == "bfloat16")

    # The new score head is drawn at random when the model loads: seed it, or reruns differ.
    set_seed(ctx.recipe.seed)
    model = ctx.load_start_model(task=kind.task, quantized=method.type == "qlora")
    # The head reads the last non-pad token, so the model must know the pad id.
    model.config.pad_token_id = tokenizer.pad_token_id
    if method.type == "freeze":
        freeze_bottom_layers(model, method.trainable_layers)
    trainer = kind.trainer_class()(model=model, args=args, train_dataset=train,
                                   eval_dataset=evaluation, processing_class=tokenizer,
                                   peft_config=peft_config(method, task=kind.task),
                                   callbacks=ctx.callbacks())
    if method.type == "qlora":
        # TRL casts every trainable parameter of a 4-bit model to bf16; LoRA layers cast their
        # input to match, the new score head (a plain Linear) does not: keep it in compute dtype.
        compute = torch_dtype(method.quantization.compute_dtype)
        for name, param in trainer.model.named_parameters():
            if param.requires_grad and "lora_" not in name:
                param.data = param.data.to(compute)
    counts = ctx.describe_training(trainer.model, train, evaluation, unit="pairs")
    trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())

    heldout = evaluation if evaluation is not None else train
    if evaluation is None:
        ctx.log("no eval pairs (data.eval or data.eval_fraction): score statistics come from the "
                "training pairs")
    chosen = score_conversations(trainer.model, tokenizer,
                                 [r["prompt"] + r["chosen"] for r in heldout])
    rejected = score_conversations(trainer.model, tokenizer,
                                   [r["prompt"] + r["rejected"] for r in heldout])
    metrics = {**loss_summary(trainer.state.log_history), **score_statistics(chosen, rejected),
               "scored_on": "eval" if evaluation is not None else "train", **counts}
    if evaluation is None:
        # Not a held-out figure: say so wherever the number is read (log, manifest, report).
        metrics["train_pair_accuracy"] = metrics["accuracy"]
        metrics["accuracy_note"] = ("measured on the training pairs (no data.eval or "
                                    "data.eval_fraction): not held-out")
    where = "held-out" if evaluation is not None else "training-pair (not held-out)"
    ctx.log(f"{where} accuracy {metrics['accuracy']:.3f}, margin {metrics['margin']:.3f}, "
            f"scores {metrics['score_mean']:.3f} ± {metrics['score_std']:.3f}")
    if ctx.is_main:
        ctx.dirs.partial.mkdir(parents=True, exist_ok=True)
        write_jsonl(ctx.dirs.partial / SCORES_FILE, (
            {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
             "score_chosen": c, "score_rejected": r}
            for row, c, r in zip(heldout, chosen, rejected)))
    return ctx.finish_model(trainer, tokenizer, metrics, task=kind.task,
                            files={"scores": SCORES_FILE})


def score_statistics(chosen: list[float], rejected: list[float]) -> dict:
    """The numbers PPO and the report read; the key names are part of the artifact's contract."""
    scores = chosen + rejected
    return {
        "accuracy": sum(c > r for c, r in zip(chosen, rejected)) / len(chosen),
        "margin": statistics.fmean(c - r for c, r in zip(chosen, rejected)),
        "score_mean": statistics.fmean(scores),
        "score_std": statistics.pstdev(scores),
        "eval_pairs": len(chosen),
    }


def score_conversations(model, tokenizer, conversations: list[list[dict]],
                        batch_size: int = 32) -> list[float]:
    """The reward of each conversation as the chat template renders it (the head's last-token
    output), the same text the RewardTrainer trained on."""
    was_training = model.training
    model.eval()
    scores: list[float] = []
    for start in range(0, len(conversations), batch_size):
        ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]
               for c in conversations[start:start + batch_size]]
        input_ids, attention_mask = pad_right(ids, tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device),
                           attention_mask=attention_mask.to(model.device)).logits
        scores += logits[:, 0].float().cpu().tolist()
    model.train(was_training)
    return scores


def pad_right(sequences: list[list[int]], pad_id: int):
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention_mask[i, :len(s)] = 1
    return input_ids, attention_mask
