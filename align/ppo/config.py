"""What a `ppo` stage's `args` may set.

The recipe checks each key against these annotations (recipe.check_stage_args) and then calls
`PPOConfig.validate_args`, so an impossible combination (a minibatch larger than the rollout, a
negative learning rate, a reward callable that is not `module:function`) is reported by
`align validate` before any stage trains, naming `stages.<name>.args.<key>`.

Batch sizes are per process: with N processes a rollout holds N * batch_size episodes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from align.errors import AlignError

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _default_rewards() -> list[dict]:
    return [{"source": "rm", "weight": 1.0}]


@dataclass
class PPOConfig:
    # -- optimisation ----------------------------------------------------------------------------
    learning_rate: float = 1e-5
    lr_scheduler_type: Literal["linear", "constant"] = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    # -- sizes -----------------------------------------------------------------------------------
    batch_size: int = 64                 # prompts per rollout, per process
    mini_batch_size: int = 16            # episodes per optimizer step, per process
    gradient_accumulation_steps: int = 1  # micro batches a minibatch is split into
    ppo_epochs: int = 4                  # passes over each rollout
    total_episodes: int | None = None    # None: one pass over the prompts
    rollout_forward_batch_size: int | None = None  # chunk of no-grad forwards; None: whole rollout
    # -- generation ------------------------------------------------------------------------------
    response_length: int = 64
    max_prompt_length: int | None = None  # longer prompts keep their last tokens
    temperature: float = 1.0
    # < 1 samples from a truncated distribution while log-probs are of the whole (tempered) one,
    # which makes PPO slightly off-policy; 1.0 keeps it exact.
    top_p: float = 1.0
    stop_at_eos: bool = True
    # -- KL to the reference -----------------------------------------------------------------------
    kl_coef: float = 0.05
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: float = 10000.0
    # -- advantages and losses ---------------------------------------------------------------------
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float | None = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    # -- rewards ------------------------------------------------------------------------------------
    rewards: list[dict] = field(default_factory=_default_rewards)
    score_normalization: Literal["none", "running", "rm_stats"] = "none"
    score_clip: float | None = None
    missing_eos_penalty: float | None = None
    # Where the value model starts: the RM artifact, or the policy's own (SFT) weights.
    # None picks "rm" when the stage has an RM input, else "policy".
    value_model: Literal["rm", "policy"] | None = None
    # -- bookkeeping -------------------------------------------------------------------------------
    log_samples: int = 4                 # completions kept per step in samples.jsonl
    save_steps: int = 50
    save_total_limit: int = 2
    seed: int | None = None              # None: the recipe's seed
    disable_tqdm: bool = False

    # ------------------------------------------------------------------------------------------------
    @classmethod
    def validate_args(cls, args: dict[str, Any], where: str = "args", source: str = "") -> None:
        """Raise AlignError for values no run could use; `where` is e.g. 'stages.ppo.args'."""
        cls.from_args(args, where, source)

    @classmethod
    def from_args(cls, args: dict[str, Any], where: str = "args", source: str = "") -> "PPOConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - names)
        prefix = f"{source}: " if source else ""
        if unknown:
            raise AlignError(f"{prefix}unknown key '{where}.{unknown[0]}': PPOConfig has no such field.")
        config = cls(**args)
        config.check(where, source)
        return config

    def check(self, where: str = "args", source: str = "") -> None:
        prefix = f"{source}: " if source else ""

        def fail(key: str, why: str):
            raise AlignError(f"{prefix}'{where}.{key}' {why} (got {getattr(self, key)!r}).")

        for key in ("learning_rate", "temperature", "kl_horizon", "kl_target"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
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

    def _check_rewards(self, fail, prefix: str, where: str) -> None:
        if not self.rewards:
            fail("rewards", "needs at least one source")
        for i, item in enumerate(self.rewards):
            here = f"{prefix}'{where}.rewards.{i}'"
            if not isinstance(item, dict) or "source" not in item:
                raise AlignError(f"{here} must be a mapping with `source` (\"rm\" or "
                                 f"\"module:function\") and optional `weight`; got {item!r}.")
            extra = set(item) - {"source", "weight"}
            if extra:
                raise AlignError(f"{here} has unknown key(s) {sorted(extra)}; only source and weight.")
            source, weight = item["source"], item.get("weight", 1.0)
            if not isinstance(source, str) or not (source == "rm" or _CALLABLE.match(source)):
                raise AlignError(f"{here}.source must be \"rm\" (the reward model input) or "
                                 f"\"module:function\" (e.g. my_rewards:exact_match); got {source!r}.")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise AlignError(f"{here}.weight must be a finite number; got {weight!r}.")
        if self.score_normalization == "rm_stats" and not self.uses_rm:
            fail("score_normalization", "is rm_stats, which needs a reward source `rm`")

    @property
    def uses_rm(self) -> bool:
        return any(item["source"] == "rm" for item in self.rewards)
