"""Generation under two processes: every process answering every question (what the idk probe and
the evaluation did before) against each answering its share (`generate_answers` now), with one
process as the reference. Writes benchmarks/generation.md.

    .venv/bin/python scripts/bench_generation.py --questions 256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, machine  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, mode: str, args, out: str):
    import torch
    import torch.distributed as dist

    import align.generation as generation
    from align.modeling import load_full, load_tokenizer

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model, tokenizer = load_full(args.model), load_tokenizer(args.model)
    questions = json.loads(Path(args.questions_file).read_text())
    start = time.perf_counter()
    if mode == "every process, all questions":
        generation._generate(model, tokenizer, questions, args.max_new_tokens, args.batch_size, 1,
                             False, 1.0, 1.0, None)
    else:
        generation.generate_answers(model, tokenizer, questions, max_new_tokens=args.max_new_tokens,
                                    batch_size=args.batch_size)
    Path(f"{out}.{rank}").write_text(str(time.perf_counter() - start))
    if world > 1:
        dist.destroy_process_group()


def timed(mode: str, world: int, args) -> float:
    """Seconds until the last process has its answers."""
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/t"
        mp.start_processes(worker, args=(world, free_port(), mode, args, out), nprocs=world,
                           start_method="fork")
        return max(float(Path(f"{out}.{r}").read_text()) for r in range(world))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "generation.md"))
    args = p.parse_args()

    from align.data.world import WorldConfig, build_world, make_splits
    from align.tiny import TinyConfig, build_tiny

    config = TinyConfig(world=WorldConfig(n_entities=160))
    args.model = str(build_tiny(config))
    rows = make_splits(build_world(config.world))["qa_eval"]
    questions = [r["question"] for r in rows][:args.questions]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(questions, f)
    args.questions_file = f.name

    modes = [("one process", 1), ("every process, all questions", 2), ("sharded", 2)]
    times: dict[str, list[float]] = {m: [] for m, _ in modes}
    for repeat in range(args.repeats):
        for mode, world in (modes if repeat % 2 == 0 else modes[::-1]):
            times[mode].append(timed(mode, world, args))
            print(f"repeat {repeat + 1}: {mode}: {times[mode][-1]:.1f} s", flush=True)

    median = {m: statistics.median(t) for m, t in times.items()}
    rows_md = "\n".join(f"| {m} | {w} | {' / '.join(f'{t:.1f}' for t in times[m])} | {median[m]:.1f} | "
                        f"{median['one process'] / median[m]:.2f}x |" for m, w in modes)
    text = f"""# Generation under two processes: all questions on every process vs a share each (cpu)

Date: {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} (UTC). Machine: {machine()}

Command: `.venv/bin/python scripts/bench_generation.py --questions {args.questions} --max-new-tokens {args.max_new_tokens} --batch-size {args.batch_size} --repeats {args.repeats}`

The embedded tiny model (random init, so every answer runs to {args.max_new_tokens} new tokens), {len(questions)} questions of the world's qa_eval, greedy, batch {args.batch_size}, one torch thread per process, gloo. Time: until the last process has every answer (repeats alternate the order of the modes).

| mode | processes | seconds per repeat | median | speed vs one process |
|---|---:|---|---:|---:|
{rows_md}

**A share each: {median['every process, all questions'] / median['sharded']:.2f}x faster than every process answering every question.**
"""
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
