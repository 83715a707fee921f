"""Tests of align.ppo.core against numbers worked out by hand (see the comments)."""

import datetime
import math
import socket
import time

import pytest
import torch

from align.ppo import core
from align.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    entropy_from_logits,
    explained_variance,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
)

F64 = torch.float64


def t(x, dtype=F64):
    return torch.tensor(x, dtype=dtype)


# --------------------------------------------------------------------------------------------
# masked statistics
# --------------------------------------------------------------------------------------------

# Real values 1, 2, 3, 4; padding holds garbage (100, -50).
X = [[1.0, 2.0, 3.0], [4.0, 100.0, -50.0]]
M = [[1, 1, 1], [1, 0, 0]]


def test_masked_mean_and_var_by_hand():
    x, m = t(X), t(M)
    assert masked_mean(x, m).item() == pytest.approx(2.5)  # (1+2+3+4)/4
    # per row: (1+2+3)/3 = 2, 4/1 = 4
    assert masked_mean(x, m, dim=1).tolist() == pytest.approx([2.0, 4.0])
    # deviations -1.5, -0.5, 0.5, 1.5 -> squares sum to 5
    assert masked_var(x, m).item() == pytest.approx(5 / 3)  # unbiased: 5 / (4 - 1)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(1.25)  # 5 / 4
    # boolean masks work the same, and an empty mask gives 0, not nan
    assert masked_mean(x, t(M).bool()).item() == pytest.approx(2.5)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0


