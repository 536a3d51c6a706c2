"""Unit tests of softq.regularized: the soft value, Boltzmann policy, KL, policy value, and the rollout targets."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from softq.regularized import (
    boltzmann_policy,
    discounted_sum,
    kl,
    log_boltzmann_policy,
    n_step_soft_return,
    policy_value,
    soft_value,
    td_errors,
)

F64 = torch.float64
FAST = settings(max_examples=30, deadline=None)


def _rand(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _simplex(seed: int, *shape: int) -> torch.Tensor:
    return torch.softmax(_rand(seed, *shape, scale=2.0), dim=-1)


# --- soft value, Boltzmann policy, policy value ----------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 10_000), n_actions=st.integers(1, 6), tau=st.floats(0.01, 10.0))
def test_policy_value_is_maximized_by_the_boltzmann_policy(seed, n_actions, tau):
    """Eq (27), (31): E_pi[Q] - tau KL[pi||pi_bar] = V_Q - tau KL[pi||pi^B_Q] <= V_Q, equality at pi^B_Q."""
    q, pi_bar, pi = _rand(seed, 3, n_actions), _simplex(seed + 1, n_actions), _simplex(seed + 2, 3, n_actions)
    pib = boltzmann_policy(q, tau, pi_bar)
    v = soft_value(q, tau, pi_bar)
    torch.testing.assert_close(policy_value(q, pib, tau, pi_bar), v, atol=1e-12, rtol=0)
    torch.testing.assert_close(policy_value(q, pi, tau, pi_bar), v - tau * kl(pi, pib), atol=1e-12, rtol=0)
    assert torch.all(policy_value(q, pi, tau, pi_bar) <= v + 1e-12)


def test_boltzmann_policy_matches_the_naive_formula_and_batches():
    """Eq (28), (30) on a batch of shape [2, 3, A] with a per-row reference."""
    q, pi_bar, tau = _rand(0, 2, 3, 4), _simplex(1, 2, 3, 4), 0.7
    naive = pi_bar * torch.exp(q / tau) / (pi_bar * torch.exp(q / tau)).sum(-1, keepdim=True)
    pib = boltzmann_policy(q, tau, pi_bar)
    assert pib.shape == (2, 3, 4)
    torch.testing.assert_close(pib, naive, atol=1e-14, rtol=0)
    v = soft_value(q, tau, pi_bar)
    assert v.shape == (2, 3)
    torch.testing.assert_close(pib, pi_bar * torch.exp((q - v[..., None]) / tau), atol=1e-14, rtol=0)


@pytest.mark.parametrize("tau", [1e-3, 1e-2])
def test_soft_value_is_stable_and_tends_to_the_max(tau):
    """tau = 1e-3, |Q| = 1e4: finite; max + tau log pi_bar(argmax) <= V_Q <= max (the tau -> 0 limit)."""
    q = torch.tensor([[1e4, -1e4, 9999.0], [-1e4, -1e4 + 5.0, -1e4 + 2.0]], dtype=F64)
    v = soft_value(q, tau)
    pib = boltzmann_policy(q, tau)
    assert torch.all(torch.isfinite(v)) and torch.all(torch.isfinite(pib))
    top = q.max(-1).values
    assert torch.all(v <= top + 1e-9) and torch.all(v >= top - tau * math.log(3) - 1e-9)
    torch.testing.assert_close(pib.sum(-1), torch.ones(2, dtype=F64))
    assert pib[0, 0] > 1 - 1e-12 and pib[1, 1] > 1 - 1e-12
    assert torch.all(torch.isfinite(log_boltzmann_policy(q, tau)))
    assert torch.all(torch.isfinite(policy_value(q, pib, tau)))


def test_policy_value_rejects_bad_arguments():
    q = _rand(0, 3, 4)
    with pytest.raises(ValueError, match="pi"):
        policy_value(q, _simplex(1, 3, 5), 1.0)
    with pytest.raises(ValueError, match="pi"):
        policy_value(q, torch.full((3, 4), 0.3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="tau"):
        policy_value(q, _simplex(1, 3, 4), 0.0)
    with pytest.raises(ValueError, match="pi_bar"):
        policy_value(q, _simplex(1, 3, 4), 1.0, torch.tensor([0.5, 0.6, 0.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="tau"):
        soft_value(q, -1.0)
    with pytest.raises(ValueError, match="tau"):
        soft_value(q, float("nan"))


# --- rollout targets ----------------------------------------------------------------------------------------------


def _slow_n_step(rewards, kls, next_values, dones, gamma, tau, n):
    """Reference: a literal double loop over (t, d)."""
    T = rewards.shape[0]
    out = torch.zeros_like(rewards)
    for t in range(T):
        for b in range(rewards.shape[1]):
            g, disc, d = 0.0, 1.0, 0
            while True:
                g += disc * (rewards[t + d, b] - tau * kls[t + d, b])
                if dones[t + d, b]:
                    break
                disc *= gamma
                d += 1
                if d == n or t + d == T:
                    g += disc * next_values[t + d - 1, b]
                    break
            out[t, b] = g
    return out


def _rollout(seed, T, B, p_done):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, B, generator=g, dtype=F64)
    kls = torch.rand(T, B, generator=g, dtype=F64)
    next_values = 10 * torch.randn(T, B, generator=g, dtype=F64)
    dones = torch.rand(T, B, generator=g) < p_done
    return rewards, kls, next_values, dones


@FAST
@given(seed=st.integers(0, 10_000), T=st.integers(1, 9), B=st.integers(1, 3), n=st.integers(1, 12),
       gamma=st.floats(0.0, 1.0), tau=st.floats(0.01, 5.0), p_done=st.sampled_from([0.0, 0.3, 0.7]))
def test_n_step_soft_return_matches_a_slow_loop(seed, T, B, n, gamma, tau, p_done):
    rewards, kls, next_values, dones = _rollout(seed, T, B, p_done)
    got = n_step_soft_return(rewards, kls, next_values, dones, gamma, tau, n=n)
    want = _slow_n_step(rewards, kls, next_values, dones, gamma, tau, n)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # to the end of the rollout, only the value after the last step matters
    full = n_step_soft_return(rewards, kls, next_values, dones, gamma, tau)
    torch.testing.assert_close(full, n_step_soft_return(rewards, kls, next_values[-1], dones, gamma, tau))
    torch.testing.assert_close(full, _slow_n_step(rewards, kls, next_values, dones, gamma, tau, T), atol=1e-12,
                               rtol=0)


def test_n_step_soft_return_hand_example_with_an_episode_end():
    """T = 3, one lane, done after step 1: returns cut there, the bootstrap only reaches step 2."""
    r = torch.tensor([[1.0], [2.0], [4.0]], dtype=F64)
    k = torch.tensor([[0.5], [0.0], [1.0]], dtype=F64)
    boot = torch.tensor([[100.0], [200.0], [8.0]], dtype=F64)  # V(s_1), V(s_2) (ignored: done), V(s_3)
    d = torch.tensor([[0], [1], [0]])
    got = n_step_soft_return(r, k, boot, d, gamma=0.5, tau=2.0, n=2)
    want = torch.tensor([[(1 - 1) + 0.5 * 2], [2.0], [(4 - 2) + 0.5 * 8]], dtype=F64)
    torch.testing.assert_close(got, want)
    # kls=None is the plain ("naive", eq 79) return
    torch.testing.assert_close(n_step_soft_return(r, None, boot, d, 0.5, 2.0, n=1),
                               torch.tensor([[1 + 0.5 * 100], [2.0], [4 + 0.5 * 8]], dtype=F64))


@FAST
@given(seed=st.integers(0, 10_000), T=st.integers(1, 8), n=st.integers(1, 10), gamma=st.floats(0.0, 1.0),
       tau=st.floats(0.01, 5.0), p_done=st.sampled_from([0.0, 0.4]))
def test_td_errors_telescope_into_the_n_step_return(seed, T, n, gamma, tau, p_done):
    """Eq (37) corrected / (54): V(s_t) + sum_{d<n} gamma^d delta_{t+d} = n-step return bootstrapped with V."""
    rewards, kls, _, dones = _rollout(seed, T, 2, p_done)
    values = _rand(seed + 7, T, 2, scale=5.0)
    last = _rand(seed + 8, 2, scale=5.0)
    delta = td_errors(rewards, kls, values, last, dones, gamma, tau)
    per_step_next = torch.cat([values[1:], last[None]])
    torch.testing.assert_close(delta, td_errors(rewards, kls, values, per_step_next, dones, gamma, tau))
    want = n_step_soft_return(rewards, kls, per_step_next, dones, gamma, tau, n=n)
    torch.testing.assert_close(values + discounted_sum(delta, dones, gamma, n=n), want, atol=1e-11, rtol=0)


def test_discounted_sum_matches_a_loop():
    x, _, _, dones = _rollout(3, 7, 2, 0.3)
    got = discounted_sum(x, dones, 0.8)
    want = torch.zeros_like(x)
    for b in range(2):
        acc = 0.0
        for t in reversed(range(7)):
            acc = x[t, b] + (0.0 if dones[t, b] else 0.8 * acc)
            want[t, b] = acc
    torch.testing.assert_close(got, want, atol=1e-13, rtol=0)


def test_rollout_targets_are_stable_with_large_values():
    rewards, kls, _, dones = _rollout(0, 5, 3, 0.2)
    boot = torch.full((5, 3), 1e4, dtype=F64)
    out = n_step_soft_return(1e4 * rewards, kls, boot, dones, 0.99, 1e-3, n=3)
    assert torch.all(torch.isfinite(out))


def test_rollout_targets_reject_bad_arguments():
    rewards, kls, nv, dones = _rollout(0, 4, 2, 0.2)
    with pytest.raises(ValueError, match="gamma"):
        n_step_soft_return(rewards, kls, nv, dones, 1.5, 1.0)
    with pytest.raises(ValueError, match="tau"):
        n_step_soft_return(rewards, kls, nv, dones, 0.9, 0.0)
    with pytest.raises(ValueError, match="kls"):
        n_step_soft_return(rewards, kls[:3], nv, dones, 0.9, 1.0)
    with pytest.raises(ValueError, match="dones"):
        n_step_soft_return(rewards, kls, nv, dones[:, :1], 0.9, 1.0)
    with pytest.raises(ValueError, match="dones"):
        n_step_soft_return(rewards, kls, nv, torch.full((4, 2), 2.0), 0.9, 1.0)
    with pytest.raises(ValueError, match="bootstrap"):
        n_step_soft_return(rewards, kls, nv[:, :1], dones, 0.9, 1.0)
    with pytest.raises(ValueError, match="n"):
        n_step_soft_return(rewards, kls, nv, dones, 0.9, 1.0, n=0)
    with pytest.raises(ValueError, match="bootstrap"):
        n_step_soft_return(rewards, kls, nv[-1], dones, 0.9, 1.0, n=2)  # n < T needs per-step values
    with pytest.raises(ValueError, match="rewards"):
        n_step_soft_return(torch.tensor(1.0), None, torch.tensor(0.0), torch.tensor(0), 0.9, 1.0)
    with pytest.raises(ValueError, match="values"):
        td_errors(rewards, kls, nv[:2], nv[-1], dones, 0.9, 1.0)
    with pytest.raises(ValueError, match="discount"):
        discounted_sum(rewards, dones, -0.1)


def test_q_from_value_and_policy_inverts_the_boltzmann_policy_in_batches():
    """Eq (57): Q = V_Q + tau log(pi^B_Q / pi_bar) on a [B, S, A] batch, with a per-state reference policy."""
    from softq.regularized import q_from_value_and_policy

    g = torch.Generator().manual_seed(3)
    q = 5 * torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    pi_bar = torch.softmax(torch.randn(3, 4, generator=g, dtype=torch.float64), -1)
    back = q_from_value_and_policy(soft_value(q, 0.2, pi_bar), log_boltzmann_policy(q, 0.2, pi_bar), 0.2, pi_bar)
    torch.testing.assert_close(back, q, atol=1e-12, rtol=0)
