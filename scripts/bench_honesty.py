"""Honesty variants on the fact-boundary world: what makes the stages refuse by knowledge.

Each variant is the shipped recipe (`recipes/tiny/honesty.yaml`) with some settings changed,
run from one pretrained model (the recipe's own pretrain stage, run once with `--pretrain`), for
one or more seeds. Every run's evaluation lands in `<out>/results.jsonl`; `--table` renders all
of them (every variant, every seed, every stage) as the markdown kept in
`benchmarks/honesty.md`.

    python scripts/bench_honesty.py --pretrain --set model.tiny.vocab_size=2048 --out runs/b
    python scripts/bench_honesty.py --out runs/b --variants final final_own --seeds 42 43
    python scripts/bench_honesty.py --out runs/b --table > runs/b/table.md
    python scripts/bench_honesty.py --confidence runs/b/final-s42   # the confidence ceiling
    python scripts/bench_honesty.py --plot round3.jsonl round4.jsonl runs/b/tradeoff.png
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from align.honesty.abstention import error_rates
from align.kinds import get_kind

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "tiny" / "honesty.yaml"
OUT = ROOT / "runs" / "bench-honesty"

# name -> (what it tries, dotted settings on the recipe; None removes a key).
VARIANTS: dict[str, tuple[str, dict]] = {
    "shipped": ("the recipe as it was before issue 18 (reply-style refusals)", {}),
    "final_nomix": ("the recipe as shipped now, no SFT data mixed back into sft_idk",
                    {"stages.sft_idk.data.train": [{"stage": "idk", "file": "sft"}]}),
    "final_unpacked": ("the recipe as shipped now, but on the unpacked corpus's pretrained "
                       "model (documents_per_row 1)", {"world.documents_per_row": 1}),
    "paraphrase": ("probe and train every phrasing of a question",
                   {"stages.idk.options.paraphrases": True}),
    "inline": ("inline refusals (the answer's opening, then I don't know)",
               {"stages.idk.options.idk_style": "inline"}),
    "inline_para": ("inline refusals, every phrasing",
                    {"stages.idk.options.idk_style": "inline",
                     "stages.idk.options.paraphrases": True}),
    "inline_e6": ("inline refusals, sft_idk 6 epochs instead of 3",
                  {"stages.idk.options.idk_style": "inline",
                   "stages.sft_idk.args.num_train_epochs": 6}),
    "inline_dpo": ("inline refusals, DPO at 1e-4 for 3 epochs (5x the step)",
                   {"stages.idk.options.idk_style": "inline",
                    "stages.dpo.args.learning_rate": 1.0e-4,
                    "stages.dpo.args.num_train_epochs": 3}),
    "inline_mix1": ("inline refusals, the SFT data mixed back once instead of twice",
                    {"stages.idk.options.idk_style": "inline",
                     "stages.sft_idk.data.train": [{"stage": "idk", "file": "sft"},
                                                   {"world": "sft", "weight": 1}]}),
    "inline_nomix": ("inline refusals, no SFT data mixed back",
                     {"stages.idk.options.idk_style": "inline",
                      "stages.sft_idk.data.train": [{"stage": "idk", "file": "sft"}]}),
    "inline_heldout": ("inline refusals, probe and train only on questions SFT never asked "
                       "(no SFT facts in the probe, no SFT data mixed back)",
                       {"stages.idk.options.idk_style": "inline",
                        "stages.idk.options.skip_trained": True,
                        "stages.sft_idk.data.train": [{"stage": "idk", "file": "sft"}]}),
    "inline_skip": ("inline refusals, no SFT facts in the probe (SFT data still mixed back)",
                    {"stages.idk.options.idk_style": "inline",
                     "stages.idk.options.skip_trained": True}),
    # Round 2 (the world with a currency per country and the tokenizer of its training text):
    # on the shipped recipe, like every `final*` variant.
    "final": ("the recipe as shipped", {}),
    "final_freeze1": ("sft_idk trains only the top decoder layer (method freeze): the refusal "
                      "is read off the features the SFT model already has, not relearnt",
                      {"stages.sft_idk.method": {"type": "freeze", "trainable_layers": 1}}),
    "final_freeze2": ("sft_idk trains only the top two decoder layers",
                      {"stages.sft_idk.method": {"type": "freeze", "trainable_layers": 2}}),
    "final_lora": ("sft_idk as a LoRA adapter (r 16, every projection)",
                   {"stages.sft_idk.method": "lora",
                    "stages.sft_idk.args.learning_rate": 1.0e-3}),
    "final_idk_lr1e4": ("sft_idk at a third of the learning rate (1e-4), so it moves the "
                        "SFT model's knowledge less",
                        {"stages.sft_idk.args.learning_rate": 1.0e-4}),
    "final_known03": ("the builder trains an answer from 30% right samples on (known "
                      "threshold 0.3 instead of 0.5): fewer refusals learnt on half-known facts",
                      {"stages.idk.options.known_threshold": 0.3}),
    "final_grey_conf": ("the grey zone trained as answers with a verbal-confidence opening "
                        "(\"I think ...\") instead of dropped",
                        {"stages.idk.options.grey": "confidence"}),
    "final_grpo100": ("GRPO on the ternary reward from sft_idk for 100 steps instead of 30",
                      {"stages.grpo_idk.args.max_steps": 100}),
    "final_ppo": ("PPO (the recipe's, reward model and honesty reward) from sft_idk",
                  {"stages.ppo.args.total_episodes": 640, "stages.rm.kind": "rm"}),
    "final_own": ("known questions trained on the model's own correct answer",
                  {"stages.idk.options.known_target": "own"}),
    # Round 3 (founding answers open with "The"; the abstain stage): its hallucination budget.
    **{f"final_abstain{round(100 * b)}": (
        f"the abstain stage allowed to answer {b:.0%} of the probe's unknown questions",
        {"stages.abstain.options.max_hallucination": b}) for b in (0.05, 0.1, 0.2, 0.25, 0.3)},
    # Round 4: the abstain stage's familiarity gate (shipped on), and without it.
    "final_nogate": ("the abstain stage without its familiarity gate (round 3's policy)",
                     {"stages.abstain.options.familiarity_gate": False}),
    # Round 5: does a shorter or longer SFT make the sft model's confidence separate better?
    **{f"final_sft{e}": (f"the sft stage for {e} epochs instead of 30",
                         {"stages.sft.args.num_train_epochs": e}) for e in (10, 12, 15, 20, 45)},
    **{f"final_sft{e}_abstain{round(100 * b)}": (
        f"the sft stage for {e} epochs, the abstain stage allowed {b:.0%} of the unknown",
        {"stages.sft.args.num_train_epochs": e, "stages.abstain.options.max_hallucination": b})
       for e in (10, 12, 15, 20) for b in (0.1, 0.2)},
    "final_sft_smooth": ("the sft stage with label smoothing 0.1 (a calibration remedy)",
                         {"stages.sft.args.label_smoothing_factor": 0.1}),
    # Round 6: the abstain stage's subject check (shipped on), without it, and the budgets and
    # SFT lengths around the shipped ones with it.
    "final_nosubject": ("the abstain stage without its subject check (round 5's policy)",
                        {"stages.abstain.options.subject_check": False}),
    **{f"final_sft{e}_budget{round(1000 * b)}": (
        f"the sft stage for {e} epochs, the abstain stage allowed {b:.1%} of the unknown",
        {"stages.sft.args.num_train_epochs": e, "stages.abstain.options.max_hallucination": b})
       for e, b in ((15, 0.1), (15, 0.125), (15, 0.15), (20, 0.1), (20, 0.125))},
}
# The recipe before issue 18's changes, which every screening variant starts from: the
# variants add one change each to it, on a model pretrained on the unpacked corpus.
BEFORE = {"world.documents_per_row": 1, "stages.idk.options.idk_style": "reply",
          "stages.sft_idk.args.num_train_epochs": 3, "stages.dpo.args.learning_rate": 2.0e-5,
          "stages.dpo.args.num_train_epochs": 2}
# Screening runs these stages only (`--all-stages` runs the whole recipe).
SCREEN = ("sft", "idk", "sft_idk", "abstain", "dpo", "evaluate")


def set_dotted(recipe: dict, key: str, value) -> None:
    node = recipe
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def quiet(recipe: dict) -> None:
    """No progress bars in the logs, for the stages that train (the others take no `args`)."""
    for stage in recipe["stages"].values():
        if get_kind(stage["kind"]).config_class() is not None:
            stage.setdefault("args", {})["disable_tqdm"] = True


def variant_recipe(name: str, seed: int, pretrained: Path, out: Path, screen: bool) -> Path:
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["stages"].pop("pretrain")
    settings = {} if name.startswith("final") else dict(BEFORE)
    settings.update(VARIANTS[name][1])
    if screen:  # the screening stages, and any stage the variant changes
        keep = set(SCREEN) | {k.split(".")[1] for k in settings if k.startswith("stages.")}
        recipe["stages"] = {k: v for k, v in recipe["stages"].items() if k in keep}
        recipe["stages"]["evaluate"]["from"] = [
            s for s in recipe["stages"] if get_kind(recipe["stages"][s]["kind"]).makes_model]
    recipe["stages"]["sft"].pop("from")
    for key, value in settings.items():
        set_dotted(recipe, key, copy.deepcopy(value))
    quiet(recipe)
    recipe.update(name=f"honesty-{name}", seed=seed, run_dir=str(out / f"{name}-s{seed}"),
                  model={"name_or_path": str(pretrained)})
    path = out / f"{name}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run(args: list[str], log: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.time()
    with log.open("w") as f:
        subprocess.run([sys.executable, "-m", "align", "run", *args], check=True, stdout=f,
                       stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return time.time() - start


def pretrain(out: Path, settings: dict) -> Path:
    """The recipe's pretrain stage alone (with `settings`); returns the directory of its model."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["stages"] = {"pretrain": recipe["stages"]["pretrain"]}
    for key, value in settings.items():
        set_dotted(recipe, key, value)
    recipe["run_dir"] = str(out / "pretrain")
    path = out / "pretrain.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run([str(path)], out / "pretrain.log")
    return out / "pretrain" / "pretrain" / "model"


