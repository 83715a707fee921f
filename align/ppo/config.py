"""What a `ppo` stage's `args` may set.

`PPOConfig` checks its own values when it is built (`__post_init__`), so a config made in Python
is refused for the same impossible combinations as one read from a recipe: a minibatch larger
than the rollout, a negative learning rate, a reward callable that is not `module:function`.
Each message names the field: `PPOConfig.<field>` for a config built in Python, and
`stages.<name>.args.<key>` for one built from a recipe by `from_args` / `validate_args`, which
the recipe calls after checking each key against these annotations (recipe.check_stage_args),
so `align validate` reports it before any stage trains.

Batch sizes are per process: with N processes a rollout holds N * batch_size episodes.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from align.errors import AlignError
from align.recipe import accepts
from align.rewards.spec import parse_rewards


# How the field names are prefixed in messages: (where, source). `from_args` sets it to the
# recipe's place for the duration of the constructor call; a config built in Python names
# `PPOConfig.<field>`.
_WHERE: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "ppo_config_where", default=("PPOConfig", ""))


def _default_rewards() -> list[dict]:
    return [{"source": "rm", "weight": 1.0}]


@dataclass
class PPOConfig:
    # -- optimisation ----------------------------------------------------------------------------
    learning_rate: float = field(
        default=1e-5, metadata={"help": "AdamW learning rate of the policy and value model."})
    lr_scheduler_type: Literal["linear", "constant"] = field(
        default="linear",
        metadata={"help": "Learning-rate schedule after warm-up: linear decay to 0, or constant."})
    warmup_steps: int = field(
        default=0, metadata={"help": "Optimizer steps of linear warm-up from 0 to learning_rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float | None = field(
        default=1.0,
        metadata={"help": "Clip the gradient norm to this before each optimizer step; null: no clipping."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, more compute."})
    # -- sizes -----------------------------------------------------------------------------------
    batch_size: int = field(default=64, metadata={"help": "Prompts per rollout, per process."})
    mini_batch_size: int = field(
        default=16,
        metadata={"help": "Episodes per optimizer step, per process; must divide batch_size."})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "Micro batches a minibatch is split into; must divide mini_batch_size."})
    ppo_epochs: int = field(default=4, metadata={"help": "Passes of PPO updates over each rollout."})
    total_episodes: int | None = field(
        default=None, metadata={"help": "Episodes to train on in all; null: one pass over the prompts."})
    rollout_forward_batch_size: int | None = field(
        default=None,
        metadata={"help": "Rows per chunk of the rollout's no-grad forwards; null: all rows at once."})
    # -- generation ------------------------------------------------------------------------------
    response_length: int = field(default=64, metadata={"help": "Most tokens generated per response."})
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Longest prompt in tokens (a longer one keeps its last tokens); null: no limit."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the rollouts (and of their log-probs)."})
    # < 1 samples from a truncated distribution while log-probs are of the whole (tempered) one,
    # which makes PPO slightly off-policy; 1.0 keeps it exact.
    top_p: float = field(
        default=1.0,
        metadata={"help": "Nucleus sampling, in (0, 1]; below 1 PPO is slightly off-policy."})
    stop_at_eos: bool = field(default=True, metadata={"help": "End a response at its first EOS token."})
    # -- KL to the reference -----------------------------------------------------------------------
    kl_coef: float = field(
        default=0.05, metadata={"help": "Weight of the per-token KL penalty to the reference model."})
    kl_estimator: Literal["k1", "k2", "k3"] = field(
        default="k1",
        metadata={"help": "Per-token KL estimator: k1 (log-ratio), k2 (half squared log-ratio) or k3."})
    adaptive_kl: bool = field(
        default=False,
        metadata={"help": "Steer kl_coef towards kl_target (Ziegler et al. 2019) instead of fixing it."})
    kl_target: float = field(default=6.0, metadata={"help": "KL that adaptive_kl steers towards."})
    kl_horizon: float = field(
        default=10000.0,
        metadata={"help": "Episodes over which adaptive_kl moves kl_coef by its full step."})
    # -- advantages and losses ---------------------------------------------------------------------
    gamma: float = field(default=1.0, metadata={"help": "Discount factor of GAE, in [0, 1]."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda, in [0, 1]."})
    cliprange: float = field(
        default=0.2, metadata={"help": "Clip range of the policy ratio, in (0, 1)."})
    cliprange_value: float | None = field(
        default=0.2,
        metadata={"help": "Clip range of the value predictions around the old ones; null: no clipping."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss in the total loss."})
    whiten_rewards: bool = field(
        default=False, metadata={"help": "Scale the per-token rewards to unit variance per rollout."})
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Normalise advantages to mean 0, variance 1 per rollout."})
    # -- rewards ------------------------------------------------------------------------------------
    rewards: list[dict] = field(default_factory=_default_rewards, metadata={
        "help": "Reward sources summed into the score: each {source: rm | honesty | module:function, "
                "weight, args}."})
    score_normalization: Literal["none", "running", "rm_stats"] = field(
        default="none",
        metadata={"help": "Score normalisation: none, running moments, or the RM artifact's statistics."})
    score_clip: float | None = field(
        default=None, metadata={"help": "Clip scores to [-score_clip, score_clip]; null: no clip."})
    missing_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Subtracted from the score of a response that never ends (no EOS); null: none."})
    # Where the value model starts: the RM artifact, or the policy's own (SFT) weights.
    value_model: Literal["rm", "policy"] | None = field(
        default=None,
        metadata={"help": "Where the value model starts: rm or policy; null: rm if there is an RM input."})
    # -- bookkeeping -------------------------------------------------------------------------------
    log_samples: int = field(default=4, metadata={"help": "Completions per step kept in samples.jsonl."})
    save_steps: int = field(
        default=50, metadata={"help": "Save a checkpoint every this many PPO steps (rollouts)."})
    save_total_limit: int = field(default=2, metadata={"help": "Most checkpoints kept."})
    seed: int | None = field(
        default=None, metadata={"help": "Random seed of the stage; null: the recipe's seed."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})

    def __post_init__(self) -> None:
        self.check(*_WHERE.get())

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def validate_args(cls, args: dict[str, Any], where: str = "args", source: str = "") -> None:
        """Raise AlignError for values no run could use; `where` is e.g. 'stages.ppo.args'."""
        cls.from_args(args, where, source)

    @classmethod
    def from_args(cls, args: dict[str, Any], where: str = "args", source: str = "") -> "PPOConfig":
        """The config of a recipe's `args`, its errors naming `{where}.<key>` (after `source: `)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - names)
        prefix = f"{source}: " if source else ""
        if unknown:
            raise AlignError(f"{prefix}unknown key '{where}.{unknown[0]}': PPOConfig has no such field.")
        token = _WHERE.set((where, source))
        try:
            return cls(**args)
        finally:
            _WHERE.reset(token)

    def check(self, where: str = "PPOConfig", source: str = "") -> None:
        """Raise AlignError naming `{where}.<field>` for the first value no run could use."""
        prefix = f"{source}: " if source else ""

        def fail(key: str, why: str):
            raise AlignError(f"{prefix}'{where}.{key}' {why} (got {getattr(self, key)!r}).")

        self._check_types(fail)
        for key in ("learning_rate", "temperature", "kl_horizon", "kl_target"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                fail(key, "must be a positive number")
        for key in ("batch_size", "mini_batch_size", "gradient_accumulation_steps", "ppo_epochs",
                    "response_length", "save_steps", "save_total_limit"):
            if getattr(self, key) < 1:
                fail(key, "must be at least 1")
        for key in ("total_episodes", "rollout_forward_batch_size", "max_prompt_length"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                fail(key, "must be at least 1 (or null)")
        for key in ("warmup_steps", "weight_decay", "kl_coef", "vf_coef", "log_samples"):
            if getattr(self, key) < 0:
                fail(key, "must not be negative")
        for key in ("max_grad_norm", "cliprange_value", "score_clip"):
            if getattr(self, key) is not None and not getattr(self, key) > 0:
                fail(key, "must be positive (or null to disable)")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            fail("missing_eos_penalty", "is subtracted from the score, so it must not be negative")
        if not 0 < self.top_p <= 1:
            fail("top_p", "must be in (0, 1]")
        if not 0 < self.cliprange < 1:
            fail("cliprange", "must be in (0, 1)")
        for key in ("gamma", "lam"):
            if not 0 <= getattr(self, key) <= 1:
                fail(key, "must be in [0, 1]")
        if self.mini_batch_size > self.batch_size:
            fail("mini_batch_size", f"cannot exceed batch_size ({self.batch_size})")
        if self.batch_size % self.mini_batch_size:
            fail("mini_batch_size", f"must divide batch_size ({self.batch_size})")
        if self.mini_batch_size % self.gradient_accumulation_steps:
            fail("gradient_accumulation_steps", f"must divide mini_batch_size ({self.mini_batch_size})")
        self._check_rewards(fail, prefix, where)

    def _check_types(self, fail) -> None:
        """Each value of the type its annotation names (a recipe's are checked so before)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            allowed = _allowed(hints[f.name])
            value = getattr(self, f.name)
            if not any(accepts(a, value) for a in allowed):
                fail(f.name, "must be " + " or ".join(_name(a) for a in allowed))

    def _check_rewards(self, fail, prefix: str, where: str) -> None:
        if not self.rewards:
            fail("rewards", "needs at least one source")
        # The same entries (and messages) as every RL stage's `rewards` (align.rewards.spec).
        parse_rewards(self.rewards, f"{where}.rewards", prefix.removesuffix(": "))
        if self.score_normalization == "rm_stats" and not self.uses_rm:
            fail("score_normalization", "is rm_stats, which needs a reward source `rm`")

    @property
    def uses_rm(self) -> bool:
        return any(item["source"] == "rm" for item in self.rewards)


# -- the annotations PPOConfig uses: bool, int, float, None, a Literal, list[...] ----------------

def _allowed(annotation) -> tuple:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(a for part in typing.get_args(annotation) for a in _allowed(part))
    return (annotation,)


def _name(annotation) -> str:
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))
