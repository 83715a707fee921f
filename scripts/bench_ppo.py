"""Benchmark: align's own PPO against TRL 1.12's `trl.experimental.ppo.PPOTrainer`.

Both train the same policy (pretrain -> sft made by align), against the same reward model
(align's rm stage), on the same prompts, with the same batch size, minibatch size, response
length, PPO epochs, learning rate, KL coefficient and clip ranges. Each runs in its own
subprocess (TRL 1.12 in its own virtualenv, `.bench/trl112`), one after the other, alternating
for `--repeats` rounds, so a change in machine load hits both alike. Only the training loop is
timed (model loading is not). The score before and after is measured the same way for both, by
code in this file: completions sampled from the policy for every prompt, rendered with the chat
template as the rm stage rendered its training pairs, scored by the reward model.

    .venv/bin/python scripts/bench_ppo.py --repeats 3                  # benchmarks/ppo.md
    .venv/bin/python scripts/bench_ppo.py --preset small --repeats 3   # benchmarks/ppo-small.md
    .venv/bin/python scripts/bench_ppo.py --ppo-epochs 4 2 --ablation  # also 2 PPO epochs, and the ablation
    .venv/bin/python scripts/bench_ppo.py --report-only    # rewrite the report from the last results

--preset picks the model: `tiny` (default) is the embedded tiny model; a bench_common preset
(`small`, ...) is that shape built from a config with random weights and the tiny model's
tokenizer for the benchmark's world, so both sizes see the same token ids. Each preset has its
own work directory and report.

Setting up TRL 1.12 (done once; the repo's .gitignore ignores .bench/): the CPU torch first, then
TRL 1.12 with the transformers, peft and accelerate versions of align's venv (TRL 1.12 accepts
them), so both sides run the same model code.

    python3 -m venv .bench/trl112
    .bench/trl112/bin/pip install torch==2.13.0
    .bench/trl112/bin/pip install "trl==1.12.0" "transformers==$(.venv/bin/python -c 'import transformers; print(transformers.__version__)')" peft accelerate
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRL_PYTHON = ROOT / ".bench" / "trl112" / "bin" / "python"
WORLD = {"seed": 0, "n_entities": 48}


# -- shared by both workers (plain transformers: the TRL venv does not have align) --------------

def load_prompts(path: Path) -> list[list[dict]]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def mean_rm_score(policy, rm, tokenizer, prompts, *, samples: int, max_new_tokens: int,
                  temperature: float, seed: int) -> float:
    """Mean RM score of sampled completions, each rendered with the chat template (as the rm
    stage rendered the pairs its statistics come from) and scored at its last token."""
    import torch

    torch.manual_seed(seed)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    policy.eval()
    with torch.no_grad():
        out = policy.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, num_return_sequences=samples,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    conversations = [prompts[i // samples] + [{"role": "assistant", "content": c.strip()}]
                     for i, c in enumerate(completions)]
    tokenizer.padding_side = "right"
    rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    enc = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        scores = rm(**enc).logits[:, 0]
    tokenizer.padding_side = side
    return scores.float().mean().item()


class Timer:
    """Wall-clock and process CPU time of a block. With one torch thread the CPU time is the work
    done, whatever else the machine is running; the wall-clock time is what a user waits."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def load_models(setup: dict):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(setup["sft"])
    policy = AutoModelForCausalLM.from_pretrained(setup["sft"])
    reference = AutoModelForCausalLM.from_pretrained(setup["sft"])
    value = AutoModelForSequenceClassification.from_pretrained(setup["rm"], num_labels=1)
    rm = AutoModelForSequenceClassification.from_pretrained(setup["rm"], num_labels=1).eval()
    return tokenizer, policy, reference, value, rm


