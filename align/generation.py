"""Batched chat generation for probing and evaluation (greedy and sampled answers)."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from align.distributed import generation_ready, process_rank


def chat_prompts(tokenizer, questions: Iterable[str]) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in questions]


def generate_answers(model, tokenizer, questions: list[str], *, max_new_tokens: int = 32,
                     batch_size: int = 32, num_samples: int = 1, do_sample: bool = False,
                     temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                     progress: str | None = None) -> list[list[str]]:
    """For each question, `num_samples` answers (one when greedy), decoded without specials.
    The model is made ready for generation first (align.distributed.generation_ready).

    Under several processes each generates its share of the questions and every process gets all
    the answers, in order (greedy answers are those of one process; sampled ones differ, as they
    come from other random streams)."""
    rank, world = process_rank()
    if seed is not None:
        torch.manual_seed(seed + rank)
    with generation_ready(model) as ready:
        mine = _generate(ready, tokenizer, questions[rank::world], max_new_tokens, batch_size,
                         num_samples, do_sample, temperature, top_p, progress)
    return mine if world == 1 else interleave(all_gather(mine))


def all_gather(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def interleave(shares: list[list]) -> list:
    """Undo `items[rank::world]`: share r holds items r, r + world, r + 2 * world, ..."""
    world = len(shares)
    return [shares[i % world][i // world] for i in range(sum(map(len, shares)))]


def _generate(model, tokenizer, questions, max_new_tokens, batch_size, num_samples, do_sample,
              temperature, top_p, progress) -> list[list[str]]:
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the right edge
    model.eval()
    device = next(model.parameters()).device
    out: list[list[str]] = []
    batches = range(0, len(questions), batch_size)
    try:
        for start in tqdm(batches, desc=progress, disable=progress is None, leave=False):
            batch = chat_prompts(tokenizer, questions[start:start + batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          num_return_sequences=num_samples if do_sample else 1)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.no_grad():
                generated = model.generate(**enc, **kwargs)
            texts = tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1]:],
                                           skip_special_tokens=True)
            per = kwargs["num_return_sequences"]
            out += [[t.strip() for t in texts[i:i + per]] for i in range(0, len(texts), per)]
    finally:
        tokenizer.padding_side = side
    return out