REUSED = ("sft", "idk", "sft_idk", "dpo")  # each made from the ones before it


def reuse_upstream(out: Path, name: str, seed: int) -> None:
    """Copy the stages every variant runs from an earlier run of the same seed whose recipe
    agrees on the stage and the ones before it. The runner still keeps each only if its stage
    hash matches (same settings, same world, same inputs), else reruns it."""
    target = out / f"{name}-s{seed}"
    blocks = lambda path: yaml.safe_load(path.read_text())["stages"]  # noqa: E731
    mine = blocks(out / f"{name}-s{seed}.yaml")
    for donor in sorted(out.glob(f"*-s{seed}")):
        if donor == target or not donor.is_dir():
            continue
        theirs = blocks(out / f"{donor.name}.yaml")
        for i, stage in enumerate(REUSED):
            same = all(mine.get(s) == theirs.get(s) for s in REUSED[:i + 1])
            if same and (donor / stage / "artifact.json").exists() and not (target / stage).exists():
                shutil.copytree(donor / stage, target / stage)


def run_variant(name: str, seed: int, pretrained: Path, out: Path, screen: bool) -> dict:
    path = variant_recipe(name, seed, pretrained, out, screen)
    reuse_upstream(out, name, seed)
    seconds = run([str(path)], out / f"{name}-s{seed}.log")
    metrics = json.loads((out / f"{name}-s{seed}" / "evaluate" / "metrics.json").read_text())
    result = {"variant": name, "seed": seed, "what": VARIANTS[name][0],
              "settings": VARIANTS[name][1], "seconds": round(seconds, 1), "stages": metrics}
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}"