def worker(which: str, setup: dict, out: Path) -> None:
    import random

    import numpy as np
    import torch

    torch.set_num_threads(setup["threads"])
    # TRL 1.12 shuffles minibatches with the global numpy generator, which it never seeds.
    random.seed(setup["hyper"]["seed"])
    np.random.seed(setup["hyper"]["seed"])
    h = setup["hyper"]
    tokenizer, policy, reference, value, rm = load_models(setup)
    prompts = load_prompts(Path(setup["prompts"]))
    score = dict(samples=2, max_new_tokens=h["response_length"], temperature=h["temperature"], seed=1234)
    before = mean_rm_score(policy, rm, tokenizer, prompts, **score)
    run = run_trl if which == "trl" else run_align
    timer, curve = run(setup, tokenizer, policy, reference, value, rm, prompts)
    after = mean_rm_score(policy, rm, tokenizer, prompts, **score)
    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate"):
        from importlib.metadata import version

        versions[name] = version(name)
    out.write_text(json.dumps({"which": which, "seed": h["seed"], "seconds": timer.wall, "cpu_seconds": timer.cpu,
                               "episodes": h["total_episodes"], "episodes_per_s": h["total_episodes"] / timer.wall,
                               "episodes_per_cpu_s": h["total_episodes"] / timer.cpu, "score_before": before,
                               "score_after": after, "train_curve": curve, "versions": versions}))


def run_align(setup, tokenizer, policy, reference, value, rm, prompts):
    from align.ppo.config import PPOConfig
    from align.rewards.sources import RewardModelSource, WeightedReward
    from align.ppo.trainer import PPOTrainer

    h = setup["hyper"]
    config = PPOConfig(
        batch_size=h["batch_size"], mini_batch_size=h["mini_batch_size"], ppo_epochs=h["ppo_epochs"],
        response_length=h["response_length"], temperature=h["temperature"], learning_rate=h["learning_rate"],
        total_episodes=h["total_episodes"], kl_coef=h["kl_coef"], cliprange=h["cliprange"],
        cliprange_value=h["cliprange_value"], vf_coef=h["vf_coef"], gamma=1.0, lam=0.95,
        whiten_rewards=False, whiten_advantages=True, max_grad_norm=None,  # TRL 1.12 does not clip
        rewards=[{"source": "rm"}], disable_tqdm=True, log_samples=0, save_steps=10**9, seed=h["seed"])
    source = RewardModelSource(rm, tokenizer, policy_tokenizer=tokenizer)
    if setup.get("variant") == "no-suffix":
        source.turn_suffix = []  # ablation: score the ids ending at EOS, as TRL 1.12 does
    reward = WeightedReward([(source, 1.0)])
    trainer = PPOTrainer(config, policy=policy, value_model=value, tokenizer=tokenizer, reward=reward,
                         prompts=[{"prompt": p} for p in prompts], ref_policy=reference, seed=h["seed"])
    with Timer() as timer:
        history = trainer.train()
    return timer, [s["score_raw"] for s in history]


def run_trl(setup, tokenizer, policy, reference, value, rm, prompts):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    h = setup["hyper"]
    tokenizer.padding_side = "left"
    rows = [{"input_ids": tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True,
                                                        return_dict=True)["input_ids"]} for p in prompts]
    dataset = Dataset.from_list(rows)
    # TRL 1.12: rollout = per_device_train_batch_size * gradient_accumulation_steps, split into
    # num_mini_batches minibatches, each one optimizer step when gradient_accumulation_steps=1.
    args = PPOConfig(
        output_dir=str(Path(setup["workdir"]) / "trl-out"), per_device_train_batch_size=h["batch_size"],
        gradient_accumulation_steps=1, num_mini_batches=h["batch_size"] // h["mini_batch_size"],
        local_rollout_forward_batch_size=h["batch_size"], num_ppo_epochs=h["ppo_epochs"],
        total_episodes=h["total_episodes"], response_length=h["response_length"], stop_token="eos",
        temperature=h["temperature"], learning_rate=h["learning_rate"], kl_coef=h["kl_coef"],
        cliprange=h["cliprange"], cliprange_value=h["cliprange_value"], vf_coef=h["vf_coef"], gamma=1.0,
        lam=0.95, whiten_rewards=False, num_sample_generations=0, save_strategy="no", report_to="none",
        logging_steps=1, use_cpu=True, seed=h["seed"], disable_tqdm=True, lr_scheduler_type="linear")
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=reference,
                         reward_model=rm, value_model=value, train_dataset=dataset, eval_dataset=dataset)
    with Timer() as timer:
        trainer.train()
    curve = [h_["objective/scores"] for h_ in trainer.state.log_history if "objective/scores" in h_]
    return timer, curve


# -- the driver (align's venv) -------------------------------------------------------------------

