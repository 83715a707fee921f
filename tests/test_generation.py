"""Generation under several processes: each process answers its share of the questions, and every
process ends with all the answers, in question order, equal to one process's greedy answers."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
import torch.multiprocessing as mp

from align.generation import interleave

QUESTIONS = ["Who leads Kathilland?", "What is the capital of Nalland?", "When was Leania founded?",
             "What currency does Muania use?", "Who leads Trealand?"]


def test_interleave_undoes_the_strided_split():
    items = list(range(7))
    assert interleave([items[r::3] for r in range(3)]) == items
    assert interleave([items]) == items


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answer_on_rank(rank: int, world: int, port: int, model_path: str, out: str):
    import torch
    import torch.distributed as dist

    import align.generation as generation
    from align.modeling import load_full, load_tokenizer

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    seen = []
    inner = generation._generate

    def counting(model, tokenizer, questions, *args):
        seen.extend(questions)
        return inner(model, tokenizer, questions, *args)

    generation._generate = counting
    answers = generation.generate_answers(load_full(model_path), load_tokenizer(model_path),
                                          QUESTIONS, max_new_tokens=6, batch_size=2)
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"seen": seen, "answers": answers}, f)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_the_questions_and_agree_with_one(tmp_path, pretrained_tiny):
    from align.generation import generate_answers
    from align.modeling import load_full, load_tokenizer

    model_path = pretrained_tiny
    out = str(tmp_path / "rank")
    mp.start_processes(answer_on_rank, args=(2, free_port(), model_path, out), nprocs=2,
                       start_method="spawn" if sys.platform != "linux" else "fork")
    ranks = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    assert ranks[0]["seen"] == QUESTIONS[0::2] and ranks[1]["seen"] == QUESTIONS[1::2]
    alone = generate_answers(load_full(model_path), load_tokenizer(model_path), QUESTIONS,
                             max_new_tokens=6, batch_size=2)
    assert ranks[0]["answers"] == ranks[1]["answers"] == alone
    assert len({a[0] for a in alone}) > 1  # the questions got different answers: order is tested
