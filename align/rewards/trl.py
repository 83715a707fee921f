"""Reward sources as TRL `reward_funcs` (GRPO, RLOO): one function per source, with its weight.

TRL calls each function with the batch's prompts and completions (message lists for
conversational data), the completion ids and every other dataset column, and logs each one's
mean as `rewards/<name>/mean` under the name the function carries: `rm`, `honesty` or the
callable's function name. A source's non-finite values are counted (logged as
`non_finite/<name>`, summed in `non_finite` for the stage's metrics) and handed to TRL as None,
which TRL leaves out of the weighted sum and of that source's mean. Sources with figures of their
own (the honesty reward's correct / refusal / wrong rates by probe category) log them as
`<name>/<figure>`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from align.rewards.sources import Episodes, build_sources
from align.rewards.spec import RewardSpec, unique_names

# Keyword arguments TRL adds to the dataset's columns; a reward source never sees them.
TRL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids")


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes conversational completions as assistant message lists."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")
    if isinstance(completion, dict):
        return completion.get("content") or ""
    return str(completion)


class TRLReward:
    """One reward source in TRL's calling convention."""

    def __init__(self, source, name: str, log=None):
        self.source = source
        self.__name__ = name  # TRL's get_callable_name reads it: rewards/<name>/mean
        self.non_finite = 0
        self.calls = 0
        self._log = log or (lambda message: None)

    def __call__(self, prompts, completions, **kwargs) -> list[float | None]:
        log_metric = kwargs.get("log_metric")
        columns = {k: v for k, v in kwargs.items() if k not in TRL_KWARGS}
        episodes = Episodes(prompts=list(prompts), completions=[completion_text(c) for c in completions],
                            columns=columns)
        values = self.source(episodes).to(torch.float64).reshape(-1).tolist()
        self.calls += 1
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        self.non_finite += len(bad)
        if bad:
            self._log(f"reward source {self.__name__}: {len(bad)} of {len(values)} values not finite "
                      f"(rows {bad[:8]}{' ...' if len(bad) > 8 else ''}); left out of the reward")
        if log_metric is not None:
            log_metric(f"non_finite/{self.__name__}", float(len(bad)))
            figures = getattr(self.source, "metrics", None)
            for key, value in (figures() if callable(figures) else {}).items():
                log_metric(f"{self.__name__}/{key}", float(value))
        return [None if not math.isfinite(v) else float(v) for v in values]


def trl_reward_funcs(specs: list[RewardSpec], *, rm_source=None, log=None,
                     where: str = "rewards") -> tuple[list[TRLReward], list[float]]:
    """(reward_funcs, reward_weights) for a GRPO / RLOO trainer."""
    sources = build_sources(specs, rm_source=rm_source, where=where)
    funcs = [TRLReward(source, name, log) for (source, _), name in zip(sources, unique_names(specs))]
    return funcs, [weight for _, weight in sources]