def setup_models(workdir: Path, threads: int, preset: str) -> dict:
    """pretrain -> sft -> rm with align on the embedded world (skipped when already built)."""
    import torch
    import yaml

    from align.runner import run_recipe
    from align.tiny import TinyConfig, build_tiny

    torch.set_num_threads(threads)
    os.environ.setdefault("ALIGN_CACHE", str(workdir / "cache"))
    model = "tiny"
    if preset != "tiny":  # the recipe's tiny model would have this tokenizer
        tokenizer = build_tiny(TinyConfig.from_dict({"world": WORLD}))
        model = str(bc.build_model_dir(preset, workdir, 512, tokenizer_dir=tokenizer))
    common = {"per_device_train_batch_size": 16, "logging_steps": 20, "disable_tqdm": True, "save_steps": 1000}
    recipe = {
        "name": "bench-ppo", "run_dir": str(workdir / "run"), "model": {"name_or_path": model}, "world": WORLD,
        "stages": {
            "pretrain": {"kind": "pretrain", "data": "world:corpus",
                         "args": {**common, "max_steps": 150, "learning_rate": 3e-3}},
            "sft": {"kind": "sft", "from": "pretrain", "data": "world:sft",
                    "args": {**common, "max_steps": 60, "learning_rate": 1e-3}},
            "rm": {"kind": "rm", "from": "sft", "data": None,
                   "args": {**common, "max_steps": 80, "learning_rate": 1e-3}},
        }}
    workdir.mkdir(parents=True, exist_ok=True)
    recipe["stages"]["rm"]["data"] = write_capital_pairs(workdir)
    path = workdir / "bench-ppo.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    artifacts = run_recipe(str(path))
    sft_rows = [json.loads(line) for line in (workdir / "run" / "world" / "sft.jsonl").read_text().splitlines()]
    prompts = workdir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["messages"][:1]}) + "\n" for r in sft_rows))
    return {"sft": str(artifacts["sft"].model_path()), "rm": str(artifacts["rm"].model_path()),
            "preset": preset, "params": bc.count_params(artifacts["sft"].model_path())["total"],
            "prompts": str(prompts), "rm_metrics": artifacts["rm"].manifest.metrics,
            "n_prompts": len(sft_rows)}


def write_capital_pairs(workdir: Path) -> dict:
    """Preference pairs whose rule a tiny reward model learns reliably: for any question about a
    country, naming its capital is preferred over any other statement about it. (The world's
    fact-checking pairs are too hard for a tiny RM to learn in a benchmark's time: it stays at
    chance, and a reward of noise says nothing about either trainer.)"""
    import random

    from align.data.world import WorldConfig, build_world, make_splits
    from align.data.world_text import ANSWER_TEMPLATES

    world = build_world(WorldConfig(**WORLD))
    countries = {c.name: c for c in world.countries}
    rng = random.Random(0)
    out = {}
    for split, source in (("train", "qa_train"), ("eval", "qa_eval")):
        rows = []
        for row in make_splits(world)[source]:
            if not row["known"]:
                continue
            country = countries[row["entity"]]
            other = rng.choice([a for a in ANSWER_TEMPLATES if a != "capital"])
            rows.append({"prompt": [{"role": "user", "content": row["question"]}],
                         "chosen": [{"role": "assistant", "content": ANSWER_TEMPLATES["capital"].format(
                             e=country.name, v=country.capital)}],
                         "rejected": [{"role": "assistant", "content": ANSWER_TEMPLATES[other].format(
                             e=country.name, v=getattr(country, other))}]})
        path = workdir / f"capital_pairs_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out[split] = str(path)
    return out


def launch(python: Path, which: str, setup_file: Path, out: Path, log: Path) -> dict | str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TRL_EXPERIMENTAL_SILENCE="1",
               PYTHONPATH=str(ROOT))
    with log.open("w") as f:
        proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", which, "--setup-file",
                               str(setup_file), "--result", str(out)], stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text()[-1500:]
        return f"exit code {proc.returncode}; last lines of {log}:\n{tail}"
    return json.loads(out.read_text())


