"""Runs a recipe: stages in dependency order, each skipped, resumed or run.

A stage is skipped when its artifact is complete and its hash (resolved config, inputs' hashes,
data content) matches; resumed from its last Trainer checkpoint when an earlier attempt with the
same hash was interrupted; otherwise run from scratch in `<name>.partial/`. A single-process
accelerate profile runs stages in this process; any other launches each stage with
`accelerate launch`.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from align.artifacts import StageDirs, config_hash, file_fingerprint, load_artifact
from align.errors import AlignError
from align.recipe import Recipe, load_recipe

PROFILE_DIR = Path(__file__).resolve().parent.parent / "recipes" / "accelerate"


# -- world and base model ----------------------------------------------------------------------

def uses_world(recipe: Recipe) -> bool:
    if recipe.model.name_or_path == "tiny":
        return True
    for stage in recipe.stages.values():
        if stage.data and any(s.world for s in [*stage.data.train, *stage.data.eval]):
            return True
        if stage.kind in ("evaluate", "idk") and stage.data is None:
            return True
    return False


def prepare_world(recipe: Recipe) -> Path | None:
    """Write the embedded world's files into the run directory (idempotent)."""
    from align.data.world import WorldConfig, build_world
    from align.stages.context import world_dir

    if not uses_world(recipe):
        return None
    try:
        config = WorldConfig(**recipe.world)
    except TypeError as exc:
        raise AlignError(f"{recipe.source}: invalid `world` settings: {exc}") from None
    out = world_dir(recipe)
    build_world(config).write(out)  # cheap; files are rewritten only when they change
    return out


# -- hashing -----------------------------------------------------------------------------------

def data_files(recipe: Recipe, name: str) -> list[Path]:
    from align.stages.context import world_dir

    stage = recipe.stages[name]
    files = []
    if stage.data:
        for src in [*stage.data.train, *stage.data.eval]:
            if src.path:
                files.append(recipe.resolve_path(src.path))
            elif src.world:
                files.append(world_dir(recipe) / f"{src.world}.jsonl")
    return files


def stage_hash(recipe: Recipe, name: str, input_hashes: dict[str, str]) -> str:
    from align.stages.context import stage_config

    return config_hash(stage_config(recipe, name), input_hashes,
                       file_fingerprint(data_files(recipe, name)))


def finished_inputs(recipe: Recipe, name: str) -> dict:
    run_dir = recipe.output_dir()
    inputs = {}
    for upstream in recipe.stages[name].from_:
        path = run_dir / upstream
        try:
            inputs[upstream] = load_artifact(path)
        except AlignError as exc:
            if "does not match its manifest" in str(exc):  # there, finished, but changed since
                raise AlignError(f"stage '{name}' needs the artifact of stage '{upstream}': "
                                 f"{exc}") from None
            raise AlignError(f"stage '{name}' needs the artifact of stage '{upstream}' at {path}, "
                             "which is missing or incomplete; run the recipe (or that stage) "
                             "first.") from None
    from align.lineage import check_inputs

    check_inputs(recipe, name, inputs)
    return inputs


# -- one stage ---------------------------------------------------------------------------------

def inputs_and_hash(recipe: Recipe, name: str) -> tuple[dict, str]:
    """The stage's finished upstream artifacts and the hash its own artifact must carry."""
    inputs = finished_inputs(recipe, name)
    return inputs, stage_hash(recipe, name, {n: a.manifest.config_hash for n, a in inputs.items()})


def current_artifact(recipe: Recipe, name: str):
    """The stage's finished artifact when it is up to date (same hash), else None."""
    _, digest = inputs_and_hash(recipe, name)
    return StageDirs(recipe.output_dir(), name).finished(digest)


def execute_stage(recipe: Recipe, name: str):
    """Run one stage in this process (also what `accelerate launch ... align stage` calls)."""
    from align.modeling import resolve_base
    from align.stages import stage_module
    from align.stages.context import StageContext

    inputs, digest = inputs_and_hash(recipe, name)
    dirs = StageDirs(recipe.output_dir(), name)
    finished = dirs.finished(digest)
    if finished:
        return finished
    from align.stages.context import process_state

    state = process_state()
    resumed = False
    if state.is_main_process:
        resumed = dirs.begin(digest)
    state.wait_for_everyone()
    ctx = StageContext(recipe=recipe, name=name, stage=recipe.stages[name], inputs=inputs,
                       dirs=dirs, config_hash=digest, base_model=resolve_base(recipe),
                       resumed=resumed)
    try:
        return stage_module(recipe.stages[name].kind).run(ctx)
    except Exception:
        # Bad input found inside the stage, a numerical fault, a crash: keep only what a rerun
        # can resume from (the last complete checkpoints), never temporary files.
        if state.is_main_process:
            dirs.clean_after_failure()
        raise


