"""Runs a recipe: stages in dependency order, each skipped, resumed or run.

A stage is skipped when its artifact is complete and its hash (resolved config, inputs' hashes,
data content) matches; resumed from its last Trainer checkpoint when an earlier attempt with the
same hash was interrupted; otherwise run from scratch in `<name>.partial/`. A single-process
accelerate profile runs stages in this process; any other launches each stage with
`accelerate launch`.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from align.artifacts import ArtifactChanged, StageDirs, load_artifact, read_manifest
from align.base_model import resolve_base
from align.console import filter_known_warnings, quiet_progress_without_terminal
from align.data.world import WorldConfig, build_world
from align.distributed import process_state
from align.errors import AlignError
from align.hub import push_artifact
from align.kinds import get_kind
from align.lineage import check_inputs
from align.profiles import is_single_process, profile_path
from align.recipe import Recipe, load_recipe
from align.report import write_report
from align.stage_data import world_dir
from align.stage_hash import reads_world, rerun_reason, stage_config, stage_hash
from align.stages.context import StageContext
from align.stages.summary import one_line


# -- world and base model ----------------------------------------------------------------------

def prepare_world(recipe: Recipe) -> Path | None:
    """Write the embedded world's files into the run directory (idempotent)."""
    if not any(reads_world(recipe, stage) for stage in recipe.stages.values()):
        return None
    out = world_dir(recipe)
    # The settings were checked with the recipe (recipe.check_world_settings); files are
    # rewritten only when their content changes.
    build_world(WorldConfig(**recipe.world)).write(out)
    return out


def finished_inputs(recipe: Recipe, name: str, config: dict | None = None) -> dict:
    """The stage's upstream artifacts, checked against the recipe (`config`: its stage_config,
    when the caller already has it)."""
    config = config or stage_config(recipe, name)
    run_dir = recipe.output_dir()
    inputs = {}
    for upstream in recipe.stages[name].from_:
        path = run_dir / upstream
        try:
            inputs[upstream] = load_artifact(path)
        except ArtifactChanged as exc:  # there, finished, but changed since
            raise AlignError(f"stage '{name}' needs the artifact of stage '{upstream}': "
                             f"{exc}") from None
        except AlignError:
            raise AlignError(f"stage '{name}' needs the artifact of stage '{upstream}' at {path}, "
                             "which is missing or incomplete; run the recipe (or that stage) "
                             "first.") from None
    check_inputs(recipe, name, inputs, config.get("tiny_tokenizer_text"))
    return inputs


# -- one stage ---------------------------------------------------------------------------------

def inputs_and_hash(recipe: Recipe, name: str) -> tuple[dict, str]:
    """The stage's finished upstream artifacts and the hash its own artifact must carry."""
    config = stage_config(recipe, name)  # once: on the tiny model it reads every training file
    inputs = finished_inputs(recipe, name, config)
    hashes = {n: a.manifest.config_hash for n, a in inputs.items()}
    return inputs, stage_hash(recipe, name, hashes, config)


def current_artifact(recipe: Recipe, name: str):
    """The stage's finished artifact when it is up to date (same hash), else None."""
    _, digest = inputs_and_hash(recipe, name)
    return StageDirs(recipe.output_dir(), name).finished(digest)


def execute_stage(recipe: Recipe, name: str):
    """Run one stage in this process (also what `accelerate launch ... align stage` calls)."""
    quiet_progress_without_terminal()
    filter_known_warnings()
    inputs, digest = inputs_and_hash(recipe, name)
    dirs = StageDirs(recipe.output_dir(), name)
    finished = dirs.finished(digest)
    if finished:
        return finished
    state = process_state()
    resumed = False
    if state.is_main_process:
        resumed = dirs.begin(digest)
    state.wait_for_everyone()
    ctx = StageContext(recipe=recipe, name=name, stage=recipe.stages[name], inputs=inputs,
                       dirs=dirs, config_hash=digest, base_model=resolve_base(recipe),
                       resumed=resumed)
    try:
        return get_kind(recipe.stages[name].kind).run_function()(ctx)
    except Exception:
        # Bad input found inside the stage, a numerical fault, a crash: keep only what a rerun
        # can resume from (the last complete checkpoints), never temporary files.
        if state.is_main_process:
            dirs.clean_after_failure()
        raise


def can_resume(dirs: StageDirs, digest: str) -> bool:
    """A partial directory of the same hash with a complete checkpoint to resume from."""
    progress = dirs.partial / "progress.json"
    try:
        same = json.loads(progress.read_text()).get("config_hash") == digest
    except (OSError, ValueError):
        return False
    return same and dirs.last_checkpoint() is not None


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
            inputs, digest = inputs_and_hash(recipe, name)
            dirs = StageDirs(run_dir, name)
            dirs.recover(digest)  # a commit a kill interrupted: finish it, do not redo the stage
            done = dirs.finished(digest)
            tag = f"[{i}/{len(order)}]"
            if done or (only and name not in only):
                if done:
                    print(f"{tag} {name}: up to date, skipped", flush=True)
                    results[name] = done
                continue
            state = "resuming" if can_resume(dirs, digest) else "running"
            older = read_manifest(dirs.final)
            if older is not None and older.status == "complete":
                hashes = {n: a.manifest.config_hash for n, a in inputs.items()}
                state = f"{state} ({rerun_reason(recipe, name, older, hashes)})"
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
            print(f"align: report {write_report(run_dir, recipe.name, results)}", flush=True)
    return results


def push_stage(recipe: Recipe, name: str, artifact, tag: str = "") -> None:
    """The stage's `push_to_hub`, if it has one. Call it from one process only."""
    push = recipe.stages[name].push_to_hub
    if push is None:
        return
    pushed = push_artifact(artifact.path, push.repo_id, private=push.private, revision=push.revision,
                           merged=push.merged)
    print(f"{tag} {name}: pushed to {pushed.repo_id} ({pushed.commit_url})".lstrip(), flush=True)


class StageFailed(AlignError):
    def __init__(self, name: str, code: int):
        super().__init__(f"stage '{name}' failed (exit code {code}); finished stages are kept, "
                         "and rerunning the same command resumes it from its last checkpoint.")
        self.exit_code = code if code != 0 else 1