def quarter_means(curve: list[float]) -> tuple[float, float]:
    q = max(1, len(curve) // 4)
    return statistics.fmean(curve[:q]), statistics.fmean(curve[-q:])


def summary(runs: list) -> dict | None:
    ok = [r for r in runs if isinstance(r, dict)]
    if not ok:
        return None
    first, last = zip(*(quarter_means(r["train_curve"]) for r in ok))
    before = statistics.fmean(r["score_before"] for r in ok)
    after = statistics.fmean(r["score_after"] for r in ok)
    return {"eps": statistics.median(r["episodes_per_s"] for r in ok),
            "spread": ", ".join(f"{r['episodes_per_s']:.2f}" for r in ok), "runs": len(ok),
            "cpu_eps": statistics.median(r["episodes_per_cpu_s"] for r in ok),
            "cpu_spread": ", ".join(f"{r['episodes_per_cpu_s']:.2f}" for r in ok),
            "before": before, "after": after, "gains": ", ".join(f"{r['score_after'] - r['score_before']:+.2f}" for r in ok),
            "curve": f"{statistics.fmean(first):.3f} -> {statistics.fmean(last):.3f}",
            "versions": ok[0]["versions"]}


def write_report(path: Path, setup: dict, configs: list[dict], command: str, started: str, host: str) -> None:
    h = setup["hyper"]
    lines = [
        "# PPO: align vs TRL 1.12" + ("" if setup.get("preset", "tiny") == "tiny" else f", `{setup['preset']}` model"), "",
        f"Date: {started} (UTC). Machine: {host}. Torch threads per run: {setup['threads']}.", "",
        f"Command: `{command}`", "",
        "Both trainers start from the same SFT policy, use the same reward model as reward and as the "
        "value model's starting point, the same prompts and the same hyperparameters; they run one after "
        "the other in separate processes, alternating which goes first, and only the training loop is "
        "timed. Run i of each trainer uses seed 42 + i.", "",
        "| setting | value |", "|---|---|",
        f"| model | {model_description(setup)} |",
        f"| prompts | {setup['n_prompts']} (world:sft questions, world seed {WORLD['seed']}, "
        f"{WORLD['n_entities']} countries) |",
        *[f"| {k} | {v} |" for k, v in h.items() if k not in ("seed", "ppo_epochs")],
        f"| reward model | align rm stage on pairs preferring an answer that names the country's capital "
        f"(scripts/bench_ppo.py: write_capital_pairs), held-out accuracy "
        f"{setup['rm_metrics'].get('accuracy', float('nan')):.2f}, score mean "
        f"{setup['rm_metrics'].get('score_mean', float('nan')):.2f} ± "
        f"{setup['rm_metrics'].get('score_std', float('nan')):.2f} |", "",
    ]
    versions = {}
    for cfg in configs:
        lines += [f"## ppo_epochs = {cfg['ppo_epochs']}", "",
                  "| trainer | episodes per wall-clock s: median (each run) | episodes per CPU s: median (each run) "
                  "| score before | score after (mean) | gain per run | own logged score, first -> last quarter |",
                  "|---|---|---|---|---|---|---|"]
        sums = {}
        labels = (("align", "align (align.ppo)"), ("trl", "TRL 1.12.0 experimental PPOTrainer"),
                  ("align-no-suffix", "ablation: align, RM scoring ids that end at EOS like TRL 1.12"))
        for which, label in labels:
            if which not in cfg["results"]:
                continue
            sums[which] = summary(cfg["results"][which])
            m = sums[which]
            if m is None:
                lines.append(f"| {label} | failed | | | | | |")
                continue
            versions.setdefault(which.split("-")[0], m["versions"])
            lines.append(f"| {label} | {m['eps']:.2f} ({m['spread']}) | {m['cpu_eps']:.2f} ({m['cpu_spread']}) | "
                         f"{m['before']:.3f} | {m['after']:.3f} | {m['gains']} | {m['curve']} |")
        lines.append("")
        if sums["align"] and sums["trl"]:
            a, t = sums["align"], sums["trl"]
            wall, cpu = a["eps"] / t["eps"], a["cpu_eps"] / t["cpu_eps"]
            gain_a, gain_t = a["after"] - a["before"], t["after"] - t["before"]
            met = min(wall, cpu) >= 2 and gain_a >= gain_t
            lines += [f"**Ratio: align runs {wall:.2f}x TRL 1.12's episodes per wall-clock second, "
                      f"{cpu:.2f}x per CPU second** (mean score gain {gain_a:+.2f} vs {gain_t:+.2f}). "
                      f"Goal (at least 2x at an equal or better score gain): "
                      f"{'met' if met else 'not met'}.", ""]
        for which in cfg["results"]:
            for f in (r for r in cfg["results"][which] if isinstance(r, str)):
                lines += [f"{which} failed:", "", "```", f, "```", ""]
    if versions:
        lines += ["Library versions: " + "; ".join(
            f"{k}: " + ", ".join(f"{n} {v}" for n, v in vs.items()) for k, vs in versions.items()), ""]
    lines += [
        "## Reading the numbers", "",
        "- How the ratio moves with model size (`--preset tiny` against `--preset small`): "
        "[rl.md, part (c)](rl.md#c-aligns-ppo-against-trl-112s-ppotrainer).",
        "- *score before/after*: mean reward-model score of 2 sampled completions per prompt (temperature "
        f"{h['temperature']}, seed fixed), rendered with the chat template exactly as the rm stage rendered the "
        "pairs it was trained and measured on. The same code scores both trainers.",
        "- *own logged score*: each trainer's per-step mean score. They differ in what the RM sees: TRL 1.12 "
        "scores the token ids ending at EOS; align appends the chat template's end-of-turn suffix after EOS "
        "(here a newline), i.e. the rendering the RM was trained on. So the two curves are not on one scale; "
        "the before/after columns are. The ablation row (run with --ablation) is align with its RM scoring "
        "the ids that end at EOS, as TRL 1.12 does: it shows how much of the difference in score gain comes "
        "from what the RM is shown rather than from the optimiser. The ablation's timings are not compared.",
        "- Both generate until EOS or response_length (TRL: stop_token=eos), whiten advantages, use the k1 KL "
        "penalty, the clipped value loss, linear learning-rate decay, fused AdamW and no gradient clipping "
        "(TRL 1.12's PPO loop does not clip, so align's max_grad_norm is off here).",
        "- Where the time goes (cProfile of 128 episodes, 8 rollouts at 4 PPO epochs, each trainer on each "
        "model, this machine, 2026-11-30; profiling slows Python-heavy code, so read the shares): generation "
        "and the forward passes cost both trainers about the same, the backward passes nearly so (align / "
        "TRL: 1.9 / 2.0 s on `tiny`, 6.0 / 7.4 s on `small`; TRL 1.12 runs the LM head over prompt and "
        "response positions and computes a full-vocabulary entropy for every micro-batch, align runs the LM "
        "head on response positions only and trims each minibatch to its longest response and to the prompt "
        "columns it uses). Most of the gap is TRL 1.12's two `gc.collect()` calls per rollout, a cost of its "
        "Python heap rather than of the model: 3.3 s of its 8.6 s training loop on `tiny` (align: 5.2 s), "
        "4.1 s of 20.9 s on `small` (align: 14.6 s). Without them TRL would about match align on `tiny` and "
        "take about 1.15x align's time on `small`. Being mostly a per-rollout overhead, the gap narrows with "
        "more update work per rollout: more PPO epochs, larger models.",
        "- The machine is shared with other jobs and its load changed during the runs, which moves the "
        "wall-clock figures by up to 2x between runs of the same trainer; each run's figure is shown next to the "
        "median. CPU seconds (process time, one torch thread) count the work each trainer did and are "
        "steadier under that load (though not immune: a busy machine also slows each CPU second).", "",
    ]
    bc.write_lines(path, lines)


def model_description(setup: dict) -> str:
    preset = setup.get("preset", "tiny")  # results from before --preset were the tiny model's
    what = ("the embedded tiny model" if preset == "tiny"
            else f"`{preset}` preset of scripts/bench_common.py, random init, the tiny model's tokenizer")
    params = f", {setup['params'] / 1e6:.1f}M parameters" if "params" in setup else ""
    return f"{what}{params}; policy, reference, value model and reward model alike"


def main() -> None:
    parser = bc.script_parser(__doc__)
    bc.preset_argument(parser, "tiny", tiny=True, help="model of the policy, value and reward models")
    parser.add_argument("--episodes", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mini-batch-size", type=int, default=8)
    parser.add_argument("--ppo-epochs", type=int, nargs="+", default=[4],
                        help="one or more values; each is benchmarked (4 is TRL 1.12's default)")
    parser.add_argument("--response-length", type=int, default=24)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: the tiny model gains nothing from more, and a busy "
                             "machine makes OpenMP threads spin)")
    parser.add_argument("--workdir", help="default .bench/ppo, or .bench/ppo-PRESET for another preset")
    parser.add_argument("--out", help="default benchmarks/ppo.md, or benchmarks/ppo-PRESET.md for another preset")
    parser.add_argument("--ablation", action="store_true",
                        help="also run align with the RM scoring token ids that end at EOS, as TRL 1.12 does")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the report from the result files of the last run in --workdir")
    parser.add_argument("--worker", choices=["align", "trl", "align-no-suffix"], help=argparse.SUPPRESS)
    parser.add_argument("--setup-file", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        setup = json.loads(Path(args.setup_file).read_text())
        if args.worker == "align-no-suffix":
            setup["variant"] = "no-suffix"
        worker(args.worker, setup, Path(args.result))
        return

    suffix = "" if args.preset == "tiny" else f"-{args.preset}"
    workdir = Path(args.workdir or ROOT / ".bench" / f"ppo{suffix}").resolve()
    args.out = args.out or str(ROOT / "benchmarks" / f"ppo{suffix}.md")
    if args.report_only:
        meta = json.loads((workdir / "run.json").read_text())
        setup = json.loads((workdir / "setup.json").read_text())
        configs = [{"ppo_epochs": c["ppo_epochs"], "results": {
            which: [json.loads(Path(f).read_text()) if Path(f).exists() else f"{f} is missing" for f in files]
            for which, files in c["files"].items()}} for c in meta["configs"]]
        write_report(Path(args.out), setup, configs, meta["command"], meta["started"], meta["host"])
        print(f"wrote {args.out}")
        return
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    host = bc.machine()
    command = " ".join([".venv/bin/python", "scripts/bench_ppo.py", *sys.argv[1:]])
    setup = setup_models(workdir, args.threads, args.preset)
    setup.update(workdir=str(workdir), threads=args.threads, hyper={
        "total_episodes": args.episodes, "batch_size": args.batch_size, "mini_batch_size": args.mini_batch_size,
        "ppo_epochs": None, "response_length": args.response_length,
        "learning_rate": args.learning_rate, "temperature": args.temperature, "kl_coef": 0.05,
        "cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1, "seed": 42})
    pythons = {"align": Path(sys.executable), "trl": TRL_PYTHON, "align-no-suffix": Path(sys.executable)}
    trainers = ["align", "trl"] + (["align-no-suffix"] if args.ablation else [])
    configs, meta = [], {"started": started, "host": host, "command": command, "configs": []}
    for epochs in args.ppo_epochs:
        results: dict[str, list] = {name: [] for name in trainers}
        meta["configs"].append({"ppo_epochs": epochs, "files": {name: [] for name in trainers}})
        for round_ in range(args.repeats):
            setup["hyper"].update(ppo_epochs=epochs, seed=42 + round_)
            setup_file = workdir / "setup.json"
            setup_file.write_text(json.dumps(setup, indent=1))
            for which in trainers if round_ % 2 == 0 else trainers[::-1]:
                if which == "trl" and not TRL_PYTHON.exists():
                    results["trl"].append(f"{TRL_PYTHON} does not exist: create the TRL 1.12 virtualenv (see "
                                          "the docstring of scripts/bench_ppo.py).")
                    continue
                tag = f"{which}-e{epochs}-{round_}"
                out = workdir / f"result-{tag}.json"
                out.unlink(missing_ok=True)
                meta["configs"][-1]["files"][which].append(str(out))
                result = launch(pythons[which], which, setup_file, out, workdir / f"log-{tag}.txt")
                results[which].append(result)
                shown = (f"{result['episodes_per_s']:.2f} episodes/s, score {result['score_before']:.3f} -> "
                         f"{result['score_after']:.3f}") if isinstance(result, dict) else result
                print(f"ppo_epochs {epochs} round {round_ + 1} {which}: {shown}", flush=True)
        configs.append({"ppo_epochs": epochs, "results": results})
    (workdir / "run.json").write_text(json.dumps(meta, indent=1))
    write_report(Path(args.out), setup, configs, command, started, host)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
