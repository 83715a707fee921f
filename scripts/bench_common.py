"""Shared pieces of the benchmark scripts: model sizes built from a config, synthetic data,
a per-step clock, the machine description.

Models are built from a config with random weights (no download) and saved once per size, so
every benchmark process loads the same weights from disk exactly as a stage would. The
tokenizer is the embedded tiny model's (a 1024-token BPE): a larger model keeps its own
vocabulary size, so its embedding and output layers cost what they cost in the real model;
the tokenizer only ever emits ids below 1024.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (config class, settings). "0.5b" has Qwen2.5-0.5B's shape; "100m" is a GPT-2-sized
# Llama; "small" is for quick CPU runs.
PRESETS: dict[str, tuple[str, dict]] = {
    "small": ("LlamaConfig", dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=8192,
                                  tie_word_embeddings=True)),
    "100m": ("LlamaConfig", dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                                 num_attention_heads=12, num_key_value_heads=4, vocab_size=32000,
                                 tie_word_embeddings=True)),
    "0.5b": ("Qwen2Config", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                 num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                 tie_word_embeddings=True, rope_theta=1000000.0)),
}


def tiny_tokenizer_dir() -> Path:
    """The embedded tiny model's directory (built and cached by align on first use)."""
    from align.tiny import TinyConfig, build_tiny

    return Path(build_tiny(TinyConfig()))


