"""softq.policy_gradient: exact entropy-regularized policy gradients of tabular softmax policies (eqs 48-52)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import softq.policy_gradient as pg
import softq.tabular as tb
from softq.regularized import kl, n_step_soft_return

F64 = torch.float64
FAST = settings(max_examples=20, deadline=None)


def _reference(kind, S, A, seed):
    if kind == "per-state":
        return tb.random_policy(S, A, seed)
    if kind == "shared":
        return tb.random_policy(1, A, seed)[0]
    return None


@st.composite
def episodic(draw, gamma=1.0):
    """A random episodic MDP (last state terminal), logits, reference, temperature and start distribution."""
    seed = draw(st.integers(0, 100_000))
    S, A = draw(st.integers(2, 5)) + 1, draw(st.integers(1, 4))
    mdp = tb.random_mdp(S, A, gamma, seed, n_terminal=1, p_end=(draw(st.floats(0.1, 0.4)), 0.6))
    theta = 2 * torch.randn(S, A, generator=torch.Generator().manual_seed(seed), dtype=F64)
    pi_bar = _reference(draw(st.sampled_from([None, "per-state", "shared"])), S, A, seed + 1)
    mu0 = torch.rand(S, generator=torch.Generator().manual_seed(seed + 2), dtype=F64) * mdp.live
    return mdp, theta, pi_bar, draw(st.floats(0.05, 3.0)), mu0 / mu0.sum()


@FAST
@given(episodic())
def test_proper_estimator_expectation_is_the_true_gradient(problem):
    """eqs (50)/(51): occupancy x (Q - tau KL - V) = autograd of mu0 . V^pi, gamma = 1."""
    mdp, theta, pi_bar, tau, mu0 = problem
    g1 = pg.true_gradient(mdp, theta, tau, pi_bar, mu0)
    occ = pg.state_occupancy(mdp, pg.policy(theta), mu0)
    torch.testing.assert_close(pg.exact_gradient(mdp, theta, tau, pi_bar, occ, "proper"), g1, rtol=0, atol=1e-10)


@FAST
@given(episodic(gamma=0.8))
def test_discounted_occupancy_gives_the_gradient_of_the_discounted_return(problem):
    """Policy-gradient theorem for gamma < 1: weights sum_t gamma^t P(s_t) (g_gamma uses undiscounted ones)."""
    mdp, theta, pi_bar, tau, mu0 = problem
    occ = pg.state_occupancy(mdp, pg.policy(theta), mu0, discount=mdp.gamma)
    torch.testing.assert_close(pg.exact_gradient(mdp, theta, tau, pi_bar, occ, "proper"),
                               pg.true_gradient(mdp, theta, tau, pi_bar, mu0), rtol=0, atol=1e-10)


@FAST
@given(episodic())
def test_naive_misses_the_future_kl_term(problem):
    """g_1 - E[naive (48)] = -tau sum_s KL(s) grad rho_theta(s)."""
    mdp, theta, pi_bar, tau, mu0 = problem
    pi = pg.policy(theta)
    occ_fn = lambda p: pg.state_occupancy(mdp, p, mu0)  # noqa: E731
    gap = pg.true_gradient(mdp, theta, tau, pi_bar, mu0) - pg.exact_gradient(mdp, theta, tau, pi_bar, occ_fn, "naive")
    leaf = theta.clone().requires_grad_(True)
    (d,) = torch.autograd.grad(occ_fn(pg.policy(leaf)) @ tb.policy_kl(mdp, pi, pi_bar), leaf)
    torch.testing.assert_close(gap, -tau * d, rtol=0, atol=1e-10)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), S=st.integers(1, 3), A=st.integers(1, 2), horizon=st.integers(1, 3),
       tau=st.floats(0.1, 2.0), shared=st.booleans())
def test_enumerated_rollout_estimator_is_the_finite_horizon_gradient(seed, S, A, horizon, tau, shared):
    """eq (51): the probability-weighted sampled estimator over every path = autograd of E[sum_(t<T) r - tau KL]."""
    mdp = tb.random_mdp(S, A, 0.9, seed)
    pi_bar = _reference("shared" if shared else "per-state", S, A, seed + 1)
    theta = torch.randn(S, A, generator=torch.Generator().manual_seed(seed), dtype=F64)
    mu0 = tb.random_policy(1, S, seed + 2)[0]
    pi = pg.policy(theta)
    paths, prob = pg.enumerate_rollouts(mdp, pi, mu0, horizon)
    assert paths.states.shape == (horizon, S * (A * S) ** horizon)
    torch.testing.assert_close(prob.sum(), torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-12)
    kls = tb.policy_kl(mdp, pi, pi_bar)[paths.states]
    ret = n_step_soft_return(paths.rewards, kls, torch.zeros(len(prob)), paths.dones, 1.0, tau)
    got = torch.einsum("b,bsa->sa", prob, pg.rollout_estimator(theta, paths.states, paths.actions, ret, tau, pi_bar))
    want = pg.true_gradient(mdp, theta, tau, pi_bar, mu0, horizon=horizon)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_rollout_estimator_matches_the_closed_form_softmax_gradient():
    """Per lane: sum_t (onehot(a_t) - pi(s_t)) A_t - tau pi(s_t) (log(pi/pi_bar) - KL) at the visited rows."""
    g = torch.Generator().manual_seed(0)
    S, A, T, B, tau = 4, 3, 5, 7, 0.7
    theta = torch.randn(S, A, generator=g, dtype=F64)
    pi_bar = tb.random_policy(S, A, 1)
    states, actions = torch.randint(0, S, (T, B), generator=g), torch.randint(0, A, (T, B), generator=g)
    adv = torch.randn(T, B, generator=g, dtype=F64)
    weights = torch.rand(T, B, generator=g, dtype=F64)
    got = pg.rollout_estimator(theta, states, actions, adv, tau, pi_bar, step_weights=weights)
    pi = pg.policy(theta)
    grad_kl = pi * (torch.log(pi / pi_bar) - kl(pi, pi_bar)[:, None])
    want = torch.zeros(B, S, A, dtype=F64)
    for t in range(T):
        for b in range(B):
            s, a = states[t, b], actions[t, b]
            want[b, s] += weights[t, b] * ((torch.nn.functional.one_hot(a, A) - pi[s]) * adv[t, b] - tau * grad_kl[s])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_expected_estimator_is_the_weighted_one_step_rollout_estimator():
    g = torch.Generator().manual_seed(1)
    S, A, tau = 3, 4, 1.3
    theta, adv = torch.randn(S, A, generator=g, dtype=F64), torch.randn(S, A, generator=g, dtype=F64)
    w = torch.rand(S, generator=g, dtype=F64)
    s, a = torch.cartesian_prod(torch.arange(S), torch.arange(A)).T
    per = pg.rollout_estimator(theta, s[None], a[None], adv[s, a][None], tau)           # every (s, a) as one lane
    prob = w[s] * pg.policy(theta)[s, a]
    torch.testing.assert_close(pg.expected_estimator(theta, w, adv, tau), torch.einsum("b,bsa->sa", prob, per),
                               rtol=0, atol=1e-12)


def test_optimal_boltzmann_policy_is_the_fixed_point_of_g_gamma():
    mdp, tau = tb.random_mdp(5, 3, 0.9, seed=3), 0.8
    pi_bar = tb.random_policy(5, 3, 4)
    opt = tb.soft_value_iteration(mdp, tau, pi_bar, tol=1e-13)
    d = pg.stationary_distribution(mdp, opt.pi)
    torch.testing.assert_close(d @ tb.state_transition(mdp, opt.pi), d, rtol=0, atol=1e-13)
    assert abs(d.sum().item() - 1) < 1e-13 and bool((d > 0).all())
    g = pg.exact_gradient(mdp, pg.logits_of(opt.pi), tau, pi_bar, d)
    assert g.abs().max() < 1e-10
    assert pg.exact_gradient(mdp, torch.zeros(5, 3, dtype=F64), tau, pi_bar, d).abs().max() > 1e-3


def test_gradient_ascent_with_the_proper_estimator_reaches_the_optimum():
    mdp, tau = tb.random_mdp(4, 3, 1.0, seed=5, n_terminal=1, p_end=0.4), 1.0
    mu0 = mdp.live / mdp.live.sum()
    occ = lambda p: pg.state_occupancy(mdp, p, mu0)  # noqa: E731
    run = pg.gradient_ascent(mdp, torch.zeros(4, 3, dtype=F64), tau, None, mu0,
                             lambda th: pg.exact_gradient(mdp, th, tau, None, occ), 400, 3.0)
    assert len(run.returns) == len(run.grad_norms) == 401
    j_star = (mu0 @ tb.soft_policy_iteration(mdp, tau).v).item()
    assert abs(run.returns[-1] - j_star) < 1e-9 and run.returns[-1] > run.returns[0]


def test_first_episode_mask_and_policy_round_trip():
    dones = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    want = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 0]], dtype=F64)
    torch.testing.assert_close(pg.first_episode_mask(dones), want)
    pi = tb.random_policy(3, 4, 7)
    torch.testing.assert_close(pg.policy(pg.logits_of(pi)), pi, rtol=0, atol=1e-15)
    big = torch.tensor([[1e4, -1e4, 0.0]], dtype=F64)            # stable log-softmax
    assert bool(torch.isfinite(pg.log_policy(big)[:, :2]).all())


def test_bad_arguments_raise_value_errors_naming_them():
    ep = tb.random_mdp(4, 2, 1.0, seed=0, n_terminal=1, p_end=0.3)
    cont = tb.random_mdp(3, 2, 0.9, seed=0)
    mu0, pi = ep.live / ep.live.sum(), tb.random_policy(4, 2, 1)
    theta = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="theta"):
        pg.true_gradient(ep, torch.zeros(3, 2), 1.0, None, mu0)
    with pytest.raises(ValueError, match="theta"):
        pg.regularized_return(ep, torch.full((4, 2), float("nan")), 1.0, None, mu0)
    with pytest.raises(ValueError, match="mu0"):
        pg.state_occupancy(ep, pi, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="mu0"):
        pg.state_occupancy(ep, pi, torch.ones(3, dtype=F64) / 3)
    with pytest.raises(ValueError, match="discount"):
        pg.state_occupancy(cont, tb.random_policy(3, 2, 1), torch.ones(3, dtype=F64) / 3, discount=1.0)
    with pytest.raises(ValueError, match="discount"):
        pg.state_occupancy(ep, pi, mu0, discount=1.5)
    with pytest.raises(ValueError, match="tau"):
        pg.true_gradient(ep, theta, 0.0, None, mu0)
    with pytest.raises(ValueError, match="estimator"):
        pg.exact_gradient(ep, theta, 1.0, None, torch.ones(4, dtype=F64), "greedy")
    with pytest.raises(ValueError, match="state_weights"):
        pg.expected_estimator(theta, torch.ones(3, dtype=F64), theta, 1.0)
    with pytest.raises(ValueError, match="advantage"):
        pg.expected_estimator(theta, torch.ones(4, dtype=F64), torch.zeros(4, 3), 1.0)
    with pytest.raises(ValueError, match="mdp"):
        pg.enumerate_rollouts(ep, pi, mu0, 2)
    with pytest.raises(ValueError, match="horizon"):
        pg.enumerate_rollouts(cont, tb.random_policy(3, 2, 1), torch.ones(3, dtype=F64) / 3, 12)
    with pytest.raises(ValueError, match="horizon"):
        pg.regularized_return(ep, theta, 1.0, None, mu0, horizon=0)
    with pytest.raises(ValueError, match="mdp"):
        pg.stationary_distribution(ep, pi)
    with pytest.raises(ValueError, match="pi"):
        pg.logits_of(torch.tensor([[1.0, 0.0]], dtype=F64))
    s = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="advantages"):
        pg.rollout_estimator(theta, s, s, torch.zeros(3, 2, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="step_weights"):
        pg.rollout_estimator(theta, s, s, torch.zeros(2, 3, dtype=F64), 1.0, step_weights=torch.ones(3))
    with pytest.raises(ValueError, match="states"):
        pg.rollout_estimator(theta, s + 4, s, torch.zeros(2, 3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="lr"):
        pg.gradient_ascent(ep, theta, 1.0, None, mu0, lambda th: th, 3, 0.0)
    with pytest.raises(ValueError, match="dones"):
        pg.first_episode_mask(torch.zeros(3, dtype=torch.bool))


@FAST
@given(episodic())
def test_expected_estimator_without_the_kl_gradient_is_eq_52_as_typed(problem):
    """kl_gradient=False leaves out exactly -tau sum_s w(s) grad KL(s): the difference is tau times the gradient
    of the weighted KL, computed here by autograd on its own."""
    mdp, theta, pi_bar, tau, mu0 = problem
    occ = pg.state_occupancy(mdp, pg.policy(theta), mu0)
    adv = pg.proper_advantage(mdp, pg.policy(theta), tau, pi_bar)
    typed = pg.expected_estimator(theta, occ, adv, tau, pi_bar, kl_gradient=False)
    full = pg.expected_estimator(theta, occ, adv, tau, pi_bar)
    leaf = theta.detach().clone().requires_grad_(True)
    (grad_kl,) = torch.autograd.grad((occ * kl(pg.policy(leaf), pi_bar)).sum(), leaf)
    torch.testing.assert_close(typed - full, tau * grad_kl, rtol=0, atol=1e-10)


def test_gradient_ascent_to_a_tolerance_stops_when_the_direction_is_that_small():
    mdp, tau = tb.random_mdp(4, 3, 1.0, seed=5, n_terminal=1, p_end=0.4), 1.0
    mu0 = mdp.live / mdp.live.sum()
    occ = lambda p: pg.state_occupancy(mdp, p, mu0)  # noqa: E731
    field = lambda th: pg.exact_gradient(mdp, th, tau, None, occ)  # noqa: E731
    run = pg.gradient_ascent(mdp, torch.zeros(4, 3, dtype=F64), tau, None, mu0, field, 5_000, 3.0, tol=1e-10)
    assert run.converged and run.grad_norms[-1] <= 1e-10 < min(run.grad_norms[:-1])
    assert len(run.returns) == len(run.grad_norms) < 5_001
    short = pg.gradient_ascent(mdp, torch.zeros(4, 3, dtype=F64), tau, None, mu0, field, 5, 3.0, tol=1e-10)
    assert not short.converged and len(short.returns) == 6
    with pytest.raises(ValueError, match="tol"):
        pg.gradient_ascent(mdp, torch.zeros(4, 3, dtype=F64), tau, None, mu0, field, 5, 3.0, tol=0.0)


def test_newton_steps_finish_an_ascent_that_fixed_steps_cannot():
    # 5 fixed steps are far from enough; Newton's method on the field's zero then reaches the optimum in a few steps
    mdp, tau = tb.random_mdp(4, 3, 1.0, seed=5, n_terminal=1, p_end=0.4), 0.3
    mu0 = mdp.live / mdp.live.sum()
    occ = lambda p: pg.state_occupancy(mdp, p, mu0)  # noqa: E731
    field = lambda th: pg.exact_gradient(mdp, th, tau, None, occ)  # noqa: E731
    run = pg.gradient_ascent(mdp, torch.zeros(4, 3, dtype=F64), tau, None, mu0, field, 5, 3.0 / tau, tol=1e-10,
                             newton_steps=30)
    assert run.converged and run.grad_norms[-1] <= 1e-10 and 0 < run.newton_steps < 30
    assert len(run.returns) == 6 + run.newton_steps
    opt = tb.soft_policy_iteration(mdp, tau)
    assert abs(run.returns[-1] - (mu0 @ opt.v).item()) < 1e-9
    live = mdp.live.bool()
    torch.testing.assert_close(pg.policy(run.theta)[live], opt.pi[live], rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="newton_steps needs a tol"):
        pg.gradient_ascent(mdp, torch.zeros(4, 3, dtype=F64), tau, None, mu0, field, 5, 3.0, newton_steps=3)
    with pytest.raises(RuntimeError, match="no step along the Newton direction"):
        pg.newton_step(lambda th: th * 0 + 1.0, torch.zeros(2, 2, dtype=F64))    # a constant field has no zero
    with pytest.raises(ValueError, match="h must be"):
        pg.newton_step(field, torch.zeros(4, 3, dtype=F64), h=0.0)
