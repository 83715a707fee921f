"""Reward sources shared by every RL stage (ppo, grpo, rloo).

- `spec`: a stage's `rewards` list as a recipe writes it, checked without torch.
- `sources`: the sources themselves (RM artifact scorer, `module:function` callables, the
  ternary honesty reward) and their weighted sum, which PPO uses.
- `trl`: each source as one of TRL's `reward_funcs` with its weight, for GRPO and RLOO.
- `verifiable`: rule-based rewards for QA data (`align.rewards:correct_answer`).

This package's own namespace stays light (no torch), so recipes' `module:function` names such
as `align.rewards:correct_answer` resolve cheaply.
"""

from align.rewards.spec import RewardSpec, parse_rewards, uses_rm
from align.rewards.verifiable import correct_answer

__all__ = ["RewardSpec", "correct_answer", "parse_rewards", "uses_rm"]
