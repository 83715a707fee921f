"""Trainer callbacks shared by the TRL-based stages."""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from align.errors import NonFiniteError


class NonFiniteLossCallback(TrainerCallback):
    """Stop at the first non-finite logged loss or gradient norm instead of training on garbage.

    Checkpoints written before the fault are kept, so the last good one can be resumed with a
    lower learning rate.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteError(
                    f"training stopped at step {state.global_step}: {key} is {value}. The last "
                    f"good checkpoint (if any) is kept in {args.output_dir}; lower the learning "
                    "rate or check the data, then rerun to resume.")


    def on_step_end(self, args, state, control, model=None, **kwargs):
        """Before a checkpoint is written, its weights must be finite: a fault between two
        logged losses must not leave a broken checkpoint to resume from."""
        if not control.should_save or model is None:
            return
        for name, param in model.named_parameters():
            if param.requires_grad and not torch.isfinite(param.detach()).all():
                raise NonFiniteError(
                    f"training stopped at step {state.global_step}: parameter {name} is not "
                    f"finite, so checkpoint-{state.global_step} was not written. The last good "
                    f"checkpoint (if any) is kept in {args.output_dir}; lower the learning rate "
                    "or check the data, then rerun to resume.")
