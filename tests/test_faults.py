"""Numerical faults and concurrent runs: clear errors, nothing finished is lost."""

from __future__ import annotations


import pytest

from align.cli import main
from align.runner import run_lock
from conftest import write_recipe


@pytest.mark.slow
def test_non_finite_loss_stops_the_stage_naming_the_step(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    args = {"max_steps": 30, "per_device_train_batch_size": 8, "learning_rate": 1e12,
            "max_grad_norm": 0.0, "logging_steps": 1, "save_steps": 1, "disable_tqdm": True,
            "optim": "sgd"}
    path = write_recipe(tmp_path, {"sft": {"kind": "sft", "data": "world:sft", "args": args}})
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    # Whichever shows first: the logged loss / gradient norm, or the weights about to be saved.
    assert "training stopped at step" in err, err
    assert any(why in err for why in ("is nan", "is inf", "is not finite")), err
    assert not (tmp_path / "run" / "sft").exists()  # nothing that looks like a result
    kept = list((tmp_path / "run" / "sft.partial" / "checkpoints").glob("checkpoint-*"))
    assert kept, "the last good checkpoints are kept for a resume"
    # ... and they are good: from before the fault, with finite weights, at most 2 of them.
    step = int(err.split("training stopped at step ")[1].split(":")[0])
    assert all(int(p.name.split("-")[1]) < step for p in kept) and len(kept) <= 2
    for ckpt in kept:
        weights = load_file(str(ckpt / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), ckpt.name


def test_second_run_on_the_same_directory_is_refused(tmp_path, capsys):
    path = write_recipe(tmp_path, {"sft": {"kind": "sft", "data": "world:sft",
                                           "args": {"max_steps": 1}}})
    with run_lock(tmp_path / "run"):
        assert main(["run", path]) == 2
        assert "another `align run` is using" in capsys.readouterr().err
        # `align stage` by hand takes the same lock (under `align run` it runs inside its lock).
        assert main(["stage", path, "--stage", "sft"]) == 2
        assert "another `align run` is using" in capsys.readouterr().err
    assert not (tmp_path / "run" / "sft").exists() and not (tmp_path / "run" / "sft.partial").exists()


def record_again(directory):
    """Re-record an artifact's checksums after a test changed its files on purpose (a changed
    artifact is otherwise refused as not what its stage wrote)."""
    import json

    from align.artifacts import MANIFEST, record_checksums, write_json_atomic

    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["checksums"] = record_checksums(directory)
    write_json_atomic(directory / MANIFEST, manifest)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dpo", "kto", "orpo", "rm"])
def test_non_finite_preference_loss_stops_naming_the_step(tmp_path, capsys, kind):
    """The preference stages and the reward model share the guard. The NaN is forced by a NaN in
    the SFT model they start from (KTO reads the pairs unpaired)."""
    import torch
    from safetensors.torch import load_file, save_file

    stages = {"sft": {"kind": "sft", "data": "world:sft",
                      "args": {"max_steps": 1, "save_steps": 1000, "disable_tqdm": True}},
              kind: {"kind": kind, "from": "sft", "method": "lora", "data": "world:preference_train",
                      "args": {"max_steps": 4, "per_device_train_batch_size": 4, "max_length": 64,
                               "logging_steps": 1, "save_steps": 1, "disable_tqdm": True}}}
    path = write_recipe(tmp_path, stages)
    assert main(["run", path, "--only", "sft"]) == 0
    weights_file = tmp_path / "run" / "sft" / "model" / "model.safetensors"
    weights = load_file(str(weights_file))
    norm = next(k for k in weights if k.endswith("norm.weight"))
    weights[norm][0] = float("nan")
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    record_again(tmp_path / "run" / "sft")  # as if the sft stage itself had written the NaN
    capsys.readouterr()
    assert main(["run", path]) == 2
    err = capsys.readouterr().err
    # The weights about to be checkpointed, or the logged loss, whichever is checked first.
    assert "training stopped at step 1: " in err and "Traceback" not in err, err
    assert "loss is nan" in err or "is not finite, so checkpoint-1 was not written" in err, err
    assert not (tmp_path / "run" / kind).exists() and not (tmp_path / "run" / f"{kind}.partial").exists()


def test_non_finite_weights_are_never_checkpointed():
    import types

    import torch
    from transformers import TrainerControl, TrainerState

    from align.errors import NonFiniteError
    from align.stages.callbacks import NonFiniteLossCallback

    model = torch.nn.Linear(2, 2)
    callback = NonFiniteLossCallback()
    args = types.SimpleNamespace(output_dir="checkpoints")
    state = TrainerState(global_step=7)
    callback.on_step_end(args, state, TrainerControl(should_save=True), model=model)  # finite: fine
    with torch.no_grad():
        model.weight[0, 1] = float("inf")
    callback.on_step_end(args, state, TrainerControl(should_save=False), model=model)  # no save yet
    with pytest.raises(NonFiniteError, match="step 7: parameter weight is not finite, so "
                                             "checkpoint-7 was not written"):
        callback.on_step_end(args, state, TrainerControl(should_save=True), model=model)


@pytest.mark.slow
def test_ppo_non_finite_loss_stops_naming_the_step(tmp_path, capsys, tiny_model):
    import torch

    from align.modeling import load_full, load_tokenizer
    from align.ppo.config import PPOConfig
    from align.rewards.sources import build_reward
    from align.ppo.trainer import PPOTrainer
    from align.errors import NonFiniteError

    path = tiny_model
    config = PPOConfig(rewards=[{"source": "align.rewards:correct_answer"}], batch_size=2,
                       mini_batch_size=2, response_length=4, total_episodes=8, save_steps=1,
                       disable_tqdm=True)
    prompts = [{"prompt": [{"role": "user", "content": "Who leads Gouia?"}], "answers": ["Nim"]}] * 4
    trainer = PPOTrainer(config, policy=load_full(path), ref_policy=load_full(path),
                         value_model=load_full(path, task="sequence-classification"),
                         tokenizer=load_tokenizer(path), reward=build_reward(config),
                         prompts=prompts, output_dir=tmp_path)
    real_update = trainer.update

    def update_with_a_nan_at_step_2(rollout):
        out = real_update(rollout)
        if trainer.step == 1:
            out["policy_loss"] = torch.tensor(float("nan"))
        return out

    trainer.update = update_with_a_nan_at_step_2
    with pytest.raises(NonFiniteError, match="PPO stopped at step 2: policy_loss is nan"):
        trainer.train()
    kept = [p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")]
    assert kept == ["checkpoint-1"]  # the good one; step 2's weights were never saved


def test_defaults_clip_gradients_and_bound_checkpoints(tmp_path):
    """Every stage kind clips gradients (max_grad_norm 1.0) and keeps at most 2 checkpoints,
    unless the recipe says otherwise."""
    from align.artifacts import StageDirs
    from align.ppo.config import PPOConfig
    from align.kinds import get_kind
    from align.recipe import load_recipe
    from align.stages.context import StageContext

    stages = {"sft": {"kind": "sft", "data": "world:sft"},
              "rm": {"kind": "rm", "from": "sft", "data": "world:preference_train"}}
    for kind in ("dpo", "kto", "orpo"):
        stages[kind] = {"kind": kind, "from": "sft", "data": "world:preference_train"}
    stages["own"] = {"kind": "sft", "data": "world:sft",
                     "args": {"max_grad_norm": 0.5, "save_total_limit": 5}}
    recipe = load_recipe(write_recipe(tmp_path, stages))
    for name, stage in recipe.stages.items():
        ctx = StageContext(recipe=recipe, name=name, stage=stage, inputs={},
                           dirs=StageDirs(tmp_path / "run", name), config_hash="x", base_model="tiny")
        args = ctx.training_args(get_kind(stage.kind).config_class())
        expected = (0.5, 5) if name == "own" else (1.0, 2)
        assert (args.max_grad_norm, args.save_total_limit) == expected, name
    ppo = PPOConfig.from_args({"rewards": [{"source": "align.rewards:correct_answer"}]})
    assert (ppo.max_grad_norm, ppo.save_total_limit) == (1.0, 2)


def test_failed_stage_cleans_its_temporary_files(tmp_path, monkeypatch):
    """A crash leaves only what a rerun resumes from: nothing at all without a checkpoint;
    with one, the complete checkpoints and the progress file, never temporary files."""
    import dataclasses

    from align import kinds
    from align.runner import run_recipe

    def crashing(with_checkpoint: bool):
        def run(ctx):
            part = ctx.dirs.partial
            (part / "base").mkdir()  # e.g. a merged upstream for QLoRA
            (part / "base" / "model.safetensors").write_text("x")
            (part / ".artifact.json.123.tmp").write_text("{")
            if with_checkpoint:
                good = ctx.dirs.checkpoints / "checkpoint-2"
                good.mkdir(parents=True)
                (good / "trainer_state.json").write_text("{}")
                (ctx.dirs.checkpoints / "checkpoint-4").mkdir()  # killed while saving
            raise RuntimeError("out of memory")
        return run

    for with_checkpoint in (False, True):
        monkeypatch.setitem(kinds.KINDS, "sft", dataclasses.replace(kinds.get_kind("sft"),
                                                                   run=crashing(with_checkpoint)))
        run_dir = tmp_path / str(with_checkpoint)
        run_dir.mkdir()
        path = write_recipe(run_dir, {"sft": {"kind": "sft", "data": "world:sft"}})
        with pytest.raises(RuntimeError, match="out of memory"):
            run_recipe(path)
        partial = run_dir / "run" / "sft.partial"
        assert not (run_dir / "run" / "sft").exists()
        if not with_checkpoint:
            assert not partial.exists()
            continue
        left = sorted(str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file())
        assert left == ["base/model.safetensors", "checkpoints/checkpoint-2/trainer_state.json",
                        "progress.json"]
