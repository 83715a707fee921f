"""Generation with whatever the accelerate profile did to a model.

The idk probe and the evaluation generate with a plainly loaded model on every process, each
process its share of the questions (`generation.generate_answers`). Two things can stand in the
way, and `generation_ready` handles both:

- the model sits on the CPU while the process has a GPU (models load on the CPU): it is moved
  to the process's device for generation (not when quantised or dispatched by a device map,
  which place themselves);
- its parameters are partitioned by DeepSpeed ZeRO-3 (each rank holds a shard; a model loads
  that way when a ZeRO-3 config with `zero3_init_flag` is active in the process): they are
  gathered for the duration with `deepspeed.zero.GatheredParameters`, a collective every rank
  enters and leaves together (what each generates in between is its own).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from accelerate import PartialState


def process_state():
    """accelerate's process state; on a machine without GPUs, several processes use gloo.

    The first call fixes the state for the process, so it must come before any Trainer builds
    its own (which would otherwise see `accelerate launch --multi_gpu` without CUDA as one
    process). It is the one way align asks which rank it is.
    """
    return PartialState(cpu=not torch.cuda.is_available())


def process_rank() -> tuple[int, int]:
    """(this process's rank, number of processes) in the process group collectives run over:
    the one accelerate's state initialised, or one a caller set up itself; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_sharded(state) -> bool:
    """Whether ranks hold different parts of the parameters (ZeRO-3, FSDP)."""
    kind = str(getattr(state, "distributed_type", "NO")).rsplit(".", 1)[-1]
    if kind == "FSDP":
        return True
    # `accelerate launch` exports the ZeRO stage of a DeepSpeed profile.
    return kind == "DEEPSPEED" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"


def is_partitioned(model) -> bool:
    """Whether some parameter is a ZeRO-3 partitioned one (DeepSpeed tags them with ds_id)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def target_device(model):
    """Where generation should run: the process's GPU for a model left on the CPU, else None."""
    if not torch.cuda.is_available() or getattr(model, "hf_device_map", None):
        return None
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return None
    if next(model.parameters()).device.type != "cpu":
        return None
    return process_state().device


@contextmanager
def full_parameters(model):
    """Whole parameters on every rank for the duration: gathered when ZeRO-3 partitioned them
    (a collective), else nothing to do. Forward passes outside a DeepSpeed engine (before
    training starts, or by hand) need it: a partitioned parameter is an empty tensor."""
    if not is_partitioned(model):
        yield model
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield model


@contextmanager
def generation_ready(model):
    """`with generation_ready(model) as model:` generate; see the module docstring."""
    if is_partitioned(model):
        with full_parameters(model):
            yield model
        return
    device = target_device(model)
    if device is not None:
        model = model.to(device)
    yield model
