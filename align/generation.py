"""Batched chat generation for probing and evaluation (greedy and sampled answers)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
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
                     progress: str | None = None, token_probs: bool = False) -> list[list]:
    """For each question, `num_samples` answers (one when greedy), decoded without specials.
    The model is made ready for generation first (align.distributed.generation_ready).

    Under several processes each generates its share of the questions and every process gets all
    the answers, in order (greedy answers are those of one process; sampled ones differ, as they
    come from other random streams). With `token_probs` each answer is a `ScoredAnswer`, what an
    abstention policy reads its confidence from."""
    rank, world = process_rank()
    if seed is not None:
        torch.manual_seed(seed + rank)
    with generation_ready(model) as ready:
        mine = _generate(ready, tokenizer, questions[rank::world], max_new_tokens, batch_size,
                         num_samples, do_sample, temperature, top_p, progress, token_probs)
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
              temperature, top_p, progress, token_probs=False) -> list[list]:
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
                          num_return_sequences=num_samples if do_sample else 1,
                          output_logits=token_probs, return_dict_in_generate=True)
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.no_grad():
                generated = model.generate(**enc, **kwargs)
            new = generated.sequences[:, enc["input_ids"].shape[1]:]
            texts = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
            per = kwargs["num_return_sequences"]
            if token_probs:
                asked = [q for q in questions[start:start + batch_size] for _ in range(per)]
                familiar = [f for f in question_familiarity(model, tokenizer, batch,
                                                            questions[start:start + batch_size])
                            for _ in range(per)]
                texts = scored_answers(tokenizer, asked, texts, generated.logits, new, familiar)
            out += [texts[i:i + per] for i in range(0, len(texts), per)]
    finally:
        tokenizer.padding_side = side
    return out


@dataclass
class ScoredAnswer:
    """An answer with the probability the model gave each of its tokens (up to, not including,
    the end of sequence), whether each token only spells words of the question (a name the
    answer repeats), and how familiar the question's least familiar word is to the model
    (`word_familiarity`). `added_words` are the answer's words the question does not hold (what
    the abstention policy's subject check reads)."""

    text: str
    token_probs: list[float]
    copied: list[bool]
    familiarity: float = 1.0
    added_words: frozenset[str] = frozenset()


def scored_answers(tokenizer, questions: list[str], texts: list[str], logits: tuple,
                   tokens: torch.Tensor, familiarity: list[float] | None = None
                   ) -> list[ScoredAnswer]:
    probs = torch.stack(logits, dim=1).float().softmax(-1)  # (batch, steps, vocab)
    chosen = probs.gather(-1, tokens[:, :probs.shape[1], None]).squeeze(-1)
    eos = tokenizer.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    out = []
    familiarity = familiarity or [1.0] * len(texts)
    for question, text, row, ids, familiar in zip(questions, texts, chosen.tolist(),
                                                  tokens.tolist(), familiarity):
        end = next((i for i, t in enumerate(ids) if t in eos), len(row))
        out.append(ScoredAnswer(text, row[:end], copied_tokens(tokenizer, ids[:end], question),
                                familiar, added_words(question, text)))
    return out


def question_familiarity(model, tokenizer, prompts: list[str], questions: list[str]
                         ) -> list[float]:
    """`word_familiarity` of each question inside its chat prompt, from one forward pass over
    the prompts (a fast tokenizer's character offsets place its tokens in the question). A
    tokenizer without offsets (not `is_fast`), or a template that rewrote the question so it is
    not found in its prompt, reads as fully familiar: there is no word to place."""
    if not getattr(tokenizer, "is_fast", False):
        return [1.0] * len(prompts)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                    return_offsets_mapping=True)
    offsets = enc.pop("offset_mapping").tolist()
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    with torch.no_grad():  # positions counted from each prompt's first real token, as generate does
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, :-1].float()
    chosen = (logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)).exp()
    out = []
    for prompt, question, spans, probs in zip(prompts, questions, offsets, chosen.tolist()):
        question = question.strip()  # what a template that trims its messages keeps
        start = prompt.rfind(question)
        out.append(1.0 if start < 0 or not question else
                   word_familiarity(prompt, spans, [1.0] + probs, start, start + len(question)))
    return out


def word_familiarity(text: str, offsets: list[list[int]], probs: list[float], start: int,
                     end: int) -> float:
    """The familiarity of the least familiar word of `text[start:end]`: the probability the
    model gave the tokens that continue a word once begun (after " V", "oum" and "ovia"). A
    name the model has read continues as it read it; a name it never read is a guess at every
    piece. Words of one token, with nothing to continue, are 1. `offsets[i]` is token i's
    character span in `text`, `probs[i]` its probability given the tokens before it."""
    surprise: dict[int, float] = {}  # word start -> log-probability of its continuing tokens
    for (a, b), p in zip(offsets, probs):
        if a >= b or a <= start or b > end or not (text[a - 1].isalnum() and text[a].isalnum()):
            continue
        word = a
        while word > start and text[word - 1].isalnum():
            word -= 1
        surprise[word] = surprise.get(word, 0.0) + math.log(max(p, 1e-45))
    return math.exp(min(surprise.values(), default=0.0))


WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    """A text's words, lowercased: the unit answers and questions are compared in."""
    return {w.lower() for w in WORD.findall(text)}


def added_words(question: str, answer: str) -> frozenset[str]:
    """The answer's words the question does not hold."""
    return frozenset(words(answer) - words(question))


def copied_tokens(tokenizer, ids: list[int], question: str) -> list[bool]:
    """For each token, whether every word it spells part of is a word of the question."""
    asked = words(question)
    ends = [len(tokenizer.decode(ids[:i + 1], skip_special_tokens=True)) for i in range(len(ids))]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    spans = [(m.start(), m.end(), m.group().lower() in asked) for m in WORD.finditer(text)]
    out, start = [], 0
    for end in ends:
        touched = [copied for a, b, copied in spans if a < end and b > start]
        out.append(bool(touched) and all(touched))
        start = end
    return out
