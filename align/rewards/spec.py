"""A stage's reward sources as a recipe writes them, checked before anything loads.

Every RL stage (`ppo` in its `args`, `grpo` / `rloo` in their `options`) lists its rewards the
same way:

    rewards:
      - {source: honesty, weight: 1.0, args: {r_abstain: 0.0}}   # the ternary honesty reward
      - {source: rm, weight: 0.5}                                # the upstream rm stage's model
      - {source: "my_rewards:exact_match"}                       # fn(prompts, completions, **columns)

`args` are keyword arguments bound to a callable (or the honesty reward's settings). This
module imports no torch: `align validate` and the configs read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from align.errors import AlignError
from align.importing import is_reference

# Sources named by a word instead of module:function.
BUILTIN = {
    "rm": "the reward model of the rm stage named in `from`",
    "honesty": "the ternary honesty reward (align.honesty.reward: correct +1, refusal r_abstain, wrong -1)",
}
KEYS = ("source", "weight", "args")


@dataclass(frozen=True)
class RewardSpec:
    source: str                       # "rm", "honesty" or "module:function"
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def short_name(self) -> str:
        """What logs call it: rm, honesty, or the function's name."""
        return self.source.rsplit(":", 1)[-1]


def parse_rewards(items: Any, where: str = "rewards", source: str = "") -> list[RewardSpec]:
    """The specs of a `rewards` list; AlignError naming `{where}.{i}` for the first bad entry."""
    prefix = f"{source}: " if source else ""
    if not isinstance(items, (list, tuple)) or not items:
        raise AlignError(f"{prefix}'{where}' needs at least one reward source: a list of "
                         "{source: rm | honesty | module:function, weight, args}; "
                         f"got {items!r}.")
    out = []
    for i, item in enumerate(items):
        here = f"{prefix}'{where}.{i}'"
        if not isinstance(item, dict) or "source" not in item:
            raise AlignError(f"{here} must be a mapping with `source` (\"rm\", \"honesty\" or "
                             f"\"module:function\"), optional `weight` and `args`; got {item!r}.")
        extra = set(item) - set(KEYS)
        if extra:
            raise AlignError(f"{here} has unknown key(s) {sorted(extra)}; only {', '.join(KEYS)}.")
        name, weight, args = item["source"], item.get("weight", 1.0), item.get("args") or {}
        if not isinstance(name, str) or not (name in BUILTIN or is_reference(name)):
            raise AlignError(f"{here}.source must be \"rm\" (the reward model input), \"honesty\" "
                             "(the ternary honesty reward) or \"module:function\" (e.g. "
                             f"my_rewards:exact_match); got {name!r}.")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise AlignError(f"{here}.weight must be a finite number; got {weight!r}.")
        if not isinstance(args, dict):
            raise AlignError(f"{here}.args must be a mapping of keyword arguments; got {args!r}.")
        if name == "rm" and args:
            raise AlignError(f"{here}.args: the rm source takes no args.")
        if name == "honesty":
            check_honesty_args(args, f"{here}.args")
        out.append(RewardSpec(name, float(weight), dict(args)))
    return out


HONESTY_ARGS = ("r_correct", "r_abstain", "r_wrong", "r_abstain_known", "judge")


def check_honesty_args(args: dict, here: str) -> None:
    unknown = sorted(set(args) - set(HONESTY_ARGS))
    if unknown:
        raise AlignError(f"{here}: unknown key(s) {unknown}; the honesty reward takes "
                         f"{', '.join(HONESTY_ARGS)}.")
    for key in HONESTY_ARGS[:4]:
        value = args.get(key)
        if value is None and key == "r_abstain_known":
            continue
        if key in args and (isinstance(value, bool) or not isinstance(value, (int, float))
                            or not math.isfinite(value)):
            raise AlignError(f"{here}.{key} must be a finite number; got {value!r}.")
    if "judge" in args and not isinstance(args["judge"], dict):
        raise AlignError(f"{here}.judge must be a judge block (method, refusal_phrases, ...); "
                         f"got {args['judge']!r}.")


def uses_rm(specs: list[RewardSpec]) -> bool:
    return any(s.source == "rm" for s in specs)


def unique_names(specs: list[RewardSpec]) -> list[str]:
    """Each source's log name, made unique (correct_answer, correct_answer#2)."""
    taken: list[str] = []
    for spec in specs:
        name, i = spec.short_name, 2
        while name in taken:
            name, i = f"{spec.short_name}#{i}", i + 1
        taken.append(name)
    return taken


RL_OPTIONS = ("rewards",)


def check_rl_options(options: dict, where: str = "options", source: str = "") -> list[RewardSpec]:
    """A grpo / rloo stage's `options`: its `rewards` (TRL's `args` hold everything else)."""
    prefix = f"{source}: " if source else ""
    unknown = sorted(set(options) - set(RL_OPTIONS))
    if unknown:
        raise AlignError(f"{prefix}unknown key '{where}.{unknown[0]}': the options of a GRPO / RLOO "
                         f"stage are {', '.join(RL_OPTIONS)} (TRL's settings go in `args`).")
    if "rewards" not in options:
        raise AlignError(f"{prefix}'{where}.rewards' is missing: list the reward sources, e.g. "
                         "[{source: honesty}] or [{source: rm}, {source: \"my_rewards:fn\", weight: 0.5}].")
    return parse_rewards(options["rewards"], f"{where}.rewards", source)