def test_masked_ops_ignore_inf_in_padding():
    x = t([[1.0, 3.0, float("-inf")]])
    m = t([[1, 1, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    assert masked_var(x, m).item() == pytest.approx(2.0)  # (1 + 1) / (2 - 1)


def test_masked_whiten_by_hand():
    x, m = t(X), t(M)
    w = masked_whiten(x, m)
    # std (unbiased) = sqrt(5/3) = 1.2909944; -1.5 / 1.2909944 = -1.1618950, -0.5 / ... = -0.3872983
    expected = [[-1.1618950, -0.3872983, 0.3872983], [1.1618950, 0.0, 0.0]]
    assert torch.allclose(w, t(expected), atol=1e-6)
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-7)
    assert masked_var(w, m).item() == pytest.approx(1.0, abs=1e-6)
    # positions outside the mask are zero (documented choice)
    assert w[1, 1].item() == 0.0 and w[1, 2].item() == 0.0


def test_masked_whiten_without_shifting_keeps_mean():
    x, m = t(X), t(M)
    w = masked_whiten(x, m, shift_mean=False)
    # the whitened values above plus the mean 2.5
    expected = [[1.3381050, 2.1127017, 2.8872983], [3.6618950, 0.0, 0.0]]
    assert torch.allclose(w, t(expected), atol=1e-6)
    assert masked_mean(w, m).item() == pytest.approx(2.5)
    assert masked_var(w, m).item() == pytest.approx(1.0, abs=1e-6)


def test_masked_whiten_constant_input_is_finite():
    x = torch.full((2, 3), 7.0)
    w = masked_whiten(x, torch.ones(2, 3))
    assert torch.isfinite(w).all() and w.abs().max().item() < 1e-3
    w = masked_whiten(x, torch.ones(2, 3), shift_mean=False)
    assert torch.allclose(w, x)


# --------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------


def test_compute_gae_by_hand():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = t([[0.1, 0.0, 0.0, 1.0], [0.0, 2.0, 9.0, 9.0]])  # 9.0: garbage in padding
    values = t([[0.5, 0.4, 0.6, 0.7], [1.0, 0.5, 7.0, 7.0]])  # 7.0: garbage in padding
    mask = t([[1, 1, 1, 1], [1, 1, 0, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    # row 0 (value after the last token is 0):
    #   t=3: delta = 1   + 0.9*0   - 0.7 =  0.30; A = 0.30
    #   t=2: delta = 0   + 0.9*0.7 - 0.6 =  0.03; A = 0.03 + 0.72*0.30    = 0.246
    #   t=1: delta = 0   + 0.9*0.6 - 0.4 =  0.14; A = 0.14 + 0.72*0.246   = 0.31712
    #   t=0: delta = 0.1 + 0.9*0.4 - 0.5 = -0.04; A = -0.04 + 0.72*0.31712 = 0.1883264
    # row 1 (ends at t=1; padding is ignored):
    #   t=1: delta = 2 + 0.9*0   - 0.5 =  1.5;  A = 1.5
    #   t=0: delta = 0 + 0.9*0.5 - 1.0 = -0.55; A = -0.55 + 0.72*1.5 = 0.53
    expected_adv = [[0.1883264, 0.31712, 0.246, 0.3], [0.53, 1.5, 0.0, 0.0]]
    # returns = A + V: 0.6883264, 0.71712, 0.846, 1.0 / 1.53, 2.0
    expected_ret = [[0.6883264, 0.71712, 0.846, 1.0], [1.53, 2.0, 0.0, 0.0]]
    assert torch.allclose(adv, t(expected_adv), atol=1e-9)
    assert torch.allclose(ret, t(expected_ret), atol=1e-9)


def test_compute_gae_outputs_are_detached():
    values = torch.zeros(1, 2, requires_grad=True)
    adv, ret = compute_gae(torch.ones(1, 2), values, torch.ones(1, 2), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad
    assert adv.tolist() == [[2.0, 1.0]]  # gamma = lam = 1, V = 0: reward-to-go


# --------------------------------------------------------------------------------------------
# KL estimators and controllers
# --------------------------------------------------------------------------------------------


def test_kl_estimators_literal_values():
    logr = t([0.0, 1.0, -1.0, 0.5])
    assert kl_k1(logr).tolist() == [0.0, 1.0, -1.0, 0.5]
    assert kl_k2(logr).tolist() == pytest.approx([0.0, 0.5, 0.5, 0.125])
    # exp(-logr) - 1 + logr: 0; e^-1 = 0.36787944; e - 2 = 0.71828183; e^-0.5 - 0.5 = 0.10653066
    assert kl_k3(logr).tolist() == pytest.approx([0.0, 0.36787944, 0.71828183, 0.10653066], abs=1e-8)


def test_kl_estimate_from_logprobs():
    # p = 0.5, p_ref = 0.25: logr = ln 2 = 0.69314718; k3 = 0.25/0.5 - 1 + ln 2 = 0.19314718
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.69314718)
    assert kl_estimate(logp, ref).item() == pytest.approx(0.69314718)  # default k1
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.24022651)  # 0.5 * 0.69314718^2
    assert kl_estimate(logp, ref, kind="k3").item() == pytest.approx(0.19314718)
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")


def test_k3_is_never_negative():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, F64):
        logr = torch.cat(
            [torch.randn(1000, generator=g) * 5, torch.tensor([0.0, 1e-12, -1e-12, 1e-7, -1e-7, 30.0, -30.0])]
        ).to(dtype)
        assert (kl_k3(logr) >= 0).all()
        assert (kl_k2(logr) >= 0).all()


def test_fixed_kl_controller_does_not_move():
    c = FixedKLController(0.05)
    c.update(100.0, 1000)
    assert c.value == 0.05


def test_adaptive_kl_controller_by_hand():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(6.6, 1000)  # error = 6.6/6 - 1 = 0.1; mult = 1 + 0.1 * 1000/10000 = 1.01
    assert c.value == pytest.approx(0.101, rel=1e-12)

    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(600.0, 1000)  # error = 99 -> clipped to 0.2; mult = 1 + 0.2 * 0.1 = 1.02
    assert c.value == pytest.approx(0.102, rel=1e-12)

    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(0.0, 1000)  # error = -1 -> clipped to -0.2; mult = 0.98
    assert c.value == pytest.approx(0.098, rel=1e-12)

    c2 = AdaptiveKLController(1.0, target=1.0, horizon=1.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == c.value and c2.target == 6.0 and c2.horizon == 10000


# --------------------------------------------------------------------------------------------
# Running moments
# --------------------------------------------------------------------------------------------


def test_running_moments_by_hand():
    rm = RunningMoments()
    rm.update(t([1.0]))
    rm.update(t([[2.0, 3.0], [4.0, 4.0]])[:, :1].flatten())  # 2, 4
    rm.update(t([3.0]))
    # data 1, 2, 4, 3: mean 2.5; squared deviations 2.25 + 0.25 + 2.25 + 0.25 = 5; var = 5/4
    assert rm.count == 4
    assert rm.mean == pytest.approx(2.5)
    assert rm.var == pytest.approx(1.25)
    assert rm.std == pytest.approx(math.sqrt(1.25))
    rm.update(torch.empty(0))  # an empty batch changes nothing
    assert rm.count == 4 and rm.var == pytest.approx(1.25)


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    # large offset: the naive sum-of-squares formula would lose digits here
    return torch.randn(n, generator=g, dtype=F64) * 3.0 + 1e4


def test_running_moments_uneven_chunks_update_and_merge():
    data = _data(58)
    chunks = [data[:1], data[1:8], data[8:]]  # sizes 1, 7, 50
    ref_mean, ref_var = data.mean().item(), data.var(unbiased=False).item()

    rm = RunningMoments()
    for c in chunks:
        rm.update(c)
    assert rm.count == 58
    assert rm.mean == pytest.approx(ref_mean, abs=1e-6)
    assert rm.var == pytest.approx(ref_var, abs=1e-6)

    # merging in a different order/grouping gives the same moments
    merged = RunningMoments.from_batch(chunks[2]).merge(RunningMoments.from_batch(chunks[0]))
    merged.merge(RunningMoments.from_batch(chunks[1]))
    assert merged.count == 58
    assert merged.mean == pytest.approx(ref_mean, abs=1e-6)
    assert merged.var == pytest.approx(ref_var, abs=1e-6)

    # float32 input is accumulated in float64
    rm32 = RunningMoments()
    for c in chunks:
        rm32.update(c.float())
    assert rm32.mean == pytest.approx(data.float().double().mean().item(), abs=1e-6)


def test_running_moments_state_dict_roundtrip():
    rm = RunningMoments().update(_data(10))
    other = RunningMoments()
    other.load_state_dict(rm.state_dict())
    assert other.state_dict() == rm.state_dict()
    with pytest.raises(KeyError):
        other.load_state_dict({"count": 1})


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world_size, port, out_dir):
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        data = _data(61)
        # step 1: rank 0 holds 1 element, rank 1 holds 7; step 2: rank 0 holds 50, rank 1 holds 3
        steps = [(data[0:1], data[1:8]), (data[8:58], data[58:61])]
        rm = RunningMoments()
        for step in steps:
            rm.update(step[rank])  # syncs: both ranks fold in the union of the step
        # all_reduce of per-rank moments (rank 0: 51 elements, rank 1: 10 elements)
        local = RunningMoments.from_batch(torch.cat([s[rank] for s in steps]))
        local.all_reduce()
        torch.save({"update": rm.state_dict(), "all_reduce": local.state_dict()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_running_moments_all_reduce_two_gloo_processes(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    import multiprocessing

    import torch.multiprocessing as mp

    # torch.multiprocessing.spawn's machinery, but forked where possible: spawned children each
    # re-import torch (~3 s apiece on a small machine); forked ones start at once.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    world_size = 2
    ctx = mp.start_processes(
        _dist_worker,
        args=(world_size, _free_port(), str(tmp_path)),
        nprocs=world_size,
        join=False,
        start_method=method,
    )
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):  # re-raises a child's exception here
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed workers did not finish within 60 s")
    data = _data(61)
    ref_mean, ref_var = data.mean().item(), data.var(unbiased=False).item()
    for rank in range(world_size):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        for key in ("update", "all_reduce"):
            state = result[key]
            assert state["count"] == 61
            assert state["mean"] == pytest.approx(ref_mean, abs=1e-6)
            assert state["var"] == pytest.approx(ref_var, abs=1e-6)


def test_running_moments_all_reduce_is_noop_without_distributed():
    rm = RunningMoments.from_batch(t([1.0, 3.0]))
    rm.all_reduce()
    assert (rm.count, rm.mean, rm.var) == (2, 2.0, 1.0)


# --------------------------------------------------------------------------------------------
# Clipped losses
# --------------------------------------------------------------------------------------------

EPS = 0.25  # 1 - eps = 0.75 and 1 + eps = 1.25 are exact in binary floating point


def _policy(ratio, adv):
    logp = torch.log(t([[ratio]])).requires_grad_(True)
    loss, stats = clipped_policy_loss(logp, t([[0.0]]), t([[adv]]), t([[1]]), EPS)
    loss.backward()
    return loss.item(), stats["clipfrac"].item(), logp.grad.item()


@pytest.mark.parametrize(
    "ratio, adv, loss, clipped",
    [
        # A > 0: loss = max(-A r, -A clip(r)); clipping bites only above 1 + eps
        (1.1, 2.0, -2.2, 0),  # inside
        (1.25, 2.0, -2.5, 0),  # exactly at 1 + eps: both terms equal, not counted as clipped
        (1.5, 2.0, -2.5, 1),  # beyond: -2 * 1.25
        (0.75, 2.0, -1.5, 0),  # exactly at 1 - eps
        (0.5, 2.0, -1.0, 0),  # below 1 - eps: unclipped term -1.0 > -1.5 (pessimistic)
        # A < 0: clipping bites only below 1 - eps
        (1.1, -2.0, 2.2, 0),
        (1.25, -2.0, 2.5, 0),
        (1.5, -2.0, 3.0, 0),  # unclipped 3.0 > clipped 2.5
        (0.75, -2.0, 1.5, 0),
        (0.5, -2.0, 1.5, 1),  # clipped 2 * 0.75 = 1.5 > unclipped 1.0
    ],
)
def test_clipped_policy_loss_single_token(ratio, adv, loss, clipped):
    got_loss, clipfrac, grad = _policy(ratio, adv)
    assert got_loss == pytest.approx(loss, abs=1e-12)
    assert clipfrac == clipped
    # d/dlogp of -A * exp(logp - old) is -A * ratio; clipped tokens get no gradient
    assert grad == pytest.approx(0.0 if clipped else -adv * ratio, abs=1e-12)


def test_clipped_policy_loss_batch_with_padding():
    ratios = t([[1.1, 1.25, 1.5, 0.75, 0.5], [1.1, 1.25, 1.5, 0.5, 9.0]])
    adv = t([[2.0] * 5, [-2.0] * 5])
    mask = t([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    old = t([[0.0] * 5, [0.0] * 4 + [float("-inf")]])  # padding holds -inf: must not leak nan
    loss, stats = clipped_policy_loss(torch.log(ratios), old, adv, mask, EPS)
    # per token: -2.2 -2.5 -2.5 -1.5 -1.0 | 2.2 2.5 3.0 1.5 ; sum = -9.7 + 9.2 = -0.5; / 9 tokens
    assert loss.item() == pytest.approx(-0.5 / 9, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(2 / 9)  # (1.5, A>0) and (0.5, A<0)
    assert torch.isfinite(stats["approx_kl"])


def test_clipped_policy_loss_approx_kl():
    # log-ratios 1 and 0: 0.5 * mean(1^2, 0^2) = 0.25; the padded -5 is ignored
    logp, old = t([[1.0, 0.0, -5.0]]), t([[0.0, 0.0, 0.0]])
    _, stats = clipped_policy_loss(logp, old, t([[1.0, 1.0, 1.0]]), t([[1, 1, 0]]), 0.2)
    assert stats["approx_kl"].item() == pytest.approx(0.25)


@pytest.mark.parametrize(
    "value, loss, clipped",
    [
        # old = 1.0, R = 2.0, eps = 0.25 -> clipped value lies in [0.75, 1.25]
        (1.125, 0.3828125, 0),  # inside: 0.5 * 0.875^2
        (1.25, 0.28125, 0),  # at the boundary: 0.5 * 0.75^2, clipped == unclipped
        (1.5, 0.28125, 1),  # beyond, towards R: max(0.5^2, 0.75^2) = 0.5625 -> 0.28125
        (0.5, 1.125, 0),  # beyond, away from R: max(1.5^2, 1.25^2) = 2.25 -> 1.125
        (2.5, 0.28125, 1),  # past R: max(0.5^2, 0.75^2)
    ],
)
def test_clipped_value_loss_single_token(value, loss, clipped):
    v = t([[value]]).requires_grad_(True)
    got, stats = clipped_value_loss(v, t([[1.0]]), t([[2.0]]), t([[1]]), EPS)
    assert got.item() == pytest.approx(loss, abs=1e-12)
    assert stats["vf_clipfrac"].item() == clipped
    got.backward()
    # d/dv of 0.5 (v - R)^2 is v - R; a clipped token gets no gradient
    assert v.grad.item() == pytest.approx(0.0 if clipped else value - 2.0, abs=1e-12)


def test_clipped_value_loss_batch_and_no_clipping():
    values = t([[1.125, 1.25, 1.5], [0.5, 2.5, 1e30]])
    old = torch.ones(2, 3, dtype=F64)
    returns = torch.full((2, 3), 2.0, dtype=F64)
    mask = t([[1, 1, 1], [1, 1, 0]])
    loss, stats = clipped_value_loss(values, old, returns, mask, EPS)
    # (0.765625 + 0.5625 + 0.5625 + 2.25 + 0.5625) / 5 = 4.703125 / 5 = 0.940625; * 0.5
    assert loss.item() == pytest.approx(0.4703125, abs=1e-12)
    assert stats["vf_clipfrac"].item() == pytest.approx(2 / 5)
    loss, stats = clipped_value_loss(values, old, returns, mask, None)
    # unclipped: (0.765625 + 0.5625 + 0.25 + 2.25 + 0.25) / 5 = 4.078125 / 5 = 0.815625; * 0.5
    assert loss.item() == pytest.approx(0.4078125, abs=1e-12)
    assert stats["vf_clipfrac"].item() == 0.0


# --------------------------------------------------------------------------------------------
# Logits helpers
# --------------------------------------------------------------------------------------------


def test_entropy_of_uniform_is_log_vocab():
    for shift in (0.0, 5.0, 1000.0):  # 1000: logsumexp must not overflow
        logits = torch.full((2, 3, 7), shift)
        assert torch.allclose(entropy_from_logits(logits), torch.full((2, 3), math.log(7)), atol=1e-5)


def test_entropy_by_hand_and_with_banned_tokens():
    # p = (1/2, 1/4, 1/4): H = 0.5 ln 2 + 0.25 ln 4 + 0.25 ln 4 = 1.5 ln 2 = 1.03972077
    logits = torch.log(t([0.5, 0.25, 0.25])).requires_grad_(True)
    h = entropy_from_logits(logits)
    assert h.item() == pytest.approx(1.03972077)
    h.backward()
    assert torch.isfinite(logits.grad).all()
    # a -inf logit is a probability-0 token: [0, 0, -inf] is uniform over 2, H = ln 2
    banned = torch.tensor([[0.0, 0.0, float("-inf")]], requires_grad=True)
    h = entropy_from_logits(banned)
    assert h.item() == pytest.approx(math.log(2), abs=1e-6)
    h.sum().backward()
    assert torch.isfinite(banned.grad).all()


def test_logprobs_from_logits_by_hand():
    # logsumexp(1, 2, 3) = 3 + ln(1 + e^-1 + e^-2) = 3 + ln(1.50321472) = 3.40760596
    logits = t([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])  # (B=1, T=2, V=3)
    labels = torch.tensor([[2, 0]])
    lp = logprobs_from_logits(logits, labels)
    assert lp.shape == (1, 2)
    assert lp[0].tolist() == pytest.approx([3 - 3.40760596, 1 - 3.40760596], abs=1e-8)


def test_logprobs_chunking_and_half_precision(monkeypatch):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    full = logprobs_from_logits(logits, labels)
    full_entropy = entropy_from_logits(logits)
    monkeypatch.setattr(core, "_CHUNK_ELEMENTS", 23)  # 2 rows per chunk, last chunk partial
    assert torch.allclose(logprobs_from_logits(logits, labels), full)
    assert torch.allclose(entropy_from_logits(logits), full_entropy)
    lp16 = logprobs_from_logits(logits.bfloat16(), labels)
    assert lp16.dtype == torch.float32
    assert torch.allclose(lp16, full, atol=0.1)


def test_explained_variance_by_hand():
    returns = t([[1.0, 2.0, 3.0, 4.0, 99.0]])
    mask = t([[1, 1, 1, 1, 0]])
    # var(returns) = 1.25; residual [0, 0, 0, 1] has mean 0.25 and var
    # (3 * 0.0625 + 0.5625) / 4 = 0.1875; EV = 1 - 0.1875 / 1.25 = 0.85
    values = t([[1.0, 2.0, 3.0, 3.0, -7.0]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.85)
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.zeros_like(returns), returns, mask).item() == pytest.approx(0.0)
    assert math.isnan(explained_variance(values, torch.ones_like(returns), mask).item())
