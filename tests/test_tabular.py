"""Unit tests of softq.tabular: exact entropy-regularized evaluation and backups on random finite MDPs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import softq.tabular as tb
from softq.regularized import boltzmann_policy, n_step_soft_return, policy_value, soft_value
from softq.tabular import (
    MDP,
    backup_q,
    backup_q_n,
    backup_q_powers,
    backup_v,
    backup_v_n,
    boltzmann_backup,
    boltzmann_backup_lambda,
    boltzmann_backup_n,
    expected_soft_reward,
    lookahead,
    policy_kl,
    q_pi,
    random_mdp,
    random_policy,
    sample_rollout,
    soft_policy_iteration,
    soft_value_iteration,
    trajectory_expectations,
    v_pi,
)

F64 = torch.float64
FAST = settings(max_examples=20, deadline=None)


@st.composite
def problems(draw, episodic=False):
    """A random MDP, policy, reference policy and temperature."""
    seed = draw(st.integers(0, 100_000))
    S, A = draw(st.integers(2, 6)), draw(st.integers(1, 4))
    if episodic:
        gamma = draw(st.sampled_from([0.9, 1.0]))
        mdp = random_mdp(S + 1, A, gamma, seed, n_terminal=1, p_end=draw(st.floats(0.2, 0.6)))
        S += 1
    else:
        mdp = random_mdp(S, A, draw(st.floats(0.0, 0.95)), seed)
    pi = random_policy(S, A, seed + 1, concentration=draw(st.sampled_from([0.3, 1.0])))
    pi_bar = draw(st.sampled_from([None, "per-state", "shared"]))
    if pi_bar == "per-state":
        pi_bar = random_policy(S, A, seed + 2)
    elif pi_bar == "shared":
        pi_bar = random_policy(1, A, seed + 3)[0]
    tau = draw(st.floats(0.05, 3.0))
    return mdp, pi, pi_bar, tau


def _q(mdp, seed, scale=3.0):
    return scale * torch.randn(mdp.n_states, mdp.n_actions, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --- fixed-policy evaluation: eqs (24)-(26), (32)-(35) ---------------------------------------------------------------


@FAST
@given(problems())
def test_policy_values_are_bellman_fixed_points(problem):
    """V^pi = T_pi V^pi (32), Q^pi = T_pi Q^pi (33), V^pi = E_pi[Q^pi] - tau KL (26)."""
    mdp, pi, pi_bar, tau = problem
    v, q = v_pi(mdp, pi, tau, pi_bar), q_pi(mdp, pi, tau, pi_bar)
    torch.testing.assert_close(backup_v(mdp, pi, v, tau, pi_bar), v, atol=1e-10, rtol=0)
    torch.testing.assert_close(backup_q(mdp, pi, q, tau, pi_bar), q, atol=1e-10, rtol=0)
    torch.testing.assert_close(policy_value(q, pi, tau, pi_bar), v, atol=1e-10, rtol=0)


@FAST
@given(problems(episodic=True))
def test_episodic_values_equal_the_truncated_expected_sum(problem):
    """Eq (24) with terminal states and gamma up to 1: the linear solve equals sum_t gamma^t E[r_t - tau KL_t]."""
    mdp, pi, pi_bar, tau = problem
    horizon = 400  # p_end >= 0.2: the live mass after 400 steps is < 0.8^400 ~ 1e-39
    c = expected_soft_reward(mdp, pi, tau, pi_bar)
    e = trajectory_expectations(mdp, pi, c, horizon, given="state")
    disc = mdp.gamma ** torch.arange(horizon + 1, dtype=F64)
    want = (disc[:, None] * e).sum(0)
    v = v_pi(mdp, pi, tau, pi_bar)
    torch.testing.assert_close(v, want, atol=1e-10, rtol=0)
    assert torch.all(v[mdp.terminal] == 0)
    torch.testing.assert_close(backup_v(mdp, pi, v, tau, pi_bar), v, atol=1e-10, rtol=0)


@FAST
@given(st.one_of(problems(), problems(episodic=True)), st.integers(0, 5))
def test_n_step_backups_equal_n_step_expected_returns(problem, n):
    """Eqs (34), (35): T_pi^n as an n-step expected return, from arbitrary V and Q. They are nonzero at terminal
    states, where the episode has ended: those entries must not leak into live states (compared there)."""
    mdp, pi, pi_bar, tau = problem
    live = mdp.live.bool()
    v, q = _q(mdp, n)[:, 0], _q(mdp, n + 1)
    c = expected_soft_reward(mdp, pi, tau, pi_bar)
    kl_s = policy_kl(mdp, pi, pi_bar)
    disc = mdp.gamma ** torch.arange(n + 1, dtype=F64)
    ev = trajectory_expectations(mdp, pi, c, n, given="state")
    want_v = (disc[:n, None] * ev[:n]).sum(0) + disc[n] * trajectory_expectations(mdp, pi, v, n, "state")[n]
    torch.testing.assert_close(backup_v_n(mdp, pi, v, n, tau, pi_bar)[live], want_v[live], atol=1e-10, rtol=0)
    f = mdp.R - tau * kl_s[:, None]
    eq = trajectory_expectations(mdp, pi, f, n)
    tail = trajectory_expectations(mdp, pi, q - tau * kl_s[:, None], n)[n]
    want_q = (disc[:n, None, None] * eq[:n]).sum(0) + disc[n] * tail
    got_q = backup_q_n(mdp, pi, q, n, tau, pi_bar) - tau * kl_s[:, None]
    torch.testing.assert_close(got_q[live], want_q[live], atol=1e-10, rtol=0)


# --- Boltzmann backups: eqs (38)-(43) ----------------------------------------------------------------------------


@FAST
@given(problems(), st.integers(0, 1000))
def test_boltzmann_backup_is_the_fixed_policy_backup_of_its_own_boltzmann_policy(problem, seed):
    """Eq (38) (*) = eq (39) (**); T_{pi^B_Q, 1} = T, and T_{pi^B_Q, 2} != T^2 in general."""
    mdp, _, pi_bar, tau = problem
    q = _q(mdp, seed)
    pib = boltzmann_policy(q, tau, pi_bar)
    tq = boltzmann_backup(mdp, q, tau, pi_bar)
    torch.testing.assert_close(backup_q(mdp, pib, q, tau, pi_bar), tq, atol=1e-12, rtol=0)
    torch.testing.assert_close(boltzmann_backup_n(mdp, q, 1, tau, pi_bar), tq, atol=1e-12, rtol=0)
    torch.testing.assert_close(boltzmann_backup_n(mdp, q, 0, tau, pi_bar), q)


@FAST
@given(problems(), st.integers(0, 1000))
def test_boltzmann_backup_is_a_gamma_contraction(problem, seed):
    mdp, _, pi_bar, tau = problem
    q1, q2 = _q(mdp, seed), _q(mdp, seed + 1, scale=10.0)
    gap = (boltzmann_backup(mdp, q1, tau, pi_bar) - boltzmann_backup(mdp, q2, tau, pi_bar)).abs().max()
    assert gap <= mdp.gamma * (q1 - q2).abs().max() + 1e-12


@FAST
@given(problems(), st.floats(0.0, 0.9), st.integers(0, 1000))
def test_lambda_backup_equals_its_series_and_the_corrected_eq43(problem, lam, seed):
    """Eq (42) as a series, its lam = 0 and 1 ends, and eq (43) corrected: tau KL + V_Q + E[sum (g lam)^t d_t]."""
    mdp, _, pi_bar, tau = problem
    q = _q(mdp, seed)
    got = boltzmann_backup_lambda(mdp, q, lam, tau, pi_bar)
    pib = boltzmann_policy(q, tau, pi_bar)
    powers = backup_q_powers(mdp, pib, q, 400, tau, pi_bar)  # T^n Q, T = T_{pi^B_Q}
    torch.testing.assert_close(powers[3], boltzmann_backup_n(mdp, q, 3, tau, pi_bar))
    weights = (1 - lam) * lam ** torch.arange(400, dtype=F64)
    torch.testing.assert_close(got, (weights[:, None, None] * powers[1:]).sum(0), atol=1e-9, rtol=0)
    torch.testing.assert_close(boltzmann_backup_lambda(mdp, q, 0.0, tau, pi_bar),
                               boltzmann_backup(mdp, q, tau, pi_bar), atol=1e-11, rtol=0)
    torch.testing.assert_close(boltzmann_backup_lambda(mdp, q, 1.0, tau, pi_bar), q_pi(mdp, pib, tau, pi_bar),
                               atol=1e-9, rtol=0)
    kl_s, vq = policy_kl(mdp, pib, pi_bar), soft_value(q, tau, pi_bar)
    delta0 = lookahead(mdp, vq) - tau * kl_s[:, None] - vq[:, None]  # E[delta_0 | s, a]
    horizon = 200
    e = trajectory_expectations(mdp, pib, delta0, horizon)
    w = (mdp.gamma * lam) ** torch.arange(horizon + 1, dtype=F64)
    torch.testing.assert_close(got, tau * kl_s[:, None] + vq[:, None] + (w[:, None, None] * e).sum(0), atol=1e-9,
                               rtol=0)


# --- optimal control -----------------------------------------------------------------------------------------------


@FAST
@given(problems())
def test_soft_value_iteration_reaches_the_soft_optimum(problem):
    """Q* = T Q*; VI and soft policy iteration agree; Q* = Q^{pi*}; V* >= V^pi for a random pi."""
    mdp, pi, pi_bar, tau = problem
    vi = soft_value_iteration(mdp, tau, pi_bar, tol=1e-13)
    pol = soft_policy_iteration(mdp, tau, pi_bar)
    torch.testing.assert_close(boltzmann_backup(mdp, pol.q, tau, pi_bar), pol.q, atol=1e-10, rtol=0)
    torch.testing.assert_close(vi.q, pol.q, atol=1e-10, rtol=0)
    torch.testing.assert_close(q_pi(mdp, pol.pi, tau, pi_bar), pol.q, atol=1e-10, rtol=0)
    assert torch.all(v_pi(mdp, pi, tau, pi_bar) <= pol.v + 1e-10)
    assert all(b <= mdp.gamma * a + 1e-12 for a, b in zip(vi.residuals, vi.residuals[1:], strict=False))


def test_small_tau_soft_optimum_tends_to_the_hard_optimum():
    """tau = 1e-3 with rewards ~ 1e4: finite, and within tau log A / (1 - gamma) of standard value iteration."""
    mdp = random_mdp(5, 3, 0.8, 0, reward_scale=1e4)
    tau = 1e-3
    soft = soft_value_iteration(mdp, tau, tol=1e-6).q
    hard = torch.zeros(5, 3, dtype=F64)
    for _ in range(400):
        hard = mdp.R + mdp.gamma * torch.einsum("sat,t->sa", mdp.P, hard.max(-1).values)
    assert torch.all(torch.isfinite(soft))
    assert (soft - hard).abs().max() <= tau * math.log(3) / (1 - 0.8) + 1e-6


def test_entropy_bonus_and_kl_to_uniform_differ_by_tau_log_A_per_step():
    mdp, tau = random_mdp(4, 3, 0.9, 5), 0.4
    pi = random_policy(4, 3, 6)
    entropy_mdp = MDP(mdp.P, mdp.R + tau * (-(pi * pi.log()).sum(-1))[:, None], mdp.gamma)
    v_entropy = v_pi(entropy_mdp, pi, tau, pi_bar=pi)  # KL[pi || pi] = 0: a plain evaluation with reward r + tau H
    torch.testing.assert_close(v_entropy - v_pi(mdp, pi, tau), torch.full((4,), tau * math.log(3) / 0.1, dtype=F64))


# --- sampling agrees with the exact values ----------------------------------------------------------------------


def test_sampled_n_step_soft_returns_estimate_v_pi_in_an_episodic_mdp():
    mdp, tau = random_mdp(4, 2, 1.0, 11, n_terminal=1, p_end=0.3), 0.5
    pi = random_policy(4, 2, 12)
    lanes = 3000
    start = torch.arange(3).repeat(lanes)
    roll = sample_rollout(mdp, pi, start, 60, seed=13)
    kls = policy_kl(mdp, pi)[roll.states]
    ret = n_step_soft_return(roll.rewards, kls, torch.zeros(start.shape, dtype=F64), roll.dones, 1.0, tau)[0]
    est = torch.stack([ret[start == s].mean() for s in range(3)])
    se = torch.stack([ret[start == s].std() for s in range(3)]) / math.sqrt(lanes)
    assert torch.all((est - v_pi(mdp, pi, tau)[:3]).abs() <= 5 * se)
    assert roll.dones.any()


def test_random_mdp_structure_and_action_dependent_termination():
    mdp = random_mdp(5, 3, 1.0, 4, n_terminal=1, p_end=(0.1, 0.6))
    torch.testing.assert_close(mdp.P.sum(-1), torch.ones(5, 3, dtype=F64))
    end = mdp.P[:4, :, 4]
    assert torch.all((end >= 0.1) & (end <= 0.6)) and end.std() > 0.05
    assert torch.all(mdp.P[4, :, 4] == 1) and torch.all(mdp.R[4] == 0)
    steps = [v_pi(MDP(mdp.P, torch.ones(5, 3, dtype=F64), 1.0, mdp.terminal), p, 1.0, pi_bar=p)
             for p in (random_policy(5, 3, 0, 0.1), random_policy(5, 3, 1, 0.1))]
    assert (steps[0] - steps[1]).abs().max() > 0.1  # episode length depends on the policy
    flat = random_mdp(5, 3, 1.0, 4, n_terminal=1, p_end=0.3)
    torch.testing.assert_close(flat.P[:4, :, 4], torch.full((4, 3), 0.3, dtype=F64))


def test_sample_rollout_is_seeded_and_restarts_lanes_after_termination():
    mdp = random_mdp(4, 2, 1.0, 0, n_terminal=1, p_end=0.5)
    pi = random_policy(4, 2, 1)
    a, b = (sample_rollout(mdp, pi, torch.tensor([0, 1, 2]), 30, seed=3) for _ in range(2))
    assert torch.equal(a.states, b.states) and torch.equal(a.actions, b.actions)
    assert a.states.shape == (30, 3) and a.dones.any()
    assert torch.all(a.dones == (a.next_states == 3))
    t, lane = torch.nonzero(a.dones[:-1])[0]
    assert a.states[t + 1, lane] == lane  # restarted from its start state
    assert torch.all(a.states[1:][~a.dones[:-1]] == a.next_states[:-1][~a.dones[:-1]])
    always_0 = torch.tensor([[1.0, 0.0]] * 4, dtype=F64)
    forced = sample_rollout(mdp, always_0, torch.tensor([0, 1, 2]), 5, seed=3, first_action=torch.tensor([1, 1, 0]))
    assert forced.actions[0].tolist() == [1, 1, 0] and torch.all(forced.actions[1:] == 0)


def test_trajectory_expectations_start_at_f_and_average_over_pi():
    mdp = random_mdp(3, 2, 0.5, 0)
    pi, f = random_policy(3, 2, 1), _q(mdp, 2)
    e_sa = trajectory_expectations(mdp, pi, f, 3)
    e_s = trajectory_expectations(mdp, pi, f, 3, given="state")
    assert e_sa.shape == (4, 3, 2) and e_s.shape == (4, 3)
    torch.testing.assert_close(e_sa[0], f)
    torch.testing.assert_close(e_s, (pi * e_sa).sum(-1))
    p_pi_f = torch.einsum("sat,t->sa", mdp.P, (pi * f).sum(-1))
    torch.testing.assert_close(e_sa[1], p_pi_f)


# --- argument checking ---------------------------------------------------------------------------------------------


def test_mdp_and_random_mdp_reject_bad_arguments():
    mdp = random_mdp(3, 2, 0.9, 0)
    with pytest.raises(ValueError, match="gamma"):
        MDP(mdp.P, mdp.R, 1.2)
    with pytest.raises(ValueError, match="gamma"):
        MDP(mdp.P, mdp.R, 1.0)  # no terminal states
    with pytest.raises(ValueError, match="P"):
        MDP(mdp.P * 1.1, mdp.R, 0.9)
    with pytest.raises(ValueError, match="P"):
        MDP(mdp.P[:, :, :2], mdp.R, 0.9)
    with pytest.raises(ValueError, match="R"):
        MDP(mdp.P, mdp.R[:2], 0.9)
    with pytest.raises(ValueError, match="terminal"):
        MDP(mdp.P, mdp.R, 0.9, terminal=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="gamma"):
        random_mdp(3, 2, -0.1, 0)
    with pytest.raises(ValueError, match="p_end"):
        random_mdp(3, 2, 0.9, 0, n_terminal=1)
    with pytest.raises(ValueError, match="n_states"):
        random_mdp(0, 2, 0.9, 0)
    a, b = random_mdp(3, 2, 0.9, 7), random_mdp(3, 2, 0.9, 7)
    assert torch.equal(a.P, b.P) and torch.equal(a.R, b.R)


def test_evaluation_rejects_bad_arguments():
    mdp = random_mdp(3, 2, 0.9, 0)
    pi = random_policy(3, 2, 1)
    with pytest.raises(ValueError, match="tau"):
        v_pi(mdp, pi, 0.0)
    with pytest.raises(ValueError, match="pi"):
        v_pi(mdp, pi * 0.5, 1.0)
    with pytest.raises(ValueError, match="pi"):
        q_pi(mdp, pi[:2], 1.0)
    with pytest.raises(ValueError, match="pi_bar"):
        v_pi(mdp, pi, 1.0, pi_bar=torch.tensor([0.7, 0.7], dtype=F64))
    with pytest.raises(ValueError, match="pi_bar"):
        v_pi(mdp, pi, 1.0, pi_bar=random_policy(4, 2, 0))
    with pytest.raises(ValueError, match="q"):
        boltzmann_backup(mdp, torch.zeros(3, 3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="lam"):
        boltzmann_backup_lambda(mdp, torch.zeros(3, 2, dtype=F64), 1.5, 1.0)
    with pytest.raises(ValueError, match="n"):
        backup_q_n(mdp, pi, torch.zeros(3, 2, dtype=F64), -1, 1.0)
    episodic = random_mdp(3, 2, 1.0, 0, n_terminal=1, p_end=0.5)
    with pytest.raises(ValueError, match="start"):
        sample_rollout(episodic, pi, torch.tensor([0, 2]), 5, seed=0)


@pytest.mark.parametrize("p_end, seed", [((0.05, 0.5), 40), ((0.005, 0.02), 7), ((0.3, 0.9), 1)])
def test_survival_horizon_is_the_first_step_where_the_episode_has_ended_but_for_the_tail(p_end, seed):
    """The horizon follows the MDP's termination: P(still running) at H is <= tail and at H - 1 above it, both
    recomputed with trajectory_expectations; a continuing MDP is refused with the survival it reached."""
    mdp = tb.random_mdp(7, 3, 1.0, seed=seed, n_terminal=1, p_end=p_end)
    pi = tb.random_policy(7, 3, seed=seed + 1)
    mu0 = mdp.live / mdp.live.sum()
    H = tb.survival_horizon(mdp, pi, mu0, 1e-14)
    alive = tb.trajectory_expectations(mdp, pi, mdp.live, H, given="state") @ mu0
    assert alive[H] <= 1e-14 < alive[H - 1]
    assert H > 1000 if p_end[1] <= 0.02 else H < 1000
    with pytest.raises(ValueError, match="end too slowly"):
        tb.survival_horizon(tb.random_mdp(4, 2, 0.9, seed=0), tb.random_policy(4, 2, seed=0), torch.ones(4) / 4,
                            1e-3, max_steps=500)
    with pytest.raises(ValueError, match="tail"):
        tb.survival_horizon(mdp, pi, mu0, 0.0)
