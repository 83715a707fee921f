"""Tensor maths for the project's own PPO.

Everything here is a pure function of tensors (plus two tiny stateful helpers: the running
moments used to normalise rewards and the KL-coefficient controllers), so the trainer stays a
thin loop and each formula can be checked on small hand-computed examples.

Conventions shared by all functions:

* Token tensors are ``(B, T)`` and right-padded; ``mask`` is 1 (or True) on real response tokens
  and 0 on padding. Only 0/1 masks are supported (not fractional weights).
* Values at padded positions are never read as data (they may be garbage, even inf/nan), and
  outputs that are per-token are **zero** at padded positions, so a later ``sum`` or ``mean`` over
  the whole tensor cannot be polluted by padding.
* Masked reductions over an empty mask return 0 rather than nan: an empty micro-batch should not
  poison a running log.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "RunningMoments",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_estimate",
    "FixedKLController",
    "AdaptiveKLController",
    "compute_gae",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "logprobs_from_logits",
    "explained_variance",
]

WHITEN_EPS = 1e-8

# Rows of (rows, vocab) logits are processed in chunks of about this many elements, so the
# float32 temporaries of a softmax never exceed ~64 MB whatever the batch, length and vocab.
_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------


def _zero_outside(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where rather than x * mask: 0 * inf is nan, and padding may hold inf (e.g. -inf logp).
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean over the real tokens only, so padding length does not dilute the statistic.

    With ``dim=None`` the result is a 0-d tensor; otherwise the reduced dims are dropped. An empty
    mask (or an empty slice along ``dim``) gives 0.
    """
    mask = mask.bool().expand_as(x)
    total = _zero_outside(x, mask)
    count = mask.to(x.dtype if x.is_floating_point() else torch.float32)
    if dim is None:
        total, count = total.sum(), count.sum()
    else:
        total, count = total.sum(dim=dim), count.sum(dim=dim)
    # clamp instead of a data-dependent branch: no host sync; sum is 0 when count is 0.
    return total / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the real tokens only (a 0-d tensor).

    Two-pass (centre, then square) for accuracy. With ``unbiased`` Bessel's correction uses the
    number of real tokens, not ``x.numel()``. Fewer than two real tokens give 0 instead of
    raising, so a degenerate batch cannot crash a training step (whitening then only centres).
    """
    mask = mask.bool().expand_as(x)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum().to(var.dtype)
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` with statistics of the real tokens only.

    Advantages are whitened so the policy step size does not depend on reward scale; padding must
    not take part or short responses would skew the statistics. With ``shift_mean=False`` the mean
    is added back (only the scale is normalised), which keeps the sign of a mostly-positive or
    mostly-negative signal. Positions outside the mask are set to **0**. ``1e-8`` is added to the
    variance so a constant input does not divide by zero.
    """
    mask = mask.bool().expand_as(x)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        out = out + mean
    return _zero_outside(out, mask)


# --------------------------------------------------------------------------------------------
# Running moments (reward / score normalisation)
# --------------------------------------------------------------------------------------------


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _collective_device(group=None) -> torch.device:
    # NCCL only reduces CUDA tensors; gloo (and mixed "cpu:gloo,cuda:nccl") accepts CPU ones.
    backend = str(torch.distributed.get_backend(group))
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class RunningMoments:
    """Count, mean and population variance of a stream of scalars, merged exactly.

    Rewards are normalised by statistics of everything seen so far; batches arrive with uneven
    sizes and on several processes, so the moments are combined with the exact parallel formula
    of Chan et al. (not an average of means), in float64, so that any split of the same data
    gives the same answer.
    """

    def __init__(self, count: int = 0, mean: float = 0.0, var: float = 0.0):
        self.count = int(count)
        self.mean = float(mean)
        self.var = float(var)  # population variance (divides by count)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    @property
    def m2(self) -> float:
        """Sum of squared deviations from the mean: the quantity that adds up exactly."""
        return self.var * self.count

    def __repr__(self) -> str:
        return f"RunningMoments(count={self.count}, mean={self.mean!r}, var={self.var!r})"

    @classmethod
    def from_batch(cls, x: torch.Tensor) -> "RunningMoments":
        """Moments of one batch (all elements, any shape); an empty batch gives count 0."""
        x = x.detach().reshape(-1).to(torch.float64)
        n = x.numel()
        if n == 0:
            return cls()
        mean = x.mean()
        var = ((x - mean) ** 2).mean()
        return cls(n, mean.item(), var.item())

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """Fold ``other`` into ``self`` in place (Chan et al. pairwise update); returns ``self``."""
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        if n_b == 0:
            return self
        if n_a == 0:
            self.count, self.mean, self.var = other.count, other.mean, other.var
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * n_b / n
        m2 = self.m2 + other.m2 + delta * delta * n_a * n_b / n
        self.count, self.mean, self.var = n, mean, m2 / n
        return self

    def all_reduce(self, group=None) -> "RunningMoments":
        """Replace ``self`` in place with the moments of the union of every rank's data.

        A collective: every rank in ``group`` must call it. Each rank's data must be disjoint
        (call it on per-rank moments, not on moments that were already reduced, or data is
        counted twice). Two all-reduces: first [count, sum] for the global mean, then each rank's
        sum of squared deviations *about that global mean* (its m2 plus n * (mean - global)^2),
        which add up exactly. A no-op when torch.distributed is not initialised.
        """
        if not _dist_ready():
            return self
        dist = torch.distributed
        device = _collective_device(group)
        first = torch.tensor([float(self.count), self.count * self.mean], dtype=torch.float64, device=device)
        dist.all_reduce(first, op=dist.ReduceOp.SUM, group=group)
        n, total = first.tolist()
        n_int = int(round(n))
        if n_int == 0:
            self.count, self.mean, self.var = 0, 0.0, 0.0
            return self
        global_mean = total / n
        d = self.mean - global_mean
        second = torch.tensor([self.m2 + self.count * d * d], dtype=torch.float64, device=device)
        dist.all_reduce(second, op=dist.ReduceOp.SUM, group=group)
        self.count, self.mean, self.var = n_int, global_mean, second.item() / n
        return self

    def update(self, x: torch.Tensor, sync: bool = True, group=None) -> "RunningMoments":
        """Add a batch; returns ``self``.

        With ``sync`` (default) and torch.distributed initialised, the batch moments are first
        reduced across ranks, so every rank folds in the same union and the running moments stay
        identical everywhere. That makes it a collective: every rank must call it, each with its
        own (possibly differently sized, possibly empty) batch.
        """
        batch = RunningMoments.from_batch(x)
        if sync:
            batch.all_reduce(group=group)
        return self.merge(batch)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict) -> None:
        missing = {"count", "mean", "var"} - set(state)
        if missing:
            raise KeyError(f"RunningMoments state is missing {sorted(missing)}")
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.var = float(state["var"])


