"""Benchmark: SFT throughput with padding, TRL's padding-free batching and packing; and the
cost of running SFT through align's stage rather than a bare SFTTrainer script.

One model (built from a config, random weights, saved once) and one data set of conversations
whose lengths are log-uniform between --min-len and --max-len tokens. Every run is its own
process:

  padding       SFTTrainer, batches padded to their longest row (TRL's default)
  padding_free  SFTTrainer with padding_free=True: each batch is one flat row, no pad tokens
  packing       SFTTrainer with packing=True (best-fit decreasing into --max-len rows); its
                batch size is scaled down so a step holds about as many tokens as the others
  bare          the `padding` script, also saving the model and tokenizer at the end
  align         the same settings as `bare`, run as an align recipe (one sft stage, full method)

Throughput is non-padding tokens per second over the steps after --warmup (TRL's own
`num_tokens` count, read at every step). The align/bare pair runs --repeats times, alternating
which goes first. Nothing is asserted: the report gives ratios.

    nice -n 10 .venv/bin/python scripts/bench_sft.py --max-len 512 --batch-size 4 --steps 10 \
        --warmup 2 --rows 200 --repeats 3                            # CPU, small model (sft.md)
    python scripts/bench_sft.py --preset 0.5b --device cuda --steps 30 --warmup 8 --batch-size 8 \
        --max-len 2048 --rows 600 --variants padding padding_free packing \
        packing@flex_attention padding_free@flex_attention           # one GPU, 0.5B (sft.md)

--preset small|100m|0.5b picks the model (0.5b: Qwen2.5-0.5B's shape). On a GPU the report also
gives model FLOPs utilisation against --peak-tflops (default: 989, H100 SXM dense bf16).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

VARIANTS = ("padding", "padding_free", "packing")


# -- workers ---------------------------------------------------------------------------------------

def sft_args(setup: dict, variant: str) -> dict:
    """SFTConfig settings shared by every run (and by the align recipe), plus the variant's own."""
    cuda = setup["device"] == "cuda"
    args = dict(max_steps=setup["steps"], per_device_train_batch_size=setup["batch_size"],
                learning_rate=1e-4, logging_steps=1, save_strategy="no", report_to="none",
                disable_tqdm=True, max_length=setup["max_len"], assistant_only_loss=True,
                dataloader_num_workers=0, bf16=cuda and setup["dtype"] == "bfloat16",
                activation_checkpointing=setup["checkpointing"], max_grad_norm=1.0)
    if variant == "padding_free":
        # Rows are built to fit max_length; TRL refuses a max_length it would not enforce here.
        args.update(padding_free=True, max_length=None)
    elif variant == "packing":
        args.update(packing=True, per_device_train_batch_size=setup["packing_batch_size"])
    return args


