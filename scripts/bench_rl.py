"""Benchmark: align's grpo stage against a bare GRPOTrainer script; and PPO, GRPO, RLOO (and DPO)
on the honesty task after the same wall time.

(a) throughput: one model (the embedded tiny model, random init, or --preset small), the
    default world's probe questions as prompts (with their gold answers), the ternary honesty
    reward, the same GRPOConfig settings. `bare` is what a user writes without align
    (GRPOTrainer, the reward function `align.honesty.reward:ternary_reward`, save at the end);
    `align` is a recipe with one grpo stage (`options.rewards: [{source: honesty}]`). Each run is
    its own process; the pairs alternate which goes first (--repeats). Throughput is completions
    per second over the steps after --warmup (wall clock, and per CPU second of the process).

(b) honesty: `recipes/tiny/rl.yaml` (48 countries: pretrain, sft, idk, the R-Tuning warm start
    sft_idk, then ppo, grpo, rloo and dpo from sft_idk and grpo_sft from sft, every RL stage on the
    ternary honesty reward), each RL stage stopped after --budget seconds of training (a
    callback for the TRL stages, a step hook for align's PPO; whichever comes first of the
    budget and the recipe's own step count), then the evaluate stage's seesaw.

    nice -n 10 .venv/bin/python scripts/bench_rl.py --part throughput --steps 12 --repeats 2
    nice -n 10 .venv/bin/python scripts/bench_rl.py --part honesty --budget 20

Nothing is asserted: the report (benchmarks/rl.md) gives ratios and rates. --part both (the
default) runs (a) then (b).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

RECIPE = bc.ROOT / "recipes" / "tiny" / "rl.yaml"
RL_STAGES = ("ppo", "grpo", "grpo_priced", "rloo", "grpo_sft")


# -- (a) throughput ----------------------------------------------------------------------------------

def grpo_args(setup: dict) -> dict:
    """GRPOConfig settings shared by the bare script and the align recipe."""
    return dict(max_steps=setup["steps"], per_device_train_batch_size=setup["batch_size"],
                num_generations=setup["num_generations"], max_completion_length=setup["completion_length"],
                learning_rate=1e-5, beta=0.04, logging_steps=1, report_to="none", disable_tqdm=True,
                dataloader_num_workers=0, max_grad_norm=1.0, save_steps=setup["steps"] + 1,
                # align's default; TRL's configs default to gradient checkpointing on, which on
                # this model costs about half the throughput (measured: 9.2 vs 17.4 completions/s)
                activation_checkpointing=setup.get("checkpointing", False))


def clock_callback():
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """(step, wall time, process CPU time) at every logged training step."""

        def __init__(self):
            self.records = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                self.records.append((state.global_step, time.perf_counter(), time.process_time()))

    return Clock()


def worker_bare(setup: dict, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from align.honesty.reward import ternary_reward

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(setup["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(setup["model_dir"], dtype=torch.float32)
    rows = [json.loads(line) for line in Path(setup["data"]).read_text().splitlines()]
    args = GRPOConfig(output_dir=str(out / "trainer"), seed=setup["seed"], use_cpu=True, **grpo_args(setup))
    clock = clock_callback()
    trainer = GRPOTrainer(model=model, reward_funcs=ternary_reward, args=args,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    return {"records": clock.records, "stage_wall": time.perf_counter() - started}


def worker_align(setup: dict, out: Path) -> dict:
    import yaml

    import align.stages.context as context
    from align.runner import run_recipe

    clock = clock_callback()
    own = context.StageContext.callbacks
    context.StageContext.callbacks = lambda self: own(self) + [clock]  # observe; changes nothing
    args = grpo_args(setup)
    recipe = {"name": "bench-rl", "seed": setup["seed"], "run_dir": str(out / "run"), "accelerate": "cpu",
              "model": {"name_or_path": setup["model_dir"]},
              "stages": {"grpo": {"kind": "grpo", "data": {"train": [{"path": setup["data"]}]},
                                  "options": {"rewards": [{"source": "honesty"}]}, "args": args}}}
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    started = time.perf_counter()
    run_recipe(str(path))
    return {"records": clock.records, "stage_wall": time.perf_counter() - started}


def worker(variant: str, setup_file: Path, result: Path) -> None:
    import torch

    setup = json.loads(setup_file.read_text())
    torch.set_num_threads(setup["threads"])
    out = result.parent / f"work-{result.stem}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    data = worker_align(setup, out) if variant == "align" else worker_bare(setup, out)
    kept = [r for r in data["records"] if r[0] >= setup["warmup"]]
    first, last = kept[0], kept[-1]
    completions = (last[0] - first[0]) * setup["batch_size"]
    data.update(variant=variant, timed_steps=last[0] - first[0],
                completions_per_s=completions / (last[1] - first[1]),
                completions_per_cpu_s=completions / (last[2] - first[2]))
    result.write_text(json.dumps(data))
    shutil.rmtree(out, ignore_errors=True)


def prepare_throughput(args, workdir: Path) -> dict:
    from align.data.world import WorldConfig, build_world, make_splits

    if args.preset == "tiny":
        model_dir = bc.tiny_tokenizer_dir()  # the embedded tiny model itself (random init)
    else:
        model_dir = bc.build_model_dir(args.preset, workdir.parent, 512)
    rows = [{"prompt": [{"role": "user", "content": r["question"]}], "answers": r["answers"], "known": r["known"]}
            for r in make_splits(build_world(WorldConfig()))["qa_train"]]
    data = workdir / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"model_dir": str(model_dir), "data": str(data), "preset": args.preset, "steps": args.steps,
            "warmup": args.warmup, "batch_size": args.batch_size, "num_generations": args.num_generations,
            "completion_length": args.completion_length, "seed": 42, "threads": args.threads,
            "prompts": len(rows)}


def run_throughput(args, workdir: Path) -> dict:
    setup = prepare_throughput(args, workdir)
    setup_file = workdir / "setup.json"
    setup_file.write_text(json.dumps(setup))
    pairs = []
    for i in range(args.repeats):
        got = {}
        for variant in (["align", "bare"] if i % 2 == 0 else ["bare", "align"]):
            result = workdir / f"result-{variant}-{i}.json"
            result.unlink(missing_ok=True)
            log = workdir / f"{variant}-{i}.log"
            code, wall = bc.run_worker(Path(__file__), ["--worker", variant, "--setup-file", str(setup_file),
                                                        "--result", str(result)], log,
                                       {"OMP_NUM_THREADS": str(args.threads)})
            if code != 0:
                got[variant] = f"exit code {code}; end of {log}:\n" + log.read_text()[-2000:]
                continue
            got[variant] = {**json.loads(result.read_text()), "process_wall": wall}
            print(f"{variant} {i}: {got[variant]['completions_per_s']:.1f} completions/s, "
                  f"stage {got[variant]['stage_wall']:.1f}s, process {wall:.1f}s", flush=True)
        pairs.append((got.get("align"), got.get("bare")))
    return {"setup": setup, "pairs": pairs}


def part_meta(res: dict) -> list[str]:
    meta = res.get("meta")
    return [f"Run {meta['started']} (UTC), {meta['host']}: `{meta['command']}`.", ""] if meta else []


def throughput_lines(res: dict) -> list[str]:
    s = res["setup"]
    lines = ["## (a) align's grpo stage vs a bare GRPOTrainer script", "", *part_meta(res),
             f"Model: `{s['preset']}` (random init). Prompts: the default world's {s['prompts']} probe questions with "
             f"their gold answers. Reward: the ternary honesty reward (align: reward source `honesty`; bare: the "
             f"function `align.honesty.reward:ternary_reward`). GRPOConfig: {s['steps']} steps of "
             f"{s['batch_size']} completions ({s['batch_size'] // s['num_generations']} prompts x "
             f"{s['num_generations']}), max_completion_length {s['completion_length']}, beta 0.04, logging every "
             f"step, no checkpoint; both save the model at the end. Throughput timed after step {s['warmup']}; "
             f"{s['threads']} torch thread(s).", "",
             "| pair | align completions/s | bare completions/s | align/bare (wall) | align/bare (per CPU s) "
             "| align/bare stage time | align/bare process time |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    wall, cpu = [], []
    for i, (a, b) in enumerate(res["pairs"]):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            lines.append(f"| {i + 1} | failed | | | | | |")
            continue
        wall.append(a["completions_per_s"] / b["completions_per_s"])
        cpu.append(a["completions_per_cpu_s"] / b["completions_per_cpu_s"])
        lines.append(f"| {i + 1} | {a['completions_per_s']:.1f} | {b['completions_per_s']:.1f} | {wall[-1]:.3f} | "
                     f"{cpu[-1]:.3f} | {a['stage_wall'] / b['stage_wall']:.3f} | "
                     f"{a['process_wall'] / b['process_wall']:.3f} |")
    lines.append("")
    if cpu:
        judged, by_wall = statistics.median(cpu), statistics.median(wall)
        verdict = ("met" if min(judged, by_wall) >= 0.95 else
                   "met per CPU second, not by wall clock" if judged >= 0.95 else "not met")
        lines += [f"**align's throughput per CPU second is {judged:.3f}x the bare script's (median of {len(cpu)}; "
                  f"wall clock {by_wall:.3f}x). Goal (>= 0.95): {verdict}.**", ""]
    for i, pair in enumerate(res["pairs"]):
        for r in pair:
            if isinstance(r, str):
                lines += [f"pair {i + 1} failed:", "", "```", r, "```", ""]
    return lines


# -- (b) the honesty task -----------------------------------------------------------------------------

def run_honesty(args, workdir: Path) -> dict:
    """The rl recipe in this process, each RL stage's training cut at --budget seconds."""
    from transformers import TrainerCallback

    import align.stages.context as context
    from align.ppo.trainer import PPOTrainer
    from align.runner import run_recipe

    budget = args.budget

    class Budget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.started >= budget:
                control.should_training_stop = True

    own_callbacks = context.StageContext.callbacks

    def callbacks(self):
        extra = [Budget()] if self.stage.kind in ("grpo", "rloo") else []
        return own_callbacks(self) + extra

    context.StageContext.callbacks = callbacks
    own_step = PPOTrainer.train_step

    def train_step(self):
        self.__dict__.setdefault("_bench_started", time.perf_counter())
        stats = own_step(self)
        if time.perf_counter() - self._bench_started >= budget:
            self.total_steps = self.step  # the loop ends after this step
        return stats

    PPOTrainer.train_step = train_step
    run_dir = workdir / "honesty-run"
    if args.fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
    elif args.redo_rl:  # the budget is not part of a stage's hash: drop what it decided
        for name in (*RL_STAGES, "evaluate"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    started = time.perf_counter()
    artifacts = run_recipe(str(RECIPE), [f"run_dir={run_dir}"])
    out = {"budget": budget, "wall": time.perf_counter() - started, "stages": {}}
    for name, artifact in artifacts.items():
        m = artifact.manifest
        out["stages"][name] = {"kind": m.kind, "seconds": (m.finished_at or 0) - (m.started_at or 0),
                               "metrics": m.metrics}
    return out


def honesty_lines(res: dict) -> list[str]:
    stages = res["stages"]
    table = stages["evaluate"]["metrics"]["stages"]
    lines = ["## (b) PPO, GRPO, RLOO and DPO on the honesty task", "", *part_meta(res),
             f"`recipes/tiny/rl.yaml` (48 countries), each RL stage's training stopped after {res['budget']:.0f} s "
             "(or at its recipe's step count, if sooner); all RL stages on the ternary honesty reward "
             "(+1 correct, 0 refusal, -1 wrong) over the idk stage's prompts. Held-out evaluation (qa_eval: "
             "known facts SFT never asked, unknown countries no training text mentions), greedy answers. "
             f"Whole run: {res['wall']:.0f} s.", "",
             "| stage | from | stage wall s | steps | reward first -> last quarter | accuracy (known) | "
             "over-refusal | hallucination (unknown) | refusal (unknown) | truthful |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    starts = {"ppo": "sft_idk", "grpo": "sft_idk", "grpo_priced": "sft_idk", "rloo": "sft_idk", "dpo": "sft_idk",
              "grpo_sft": "sft", "sft_idk": "sft", "sft": "pretrain"}
    for name in ("sft", "sft_idk", "ppo", "grpo", "grpo_priced", "rloo", "grpo_sft", "dpo"):
        if name not in stages or name not in table:
            continue
        m, row = stages[name]["metrics"], table[name]
        if "reward_first" in m:
            reward = f"{m['reward_first']:.3f} -> {m['reward_last']:.3f}"
        elif "mean_score_first" in m:
            reward = f"{m['mean_score_first']:.3f} -> {m['mean_score_last']:.3f}"
        else:
            reward = ""
        lines.append(f"| {name} | {starts.get(name, '')} | {stages[name]['seconds']:.1f} | {m.get('steps', '')} | "
                     f"{reward} | {row['accuracy']:.1%} | {row['over_refusal']:.1%} | {row['hallucination']:.1%} | "
                     f"{row['refusal']:.1%} | {row['truthful']:.1%} |")
    lines.append("")
    return lines


def main() -> None:
    parser = bc.script_parser(__doc__)
    parser.add_argument("--part", choices=["throughput", "honesty", "both", "report"], default="both",
                        help="what to run (report: rewrite the report from .bench/rl/results.json)")
    bc.preset_argument(parser, "tiny", tiny=True, help="(a) model: the embedded tiny model or a bench_common preset")
    parser.add_argument("--steps", type=int, default=12, help="(a) GRPO steps per run (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="(a) steps left out of the throughput (default 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="(a) completions per step (default 32)")
    parser.add_argument("--num-generations", type=int, default=8, help="(a) completions per prompt (default 8)")
    parser.add_argument("--completion-length", type=int, default=24, help="(a) max completion tokens (default 24)")
    parser.add_argument("--repeats", type=int, default=2, help="(a) align/bare pairs (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--budget", type=float, default=20.0, help="(b) training seconds per RL stage (default 20)")
    parser.add_argument("--fresh", action="store_true", help="(b) start the rl recipe's run directory afresh")
    parser.add_argument("--redo-rl", action="store_true",
                        help="(b) keep pretrain .. sft_idk and dpo of an earlier run, redo the RL stages")
    parser.add_argument("--workdir", default=str(bc.ROOT / ".bench" / "rl"))
    parser.add_argument("--out", default=str(bc.ROOT / "benchmarks" / "rl.md"))
    bc.worker_arguments(parser, ["align", "bare"])
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.setup_file), Path(args.result))
        return
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    if args.part != "report":
        results["meta"] = bc.run_meta("bench_rl.py")
    if args.part in ("throughput", "both"):
        results["throughput"] = {**run_throughput(args, workdir), "meta": results["meta"]}
        saved.write_text(json.dumps(results, default=str))
    if args.part in ("honesty", "both"):
        import torch

        torch.set_num_threads(args.threads)
        results["honesty"] = {**run_honesty(args, workdir), "meta": results["meta"]}
        saved.write_text(json.dumps(results, default=str))
    meta = results["meta"]
    lines = ["# RL stages: align's grpo vs a bare GRPOTrainer; PPO vs GRPO vs RLOO vs DPO on honesty", "",
             "Parts run separately keep each other's results in `.bench/rl/results.json`; each part "
             "names its own run below.", "", f"Libraries: {meta['versions']}.", ""]
    if "throughput" in results:
        lines += throughput_lines(results["throughput"])
    if "honesty" in results:
        lines += honesty_lines(results["honesty"])
    bc.write_lines(Path(args.out), lines)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
