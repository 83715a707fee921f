"""PPO's score shaping; the reward sources themselves live in `align.rewards` (shared with GRPO
and RLOO) and are re-exported here, so `align.ppo.rewards:correct_answer` in older recipes and
imports from this module keep working.

Shaping (`ScoreShaper`) is applied to the combined score in this order: normalisation
(running moments merged across processes; `rm_stats` is applied inside the RM source, with the
statistics the RM stage measured on held-out data), clipping, then the missing-EOS penalty, so
the clip and the penalty are in the same units as the normalised score.
"""

from __future__ import annotations

import torch

from align.errors import AlignError
from align.ppo.core import RunningMoments
from align.rewards.sources import (  # noqa: F401  (re-exported)
    CallableSource,
    Episodes,
    RewardModelSource,
    ScoreBatch,
    WeightedReward,
    append_after_eos,
    build_reward,
    build_sources,
    check_callables,
    classifier_parts,
    hidden_states,
    import_callable,
    last_token_index,
    position_ids_from_mask,
    same_tokenizer,
    sequence_scores,
    turn_suffix_ids,
)
from align.rewards.verifiable import correct_answer  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------------------------
# Shaping the score
# --------------------------------------------------------------------------------------------


class ScoreShaper:
    """Raw score -> the score added to the last token's reward.

    `running` normalisation folds each rollout (all processes, finite rows only) into running
    moments before normalising, so the first rollout is normalised by its own statistics and
    later ones by everything seen so far.
    """

    def __init__(self, normalization: str = "none", clip: float | None = None,
                 missing_eos_penalty: float | None = None, eps: float = 1e-8):
        if normalization not in ("none", "running", "rm_stats"):
            raise AlignError(f"unknown score_normalization {normalization!r}")
        self.normalization = normalization
        self.clip = clip
        self.missing_eos_penalty = missing_eos_penalty
        self.eps = eps
        self.moments = RunningMoments()

    def __call__(self, batch: ScoreBatch, has_eos: torch.Tensor) -> torch.Tensor:
        """Collective under `running` (every process must call it once per rollout)."""
        finite = batch.finite.bool()
        scores = batch.total.to(torch.float64)
        if self.normalization == "running":
            self.moments.update(scores[finite])
            scores = (scores - self.moments.mean) / (self.moments.std + self.eps)
        elif self.normalization == "rm_stats":
            if batch.rm_normalized is None:
                raise AlignError("score_normalization rm_stats needs a reward model source with "
                                 "score statistics.")
            scores = batch.rm_normalized
        if self.clip is not None:
            scores = scores.clamp(-self.clip, self.clip)
        if self.missing_eos_penalty is not None:
            scores = torch.where(has_eos.bool(), scores, scores - self.missing_eos_penalty)
        return torch.where(finite.bool(), scores, torch.zeros_like(scores))

    def state_dict(self) -> dict:
        return {"moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.moments.load_state_dict(state["moments"])
