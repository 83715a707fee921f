"""Benchmark: memory of one training step for full fine-tuning, freeze, LoRA and QLoRA.

One model of about 100M parameters (`100m` preset: a 12-layer Llama built from a config,
random weights, saved once), loaded and prepared for each method with align's own helpers
(align.modeling: load_full, quantization_config, peft_config, freeze_bottom_layers) and trained
for one step with TRL's SFTTrainer, as align's sft stage does. Each method runs in its own
process, so no allocator state carries over.

Measured per method:
  - resident memory (RSS) after the imports, after loading, and the peak during the step
    (Linux: the peak is reset through /proc/self/clear_refs just before the step);
  - anonymous RSS (what the process allocated, without mapped safetensors pages), sampled
    every 2 ms during the step;
  - on a GPU, allocated GPU memory after loading and its peak during the step.
The goal is QLoRA at most 0.4x full fine-tuning (judged on peak anonymous RSS on a CPU, on
peak allocated memory on a GPU); the report gives the ratios. --batch-size and --seq-len set the
step's tokens, whose activations every method pays alike.

    nice -n 10 .venv/bin/python scripts/bench_memory.py                 # CPU, float32
    python scripts/bench_memory.py --device cuda                        # GPU, bfloat16
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

METHODS = ("full", "freeze", "lora", "qlora")


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class AnonSampler:
    """Peak anonymous RSS (RssAnon: memory the process itself allocated), sampled every few ms in
    a thread. VmHWM also counts file pages of memory-mapped safetensors that were touched, which
    the kernel can drop at any time; RssAnon leaves them out."""

    def __init__(self, interval: float = 0.002):
        import threading

        self.peak = rss_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, rss_kib("RssAnon"))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib("RssAnon"))


def reset_peak_rss() -> bool:
    """Start a new peak (VmHWM) from the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_for_method(setup: dict, method: str):
    """The model as align's sft stage prepares it: (model, peft config or None, method spec)."""
    from align.modeling import (freeze_bottom_layers, load_full, peft_config, quantization_config,
                                torch_dtype)
    from align.recipe import MethodSpec

    block = {"type": method}
    if method == "freeze":
        block["trainable_layers"] = setup["trainable_layers"]
    if method == "qlora":
        block["quantization"] = {"compute_dtype": setup["dtype"]}
    spec = MethodSpec.model_validate(block)
    if method == "qlora":
        q = quantization_config(spec)
        model = load_full(setup["model_dir"], dtype=q.bnb_4bit_compute_dtype, quantization=q)
    else:
        model = load_full(setup["model_dir"], dtype=torch_dtype(setup["dtype"]))
    if method == "freeze":
        freeze_bottom_layers(model, spec.trainable_layers)
    return model, peft_config(spec)


