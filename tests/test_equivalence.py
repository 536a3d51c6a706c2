"""Unit tests of softq.equivalence: the theorem of Section 4 (eq 65) and the machinery that verifies it."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import softq.equivalence as eq
import softq.tabular as tb
from softq.config import generator

F64 = torch.float64
FAST = settings(max_examples=12, deadline=None)


def make(S=4, A=3, gamma=0.8, tau=0.4, n=2, seed=0, episodic=False, pi_bar="per-state"):
    if episodic:
        mdp = tb.random_mdp(S + 1, A, gamma, seed, n_terminal=1, p_end=0.3)
        S += 1
    else:
        mdp = tb.random_mdp(S, A, gamma, seed)
    net = eq.StateActionValueMLP(S, A, n_features=2, hidden=5, seed=seed + 1)
    theta = net.init_params(seed + 2)
    ref = {"per-state": tb.random_policy(S, A, seed + 3), "shared": tb.random_policy(1, A, seed + 3)[0],
           "uniform": None}[pi_bar]
    d = tb.random_policy(1, S, seed + 4)[0]
    if episodic:
        d = torch.cat([d[:-1], torch.zeros(1, dtype=F64)])
        d = d / d.sum()
    return eq.Setting(mdp, net, tau, n, ref), theta, d


@st.composite
def settings_(draw):
    episodic = draw(st.booleans())
    gamma = draw(st.sampled_from([0.9, 1.0])) if episodic else draw(st.floats(0.0, 0.99))
    return make(S=draw(st.integers(2, 5)), A=draw(st.integers(1, 4)), gamma=gamma, tau=draw(st.floats(0.05, 3.0)),
                n=draw(st.integers(1, 5)), seed=draw(st.integers(0, 10_000)), episodic=episodic,
                pi_bar=draw(st.sampled_from(["per-state", "shared", "uniform"])))


# --- the theorem ------------------------------------------------------------------------------------------------------


@FAST
@given(settings_())
def test_theorem_holds_state_by_state_on_random_problems(problem):
    setting, theta, d = problem
    T = eq.equivalence_terms(setting, theta)                                   # [S, P]
    torch.testing.assert_close(T.soft_q, -setting.tau * T.policy_gradient + T.value_gradient, rtol=0, atol=1e-11)
    sq = eq.soft_q_gradient(setting, theta, d)
    ac = eq.actor_critic_gradient(setting, theta, d, 1 / setting.tau)
    torch.testing.assert_close(sq, setting.tau * ac, rtol=0, atol=1e-11)


@FAST
@given(settings_(), st.integers(0, 1000))
def test_theorem_holds_for_any_fixed_target_but_not_off_policy(problem, seed):
    setting, theta, d = problem
    S, A = setting.mdp.n_states, setting.mdp.n_actions
    theta_bar = theta + 0.5 * torch.randn(theta.shape, generator=generator(seed), dtype=F64)
    mu = tb.random_policy(S, A, seed)
    target = eq.soft_q_target(setting, theta_bar, later=mu)       # a target network, off-policy continuation
    T = eq.equivalence_terms(setting, theta, d, target=target)
    torch.testing.assert_close(T.soft_q, -setting.tau * T.policy_gradient + T.value_gradient, rtol=0, atol=1e-11)
    # a_t ~ mu: the gap is the (*) + (**) + eq-21 term derived in the chapter
    s, J = eq.soft_parts(setting, theta), eq.jacobians(setting, theta)
    Tm = eq.equivalence_terms(setting, theta, d, action=mu)
    gap = Tm.soft_q - (-setting.tau * Tm.policy_gradient + Tm.value_gradient)
    ref = setting.pi_bar if setting.pi_bar is not None else torch.full((A,), 1.0 / A, dtype=F64)
    lr = s.log_pi - torch.log(ref).expand(S, A)
    derived = setting.tau * eq.expectation(d, mu, J.dq * (lr - s.kl[:, None])[..., None]) \
        - setting.tau**2 * d @ J.dkl
    torch.testing.assert_close(gap, derived, rtol=0, atol=1e-10)


def test_theorem_fails_off_policy_by_a_clear_margin():
    setting, theta, d = make(seed=3)
    Tm = eq.equivalence_terms(setting, theta, d, action=tb.random_policy(4, 3, 9))
    gap = Tm.soft_q - (-setting.tau * Tm.policy_gradient + Tm.value_gradient)
    assert gap.norm() > 1e-3 * Tm.soft_q.norm()


# --- autograd of softq.losses = the explicit formulas -----------------------------------------------------------------


@FAST
@given(settings_(), st.floats(0.0, 5.0))
def test_autograd_of_losses_equals_explicit_formulas(problem, c):
    setting, theta, d = problem
    T = eq.equivalence_terms(setting, theta, d)
    torch.testing.assert_close(eq.soft_q_gradient(setting, theta, d), T.soft_q, rtol=0, atol=1e-12)
    torch.testing.assert_close(eq.actor_critic_gradient(setting, theta, d, c),
                               -T.policy_gradient + c * T.value_gradient, rtol=0, atol=1e-11)


@FAST
@given(settings_(), st.integers(0, 1000))
def test_per_sample_autograd_equals_affine_formula_on_random_inputs(problem, seed):
    setting, theta, _ = problem
    S, A = setting.mdp.n_states, setting.mdp.n_actions
    g = generator(seed)
    states, actions = torch.randint(S, (7,), generator=g), torch.randint(A, (7,), generator=g)
    y = 3 * torch.randn(7, generator=g, dtype=F64)
    torch.testing.assert_close(eq.per_sample_gradients(setting, theta, states, actions, y),
                               eq.soft_q_estimator(setting, theta)(states, actions, y), rtol=0, atol=1e-12)
    c = 1 / setting.tau
    torch.testing.assert_close(eq.per_sample_gradients(setting, theta, states, actions, y, value_coef=c),
                               eq.actor_critic_estimator(setting, theta, c)(states, actions, y), rtol=0, atol=1e-10)


# --- exact derivatives vs finite differences --------------------------------------------------------------------------


def _central_fd(f, theta, h=1e-6):
    eye = torch.eye(theta.numel(), dtype=F64)
    return torch.stack([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in eye])


def test_soft_q_gradient_and_full_derivative_match_finite_differences():
    setting, theta, d = make(S=3, A=2, n=3, seed=5)
    pi0 = eq.policy(setting, theta)
    target0 = eq.soft_q_target(setting, theta)
    semi = lambda th: eq.expected_squared_error(setting, th, d, pi0, target0)  # noqa: E731
    torch.testing.assert_close(eq.soft_q_gradient(setting, theta, d), _central_fd(semi, theta), rtol=0, atol=1e-8)
    full = lambda th: eq.expected_squared_error(setting, th, d, eq.policy(setting, th),  # noqa: E731
                                                eq.soft_q_target(setting, th))
    torch.testing.assert_close(eq.partial_gradients(setting, theta, d).total, _central_fd(full, theta),
                               rtol=0, atol=1e-8)


def test_jacobians_match_finite_differences():
    setting, theta, _ = make(S=3, A=2, seed=6)
    J = eq.jacobians(setting, theta)
    fd_q = _central_fd(setting.q, theta)                      # [P, S, A]
    torch.testing.assert_close(J.dq, fd_q.permute(1, 2, 0), rtol=0, atol=1e-8)
    fd_kl = _central_fd(lambda th: eq.soft_parts(setting, th).kl, theta)
    torch.testing.assert_close(J.dkl, fd_kl.T, rtol=0, atol=1e-8)


# --- the target's moments ---------------------------------------------------------------------------------------------


@FAST
@given(settings_())
def test_target_mean_is_the_n_step_boltzmann_backup(problem):
    setting, theta, _ = problem
    mean, second = eq.target_moments(setting, eq.soft_q_target(setting, theta))
    want = tb.boltzmann_backup_n(setting.mdp, setting.q(theta), setting.n, setting.tau, setting.pi_bar)
    live = setting.mdp.live[:, None]
    torch.testing.assert_close(mean, want * live, rtol=0, atol=1e-11)
    assert torch.all(second >= mean**2 - 1e-11)


def test_target_moments_match_brute_force_enumeration():
    """E[y | s, a] and E[y^2 | s, a] by summing over every path (s_1, a_1, ..., s_n) with its probability."""
    setting, theta, _ = make(S=3, A=2, n=3, seed=7)
    mdp, tau, gamma, n = setting.mdp, setting.tau, setting.gamma, setting.n
    mu = tb.random_policy(3, 2, 11)
    tgt = replace(eq.soft_q_target(setting, theta, later=mu), lead=torch.tensor([0.3, -0.2, 0.5], dtype=F64))
    mean, second = eq.target_moments(setting, tgt)
    for s0, a0 in itertools.product(range(3), range(2)):
        m1 = m2 = 0.0
        for path in itertools.product(range(3), range(2), range(3), range(2), range(3)):
            s1, a1, s2, a2, s3 = path
            p = mdp.P[s0, a0, s1] * mu[s1, a1] * mdp.P[s1, a1, s2] * mu[s2, a2] * mdp.P[s2, a2, s3]
            c = lambda s, a: mdp.R[s, a] - tau * tgt.kl[s]  # noqa: E731
            y = tau * tgt.lead[s0] + c(s0, a0) + gamma * c(s1, a1) + gamma**2 * c(s2, a2) + gamma**3 * tgt.v[s3]
            m1, m2 = m1 + p * y, m2 + p * y**2
        assert math.isclose(mean[s0, a0].item(), float(m1), abs_tol=1e-12)
        assert math.isclose(second[s0, a0].item(), float(m2), abs_tol=1e-12)
    assert n == 3


def test_sampled_targets_and_gradients_agree_with_exact_moments():
    setting, theta, d = make(S=4, A=3, n=3, seed=8, episodic=True, gamma=1.0)
    N = 20_000
    s, a, y = eq.sample_targets(setting, theta, d, N, seed=1)
    pi = eq.policy(setting, theta)
    m1, m2 = eq.target_moments(setting, eq.soft_q_target(setting, theta))
    mean, var = eq.expectation(d, pi, m1), eq.expectation(d, pi, m2) - eq.expectation(d, pi, m1) ** 2
    assert abs(y.mean() - mean) <= 5 * math.sqrt(var / N)
    est = eq.soft_q_estimator(setting, theta)
    g = est(s, a, y)
    assert torch.all((g.mean(0) - est.mean(d, pi, m1)).abs() <= 5 * est.std(d, pi, m1, m2) / math.sqrt(N) + 1e-12)
    dev = (g - g.mean(0)).pow(2).sum(1)
    assert abs(dev.mean() - est.total_variance(d, pi, m1, m2)) <= 5 * dev.std() / math.sqrt(N)


def test_off_policy_first_action_is_drawn_from_action():
    setting, theta, d = make(seed=9)
    mu = torch.zeros(4, 3, dtype=F64)
    mu[:, 2] = 1.0                                            # always action 2
    _, a, _ = eq.sample_targets(setting, theta, d, 50, seed=0, action=mu)
    assert torch.all(a == 2)


def test_dueling_parametrization_splits_the_gradient():
    setting, _, d = make(S=4, A=3, seed=10)
    vnet, lnet = eq.StateActionValueMLP(4, 1, seed=1), eq.StateActionValueMLP(4, 3, seed=2)
    k = vnet.n_params
    from softq.regularized import q_from_value_and_policy
    duel = lambda th: q_from_value_and_policy(vnet(th[:k])[:, 0], torch.log_softmax(lnet(th[k:]), -1),  # noqa: E731
                                              setting.tau, setting.pi_bar)
    st_d = replace(setting, q_fn=duel)
    th = torch.cat([vnet.init_params(3), lnet.init_params(4)])
    T = eq.equivalence_terms(st_d, th, d)
    torch.testing.assert_close(T.soft_q[:k], T.value_gradient[:k], rtol=0, atol=1e-12)
    torch.testing.assert_close(T.soft_q[k:], -setting.tau * T.policy_gradient[k:], rtol=0, atol=1e-12)


# --- bad arguments ----------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_value_error_naming_them():
    setting, theta, d = make()
    mdp, net = setting.mdp, setting.q_fn
    with pytest.raises(ValueError, match="tau"):
        eq.Setting(mdp, net, 0.0, 2)
    with pytest.raises(ValueError, match="n"):
        eq.Setting(mdp, net, 0.3, 0)
    with pytest.raises(ValueError, match="pi_bar"):
        eq.Setting(mdp, net, 0.3, 2, torch.ones(5, dtype=F64) / 5)
    with pytest.raises(ValueError, match="mdp"):
        eq.Setting("not an mdp", net, 0.3, 2)
    with pytest.raises(ValueError, match="q_fn"):
        eq.soft_parts(eq.Setting(mdp, lambda th: torch.zeros(2, 2, dtype=F64), 0.3, 2), theta)
    with pytest.raises(ValueError, match="theta"):
        net(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="state_dist"):
        eq.soft_q_gradient(setting, theta, torch.ones(3, dtype=F64) / 3)
    with pytest.raises(ValueError, match="state_dist"):
        eq.soft_q_gradient(setting, theta, torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="action"):
        eq.equivalence_terms(setting, theta, d, action=torch.ones(4, 2, dtype=F64) / 2)
    with pytest.raises(ValueError, match="value_coef"):
        eq.actor_critic_gradient(setting, theta, d, -1.0)
    with pytest.raises(ValueError, match="target.v"):
        eq.target_moments(setting, replace(eq.soft_q_target(setting, theta), v=torch.zeros(2, dtype=F64)))
    with pytest.raises(ValueError, match="n_samples"):
        eq.sample_targets(setting, theta, d, 0, seed=0)
    with pytest.raises(ValueError, match="states, actions and y"):
        eq.per_sample_gradients(setting, theta, torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                                torch.zeros(3, dtype=F64))
    ep, th_ep, _ = make(episodic=True, gamma=1.0)
    with pytest.raises(ValueError, match="terminal"):
        eq.soft_q_gradient(ep, th_ep, torch.ones(5, dtype=F64) / 5)
    with pytest.raises(ValueError, match="n_states"):
        eq.StateActionValueMLP(0, 2)
