"""The preference recipe at test size, run once per test session (the `preference_run` fixture in
conftest.py) and shared by the reward-model, preference and hand-off tests (training the tiny model
is what costs time)."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import yaml

from conftest import SMALL_WORLD

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "preference.yaml"
TRAINED = ("pretrain", "sft", "rm", "dpo", "kto", "orpo")  # evaluate is left out: generation
QUIET = {"disable_tqdm": True, "logging_steps": 5, "save_steps": 1000}
# Twice the countries of SMALL_WORLD (48 held-out pairs, so one pair is 2%), each fact's pairs
# with every other value of its attribute but the held-out one: with fewer facts, or four wrong
# values per fact, the reward model learned its pairs rather than the facts (0.46-1.00 held-out
# accuracy over world seeds 0-5 at 24 countries).
WORLD = {**SMALL_WORLD, "n_entities": 48, "preference_wrong_values": 10}
# Test-size training: few steps, float32 throughout (no CPU bf16 autocast). Pretraining long
# enough that the SFT model knows its facts in every phrasing (it prefers the true value in
# 92-100% of held-out pairs by log-probability).
SIZES = {
    "pretrain": {"max_steps": 400, "per_device_train_batch_size": 16,
                 "lr_scheduler_type": "linear", "warmup_steps": 0, "bf16": False},
    "sft": {"max_steps": 200, "per_device_train_batch_size": 16, "learning_rate": 1e-3,
            "lr_scheduler_type": "linear", "bf16": False},
    "rm": {"max_steps": 300, "learning_rate": 3e-4},
    # Fewer steps than the recipe's epoch, so a little more learning rate.
    "dpo": {"max_steps": 40, "learning_rate": 1e-3},
    "kto": {"max_steps": 40, "learning_rate": 3e-4},
    "orpo": {"max_steps": 60, "learning_rate": 2e-3},
}

def overrides(run_dir: Path) -> list[str]:
    out = [f"run_dir={run_dir}", "stages.sft.data.eval_fraction=0"]
    out += [f"world.{k}={v}" for k, v in WORLD.items()]
    for stage, args in SIZES.items():
        out += [f"stages.{stage}.args.{k}={yaml.safe_dump(v).splitlines()[0]}"
                for k, v in {**QUIET, **args}.items()]
    return out


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


def train_preference_run(tmp_path_factory) -> dict:
    """{"artifacts": name -> Artifact, "output": what the runner printed, "run_dir": Path}.

    Called once per session by the `preference_run` fixture in conftest.py."""
    from align.runner import run_recipe

    # ALIGN_TEST_PREFERENCE_DIR keeps the run between sessions (finished stages are skipped).
    keep = os.environ.get("ALIGN_TEST_PREFERENCE_DIR")
    run_dir = Path(keep) / "run" if keep else tmp_path_factory.mktemp("preference") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
        artifacts = run_recipe(str(RECIPE), overrides(run_dir), only=list(TRAINED))
    return {"artifacts": artifacts, "output": printed.getvalue(), "run_dir": run_dir}


def derived_recipe(run: dict, stages: dict, name: str, keep: tuple[str, ...] = ("pretrain",)) -> str:
    """A recipe on the same run directory as the preference run `run`, with its stages named in
    `keep` unchanged (so they are up to date, and skipped), plus `stages`."""
    from align.recipe import apply_overrides, load_yaml

    data = apply_overrides(load_yaml(RECIPE), overrides(run["run_dir"]))
    data["name"] = name
    data["stages"] = {**{k: data["stages"][k] for k in keep}, **stages}
    path = run["run_dir"].parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def stage_context(recipe_path: str, name: str):
    """The StageContext the runner would hand stage `name`, without running the stage."""
    from accelerate import PartialState

    from align.artifacts import StageDirs
    from align.base_model import resolve_base
    from align.recipe import load_recipe
    from align.runner import finished_inputs, stage_hash
    from align.stages.context import StageContext

    recipe = load_recipe(recipe_path)
    inputs = finished_inputs(recipe, name)
    digest = stage_hash(recipe, name, {n: a.manifest.config_hash for n, a in inputs.items()})
    dirs = StageDirs(recipe.output_dir(), name)
    PartialState()
    dirs.begin(digest)
    return StageContext(recipe=recipe, name=name, stage=recipe.stages[name], inputs=inputs,
                        dirs=dirs, config_hash=digest, base_model=resolve_base(recipe))


def world_rows(run: dict, name: str) -> list[dict]:
    import json

    with open(run["run_dir"] / "world" / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f]