def profile_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise AlignError(f"accelerate profile file not found: {path}")
        if not path.is_file():
            raise AlignError(f"accelerate profile {path} is a directory; give a config file.")
        return path
    candidate = PROFILE_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        shipped = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise AlignError(f"unknown accelerate profile '{name_or_path}'. Shipped profiles: "
                         f"{', '.join(shipped)}; or give a path to an accelerate config file.")
    return candidate


def is_single_process(profile: Path) -> bool:
    config = yaml.safe_load(profile.read_text()) or {}
    return int(config.get("num_processes", 1)) == 1 and \
        str(config.get("distributed_type", "NO")).upper() == "NO"


def launch_command(recipe_path: str, name: str, overrides: list[str], profile: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(profile),
            "-m", "align", "stage", str(recipe_path), "--stage", name, *overrides]


# -- the whole recipe --------------------------------------------------------------------------

@contextmanager
def run_lock(run_dir: Path):
    """One `align run` per run directory: a second one would corrupt the first's artifacts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlignError(f"another `align run` is using {run_dir} (lock {run_dir / '.lock'} is "
                         "held). Wait for it to finish, or give this run another run_dir.") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run_recipe(recipe_path: str, overrides: list[str] | None = None, *, only: list[str] | None = None,
               accelerate: str | None = None) -> dict:
    """Run (or skip, or resume) every stage; returns name -> artifact."""
    from align.stages.summary import one_line

    overrides = list(overrides or [])
    recipe = load_recipe(recipe_path, overrides)
    profile = profile_path(accelerate or recipe.accelerate)
    in_process = is_single_process(profile)
    order = recipe.order()
    if only:
        missing = [n for n in only if n not in recipe.stages]
        if missing:
            raise AlignError(f"no stage named {missing} in {recipe_path}; stages: {', '.join(order)}")
    run_dir = recipe.output_dir()
    results = {}
    with run_lock(run_dir):
        prepare_world(recipe)
        print(f"align: recipe {recipe.name} -> {run_dir}  ({len(order)} stages, profile "
              f"{profile.stem})", flush=True)
        for i, name in enumerate(order, 1):
            if only and name not in only and not StageDirs(run_dir, name).final.exists():
                continue  # not asked for and never built: its inputs may not exist yet
            _, digest = inputs_and_hash(recipe, name)
            dirs = StageDirs(run_dir, name)
            dirs.recover(digest)  # a commit a kill interrupted: finish it, do not redo the stage
            done = dirs.finished(digest)
            tag = f"[{i}/{len(order)}]"
            if done or (only and name not in only):
                if done:
                    print(f"{tag} {name}: up to date, skipped", flush=True)
                    results[name] = done
                continue
            state = "resuming" if (dirs.partial / "progress.json").exists() else "running"
            print(f"{tag} {name} ({recipe.stages[name].kind}): {state}", flush=True)
            start = time.time()
            if in_process:
                artifact = execute_stage(recipe, name)
            else:
                env = dict(os.environ, ALIGN_LAUNCHED="1")
                proc = subprocess.run(launch_command(recipe_path, name, overrides, profile), env=env)
                if proc.returncode != 0:
                    raise StageFailed(name, proc.returncode)
                artifact = load_artifact(dirs.final)
            results[name] = artifact
            # The runner is one process whatever the profile: the push happens once.
            push_stage(recipe, name, artifact, tag)
            print(f"{tag} " + one_line(name, artifact.manifest.kind, artifact.manifest.metrics,
                                       time.time() - start), flush=True)
        if results:
            from align.report import write_report

            print(f"align: report {write_report(run_dir, recipe.name, results)}", flush=True)
    return results


def push_stage(recipe: Recipe, name: str, artifact, tag: str = "") -> None:
    """The stage's `push_to_hub`, if it has one. Call it from one process only."""
    push = recipe.stages[name].push_to_hub
    if push is None:
        return
    from align.hub import push_artifact

    pushed = push_artifact(artifact.path, push.repo_id, private=push.private, revision=push.revision)
    print(f"{tag} {name}: pushed to {pushed.repo_id} ({pushed.commit_url})".lstrip(), flush=True)


class StageFailed(AlignError):
    def __init__(self, name: str, code: int):
        super().__init__(f"stage '{name}' failed (exit code {code}); finished stages are kept, "
                         "and rerunning the same command resumes it from its last checkpoint.")
        self.exit_code = code if code != 0 else 1