def worker(method: str, setup_file: Path, result: Path) -> None:
    import bitsandbytes  # noqa: F401 - every method imports the same modules
    import peft  # noqa: F401
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from align.modeling import count_trainable

    setup = json.loads(setup_file.read_text())
    cuda = setup["device"] == "cuda"
    torch.set_num_threads(setup["threads"])
    out = {"method": method, "rss_imports_mib": rss_kib() / 1024, "anon_imports_mib": rss_kib("RssAnon") / 1024}
    tokenizer = AutoTokenizer.from_pretrained(setup["model_dir"])
    rows = [json.loads(line) for line in Path(setup["data"]).read_text().splitlines()]
    model, peft_cfg = load_for_method(setup, method)
    out["rss_loaded_mib"] = rss_kib() / 1024
    out["anon_loaded_mib"] = rss_kib("RssAnon") / 1024
    if cuda:
        torch.cuda.synchronize()
        out["gpu_loaded_mib"] = torch.cuda.memory_allocated() / 2**20
    args = SFTConfig(output_dir=str(result.parent / f"trainer-{method}"), max_steps=1,
                     per_device_train_batch_size=setup["batch_size"], max_length=setup["seq_len"],
                     learning_rate=1e-4, save_strategy="no", report_to="none", disable_tqdm=True,
                     logging_steps=1, use_cpu=not cuda, bf16=cuda and setup["dtype"] == "bfloat16",
                     activation_checkpointing=False, dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_cfg)
    trainable, total = count_trainable(trainer.model)
    out.update(trainable=trainable, total=total, rss_trainer_mib=rss_kib() / 1024)
    if cuda:
        torch.cuda.synchronize()
        out["gpu_before_step_mib"] = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    out["peak_reset"] = reset_peak_rss()
    started = time.perf_counter()
    with AnonSampler() as anon:
        trainer.train()
    out["anon_peak_step_mib"] = anon.peak / 1024
    if cuda:
        torch.cuda.synchronize()
        out["gpu_peak_step_mib"] = torch.cuda.max_memory_allocated() / 2**20
    out["step_seconds"] = time.perf_counter() - started
    out["rss_peak_step_mib"] = rss_kib("VmHWM") / 1024
    import resource

    out["rss_peak_process_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.write_text(json.dumps(out))


def fmt(x: float | None) -> str:
    return "" if x is None else f"{x:,.0f}"


def write_report(path: Path, setup: dict, results: dict, meta: dict) -> None:
    gpu = setup["device"] == "cuda"
    p = setup["params"]
    lines = [f"# Memory of one training step by tuning method ({setup['device']})", "",
             f"Date: {meta['started']} (UTC). Machine: {meta['host']}.", "",
             f"Command: `{meta['command']}`", "", f"Libraries: {meta['versions']}.", "",
             "| setting | value |", "|---|---|",
             f"| model | `{setup['preset']}` preset built from a config, random init, {p['total'] / 1e6:.1f}M "
             f"parameters ({p['layers']} layers, hidden {p['hidden']}, vocab {p['vocab']}, tied embeddings) |",
             f"| weights / compute dtype | {setup['dtype']} (QLoRA: NF4 with double quantisation, compute and "
             f"storage dtype {setup['dtype']}; align's defaults otherwise) |",
             f"| step | one SFTTrainer step (AdamW), {setup['batch_size']} rows of about {setup['seq_len']} tokens"
             + (", bf16" if gpu and setup["dtype"] == "bfloat16" else "") + " |",
             f"| methods | full; freeze (top {setup['trainable_layers']} layers, final norm); LoRA r=16 alpha=32 "
             "on all linear layers; QLoRA = the same LoRA on the 4-bit model |", ""]
    head = ("| method | trainable params | RSS after imports, MiB | RSS after load | peak RSS during the step "
            "| peak RSS minus imports | ratio to full | anonymous RSS after load, minus imports | peak anonymous "
            "RSS during the step, minus imports | ratio to full |")
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if gpu:
        head += " GPU allocated after load, MiB | peak GPU allocated during the step | ratio to full (GPU) |"
        sep += "---:|---:|---:|"
    lines += ["## Results", "", head, sep]
    full = results.get("full") if isinstance(results.get("full"), dict) else None
    for m in METHODS:
        r = results.get(m)
        if not isinstance(r, dict):
            lines.append(f"| {m} | failed |" + " |" * (8 + (3 if gpu else 0)))
            continue
        above = r["rss_peak_step_mib"] - r["rss_imports_mib"]
        ratio = above / (full["rss_peak_step_mib"] - full["rss_imports_mib"]) if full else float("nan")
        row = (f"| {m} | {r['trainable']:,} ({r['trainable'] / r['total']:.1%}) | {fmt(r['rss_imports_mib'])} | "
               f"{fmt(r['rss_loaded_mib'])} | {fmt(r['rss_peak_step_mib'])} | {fmt(above)} | {ratio:.2f}x |")
        if "anon_peak_step_mib" in r:
            anon = r["anon_peak_step_mib"] - r["anon_imports_mib"]
            anon_full = (full["anon_peak_step_mib"] - full["anon_imports_mib"]) if full else float("nan")
            row += f" {fmt(r['anon_loaded_mib'] - r['anon_imports_mib'])} | {fmt(anon)} | {anon / anon_full:.2f}x |"
        else:
            row += " | | |"
        if gpu:
            g = r["gpu_peak_step_mib"] / full["gpu_peak_step_mib"] if full else float("nan")
            row += f" {fmt(r['gpu_loaded_mib'])} | {fmt(r['gpu_peak_step_mib'])} | {g:.2f}x |"
        lines.append(row)
    lines.append("")
    q = results.get("qlora")
    if full and isinstance(q, dict):
        if gpu:
            ratio, what = q["gpu_peak_step_mib"] / full["gpu_peak_step_mib"], "peak allocated GPU memory"
        elif "anon_peak_step_mib" in q:
            ratio = (q["anon_peak_step_mib"] - q["anon_imports_mib"]) / (full["anon_peak_step_mib"] - full["anon_imports_mib"])
            what = "peak anonymous resident memory above the imports"
        else:
            ratio = (q["rss_peak_step_mib"] - q["rss_imports_mib"]) / (full["rss_peak_step_mib"] - full["rss_imports_mib"])
            what = "peak resident memory above the imports"
        lines += [f"**QLoRA's {what} is {ratio:.2f}x full fine-tuning's. Goal (at most 0.4x): "
                  f"{'met' if ratio <= 0.4 else 'not met'}.**", ""]
    if not all(r.get("peak_reset") for r in results.values() if isinstance(r, dict)):
        lines += ["The kernel refused to reset the RSS peak, so 'peak RSS during the step' is the process's "
                  "peak, loading included.", ""]
    lines += ["Reading the numbers:", "",
              "- *RSS after imports* is the same interpreter with torch, transformers, TRL, PEFT and "
              "bitsandbytes imported (every method imports all of them); *minus imports* is what the model, "
              "its gradients, the optimizer state and the step's activations add to it.",
              "- *Anonymous RSS* (RssAnon, sampled every 2 ms during the step) is the memory the process "
              "allocated itself. Total RSS also counts the pages of the memory-mapped safetensors file that "
              "loading touched (QLoRA reads every weight to quantise it): page cache the kernel may drop, "
              "which is why the QLoRA goal is judged on anonymous memory on a CPU.",
              "- The peak during the step is measured from just before `trainer.train()` (the model already "
              "loaded and wrapped) to its end: one forward and backward pass and the first optimizer step, "
              "which creates AdamW's two moment buffers for every trainable parameter.", ""]
    for m, r in results.items():
        if isinstance(r, str):
            lines += [f"{m} failed:", "", "```", r, "```", ""]
    bc.write_lines(path, lines)


def main() -> None:
    parser = bc.script_parser(__doc__)
    bc.model_arguments(parser, "100m",
                       "weights' and compute dtype (default: float32 on cpu, bfloat16 on cuda)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--batch-size", type=int, default=4, help="rows in the step (default 4)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per row (default 256)")
    parser.add_argument("--trainable-layers", type=int, default=2, help="freeze: top layers that train (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--workdir", default=str(bc.ROOT / ".bench" / "memory"))
    parser.add_argument("--out", default=None, help="report (default benchmarks/memory.md, memory-gpu.md on cuda)")
    bc.worker_arguments(parser, METHODS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.setup_file), Path(args.result))
        return
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    out = Path(args.out or bc.ROOT / "benchmarks" / ("memory-gpu.md" if args.device == "cuda" else "memory.md"))
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    meta = bc.run_meta("bench_memory.py")
    from transformers import AutoTokenizer

    model_dir = bc.build_model_dir(args.preset, workdir.parent, args.seq_len)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = bc.make_conversations(args.batch_size * 2, args.seq_len, args.seq_len, 0, tokenizer)
    data = workdir / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    setup = {"model_dir": str(model_dir), "data": str(data), "preset": args.preset, "device": args.device,
             "dtype": args.dtype, "batch_size": args.batch_size, "seq_len": args.seq_len,
             "trainable_layers": args.trainable_layers, "threads": args.threads,
             "params": bc.count_params(model_dir)}
    setup_file = workdir / "setup.json"
    setup_file.write_text(json.dumps(setup, indent=1))
    results: dict = {}
    for method in args.methods:
        result = workdir / f"result-{method}.json"
        result.unlink(missing_ok=True)
        log = workdir / f"log-{method}.txt"
        code, wall = bc.run_worker(Path(__file__).resolve(),
                                   ["--worker", method, "--setup-file", str(setup_file), "--result", str(result)], log)
        if code != 0 or not result.exists():
            results[method] = f"exit code {code}; end of {log}:\n" + log.read_text()[-2000:]
            print(f"{method}: failed (see {log})", flush=True)
            continue
        results[method] = json.loads(result.read_text())
        r = results[method]
        print(f"{method}: peak RSS {r['rss_peak_step_mib']:.0f} MiB"
              + (f", peak GPU {r['gpu_peak_step_mib']:.0f} MiB" if "gpu_peak_step_mib" in r else "")
              + f" ({wall:.0f}s)", flush=True)
    (workdir / "results.json").write_text(json.dumps({"setup": setup, "results": results, "meta": meta}, indent=1))
    write_report(out, setup, results, meta)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
