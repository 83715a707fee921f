"""`align` command line: run | stage | validate | ls | tiny | eval | push | export | chat.

User errors (AlignError) print one paragraph and exit 2, with no traceback unless `--debug`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

# Command handlers import the layers they drive (runner, validate, hub, stages) when they run:
# those import torch and transformers, which `align --help` and `align ls` should not wait for.
from align.data.formats import convert_rows
from align.data.sources import read_local
from align.errors import AlignError
from align.profiles import shipped_recipes_dir

# `make demo` and `align run` without a recipe: the whole pipeline, ending in the honesty table.
DEFAULT_RECIPE = "recipes/tiny/honesty.yaml"
RECIPES_DIR = shipped_recipes_dir()


def default_recipe() -> str:
    for candidate in (Path(DEFAULT_RECIPE), RECIPES_DIR / "tiny" / "honesty.yaml"):
        if candidate.exists():
            return str(candidate)
    raise AlignError("no recipe given and the default recipe was not found; "
                     "run `align ls` to see the shipped recipes.")


def split_only(only: list[str] | None, overrides: list[str]) -> tuple[list[str] | None, list[str]]:
    """`--only a b key=value`: argparse hands the trailing overrides to --only; take them back."""
    if not only:
        return only, overrides
    return [o for o in only if "=" not in o], overrides + [o for o in only if "=" in o]


def cmd_run(args) -> int:
    from align.runner import run_recipe

    recipe = args.recipe or default_recipe()
    args.only, args.overrides = split_only(args.only, args.overrides)
    if not args.no_validate:
        from align.validate import validate_recipe

        validate_recipe(recipe, args.overrides, accelerate=args.accelerate, only=args.only)
    run_recipe(recipe, args.overrides, only=args.only, accelerate=args.accelerate)
    return 0


def cmd_stage(args) -> int:
    from align.recipe import load_recipe
    from align.runner import execute_stage

    recipe = load_recipe(args.recipe, args.overrides)
    if args.stage not in recipe.stages:
        raise AlignError(f"no stage '{args.stage}' in {args.recipe}; stages: "
                         f"{', '.join(recipe.stages)}")
    from align.distributed import process_state
    from align.runner import finished_inputs

    finished_inputs(recipe, args.stage)  # missing or changed upstream artifacts: before any write
    state = process_state()
    launched_by_run = bool(os.environ.get("ALIGN_LAUNCHED"))  # `align run` did both already
    lock = contextlib.nullcontext()
    if not launched_by_run and state.is_main_process:
        from align.runner import run_lock

        lock = run_lock(recipe.output_dir())  # by hand: not beside an `align run` on the same dir
    with lock:
        if not launched_by_run and state.is_main_process:
            from align.runner import prepare_world

            prepare_world(recipe)  # one writer; the other ranks wait below
        state.wait_for_everyone()
        from align.runner import current_artifact

        was_current = current_artifact(recipe, args.stage) is not None
        artifact = execute_stage(recipe, args.stage)
        if was_current and state.is_main_process:
            print(f"{args.stage}: up to date, skipped (its artifact matches the recipe, inputs "
                  "and data)", flush=True)
        if not (launched_by_run or was_current) and state.is_main_process and artifact is not None:
            from align.runner import push_stage

            push_stage(recipe, args.stage, artifact)
    return 0


def cmd_validate(args) -> int:
    from align.validate import validate_recipe

    recipe = args.recipe or default_recipe()
    for line in validate_recipe(recipe, args.overrides, accelerate=args.accelerate):
        print(f"  ok  {line}")
    print(f"{recipe}: valid")
    return 0


def shown_path(path: Path) -> str:
    """A path that works from the current directory: relative below it, absolute elsewhere."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def cmd_ls(args) -> int:
    import yaml

    for path in sorted(RECIPES_DIR.rglob("*.yaml")):
        if path.parent.name == "accelerate":
            continue
        data = yaml.safe_load(path.read_text()) or {}
        stages = " -> ".join((data.get("stages") or {}).keys())
        rel = shown_path(path)
        print(f"{rel}\n    {data.get('description', '').strip()}\n    stages: {stages}")
    profiles = sorted(p.stem for p in (RECIPES_DIR / "accelerate").glob("*.yaml"))
    print(f"\naccelerate profiles: {', '.join(profiles)}")
    return 0