def render(results: list[dict]) -> str:
    """Every variant, seed and stage: the headline figures, then the exposure breakdown."""
    from align.honesty.metrics import headline

    cols = [("acc. known", "accuracy_known"), ("over-ref. known", "over_refusal_known"),
            ("halluc. unknown", "hallucination_unknown"),
            ("refusal nonexist.", "refusal_nonexistent"),
            ("prudence", "prudence"), ("over-cons.", "over_conservativeness"),
            ("honesty", "honesty"), ("correct", "correct"), ("incorrect", "incorrect"),
            ("truthf.", "truthfulness"), ("min attr. gap", "min_attribute_gap")]
    lines = ["| variant | seed | stage | " + " | ".join(c for c, _ in cols) + " |",
             "|---|---:|---|" + "---:|" * len(cols)]
    for r in results:
        for stage, m in r["stages"].items():
            h = headline(m)
            lines.append(f"| {r['variant']} | {r['seed']} | {stage} | "
                         + " | ".join(pct(h[k]) for _, k in cols) + " |")
    lines += ["", "Refusal by exposure level (% of the level's questions; nonexistent last):", ""]
    groups = list(dict.fromkeys(g for r in results for m in r["stages"].values()
                                for g in m["by_exposure"]))
    lines += ["| variant | seed | stage | " + " | ".join(groups) + " |",
              "|---|---:|---|" + "---:|" * len(groups)]
    for r in results:
        for stage, m in r["stages"].items():
            lines.append(f"| {r['variant']} | {r['seed']} | {stage} | " + " | ".join(
                pct(m["by_exposure"].get(g, {}).get("not_attempted")) for g in groups) + " |")
    attributes = list(dict.fromkeys(a for r in results for m in r["stages"].values()
                                    for a in m["by_attribute"]))
    lines += ["", "Per attribute, refusal on model-unknown / model-known facts of real countries:",
              "", "| variant | seed | stage | " + " | ".join(attributes) + " |",
              "|---|---:|---|" + "---:|" * len(attributes)]
    for r in results:
        for stage, m in r["stages"].items():
            if stage == "sft":
                continue
            lines.append(f"| {r['variant']} | {r['seed']} | {stage} | " + " | ".join(
                f"{pct(m['by_attribute'][a]['refusal_unknown'])} / "
                f"{pct(m['by_attribute'][a]['refusal_known'])}" for a in attributes) + " |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(rounds: dict[str, list[dict]], path: Path) -> Path:
    """Over-refusal on known against hallucination on unknown facts (the sft model's labels):
    the abstain stage's budgets as one line per results file (a round) and seed, every trained
    stage of the last file's `final` variant as a point. Down and to the left is better; the
    grey box is issue 18's targets."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from align.honesty.metrics import headline

    fig = Figure(figsize=(6.5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.add_patch(Rectangle((0, 0), 10, 15, color="0.9", zorder=0, label="issue 18's targets"))
    markers = dict(zip((42, 43, 44), "os^"))
    for color, (name, results) in enumerate(rounds.items()):
        for seed in sorted({r["seed"] for r in results}):
            curve = []
            for r in results:
                gate = r["settings"].get("stages.abstain.options.familiarity_gate", True)
                if r["seed"] != seed or "abstain" not in r["stages"] or gate is False:
                    continue
                h = headline(r["stages"]["abstain"])
                budget = r["settings"].get("stages.abstain.options.max_hallucination", 0.15)
                curve.append((budget, 100 * h["over_refusal_known"],
                               100 * h["hallucination_unknown"]))
            curve.sort()
            ax.plot([c[1] for c in curve], [c[2] for c in curve], "-",
                    marker=markers.get(seed, "o"), color=f"C{color}",
                    label=f"abstain, {name}, budget 5-30% (seed {seed})")
            for budget, x, y in curve:
                ax.annotate(f"{budget:.2f}", (x, y), textcoords="offset points", xytext=(4, 2),
                            fontsize=7, color=f"C{color}")
    last = list(rounds.values())[-1]
    first_seed = min(r["seed"] for r in last)
    for seed in sorted({r["seed"] for r in last}):
        final = next((r for r in last if r["seed"] == seed and r["variant"] == "final"), None)
        for i, (stage, m) in enumerate((final or {"stages": {}})["stages"].items()):
            if stage in ("sft", "abstain"):
                continue
            h = headline(m)
            ax.scatter([100 * h["over_refusal_known"]], [100 * h["hallucination_unknown"]],
                       marker=markers.get(seed, "o"), color=f"C{len(rounds) + i}",
                       label=stage if seed == first_seed else None)
    ax.set_xlim(0, 70)
    ax.set_ylim(0, 40)
    ax.set_xlabel("over-refusal: facts the sft model knows, refused (%)")
    ax.set_ylabel("hallucination: facts it does not know, answered wrong (%)")
    ax.set_title("Over-refusal against hallucination: stages and abstain budgets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def auroc(positive: list[float], negative: list[float]) -> float:
    """P(a random positive scores above a random negative), ties counting half."""
    wins = sum((a > b) + 0.5 * (a == b) for a in positive for b in negative)
    return wins / (len(positive) * len(negative))


def value_confidence(run_dir: Path, stage: str = "sft") -> dict:
    """How well the model's own confidence separates the held-out questions the probe labelled
    known from those labelled unknown, per attribute: the ceiling of any stage that refuses by
    that confidence. Two signals: `first`, its largest next-token probability after the answer's
    opening ("The capital of X is", where an inline refusal decides), and `value`, the
    probability of its whole greedy answer after that opening. For each: AUROC, and the best
    refusal threshold's error rates (`eer`: the equal error rate, where over-refusal on known
    equals hallucination on unknown; `over_at_15`: the least over-refusal with hallucination on
    unknown at most 15%). `value_from_pool`: the error rates on the held-out questions of the
    threshold chosen on the probe pool (the idk stage's labels), no held-out label used."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / stage / "model")
    model = AutoModelForCausalLM.from_pretrained(run_dir / stage / "model").eval()
    rows = {r["question"]: r for name in ("qa_train", "qa_eval")
            for r in map(json.loads, open(run_dir / "world" / f"{name}.jsonl"))}

    def confidence(row: dict) -> tuple[float, float]:
        opening = row["answer"][:row["answer"].find(row["answers"][0])].rstrip()
        opening = opening[:-4] if opening.endswith(" the") else opening
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": row["question"]}],
                                               tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt + opening, return_tensors="pt", add_special_tokens=False).input_ids
        probs = []
        with torch.no_grad():  # the greedy value after the opening, up to its full stop
            for _ in range(8):
                p, token = model(ids).logits[0, -1].softmax(-1).max(-1)
                probs.append(p.item())
                if "." in tokenizer.decode(token) or token == tokenizer.eos_token_id:
                    break
                ids = torch.cat([ids, token.view(1, 1)], dim=1)
        return probs[0], math.prod(probs)

    def scored(labelled) -> list[tuple]:
        return [(label == "known", *confidence(rows[q]), rows[q]["attribute"])
                for q, label in labelled if label in ("known", "unknown")]

    held_out = scored((a["question"], a.get("model_label"))
                      for a in map(json.loads, open(run_dir / "evaluate" / "answers.jsonl"))
                      if a["stage"] == stage)
    pool = scored((r["question"], r["category"])
                  for r in map(json.loads, open(run_dir / "idk" / "probe.jsonl")))
    out = {}
    for attribute in ["all", *sorted({s[3] for s in held_out})]:
        pick = [s for s in held_out if attribute in ("all", s[3])]
        out[attribute] = {"known": sum(s[0] for s in pick), "unknown": sum(not s[0] for s in pick)}
        for i, signal in ((1, "first"), (2, "value")):
            pos, neg = [s[i] for s in pick if s[0]], [s[i] for s in pick if not s[0]]
            out[attribute][signal] = operating_points(pos, neg) if pos and neg else None
        train = [s for s in pool if attribute in ("all", s[3])]
        t = eer_threshold([s[2] for s in train if s[0]], [s[2] for s in train if not s[0]])
        over, halluc = error_rates([s[2] for s in pick if s[0]], [s[2] for s in pick if not s[0]], t)
        out[attribute]["value_from_pool"] = {"threshold": t, "over_refusal": round(over, 3),
                                             "hallucination": round(halluc, 3)}
    return out


