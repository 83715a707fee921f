"""Accelerate profiles without the hardware they need: what accelerate makes of each profile,
which stage runs under which profile, and `align validate` on every shipped recipe offline."""

from __future__ import annotations

import socket
import sys
import types
from pathlib import Path

import pytest
import torch

from align.cli import main
from align.errors import AlignError
from align.kinds import KINDS, get_kind
from align.profiles import PROFILE_DIR, check_stage, classify_file, profile_path, running_class
from align.runner import launch_command
from align.validate import validate_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if p.parent.name != "accelerate")
PROFILES = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
# What accelerate must make of each shipped profile: (class, processes, launcher flag, detail).
EXPECTED = {
    "cpu": ("single", 1, None, None),
    "cpu-ddp": ("ddp", 2, "multi_gpu", None),
    "ddp": ("ddp", 8, "multi_gpu", None),
    "multi-node": ("ddp", 16, "multi_gpu", None),
    "zero2": ("zero2", 8, "use_deepspeed", ("zero_stage", 2)),
    "zero3": ("zero3", 8, "use_deepspeed", ("zero_stage", 3)),
    "fsdp": ("fsdp", 8, "use_fsdp", ("fsdp_version", 2)),
    "fsdp-qlora": ("fsdp", 8, "use_fsdp", ("fsdp_version", 1)),
}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def accelerate_args(profile: Path, recipe: str):
    """accelerate's own reading of the command align runs for a stage (nothing is launched)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    cmd = launch_command(recipe, "sft", [], profile)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(cmd[3:])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


@pytest.mark.parametrize("name", PROFILES)
def test_accelerate_reads_every_profile_as_intended(name, tmp_path):
    assert set(EXPECTED) == set(PROFILES), "a new profile needs its expectations here"
    klass, processes, flag, detail = EXPECTED[name]
    profile = profile_path(name)
    assert classify_file(profile) == klass
    args, defaults = accelerate_args(profile, "r.yaml")
    assert args.num_processes == processes
    assert (args.module, args.training_script) == (True, "align")
    assert args.training_script_args == ["stage", "r.yaml", "--stage", "sft"]
    for other in ("multi_gpu", "use_deepspeed", "use_fsdp"):
        assert bool(getattr(args, other)) == (other == flag), other
    if detail:
        assert getattr(args, detail[0]) == detail[1]
    if flag == "use_deepspeed":
        from accelerate.utils.launch import prepare_deepspeed_cmd_env

        # What `accelerate launch` exports to the stage processes; align reads the ZeRO stage.
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(detail[1])
    if name == "fsdp-qlora":  # as PEFT documents FSDP-QLoRA
        assert args.fsdp_use_orig_params in (False, "false")
        assert args.fsdp_cpu_ram_efficient_loading in (True, "true")


def test_multi_node_profile_takes_each_nodes_rank_on_the_command_line():
    """The README's two-node commands: one profile file, rank and address given per node."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    cmd = launch_command("r.yaml", "sft", [], profile_path("multi-node"))
    argv = [*cmd[3:5], "--machine_rank", "1", "--main_process_ip", "10.1.2.3", *cmd[5:]]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert (args.machine_rank, args.main_process_ip, args.num_machines, args.num_processes) == \
        (1, "10.1.2.3", 2, 16)
    assert args.training_script_args == ["stage", "r.yaml", "--stage", "sft"]


def test_ppo_is_refused_under_sharding_profiles_at_validation(tmp_path):
    recipe = str(ROOT / "recipes" / "tiny" / "ppo.yaml")
    for name in ("zero2", "zero3", "fsdp", "fsdp-qlora"):
        with pytest.raises(AlignError, match=rf"stage 'ppo' \(kind ppo\) does not run under "
                                             rf"accelerate profile '{name}'.*cpu-ddp, ddp"):
            validate_recipe(recipe, accelerate=name)
        # The stages before it may still run under that profile, and PPO under another.
        validate_recipe(recipe, accelerate=name, only=["pretrain", "sft", "rm"])
    for name in ("cpu", "cpu-ddp", "ddp", "multi-node"):
        validate_recipe(recipe, accelerate=name)


def test_stage_launched_by_hand_checks_the_profile_it_runs_under(monkeypatch):
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_USE_FSDP",
                "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert running_class() == "single"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert running_class() == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert running_class() == "zero3"
    with pytest.raises(AlignError, match="does not run under.*DeepSpeed ZeRO-3"):
        check_stage("ppo", get_kind("ppo"), running_class(), "zero3")
    for kind in ("sft", "dpo", "idk", "evaluate"):
        check_stage(kind, get_kind(kind), "zero3", "zero3")
    assert {"pretrain", "sft", "rm", "dpo", "kto", "orpo", "ppo", "idk", "evaluate"} <= set(KINDS)


def test_generation_gathers_zero3_partitioned_parameters(monkeypatch):
    """A model whose parameters ZeRO-3 partitioned is generated from inside GatheredParameters."""
    from align.distributed import full_parameters, generation_ready

    gathered = []

    class GatheredParameters:
        def __init__(self, params, modifier_rank=None):
            self.params = params

        def __enter__(self):
            gathered.append(len(self.params))

        def __exit__(self, *exc):
            gathered.append("released")

    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=GatheredParameters)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    model = torch.nn.Linear(2, 2)
    with generation_ready(model) as ready:
        assert ready is model and gathered == []  # plain parameters: nothing to gather
    for p in model.parameters():
        p.ds_id = 0  # what DeepSpeed tags a partitioned parameter with
    with generation_ready(model) as ready:
        assert gathered == [2]  # weight and bias, for the whole generation
    assert gathered == [2, "released"]
    with full_parameters(model):  # e.g. the preference stages' held-out margin before training
        assert gathered == [2, "released", 2]
    assert gathered[-1] == "released"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_align_validate_accepts_every_shipped_recipe_offline(recipe, no_network, capsys):
    assert main(["validate", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert f"{recipe}: valid" in out
    if recipe.parent.name != "tiny":  # real models: Hub datasets are noted, not fetched
        assert "Hub dataset, not checked offline" in out


def test_align_validate_accepts_every_shipped_profile_offline(no_network, capsys):
    recipe = str(ROOT / "recipes" / "qwen2.5-0.5b" / "sft.yaml")
    for name in PROFILES:
        assert main(["validate", recipe, "--accelerate", name]) == 0
    assert capsys.readouterr().out.count(": valid") == len(PROFILES)