def cmd_tiny(args) -> int:
    from align.data.world import WorldConfig
    from align.tiny import TinyConfig, build_tiny, count_parameters

    if args.out:
        check_out_option(args.out)
    config = TinyConfig(world=WorldConfig(seed=args.world_seed, n_entities=args.entities))
    out = build_tiny(config, args.out)
    print(f"tiny model ({count_parameters(out):,} parameters) and tokenizer in {out}")
    return 0


def check_out_option(out: str) -> None:
    """`--out` can be written: found before any model loads or generates, not after."""
    from align.artifacts import check_writable_dir

    check_writable_dir(Path(out), "--out")


def read_qa(path: str, need_known: bool) -> list[dict]:
    """A QA file read as the idk and evaluate stages read their data."""
    return convert_rows(read_local(Path(path)), source=path,
                        target="labelled_qa" if need_known else "qa", keep_columns=True).rows


def cmd_eval(args) -> int:
    from align.artifacts import load_artifact
    from align.stages.evaluate import evaluate_artifacts, write_evaluation

    check_out_option(args.out)
    artifacts = {}
    for path in args.artifacts:
        artifact = load_artifact(path)
        artifacts[artifact.name if artifact.name not in artifacts else path] = artifact
    options = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size}
    table, answers = evaluate_artifacts(artifacts, read_qa(args.data, True), options)
    print(write_evaluation(Path(args.out), table, answers))
    print(f"\nwritten to {args.out}/ (answers.jsonl, metrics.json, seesaw.md, seesaw.png)")
    return 0


def cmd_idk_build(args) -> int:
    from align.artifacts import load_artifact
    from align.honesty.builder import (ProbeConfig, build_outputs, probe, probe_stats,
                                       write_outputs)
    from align.honesty.judge import Judge
    from align.modeling import load_artifact_model, load_tokenizer

    check_out_option(args.out)
    artifact = load_artifact(args.artifact)
    config = ProbeConfig.from_options({"k": args.k, "temperature": args.temperature,
                                       "known_threshold": args.known_threshold,
                                       "unknown_threshold": args.unknown_threshold,
                                       "grey": args.grey}, "align idk build")
    rows = read_qa(args.data, False)
    model = load_artifact_model(artifact)
    tokenizer = load_tokenizer(artifact.path / (artifact.manifest.tokenizer or "model"))
    records = probe(model, tokenizer, rows, config, Judge(idk_responses=config.idk_responses))
    outputs = build_outputs(records, config)
    stats = probe_stats(records, config)
    write_outputs(Path(args.out), records, outputs, stats)
    print(f"{stats['categories']} of {stats['questions']} questions; files in {args.out}/")
    return 0


def cmd_push(args) -> int:
    from align.hub import format_plan, push_artifact

    result = push_artifact(args.artifact, args.repo_id, private=args.private,
                           revision=args.revision, commit_message=args.commit_message,
                           dry_run=args.dry_run, run_report=run_report_of(args.artifact),
                           merged=args.merged)
    if args.dry_run:
        print(format_plan(result))
    else:
        print(f"pushed {len(result.files)} files to {result.repo_id}: {result.commit_url}")
    return 0


def cmd_export(args) -> int:
    from align.artifacts import load_artifact
    from align.honesty.abstention import copy_policy
    from align.modeling import export_model

    check_out_option(args.out)  # a file in the way is found before the model loads
    artifact = load_artifact(args.artifact)
    out = export_model(artifact, Path(args.out))
    print(f"exported {args.artifact} to {out}: one standalone model (safetensors, adapters "
          "merged), its tokenizer and chat template; load it with "
          f"AutoModelForCausalLM.from_pretrained(\"{out}\")")
    policy = copy_policy(artifact.model_path(), out)  # an abstain stage's threshold
    if policy is not None:
        print(f"{policy}: this model's abstention policy (align.honesty.abstention:"
              "load_policy). Plain transformers generation does not apply it: without it the "
              "model answers every question, sure or not.")
    return 0