def eer_threshold(known: list[float], unknown: list[float]) -> float:
    """The refusal threshold where the larger of the two error rates is least."""
    return min(sorted(set(known + unknown)), key=lambda t: max(error_rates(known, unknown, t)))


def operating_points(known: list[float], unknown: list[float]) -> dict:
    """AUROC, and the error rates of the best threshold (refuse below it) on these scores."""
    points = [error_rates(known, unknown, t) for t in sorted(set(known + unknown)) + [math.inf]]
    eer = min(points, key=lambda p: max(p))
    return {"auroc": round(auroc(known, unknown), 3), "eer": round(max(eer), 3),
            "over_at_15": round(min(o for o, h in points if h <= 0.15), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--pretrain", action="store_true", help="run the pretrain stage first")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted recipe settings for --pretrain (YAML values), e.g. "
                             "model.tiny.vocab_size=2048")
    parser.add_argument("--pretrained", type=Path, help="model directory to start from")
    parser.add_argument("--variants", nargs="*", default=[])
    parser.add_argument("--seeds", nargs="*", type=int, default=[42])
    parser.add_argument("--table", nargs="?", const=True, type=Path, metavar="RESULTS",
                        help="print every result (of <out>/results.jsonl, or of RESULTS, e.g. "
                             "benchmarks/honesty-results/vocab2048.jsonl) as markdown")
    parser.add_argument("--confidence", type=Path, metavar="RUN_DIR",
                        help="AUROC of the sft model's value-token confidence in a finished run")
    parser.add_argument("--plot", nargs="+", type=Path, metavar="RESULTS... PNG",
                        help="draw the over-refusal / hallucination trade-off of results files "
                        "(one line per file and seed), then the PNG to write")
    parser.add_argument("--all-stages", action="store_true", help="every stage, not " + str(SCREEN))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pretrained = args.pretrained or args.out / "pretrain" / "pretrain" / "model"
    if args.pretrain:
        settings = dict(item.split("=", 1) for item in args.set)
        pretrained = pretrain(args.out, {k: yaml.safe_load(v) for k, v in settings.items()})
    for name in args.variants:
        for seed in args.seeds:
            r = run_variant(name, seed, pretrained, args.out, not args.all_stages)
            print(f"{name} seed {seed}: {r['seconds']} s", flush=True)
    if args.confidence:
        print(json.dumps(value_confidence(args.confidence), indent=1))
    if args.plot:
        if len(args.plot) < 2:
            parser.error("--plot takes one or more results files, then the PNG to write")
        *sources, png = args.plot
        rounds = {source.stem: [json.loads(line) for line in source.read_text().splitlines()]
                  for source in sources}
        print(plot_tradeoff(rounds, png))
    if args.table:
        source = args.out / "results.jsonl" if args.table is True else args.table
        lines = source.read_text().splitlines()
        results = [json.loads(line) for line in lines]
        print(render(results))


if __name__ == "__main__":
    main()
