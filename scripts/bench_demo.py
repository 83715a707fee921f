"""Benchmark: wall time of `make demo` per stage.

Runs `align run` on the demo's recipe (the one `align run` uses with no argument, unless
--recipe names another) into a fresh run directory, so no stage is skipped, and times each stage
from the runner's own lines as they are printed: from "[i/n] NAME (KIND): running" to the
stage's one-line report. The time before the first stage (imports, validation, building the
world, and the tiny model when --cold-cache) is shown as "set-up". Each manifest's own
started_at/finished_at is shown beside it: the stage's time inside its process, without the
launch of a process under multi-process profiles.

    nice -n 10 .venv/bin/python scripts/bench_demo.py                   # benchmarks/demo.md
    .venv/bin/python scripts/bench_demo.py --recipe recipes/tiny/sft.yaml \\
        --out /tmp/demo.md stages.pretrain.args.num_train_epochs=4       # a reduced run

KEY=VALUE arguments are passed to `align run` as dotted overrides; the report says so.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

START = re.compile(r"^\[(\d+)/(\d+)\] (\S+) \((\w+)\): (running|resuming)")
DONE = re.compile(r"^\[(\d+)/(\d+)\] (\S+) \((\w+)\) \|")


def default_recipe() -> str:
    from align.cli import DEFAULT_RECIPE

    return str(DEFAULT_RECIPE)


def run_and_time(recipe: str, overrides: list[str], run_dir: Path, cache: Path | None, log: Path) -> dict:
    """Run `align run`, echoing its lines; stage start/end times as the lines arrive."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if cache is not None:
        env["ALIGN_CACHE"] = str(cache)
    cmd = [sys.executable, "-m", "align", "run", recipe, f"run_dir={run_dir}", *overrides]
    stages: dict[str, dict] = {}
    first_stage = None
    started = time.perf_counter()
    with log.open("w") as f, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                              env=env, cwd=bc.ROOT) as proc:
        for line in proc.stdout:
            now = time.perf_counter() - started
            f.write(line)
            text = line.rstrip("\n")
            if m := START.match(text):
                first_stage = now if first_stage is None else first_stage
                stages[m.group(3)] = {"kind": m.group(4), "start": now}
                print(text, flush=True)
            elif (m := DONE.match(text)) and m.group(3) in stages:
                stages[m.group(3)]["end"] = now
                print(text, flush=True)
        code = proc.wait()
    total = time.perf_counter() - started
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"code": code, "total": total, "setup": first_stage if first_stage is not None else total,
            "stages": stages, "cpu_seconds": cpu.ru_utime + cpu.ru_stime}


def manifest_times(run_dir: Path, stages: dict) -> None:
    for name, info in stages.items():
        path = run_dir / name / "artifact.json"
        if path.exists():
            m = json.loads(path.read_text())
            if m.get("finished_at") and m.get("started_at"):
                info["manifest"] = m["finished_at"] - m["started_at"]


def write_report(path: Path, result: dict, meta: dict) -> None:
    total = result["total"]
    lines = ["# Wall time of the demo recipe, per stage", "",
             f"Date: {meta['started']} (UTC). Machine: {meta['host']}.", "",
             f"Command: `{meta['command']}`", "",
             f"Recipe: `{meta['recipe']}`" + (f", with overrides `{' '.join(meta['overrides'])}` (a reduced "
                                              "run, not the demo as shipped)" if meta["overrides"] else
                                              " as shipped") + f"; fresh run directory; "
             f"{'cold' if meta['cold_cache'] else 'warm'} tiny-model cache.", "",
             f"Libraries: {meta['versions']}.", "",
             "| stage | kind | wall s | share | stage's own s (manifest) |", "|---|---|---:|---:|---:|",
             f"| set-up (imports, validation, world{', tiny model' if meta['cold_cache'] else ''}) | | "
             f"{result['setup']:.1f} | {result['setup'] / total:.0%} | |"]
    accounted = result["setup"]
    for name, s in result["stages"].items():
        if "end" not in s:
            lines.append(f"| {name} | {s['kind']} | did not finish | | |")
            continue
        wall = s["end"] - s["start"]
        accounted += wall
        own = f"{s['manifest']:.1f}" if "manifest" in s else ""
        lines.append(f"| {name} | {s['kind']} | {wall:.1f} | {wall / total:.0%} | {own} |")
    lines += [f"| after the last stage (report) | | {max(0.0, total - accounted):.1f} | "
              f"{max(0.0, total - accounted) / total:.0%} | |",
              f"| **total** | | **{total:.1f}** | 100% | |", "",
              f"CPU time of the run (user + system, all its processes): {result['cpu_seconds']:.0f} s, "
              f"{result['cpu_seconds'] / total:.2f}x the wall time.", ""]
    if result["code"] != 0:
        lines += [f"`align run` exited with code {result['code']}; see the log {meta['log']}.", ""]
    lines += ["Wall time is from the runner's lines: a stage runs from its \"running\" line to its one-line "
              "report. The manifest's time is the stage's own, from its context's creation to its manifest; "
              "the difference is loading inputs and, under a multi-process profile, launching processes.", ""]
    bc.write_lines(path, lines)


def main() -> None:
    parser = bc.script_parser(__doc__)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides for `align run`")
    parser.add_argument("--recipe", default=None, help="recipe (default: the one `align run` runs by default)")
    parser.add_argument("--workdir", default=str(bc.ROOT / ".bench" / "demo"),
                        help="run directory and cache go here; the run directory is emptied first")
    parser.add_argument("--cold-cache", action="store_true",
                        help="build the tiny model afresh (a new ALIGN_CACHE), as a first `make demo` does")
    parser.add_argument("--out", default=str(bc.ROOT / "benchmarks" / "demo.md"))
    args = parser.parse_args()
    recipe = args.recipe or default_recipe()
    workdir = Path(args.workdir).resolve()
    run_dir = workdir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cache = None
    if args.cold_cache:
        cache = workdir / "cache"
        shutil.rmtree(cache, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = bc.run_meta("bench_demo.py", recipe=recipe, overrides=args.overrides,
                       cold_cache=args.cold_cache, log=str(workdir / "align-run.log"))
    result = run_and_time(recipe, args.overrides, run_dir, cache, workdir / "align-run.log")
    manifest_times(run_dir, result["stages"])
    (workdir / "result.json").write_text(json.dumps({"result": result, "meta": meta}, indent=1))
    write_report(Path(args.out), result, meta)
    print(f"total {result['total']:.0f}s; wrote {args.out}")
    raise SystemExit(result["code"])


if __name__ == "__main__":
    main()