def cmd_chat(args) -> int:
    from align.chat import Chat

    chat = Chat(args.artifact, system=args.system, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature)
    if args.prompt is not None:
        chat.reply(args.prompt)
        return 0
    chat.loop(sys.stdin, interactive=sys.stdin.isatty())
    return 0


def run_report_of(artifact: str) -> str | None:
    """The run's honesty table, when an evaluate stage beside the artifact has one."""
    for table in sorted(Path(artifact).resolve().parent.glob("*/seesaw.md")):
        return table.read_text()
    return None


def argument_type(cast, kind: str, ok, rule: str):
    """An argparse type: `cast`, then `ok(value)`, each refused with a message saying what is needed."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got '{text}'") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value
    parse.__name__ = kind  # argparse names the type in its "invalid ... value" message
    return parse


positive_int = argument_type(int, "a whole number", lambda v: v > 0, "at least 1")
probability = argument_type(float, "a number", lambda v: 0 <= v <= 1, "between 0 and 1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="align", description="Staged alignment recipes: SFT, reward models, PPO, DPO, KTO, "
        "ORPO, and honesty (\"I don't know\") data, on transformers, TRL, PEFT and accelerate.",
        epilog="Examples:\n  align run                                  # the default recipe "
        "(tiny model, CPU)\n  align run recipes/tiny/sft.yaml stages.sft.args.learning_rate=1e-4\n"
        "  align validate recipes/my.yaml\n  align ls",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--verbose", action="store_true",
                        help="keep the library messages align filters as expected (a new reward "
                             "head's load report, known deprecation warnings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def recipe_args(p, optional=False):
        if optional:
            p.add_argument("recipe", nargs="?", help=f"recipe YAML (default: {DEFAULT_RECIPE})")
        else:
            p.add_argument("recipe", help="recipe YAML file")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. stages.sft.args.learning_rate=1e-4")
        p.add_argument("--accelerate", metavar="PROFILE",
                       help="accelerate profile name (recipes/accelerate/NAME.yaml) or config path")

    p = sub.add_parser("run", help="run a recipe: every stage in order, skipping finished ones",
                       description="Validate, then run every stage in dependency order. Stages "
                       "whose artifact is complete and up to date are skipped; an interrupted "
                       "stage resumes from its last checkpoint.")
    recipe_args(p, optional=True)
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages")
    p.add_argument("--no-validate", action="store_true", help="skip the data checks before running")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stage", help="run one stage (what `accelerate launch` calls)",
                       description="Run one stage of a recipe in this process. Upstream stages "
                       "must be finished. Use under `accelerate launch -m align stage ...`.")
    recipe_args(p)
    p.add_argument("--stage", required=True, help="stage name")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("validate", help="check a recipe and its data without training",
                       description="Check the schema, stage references, stage args against the "
                       "TRL config classes, the accelerate profile, and every dataset's rows.")
    recipe_args(p, optional=True)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("ls", help="list the shipped recipes and accelerate profiles")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("tiny", help="build the embedded tiny model and tokenizer",
                       description="Build the tiny Llama model and BPE tokenizer trained on the "
                       "embedded world (cached by settings).")
    p.add_argument("--out", help="output directory (default: the cache)")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--entities", type=positive_int, default=160)
    p.set_defaults(func=cmd_tiny)

    p = sub.add_parser("eval", help="honesty evaluation of model artifacts on labelled QA",
                       description="Greedy answers of each artifact on a QA file (question, "
                       "answers, known), graded correct / wrong / refusal; writes the seesaw "
                       "table, chart and every answer.")
    p.add_argument("artifacts", nargs="+", help="artifact directories, e.g. runs/x/sft runs/x/dpo")
    p.add_argument("--data", required=True, help="JSONL/JSON/CSV/Parquet with question, answers, known")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-new-tokens", type=positive_int, default=32)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("idk", help="\"I don't know\" data: `align idk build`")
    idk = p.add_subparsers(dest="idk_command", metavar="ACTION", required=True)
    p = idk.add_parser("build", help="probe a model and write IDK training data",
                       description="Probe an artifact on QA rows (question, answers) with one "
                       "greedy and K sampled answers, sort questions into known / unknown / grey, "
                       "and write sft, preference, kto, rm and prompts files plus stats.")
    p.add_argument("artifact", help="the model artifact to probe (usually the sft stage)")
    p.add_argument("--data", required=True, help="QA file with question and answers columns")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--k", type=positive_int, default=8, help="sampled answers per question")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--known-threshold", type=probability, default=0.5)
    p.add_argument("--unknown-threshold", type=probability, default=0.1)
    p.add_argument("--grey", choices=["drop", "confidence"], default="drop")
    p.set_defaults(func=cmd_idk_build)

    p = sub.add_parser("push", help="upload an artifact's adapter or model with a model card",
                       description="Upload what a stage produced (the adapter, or the full "
                       "model in safetensors, and the tokenizer; never checkpoints or optimizer "
                       "state) with a model card, in one commit. The token comes from HF_TOKEN "
                       "or the saved login.")
    p.add_argument("artifact", help="artifact directory, e.g. runs/my/dpo")
    p.add_argument("--repo-id", required=True, help="OWNER/NAME on the Hub")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", help="branch to commit to (created if missing)")
    p.add_argument("--commit-message", help="commit message")
    p.add_argument("--dry-run", action="store_true",
                   help="list the files and print the card; no network, no token needed")
    p.add_argument("--merged", action="store_true",
                   help="push the standalone model `align export` writes (every adapter merged) "
                        "instead of the adapter")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("export", help="one standalone model: adapters merged, tokenizer, template",
                       description="Write the model an artifact holds as one standalone model "
                       "directory: full weights in safetensors with the whole adapter chain "
                       "merged, its tokenizer and chat template. Plain "
                       "`AutoModelForCausalLM.from_pretrained(DIR)` loads it (no align, no PEFT).")
    p.add_argument("artifact", help="artifact directory, e.g. runs/my/dpo")
    p.add_argument("--out", required=True, help="a new (or empty) output directory")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("chat", help="talk to a model artifact (its chat template, streamed)",
                       description="Chat with the model an artifact holds (adapters merged), "
                       "through its chat template, tokens streamed as they come (an abstain "
                       "stage's model: the whole answer, then kept or replaced by its refusal "
                       "as its abstention policy decides). Without "
                       "--prompt: a multi-turn loop, one user turn per line of input (/clear "
                       "starts over, /exit or end of input stops).")
    p.add_argument("artifact", help="artifact directory, e.g. runs/my/dpo")
    p.add_argument("--prompt", help="ask one question, print the answer and exit")
    p.add_argument("--system", help="a system message")
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.set_defaults(func=cmd_chat)
    return parser


def quiet_libraries() -> None:
    """Silence import-time chatter that is not actionable for align's users."""
    import logging

    # bitsandbytes looks for an optional Hub kernel for 4-bit CPU matmuls and warns without it.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    if not sys.stdout.isatty():  # a CI log or a file: no carriage-return bars (read by
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers on import)


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may follow options (`align stage R --stage sft seed=1` is how `align run`
    # launches a stage under accelerate); argparse leaves those over, so they are taken here.
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.verbose:
        os.environ["ALIGN_VERBOSE"] = "1"  # read by console.filter_known_warnings
    try:
        return args.func(args)
    except AlignError as exc:
        if args.debug:
            raise
        print(f"align: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("align: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