def worker_trainer(setup: dict, variant: str, out: Path) -> dict:
    """A bare SFTTrainer script (what a user writes without align). `variant@impl` loads the
    model with attn_implementation=impl (e.g. flex_attention, which runs packed rows as
    separate sequences)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(setup["model_dir"])
    variant, _, attn = variant.partition("@")
    model = AutoModelForCausalLM.from_pretrained(setup["model_dir"], dtype=getattr(torch, setup["dtype"]),
                                                 attn_implementation=attn or "sdpa")
    rows = [json.loads(line) for line in Path(setup["data"]).read_text().splitlines()]
    train = Dataset.from_list(rows)
    args = SFTConfig(output_dir=str(out / "trainer"), seed=setup["seed"], use_cpu=setup["device"] == "cpu",
                     **sft_args(setup, "padding" if variant == "bare" else variant))
    clock = bc.step_clock()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         callbacks=[clock])
    trainer.train()
    if variant == "bare":
        trainer.save_model(str(out / "model"))
        tokenizer.save_pretrained(str(out / "model"))
    return {"records": clock.records, "train_runtime": clock.train_runtime,
            "stage_wall": time.perf_counter() - started}


def worker_align(setup: dict, out: Path) -> dict:
    """The same run as an align recipe: one sft stage, method full, the same SFTConfig args."""
    import yaml

    import align.stages.context as context
    from align.runner import run_recipe

    clock = bc.step_clock()
    own = context.StageContext.callbacks
    context.StageContext.callbacks = lambda self: own(self) + [clock]  # observe; changes nothing
    args = sft_args(setup, "padding")
    args.pop("save_strategy")  # align checkpoints every save_steps; past max_steps it never does
    args["save_steps"] = setup["steps"] + 1
    args.pop("use_cpu", None)
    recipe = {"name": "bench-sft", "seed": setup["seed"], "run_dir": str(out / "run"), "accelerate": "cpu",
              "model": {"name_or_path": setup["model_dir"], "dtype": setup["dtype"]},
              "stages": {"sft": {"kind": "sft", "data": {"train": [{"path": setup["data"]}]},
                                 "method": {"type": "full"}, "args": args}}}
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    started = time.perf_counter()
    artifacts = run_recipe(str(path))
    stage_wall = time.perf_counter() - started
    return {"records": clock.records, "train_runtime": clock.train_runtime, "stage_wall": stage_wall,
            "manifest_steps": artifacts["sft"].manifest.metrics.get("steps")}


def worker(variant: str, setup_file: Path, result: Path) -> None:
    import torch

    setup = json.loads(setup_file.read_text())
    if setup["device"] == "cpu":
        torch.set_num_threads(setup["threads"])
    out = result.parent / f"work-{result.stem}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = worker_align(setup, out) if variant == "align" else worker_trainer(setup, variant, out)
    rate, steps = bc.steady_rate(data["records"], setup["warmup"])
    data["tokens_per_cpu_s"] = bc.steady_rate(data["records"], setup["warmup"], clock=3)[0]
    data.update(variant=variant, tokens_per_s=rate, timed_steps=steps,
                tokens=data["records"][-1][2] if data["records"] else 0)
    if torch.cuda.is_available() and setup["device"] == "cuda":
        data["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result.write_text(json.dumps(data))
    shutil.rmtree(out, ignore_errors=True)


# -- driver ----------------------------------------------------------------------------------------

def prepare(args, workdir: Path) -> dict:
    from transformers import AutoTokenizer

    model_dir = bc.build_model_dir(args.preset, workdir.parent, args.max_len)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = bc.make_conversations(args.rows, args.min_len, args.max_len, args.seed, tokenizer)
    data = workdir / f"data-{args.rows}-{args.min_len}-{args.max_len}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = bc.length_stats(rows, tokenizer)
    packing_batch = max(1, round(args.batch_size * stats["mean"] / args.max_len))
    return {"model_dir": str(model_dir), "data": str(data), "lengths": stats, "preset": args.preset,
            "params": bc.count_params(model_dir), "device": args.device, "dtype": args.dtype,
            "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size,
            "packing_batch_size": packing_batch, "max_len": args.max_len, "seed": args.seed,
            "threads": args.threads, "checkpointing": args.checkpointing}


def run_one(variant: str, setup_file: Path, workdir: Path, tag: str) -> dict | str:
    result = workdir / f"result-{tag}.json"
    result.unlink(missing_ok=True)
    log = workdir / f"log-{tag}.txt"
    code, wall = bc.run_worker(Path(__file__).resolve(), ["--worker", variant, "--setup-file", str(setup_file),
                                                          "--result", str(result)], log)
    if code != 0 or not result.exists():
        return f"{variant}: exit code {code}; end of {log}:\n" + log.read_text()[-2000:]
    data = json.loads(result.read_text())
    data["process_wall"] = wall
    print(f"{tag}: {data['tokens_per_s']:.0f} tokens/s over {data['timed_steps']} steps, "
          f"stage {data['stage_wall']:.1f}s, process {wall:.1f}s", flush=True)
    return data


def median_step_rate(r: dict, warmup: int) -> float:
    """Median over timed steps of (tokens in the step / the step's time): unlike the mean rate, not
    moved by a rare slow step (a collection, a recompilation)."""
    kept = [x for x in r["records"] if x[0] >= warmup]
    rates = [(b[2] - a[2]) / (b[1] - a[1]) for a, b in zip(kept, kept[1:]) if b[1] > a[1]]
    return statistics.median(rates) if rates else float("nan")


def variant_name(text: str) -> str:
    if text.partition("@")[0] not in VARIANTS:
        raise argparse.ArgumentTypeError(f"{text!r}: a variant is one of {', '.join(VARIANTS)}, optionally @ATTN")
    return text


def mfu(setup: dict, tokens_per_s: float, peak_tflops: float) -> float:
    per_token = bc.flops_per_token(setup["params"], setup["lengths"]["mean_sq_over_mean"])
    return tokens_per_s * per_token / (peak_tflops * 1e12)


def write_report(path: Path, setup: dict, runs: dict, meta: dict) -> None:
    gpu = setup["device"] == "cuda"
    p, lens = setup["params"], setup["lengths"]
    per_token = bc.flops_per_token(p, lens["mean_sq_over_mean"])
    lines = [f"# SFT throughput: padding, padding-free, packing; align vs a bare SFTTrainer ({setup['device']})", "",
             f"Date: {meta['started']} (UTC). Machine: {meta['host']}.", "",
             f"Command: `{meta['command']}`", "",
             f"Libraries: {meta['versions']}.", "",
             "| setting | value |", "|---|---|",
             f"| model | `{setup['preset']}` preset built from a config (scripts/bench_common.py), random init, "
             f"{p['total'] / 1e6:.1f}M parameters ({p['layers']} layers, hidden {p['hidden']}, vocab {p['vocab']}), "
             f"weights in {setup['dtype']} |",
             f"| data | {lens['n']} conversations, token lengths log-uniform: min {lens['min']}, median "
             f"{lens['median']}, mean {lens['mean']:.0f}, max {lens['max']} |",
             f"| steps | {setup['steps']} (throughput timed after step {setup['warmup']}) |",
             f"| batch | {setup['batch_size']} rows (packing: {setup['packing_batch_size']} packed rows of "
             f"{setup['max_len']} tokens, about as many tokens per step) |",
             f"| other | max_length {setup['max_len']}, assistant_only_loss, AdamW lr 1e-4, "
             f"bf16 {'on' if gpu and setup['dtype'] == 'bfloat16' else 'off'}, activation checkpointing "
             f"{'on' if setup['checkpointing'] else 'off'}, sdpa attention unless the variant names another (NAME@ATTN)"
             + (f", {setup['threads']} torch threads" if not gpu else "") + " |", ""]
    header = ("| variant | tokens/s (non-padding), over the timed steps | ratio to padding | median of per-step "
              "tokens/s | ratio to padding |")
    sep = "|---|---:|---:|---:|---:|"
    if not gpu:
        header += " tokens per CPU second | ratio to padding |"
        sep += "---:|---:|"
    if gpu:
        header += " model TFLOP/s (median step) | MFU (median step) | peak GPU memory |"
        sep += "---:|---:|---:|"
    lines += ["## Padding vs padding-free vs packing", "", header, sep]
    base = runs.get("padding")
    for v in [k for k in runs if k != "pairs"]:
        r = runs.get(v)
        if not isinstance(r, dict):
            lines.append(f"| {v} | failed | | | |" + (" | | |" if gpu else ""))
            continue
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if isinstance(base, dict) else float("nan")
        med = median_step_rate(r, setup["warmup"])
        med_ratio = med / median_step_rate(base, setup["warmup"]) if isinstance(base, dict) else float("nan")
        row = f"| {v} | {r['tokens_per_s']:,.0f} | {ratio:.2f}x | {med:,.0f} | {med_ratio:.2f}x |"
        if not gpu and "tokens_per_cpu_s" in r:
            cpu_ratio = (r["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]) if isinstance(base, dict) else float("nan")
            row += f" {r['tokens_per_cpu_s']:,.0f} | {cpu_ratio:.2f}x |"
        if gpu:
            row += (f" {r['tokens_per_s'] * per_token / 1e12:.0f} ({med * per_token / 1e12:.0f}) | "
                    f"{mfu(setup, r['tokens_per_s'], meta['peak_tflops']):.1%} "
                    f"({mfu(setup, med, meta['peak_tflops']):.1%}) | {r.get('peak_gpu_gib', 0):.1f} GiB |")
        lines.append(row)
    lines.append("")
    if gpu:
        lines += [f"MFU = non-padding tokens/s x {per_token / 1e9:.2f} GFLOP per token / {meta['peak_tflops']:.0f} "
                  "TFLOP/s. FLOPs per token: 6 x the weights used in matrix products (the output head counted, "
                  "the input embedding lookup not) + 12 x layers x hidden x E[len^2]/E[len] for attention "
                  f"(each conversation attends to itself only; E[len^2]/E[len] = {lens['mean_sq_over_mean']:.0f}). "
                  "Padding tokens are not counted as useful work, so MFU falls with the padding a variant "
                  f"computes. The peak is {meta['peak_tflops']:.0f} TFLOP/s "
                  "(H100 SXM dense bf16 datasheet figure; a large bf16 matrix product measures about 800 here).",
                  ""]
    pairs = runs.get("pairs", [])
    lines += ["## align's sft stage vs a bare SFTTrainer script", "",
              "Same model, data and SFTConfig settings (the `padding` variant); the bare script also saves the "
              "model and tokenizer, as the stage does. Neither writes a checkpoint (save_steps past max_steps). "
              "*stage* is from loading the model to the saved result (align: the whole `run_recipe` call, with "
              "its validation, hashing, data conversion and manifest); *process* adds Python start-up and imports.",
              "", "| run | align tokens/s | bare tokens/s | align/bare throughput | align/bare throughput per CPU s "
              "| align/bare train_runtime | align/bare stage time | align/bare process time |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ratios, cpu_ratios = [], []
    for i, (a, b) in enumerate(pairs):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            lines.append(f"| {i + 1} | failed | | | | | | |")
            continue
        tr = (a["train_runtime"] / b["train_runtime"]) if a.get("train_runtime") else float("nan")
        ratios.append(a["tokens_per_s"] / b["tokens_per_s"])
        cpu = (a["tokens_per_cpu_s"] / b["tokens_per_cpu_s"]) if "tokens_per_cpu_s" in a else float("nan")
        cpu_ratios.append(cpu)
        lines.append(f"| {i + 1} | {a['tokens_per_s']:,.0f} | {b['tokens_per_s']:,.0f} | {ratios[-1]:.3f} | {cpu:.3f} | {tr:.3f} | "
                     f"{a['stage_wall'] / b['stage_wall']:.3f} | {a['process_wall'] / b['process_wall']:.3f} |")
    lines.append("")
    if ratios:
        med = statistics.median(ratios)
        judged = statistics.median(cpu_ratios) if not gpu and cpu_ratios and cpu_ratios[0] == cpu_ratios[0] else med
        what = "per CPU second" if judged is not med else "per wall-clock second"
        lines += [f"**align's throughput {what} is {judged:.3f}x the bare script's (median of {len(ratios)}; "
                  f"wall-clock: {med:.3f}x); overhead {(1 / judged - 1):+.1%}. Goal (within 5%): "
                  f"{'met' if judged >= 1 / 1.05 else 'not met'}.**", ""]
    for name, r in [*runs.items(), *[(f"pair {i}", x) for i, p in enumerate(pairs) for x in p]]:
        if isinstance(r, str):
            lines += [f"{name} failed:", "", "```", r, "```", ""]
    if not gpu:
        lines += ["On a shared CPU, wall-clock figures move with the load of other jobs; the align/bare pairs "
                  "alternate order so a change in load hits both alike.", ""]
    bc.write_lines(path, lines)


def main() -> None:
    parser = bc.script_parser(__doc__)
    bc.model_arguments(parser, "small",
                       "weights' dtype (default: float32 on cpu, bfloat16 on cuda, with bf16 training)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the throughput (default 3)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per step (default 8)")
    parser.add_argument("--rows", type=int, default=400, help="conversations in the data set (default 400)")
    parser.add_argument("--min-len", type=int, default=16, help="shortest conversation, tokens (default 16)")
    parser.add_argument("--max-len", type=int, default=1024, help="longest conversation and packed row (default 1024)")
    parser.add_argument("--variants", nargs="+", type=variant_name, default=list(VARIANTS),
                        help="batching variants to compare (default: all three); NAME@ATTN loads the model "
                             "with that attn_implementation, e.g. padding_free@flex_attention (default sdpa)")
    parser.add_argument("--repeats", type=int, default=2, help="align/bare pairs (default 2; 0 skips them)")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on cpu (default 1: on a busy machine more threads spin)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="accelerator peak for MFU, TFLOP/s (default 989: H100 SXM dense bf16)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default=str(bc.ROOT / ".bench" / "sft"))
    parser.add_argument("--out", default=None, help="report path (default benchmarks/sft.md, or sft-gpu.md on cuda)")
    parser.add_argument("--report-only", metavar="RUNS_JSON",
                        help="rewrite the report from a runs.json of an earlier run (e.g. one copied off a GPU machine)")
    bc.worker_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.setup_file), Path(args.result))
        return
    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        device = saved["setup"]["device"]
        out = Path(args.out or bc.ROOT / "benchmarks" / ("sft-gpu.md" if device == "cuda" else "sft.md"))
        write_report(out, saved["setup"], saved["runs"], saved["meta"])
        print(f"wrote {out}")
        return
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    out = Path(args.out or bc.ROOT / "benchmarks" / ("sft-gpu.md" if args.device == "cuda" else "sft.md"))
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    meta = bc.run_meta("bench_sft.py", peak_tflops=args.peak_tflops)
    setup = prepare(args, workdir)
    setup_file = workdir / "setup.json"
    setup_file.write_text(json.dumps(setup, indent=1))
    print(f"model {setup['params']['total'] / 1e6:.1f}M parameters; lengths {setup['lengths']}", flush=True)
    # Plain variants, then the align/bare pairs, then NAME@ATTN variants (slow to compile); the
    # report is rewritten after every run, so a run cut short still leaves what it measured.
    runs: dict = {"pairs": []}

    def save():
        (workdir / "runs.json").write_text(json.dumps({"setup": setup, "runs": runs, "meta": meta}, indent=1))
        write_report(out, setup, runs, meta)

    for v in [v for v in args.variants if "@" not in v]:
        runs[v] = run_one(v, setup_file, workdir, v)
        save()
    for i in range(args.repeats):
        order = ["align", "bare"] if i % 2 == 0 else ["bare", "align"]
        got = {v: run_one(v, setup_file, workdir, f"{v}-{i}") for v in order}
        runs["pairs"].append((got["align"], got["bare"]))
        save()
    for v in [v for v in args.variants if "@" in v]:
        runs[v] = run_one(v, setup_file, workdir, v.replace("@", "-"))
        save()
    save()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