def build_model_dir(preset: str, root: Path, max_length: int, tokenizer_dir: Path | None = None) -> Path:
    """A random-init model of `preset` plus a tokenizer, saved under root (cached). The tokenizer
    is the one in tokenizer_dir (a tiny model built for another world, say), by default the
    embedded tiny model's."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = root / (f"model-{preset}" if tokenizer_dir is None else f"model-{preset}-{Path(tokenizer_dir).name}")
    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir or tiny_tokenizer_dir()))
    cls_name, settings = PRESETS[preset]
    config = getattr(transformers, cls_name)(
        **settings, max_position_embeddings=max(2048, max_length), bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tmp = out.with_suffix(".tmp")
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    tmp.rename(out)
    return out


def count_params(model_dir: Path) -> dict:
    """Parameter counts from the config: total, and the part that is an embedding lookup."""
    cfg = json.loads((model_dir / "config.json").read_text())
    d, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = d // heads
    attn = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d
    if cfg.get("model_type") == "qwen2":
        attn += heads * head_dim + 2 * kv * head_dim  # q/k/v biases
    mlp = 3 * d * cfg["intermediate_size"]
    per_layer = attn + mlp + 2 * d
    embed = vocab * d
    head = 0 if cfg.get("tie_word_embeddings") else vocab * d
    return {"total": embed + head + layers * per_layer + d, "embedding": embed, "layers": layers,
            "hidden": d, "vocab": vocab}


def flops_per_token(params: dict, mean_sq_over_mean_len: float) -> float:
    """Training FLOPs per token: 6 per weight used in a matrix product (forward + backward; the
    input embedding is a lookup, the output head a matrix product even when tied), plus
    attention scores and values, 12 * layers * hidden * context (the PaLM paper's count), with
    context averaged over tokens (E[len^2] / E[len]: each sequence attends only to itself)."""
    matmul = params["total"] - params["embedding"] + params["vocab"] * params["hidden"]
    return 6 * matmul + 12 * params["layers"] * params["hidden"] * mean_sq_over_mean_len


# -- synthetic conversations with widely varying lengths ----------------------------------------

def world_sentences() -> list[str]:
    from align.data.world import WorldConfig, build_world, make_splits

    corpus = make_splits(build_world(WorldConfig()))["corpus"]
    out = []
    for row in corpus:
        out += [s.strip() + "." for s in row["text"].split(".") if s.strip()]
    return out


def make_conversations(n: int, min_len: int, max_len: int, seed: int, tokenizer) -> list[dict]:
    """n conversations whose tokenized length is log-uniform in [min_len, max_len]: a short
    question, then an answer cut from a stream of world sentences. Every row fits max_len, so
    padding-free batches (which do not truncate) see the same tokens as padded ones."""
    rng = random.Random(seed)
    sentences = world_sentences()
    rng.shuffle(sentences)
    stream = tokenizer(" ".join(sentences * 4), add_special_tokens=False)["input_ids"]

    def length(msgs):
        return len(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])

    rows = []
    for _ in range(n):
        target = int(math.exp(rng.uniform(math.log(min_len), math.log(max_len))))
        question = rng.choice(sentences).replace(".", "?")
        overhead = length([{"role": "user", "content": question}, {"role": "assistant", "content": ""}])
        take = max(2, target - overhead)
        start = rng.randrange(0, len(stream) - max_len)
        while True:
            answer = tokenizer.decode(stream[start:start + take]).strip()
            msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            excess = length(msgs) - max_len
            if excess <= 0 or take <= 2:
                break
            take = max(2, take - excess)
        if not answer:  # align refuses empty turns; a stretch of whitespace decodes to ""
            msgs[1]["content"] = rng.choice(sentences)
        rows.append({"messages": msgs})
    return rows


def length_stats(rows: list[dict], tokenizer) -> dict:
    lens = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
            for r in rows]
    lens_sorted = sorted(lens)
    mean = sum(lens) / len(lens)
    return {"n": len(lens), "min": lens_sorted[0], "median": lens_sorted[len(lens) // 2], "max": lens_sorted[-1],
            "mean": mean, "mean_sq_over_mean": sum(x * x for x in lens) / sum(lens)}


# -- timing --------------------------------------------------------------------------------------

def step_clock():
    """A TrainerCallback recording (wall time, tokens seen so far) at every logged step.

    TRL's SFTTrainer logs `num_tokens` (non-padding tokens, all processes) with each loss; with
    logging_steps=1 and the loss read back every step, each record falls after the step's work
    has finished on the device as well."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.records: list[tuple[int, float, float, float]] = []
            self.train_runtime: float | None = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "train_runtime" in logs:
                self.train_runtime = float(logs["train_runtime"])
            if logs and "num_tokens" in logs and "loss" in logs:
                self.records.append((state.global_step, time.perf_counter(), float(logs["num_tokens"]),
                                     time.process_time()))

    return StepClock()


def steady_rate(records: list, warmup: int, clock: int = 1) -> tuple[float, int]:
    """Tokens per second between the end of step `warmup` and the last step, and the steps timed.
    clock 1: wall-clock time; clock 3: the process's CPU time (steadier on a busy CPU)."""
    kept = [r for r in records if r[0] >= warmup]
    if len(kept) < 2:
        kept = records
    first, last = kept[0], kept[-1]
    return (last[2] - first[2]) / (last[clock] - first[clock]), last[0] - first[0]


# -- processes and machine ------------------------------------------------------------------------

def run_worker(script: Path, args: list[str], log: Path, env_extra: dict | None = None) -> tuple[int, float]:
    """Run `script --worker ...` in a fresh process; (exit code, wall seconds)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=path,
               **(env_extra or {}))
    start = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run([sys.executable, str(script), *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env).returncode
    return code, time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = "load average %.2f, %.2f, %.2f" % os.getloadavg()
    text = f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()} ({load} at the start)"
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            text += f"; GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    except Exception:  # noqa: BLE001 - description only
        pass
    return text


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def script_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark's command line, its module docstring as the help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def preset_argument(parser: argparse.ArgumentParser, default_preset: str, tiny: bool = False,
                    help: str = "model size") -> None:
    """--preset: one of PRESETS, or with tiny=True also "tiny", the embedded tiny model."""
    parser.add_argument("--preset", choices=(["tiny"] if tiny else []) + sorted(PRESETS), default=default_preset,
                        help=f"{help} (default {default_preset})")


def model_arguments(parser: argparse.ArgumentParser, default_preset: str, dtype_help: str) -> None:
    preset_argument(parser, default_preset)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu, or cuda: one GPU")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help=dtype_help)


def worker_arguments(parser: argparse.ArgumentParser, choices=None) -> None:
    """The hidden flags with which a benchmark runs one of its variants in a child process."""
    parser.add_argument("--worker", choices=choices, help=argparse.SUPPRESS)
    parser.add_argument("--setup-file", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def run_meta(script: str, **extra) -> dict:
    """When, where and how a benchmark ran, for its report's header."""
    return {"started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "host": machine(), "versions": versions(), **extra,
            "command": " ".join(["python", f"scripts/{script}", *sys.argv[1:]])}