# --------------------------------------------------------------------------------------------
# KL estimators and KL-coefficient controllers
# --------------------------------------------------------------------------------------------
# Per-token estimators of KL(policy || ref) from samples of the policy (Schulman, "Approximating
# KL divergence"), with logr = logp_policy - logp_ref:
#   k1 = logr                 unbiased, high variance, can be negative per token
#   k2 = logr**2 / 2          biased, low variance, >= 0
#   k3 = (r - 1) - log r,  r = exp(-logr) = p_ref / p_policy:  unbiased, low variance, >= 0


def kl_k1(logr: torch.Tensor) -> torch.Tensor:
    """Plain log-ratio: unbiased but noisy; what the classic RLHF reward penalty uses."""
    return logr


def kl_k2(logr: torch.Tensor) -> torch.Tensor:
    """Half squared log-ratio: never negative, low variance, slightly biased."""
    return 0.5 * logr**2


def kl_k3(logr: torch.Tensor) -> torch.Tensor:
    """``(exp(-logr) - 1) + logr``: unbiased and never negative.

    ``expm1`` keeps it accurate (and >= 0 after rounding) for tiny log-ratios, where
    ``exp(-x) - 1 + x`` would cancel catastrophically.
    """
    return torch.expm1(-logr) + logr


_KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || ref) estimate; ``kind`` picks the estimator ('k1', 'k2', 'k3')."""
    try:
        fn = _KL_ESTIMATORS[kind]
    except KeyError:
        raise ValueError(f"unknown KL estimator {kind!r}; expected one of {sorted(_KL_ESTIMATORS)}") from None
    return fn(logp - ref_logp)


class FixedKLController:
    """Constant KL coefficient; same interface as the adaptive one so the trainer need not care."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """KL coefficient steered towards a target KL (Ziegler et al. 2019).

    A fixed coefficient either lets the policy drift far from the reference or freezes it,
    depending on the task; this proportional controller nudges the coefficient so the observed
    KL tracks ``target``. The error is clipped to +-20% so one noisy batch cannot swing it, and
    the step is scaled by ``n_steps / horizon`` so the adaptation rate is per sample, not per call.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        current_kl = float(current_kl)
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded responses.

    Returns ``(advantages, returns)``, both ``(B, T)``, zero at padded positions, detached (they
    are regression/policy targets: gradients must not flow into them). The episode ends at the
    last real token, so the value after it is 0; rewards and values at padded positions are
    ignored. ``returns = advantages + values`` is the target of the value head.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and mask must all be (B, T); got {tuple(rewards.shape)}, "
            f"{tuple(values.shape)}, {tuple(mask.shape)}"
        )
    with torch.no_grad():
        real = mask.bool()
        rewards = _zero_outside(rewards.detach(), real)
        values = _zero_outside(values.detach(), real)
        n_tokens = rewards.shape[1]
        advantages = torch.zeros_like(rewards)
        next_value = torch.zeros_like(rewards[:, 0])
        next_adv = torch.zeros_like(rewards[:, 0])
        for t in range(n_tokens - 1, -1, -1):
            delta = rewards[:, t] + gamma * next_value - values[:, t]
            adv = delta + gamma * lam * next_adv
            # A padded position contributes nothing and (being zero) makes the position before it
            # see "value 0, advantage 0 afterwards", i.e. the end of the episode.
            adv = torch.where(real[:, t], adv, torch.zeros_like(adv))
            advantages[:, t] = adv
            next_value, next_adv = values[:, t], adv
        returns = _zero_outside(advantages + values, real)
    return advantages, returns


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate loss (to minimise), averaged over real tokens.

    Taking the max of the two negated surrogates is the pessimistic bound: the policy gets no
    extra credit for moving the ratio beyond ``1 +- clip_range`` in the direction the advantage
    favours, which keeps each update close to the sampling policy.

    Stats (detached 0-d tensors, no host sync): ``clipfrac``, the fraction of real tokens where
    the clipped term is strictly the active one (their gradient is zero; a ratio exactly on the
    boundary is not counted), ``approx_kl`` = 0.5 * mean((logp - old_logp)^2), and
    ``ratio_mean``.
    """
    advantages = _zero_outside(advantages.detach(), mask)
    old_logp = old_logp.detach()
    log_ratio = _zero_outside(logp - old_logp, mask)  # padding may hold -inf - -inf = nan
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float | None,
) -> tuple[torch.Tensor, dict]:
    """Value-head loss, 0.5 * masked mean of squared error, optionally clipped as in PPO.

    Clipping keeps the new value prediction within ``clip_range`` of the one made at sampling
    time, taking the larger (pessimistic) of the clipped and unclipped errors, so the value head
    cannot chase one batch's noisy returns. ``clip_range=None`` turns clipping off.
    Stats: ``vf_clipfrac``, the fraction of real tokens where the clipped error strictly wins.
    """
    # Zero padding first: garbage there would otherwise turn into nan gradients via pow backward.
    values = _zero_outside(values, mask)
    returns = _zero_outside(returns.detach(), mask)
    old_values = _zero_outside(old_values.detach(), mask)
    err = (values - returns) ** 2
    if clip_range is None:
        loss = 0.5 * masked_mean(err, mask)
        return loss, {"vf_clipfrac": torch.zeros((), dtype=values.dtype, device=values.device)}
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((err_clipped > err).to(values.dtype), mask)}
    return loss, stats


# --------------------------------------------------------------------------------------------
# Logits helpers
# --------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision softmax sums lose too much: log-prob differences feed exp() in the ratio.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _row_chunks(n_rows: int, vocab: int):
    step = max(1, _CHUNK_ELEMENTS // max(vocab, 1))
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim; shape is ``logits.shape[:-1]``.

    Computed as ``-sum(p * logp)`` with ``logp = z - logsumexp(z)`` (shift-invariant, so huge
    logits do not cancel catastrophically), finite for ``-inf`` (banned) tokens, and in row
    chunks (float32 for half-precision inputs) so a large vocabulary does not materialise a
    full-size probability tensor. Differentiable (for an entropy bonus).
    """
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    dtype = _compute_dtype(logits.dtype)
    parts = []
    for start, stop in _row_chunks(flat.shape[0], vocab):
        z = flat[start:stop].to(dtype)
        # -inf -> most negative finite: probability still exactly 0, but 0 * z is 0, not nan.
        z = z.clamp(min=torch.finfo(dtype).min)
        logp = z - torch.logsumexp(z, dim=-1, keepdim=True)
        parts.append(-(torch.exp(logp) * logp).sum(dim=-1))
    if not parts:
        return flat.new_zeros(flat.shape[0], dtype=dtype).reshape(logits.shape[:-1])
    return torch.cat(parts).reshape(logits.shape[:-1])


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``labels`` under softmax(logits); shape is ``labels.shape``.

    Only the chosen token's log-prob is needed, so instead of a full ``log_softmax`` tensor this
    computes ``logit[label] - logsumexp(logits)`` in row chunks: peak extra memory is one chunk,
    not another (B, T, V) tensor. Half-precision inputs are computed and returned in float32.
    Labels must be valid token ids (mask padding separately; -100 is not accepted).
    """
    vocab = logits.shape[-1]
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    flat = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1, 1).long()
    dtype = _compute_dtype(logits.dtype)
    parts = []
    for start, stop in _row_chunks(flat.shape[0], vocab):
        z = flat[start:stop].to(dtype)
        chosen = z.gather(-1, flat_labels[start:stop]).squeeze(-1)
        parts.append(chosen - torch.logsumexp(z, dim=-1))
    if not parts:
        return flat.new_zeros(0, dtype=dtype).reshape(labels.shape)
    return torch.cat(parts).reshape(labels.shape)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - var(returns - values) / var(returns)`` over real tokens (a 0-d tensor).

    A diagnostic of the value head: 1 is perfect, 0 is no better than predicting the mean,
    negative is worse. nan when the returns have no variance (the ratio is undefined).
    """
    values, returns = values.detach(), returns.detach()
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    nan = torch.full_like(var_returns, float("nan"))
    return torch.where(var_returns > 0, 1.0 - var_residual / torch.where(var_returns > 0, var_returns, 1.0), nan)
