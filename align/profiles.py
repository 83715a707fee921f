"""Accelerate profiles: the shipped ones, the class of each, and which stage kinds run under it.

A profile is classified by what its processes share: `single` (one process), `ddp` (data
parallel replicas: cpu-ddp, ddp, multi-node), `zero2` / `zero3` (DeepSpeed), `fsdp`. Stages on
TRL trainers run under every one of them. align's own PPO generates its rollouts from the
unwrapped policy, with a reference model and a value model next to it; under ZeRO-3 or FSDP the
policy's parameters are sharded across ranks (generation would need every rank to gather them
in lock-step), and under DeepSpeed its optimizer and scheduler are replaced by DeepSpeed's, so
PPO is refused there, at validation time, with the profiles it does run under.
The idk and evaluate stages train nothing: every process loads the whole model unsharded
(`align.distributed.generation_ready` gathers it should it ever be partitioned).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from align.errors import AlignError

# Profile classes, by what their processes share.
ALL_PROFILES = ("single", "ddp", "zero2", "zero3", "fsdp")
DESCRIBE = {"single": "one process", "ddp": "data parallel", "zero2": "DeepSpeed ZeRO-2",
            "zero3": "DeepSpeed ZeRO-3", "fsdp": "FSDP"}
# The shipped profiles: a recipe names one by its stem (`accelerate: cpu-ddp`).
# From a source checkout, the repository's recipes/; from an installed wheel, the copy it
# installs under <prefix>/share/align/recipes (pyproject's data-files).
def shipped_recipes_dir() -> Path:
    checkout = Path(__file__).resolve().parent.parent / "recipes"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "align" / "recipes"


PROFILE_DIR = shipped_recipes_dir() / "accelerate"


def profile_path(name_or_path: str) -> Path:
    """A shipped profile's file by name, or a user's accelerate config file."""
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
    return classify_file(profile) == "single"


def classify(config: dict) -> str:
    """The class of an accelerate config (a profile file's contents)."""
    kind = str(config.get("distributed_type", "NO")).upper()
    if kind == "DEEPSPEED":
        stage = int((config.get("deepspeed_config") or {}).get("zero_stage", 0))
        return "zero3" if stage == 3 else "zero2"  # stages 0-2 keep whole parameters on each rank
    if kind == "FSDP":
        return "fsdp"
    if kind == "NO" and int(config.get("num_processes", 1)) == 1:
        return "single"
    return "ddp"  # MULTI_GPU, MULTI_CPU, MULTI_XPU, ...: replicas


def classify_file(path: Path) -> str:
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as exc:
        raise AlignError(f"accelerate profile {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise AlignError(f"accelerate profile {path} is not UTF-8 text; save it as "
                         "UTF-8.") from None
    if not isinstance(config, dict):
        raise AlignError(f"accelerate profile {path} must be a mapping of accelerate settings.")
    try:
        return classify(config)
    except (ValueError, TypeError, AttributeError) as exc:  # e.g. num_processes: two
        raise AlignError(f"accelerate profile {path}: a setting has the wrong type ({exc}); "
                         "num_processes and zero_stage are whole numbers.") from None


def running_class() -> str:
    """The class of the profile this process was launched with (from `accelerate launch`'s
    environment), for stages started without `align run`."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "zero3" if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" else "zero2"
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    return "ddp" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "single"


def check_stage(name: str, kind, profile_class: str, profile_name: str) -> None:
    """Raise AlignError when a stage kind (a `kinds.StageKind`) does not run under a profile
    class."""
    if profile_class in kind.profiles:
        return
    why = f" ({kind.profile_reason})" if kind.profile_reason else ""
    raise AlignError(
        f"stage '{name}' (kind {kind.name}) does not run under accelerate profile '{profile_name}' "
        f"({DESCRIBE[profile_class]}){why}. It runs under: "
        f"{', '.join(DESCRIBE[c] for c in kind.profiles)}, e.g. the profiles "
        f"{', '.join(shipped_of(kind.profiles))}. Give that stage's run another profile with "
        f"`align run RECIPE --only {name} --accelerate ddp`.")


def shipped_of(classes) -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml") if classify_file(p) in classes)
