"""Unit tests of softq.natural: the natural gradient as least squares (eq 66), Gauss-Newton steps of the regressions
of Section 5 (eqs 68, 71, 78) and the second-order expansion of their exact minimizers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import jacrev

import softq.natural as nat
import softq.policy_gradient as pg
import softq.tabular as tb
from softq.regularized import kl, q_from_value_and_policy

F64 = torch.float64
FAST = settings(max_examples=15, deadline=None)


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def problem(S=10, A=3, tau=0.4, seed=0, kind="mlp"):
    """A policy, its parameters, scores, weights d(s) pi(a|s), an advantage and the regularized advantage."""
    pol = (nat.mlp_policy(S, A, n_features=3, hidden=2, seed=seed) if kind == "mlp"
           else nat.log_linear_policy(S, A, 5, seed=seed))
    theta = pol.init_params(seed + 1)
    pi, logp = pol(theta), pol.log_prob(theta)
    pi_bar = tb.random_policy(S, A, seed + 2)
    d = tb.random_policy(1, S, seed + 3)[0]
    rho = d[:, None] * pi
    delta = randn(S, A, seed=seed + 4)
    a_reg = nat.regularized_advantage(delta, logp - pi_bar.log(), kl(pi, pi_bar)[:, None], tau)
    return pol, theta, jacrev(pol.log_prob)(theta), rho, delta, a_reg, pi_bar


# --- eq 66 ----------------------------------------------------------------------------------------------------------


@FAST
@given(n=st.integers(4, 30), p=st.integers(1, 4), eps=st.floats(-2, 2), seed=st.integers(0, 10_000),
       weighted=st.booleans())
def test_least_squares_solution_is_eps_fisher_inverse_g(n, p, eps, seed, weighted):
    psi, delta = randn(n, p, seed=seed), randn(n, seed=seed + 1)
    w = randn(n, seed=seed + 2).abs() + 0.1 if weighted else None
    F, g = nat.fisher_matrix(psi, w), nat.score_gradient(psi, delta, w)
    torch.testing.assert_close(nat.least_squares_step(psi, delta, eps, w), eps * nat.natural_gradient(F, g),
                               rtol=0, atol=1e-9 * (1 + abs(eps)) * torch.linalg.cond(F).item())


def test_fisher_and_gradient_are_expectations():
    psi, delta, w = randn(7, 3, seed=1), randn(7, seed=2), torch.rand(7, dtype=F64, generator=torch.Generator()
                                                                   .manual_seed(3))
    F = sum(w[i] * torch.outer(psi[i], psi[i]) for i in range(7))
    torch.testing.assert_close(nat.fisher_matrix(psi, w), F)
    torch.testing.assert_close(nat.score_gradient(psi, delta, w), (w * delta) @ psi)
    torch.testing.assert_close(nat.fisher_matrix(psi), psi.T @ psi / 7)          # None: the plain average


def test_singular_fisher_gives_the_minimum_norm_solution():
    """A table of logits has a null direction per state; both routes give the minimum-norm F^+ g."""
    theta = randn(4, 3, seed=0)
    psi = jacrev(lambda th: pg.log_policy(th.reshape(4, 3)))(theta.reshape(-1))      # [4, 3, 12]
    rho = pg.policy(theta) / 4
    delta = randn(4, 3, seed=1)
    F = nat.fisher_matrix(psi, rho)
    assert torch.linalg.matrix_rank(F).item() == 4 * 2
    w = nat.least_squares_step(psi, delta, 1.0, rho)
    torch.testing.assert_close(w, nat.natural_gradient(F, nat.score_gradient(psi, delta, rho)), rtol=0, atol=1e-10)
    torch.testing.assert_close(w.reshape(4, 3).sum(-1), torch.zeros(4, dtype=F64), rtol=0, atol=1e-10)  # no null part


def test_sandwich_covariance_reduces_to_sigma2_f_inverse():
    psi, w = randn(9, 3, seed=4), torch.full((9,), 1 / 9, dtype=F64)
    cov = nat.least_squares_covariance(psi, torch.full((9,), 2.5, dtype=F64), w)
    torch.testing.assert_close(cov, 2.5 * torch.linalg.inv(nat.fisher_matrix(psi, w)))


def test_sampled_least_squares_matches_the_sandwich_covariance():
    """Monte Carlo over many sampled regressions: T Cov[w_T] is close to F^-1 M F^-1."""
    psi_all, mean, sd = randn(6, 2, seed=5), randn(6, seed=6), randn(6, seed=7).abs() + 0.5
    probs = torch.full((6,), 1 / 6, dtype=F64)
    w_star = nat.least_squares_step(psi_all, mean, 1.0, probs)
    e2 = sd**2 + (mean - psi_all @ w_star) ** 2
    cov = nat.least_squares_covariance(psi_all, e2, probs)
    gen, T, R = torch.Generator().manual_seed(8), 400, 1500
    idx = torch.randint(0, 6, (R, T), generator=gen)
    y = mean[idx] + sd[idx] * torch.randn(R, T, generator=gen, dtype=F64)
    sols = torch.stack([nat.least_squares_step(psi_all[idx[r]], y[r], 1.0) for r in range(R)])
    emp = T * torch.cov(sols.T)
    torch.testing.assert_close(emp, cov, rtol=0.15, atol=0.15 * cov.abs().max().item())


# --- Gauss-Newton steps of eqs 68, 71, 78 ---------------------------------------------------------------------------


@FAST
@given(eps=st.floats(0.001, 1.0), tau=st.floats(0.05, 3.0), seed=st.integers(0, 1000),
       kind=st.sampled_from(["mlp", "log-linear"]))
def test_gauss_newton_steps_are_natural_steps(eps, tau, seed, kind):
    pol, theta, psi, rho, delta, a_reg, pi_bar = problem(tau=tau, seed=seed, kind=kind)
    F = nat.fisher_matrix(psi, rho)
    tol = 1e-13 * torch.linalg.cond(F).item() * (1 + eps / tau)
    logp0 = pol.log_prob(theta)
    # eq 68: the Gauss-Newton step of the log-probability regression is the solution of eq 66
    gn68 = nat.gauss_newton_step(lambda th: nat.natural_regression_residual(pol.log_prob(th), logp0, delta, eps),
                                 theta, rho)
    torch.testing.assert_close(gn68, nat.least_squares_step(psi, delta, eps, rho), rtol=0, atol=tol)
    # damped soft Q-learning (eqs 74-78) with V fixed: the natural step of size eps / tau
    v = randn(psi.shape[0], seed=seed + 9)
    q = lambda th: q_from_value_and_policy(v, pol.log_prob(th), tau, pi_bar)   # noqa: E731
    q_hat = q(theta) + a_reg                                                     # eq 76: Q_hat - Q_old = A_reg
    gn = nat.gauss_newton_step(lambda th: q(th) - nat.damped_target(q(theta), q_hat, eps), theta, rho)
    w_reg = nat.natural_gradient(F, nat.score_gradient(psi, a_reg, rho))
    torch.testing.assert_close(gn, eps / tau * w_reg, rtol=0, atol=tol * (1 + w_reg.norm().item()))


def test_typed_eq71_step_is_shrunk_by_one_plus_eps_tau():
    tau, eps = 0.5, 0.2
    pol, theta, psi, rho, delta, a_reg, pi_bar = problem(tau=tau, seed=3)
    logp0, kl0 = pol.log_prob(theta), kl(pol(theta), pi_bar)[:, None]
    typed = lambda th: nat.natural_regression_residual(                            # noqa: E731
        pol.log_prob(th), logp0, nat.regularized_advantage(delta, pol.log_prob(th) - pi_bar.log(), kl0, tau), eps)
    w_reg = nat.natural_gradient(nat.fisher_matrix(psi, rho), nat.score_gradient(psi, a_reg, rho))
    torch.testing.assert_close(nat.gauss_newton_step(typed, theta, rho), eps / (1 + eps * tau) * w_reg)


# --- exact minimizers and their expansion ---------------------------------------------------------------------------


def test_minimizer_of_a_linear_problem_is_the_least_squares_solution():
    J, b, w = randn(8, 3, seed=1), randn(8, seed=2), torch.rand(8, dtype=F64) + 0.1
    theta = nat.minimize_least_squares(lambda th: J @ th - b, torch.zeros(3, dtype=F64), w)
    torch.testing.assert_close(theta, nat.least_squares_step(J, b, 1.0, w))


def test_minimizer_of_a_nonlinear_problem_is_stationary():
    pol, theta, psi, rho, delta, a_reg, pi_bar = problem(seed=5)
    logp0 = pol.log_prob(theta)
    res = lambda th: nat.natural_regression_residual(pol.log_prob(th), logp0, a_reg, 0.05)   # noqa: E731
    th_star = nat.minimize_least_squares(res, theta, rho)
    grad_l = jacrev(lambda th: 0.5 * (rho * res(th) ** 2).sum())(th_star)
    assert grad_l.norm() < 1e-13
    assert 0.5 * (rho * res(th_star) ** 2).sum() <= 0.5 * (rho * res(theta + 0.05 * nat.gauss_newton_step(
        lambda th: nat.natural_regression_residual(pol.log_prob(th), logp0, a_reg, 1.0), theta, rho)) ** 2).sum()


def test_minimizer_takes_steps_below_the_rounding_of_the_loss():
    # log-linear policy and exact critic: w2 = 0, so the minimizer is eps w1 + eps^3 w3: at eps = 1e-3 the last Newton
    # step (~1e-10) lowers a loss of ~1e-7 by less than its rounding; refusing it left the gap at 1e-13, not eps^3 |w3|
    S, A, gamma, tau = 16, 3, 0.9, 0.1
    mdp, pi_bar = tb.random_mdp(S, A, gamma, seed=0), tb.random_policy(S, A, seed=3)
    pol = nat.log_linear_policy(S, A, 8, seed=5)
    theta = pol.init_params(seed=6)
    pi, logp = pol(theta), pol.log_prob(theta)
    occ = pg.state_occupancy(mdp, pi, torch.full((S,), 1.0 / S, dtype=F64), discount=gamma)
    rho = (occ / occ.sum())[:, None] * pi
    a_reg = nat.regularized_advantage(pg.proper_advantage(mdp, pi, tau, pi_bar), logp - pi_bar.log(),
                                      kl(pi, pi_bar)[:, None], tau)
    w1, _ = nat.second_order_step(pol.log_prob, theta, a_reg, rho)
    gaps = []
    for eps in (1e-3, 2e-3):
        res = lambda th, eps=eps: nat.natural_regression_residual(pol.log_prob(th), logp, a_reg, eps)  # noqa: E731
        th_star = nat.minimize_least_squares(res, theta, rho)
        assert jacrev(lambda th: 0.5 * (rho * res(th) ** 2).sum())(th_star).norm() < 1e-15   # noqa: B023
        gaps.append((th_star - theta - eps * w1).norm().item())
    assert 7.9 < gaps[1] / gaps[0] < 8.1                 # eps^3: doubling eps multiplies the gap by 8


@pytest.mark.parametrize("kind", ["mlp", "log-linear"])
def test_second_order_step_predicts_the_exact_minimizer(kind):
    pol, theta, psi, rho, delta, a_reg, pi_bar = problem(seed=7, kind=kind)
    logp0 = pol.log_prob(theta)
    w1, w2 = nat.second_order_step(pol.log_prob, theta, a_reg, rho)
    torch.testing.assert_close(w1, nat.natural_gradient(nat.fisher_matrix(psi, rho),
                                                        nat.score_gradient(psi, a_reg, rho)))
    errs, without = [], []
    for eps in (2e-4, 1e-4):
        res = lambda th, eps=eps: nat.natural_regression_residual(pol.log_prob(th), logp0, a_reg, eps)  # noqa: E731
        gap = nat.minimize_least_squares(res, theta, rho) - theta - eps * w1
        errs.append((gap - eps**2 * w2).norm().item())
        without.append(gap.norm().item())
    assert errs[1] < errs[0] / 6                         # O(eps^3): halving eps divides the remainder by ~8
    assert errs[0] < without[0] / 20                     # and w2 is most of the gap


def test_directional_derivatives_of_a_polynomial():
    fn = lambda th: torch.stack([th[0] ** 3, th[0] * th[1]])                        # noqa: E731
    theta, v = torch.tensor([2.0, 3.0], dtype=F64), torch.tensor([1.0, -1.0], dtype=F64)
    f, d1, d2, d3 = nat.directional_derivatives(fn, theta, v, order=3)
    torch.testing.assert_close(torch.stack([f, d1, d2, d3]), torch.tensor(
        [[8.0, 6.0], [12.0, 1.0], [12.0, -2.0], [6.0, 0.0]], dtype=F64))


def test_damped_target_endpoints_and_regularized_advantage_mean():
    q_old, q_hat = randn(4, 3, seed=0), randn(4, 3, seed=1)
    torch.testing.assert_close(nat.damped_target(q_old, q_hat, 0.0), q_old)
    torch.testing.assert_close(nat.damped_target(q_old, q_hat, 1.0), q_hat)
    pi, pi_bar, delta = tb.random_policy(4, 3, 2), tb.random_policy(4, 3, 3), randn(4, 3, seed=4)
    a_reg = nat.regularized_advantage(delta, pi.log() - pi_bar.log(), kl(pi, pi_bar)[:, None], 0.7)
    torch.testing.assert_close((pi * a_reg).sum(-1), (pi * delta).sum(-1))     # the KL bracket has mean 0 under pi


def test_policies():
    mlp = nat.mlp_policy(16, 3, n_features=6, hidden=2, seed=1)
    theta = mlp.init_params(3)
    assert mlp.n_params == 2 * (6 + 3)
    psi = jacrev(mlp.log_prob)(theta)
    F = nat.fisher_matrix(psi, mlp(theta) / 16)
    assert torch.linalg.matrix_rank(F).item() == mlp.n_params               # no direction the policy cannot see
    torch.testing.assert_close(mlp(theta).sum(-1), torch.ones(16, dtype=F64))
    lin = nat.log_linear_policy(4, 3, 5, seed=0)
    th = lin.init_params(1)
    torch.testing.assert_close(lin.logits(th), lin.features @ th)
    H = torch.func.hessian(lin.log_prob)(th)
    torch.testing.assert_close(H, H[:, :1].expand_as(H))                        # exponential family: H(s) only


# --- bad arguments --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, match", [
    (lambda: nat.fisher_matrix(torch.ones(3, dtype=F64)), "scores"),
    (lambda: nat.fisher_matrix(torch.ones(3, 2, dtype=F64), -torch.ones(3, dtype=F64)), "weights"),
    (lambda: nat.fisher_matrix(torch.ones(3, 2, dtype=F64), torch.ones(4, dtype=F64)), "weights"),
    (lambda: nat.score_gradient(torch.ones(3, 2, dtype=F64), torch.ones(2, dtype=F64)), "advantages"),
    (lambda: nat.least_squares_step(torch.ones(3, 2, dtype=F64), torch.ones(3, dtype=F64), math.nan), "eps"),
    (lambda: nat.least_squares_step(torch.full((3, 2), math.inf, dtype=F64), torch.ones(3, dtype=F64)), "scores"),
    (lambda: nat.natural_gradient(torch.ones(2, 3, dtype=F64), torch.ones(2, dtype=F64)), "fisher"),
    (lambda: nat.natural_gradient(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=F64), torch.ones(2, dtype=F64)),
     "symmetric"),
    (lambda: nat.natural_gradient(torch.eye(2, dtype=F64), torch.ones(3, dtype=F64)), "g must"),
    (lambda: nat.regularized_advantage(torch.ones(2), torch.ones(2), torch.ones(2), 0.0), "tau"),
    (lambda: nat.damped_target(torch.ones(2), torch.ones(3), 0.5), "q_old and q_hat"),
    (lambda: nat.gauss_newton_step("not callable", torch.ones(2, dtype=F64)), "residual_fn"),
    (lambda: nat.gauss_newton_step(lambda th: th, torch.ones(2, 2, dtype=F64)), "theta"),
    (lambda: nat.minimize_least_squares(lambda th: th, torch.ones(2, dtype=F64), tol=0.0), "tol"),
    (lambda: nat.least_squares_covariance(torch.ones(3, 2, dtype=F64), -torch.ones(3, dtype=F64)),
     "residual_second_moment"),
    (lambda: nat.directional_derivatives(lambda th: th, torch.ones(2, dtype=F64), torch.ones(3, dtype=F64)),
     "direction"),
    (lambda: nat.mlp_policy(4, 3, n_features=0), "n_features"),
    (lambda: nat.log_linear_policy(4, 3, 5).log_prob(torch.ones(4, dtype=F64)), "theta"),
])
def test_bad_arguments_raise_value_error_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_series_coefficients_of_an_exact_two_term_series():
    """rest(eta) = eta^3 a + eta^4 b exactly: the two-point estimates give |a| (up to eta_b |b|) and |b| exactly."""
    from softq.natural import series_coefficients

    a, b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([3.0, 0.0, -1.0], dtype=torch.float64)
    rest = lambda eta: eta**3 * a + eta**4 * b  # noqa: E731
    w3, w4 = series_coefficients(1e-3, rest(1e-3), 2e-3, rest(2e-3), order=3)
    assert w4 == pytest.approx(float(b.norm()), rel=1e-9)
    assert w3 == pytest.approx(float((a + 2e-3 * b).norm()), rel=1e-12)
    for bad, name in [((2e-3, rest(2e-3), 1e-3, rest(1e-3)), "eta_a"), ((0.0, rest(1e-3), 1e-3, rest(1e-3)), "eta_a"),
                      ((1e-3, rest(1e-3), 2e-3, rest(2e-3)[:2]), "rest_a"), ((1e-3, 1.0, 2e-3, rest(2e-3)), "rest_a")]:
        with pytest.raises(ValueError, match=name):
            series_coefficients(*bad, order=3)
    with pytest.raises(ValueError, match="order"):
        series_coefficients(1e-3, rest(1e-3), 2e-3, rest(2e-3), order=0)


def test_minimize_least_squares_says_why_it_stops_without_a_minimizer():
    """r(theta) = exp(-theta) has its infimum at infinity: the solver stops after max_iter with the loss, the
    step, the gradient and the Hessian's eigenvalues in the message."""
    from softq.natural import NoMinimizerError, minimize_least_squares

    with pytest.raises(NoMinimizerError, match=r"no convergence in 30 iterations \(loss .*Hessian's eigenvalues from"):
        minimize_least_squares(lambda th: torch.exp(-th), torch.zeros(1, dtype=torch.float64), max_iter=30)


def _series(etas, w2, w3, w4, floor=None):
    """gap(eta) = eta^2 w2 + eta^3 w3 + eta^4 w4 exactly (rest = gap - eta^2 w2), optionally plus a constant vector
    ``floor``: what a minimizer at its rounding limit leaves."""
    gaps, rests = [], []
    for e in etas:
        rest = e**3 * w3 + e**4 * w4 + (0 if floor is None else floor)
        rests.append(rest)
        gaps.append((e**2 * w2 + rest).norm())
    return gaps, rests


def test_expansion_slopes_of_an_exact_series_are_within_their_derived_tolerance():
    """On an exact three-term series the fitted slopes differ from 2 and 3 by less than each tolerance, for several
    sizes of the next orders (the tolerance's next-order bound is a bound)."""
    from softq.natural import expansion_slopes

    w2 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    etas = torch.logspace(-5, -2, 9, dtype=torch.float64).tolist()
    for c3, c4 in [(1.0, 1.0), (30.0, 100.0), (200.0, 5e4)]:
        w3, w4 = c3 * torch.tensor([0.3, 1.0, -1.0], dtype=torch.float64), c4 * torch.tensor([1.0, 0.0, 2.0],
                                                                                              dtype=torch.float64)
        gaps, rests = _series(etas, w2, w3, w4)
        fits = expansion_slopes(etas, gaps, rests, w1_norm=1.0, w2_norm=float(w2.norm()), theta_norm=1.0, cond=10.0)
        assert abs(fits.slope2 - 2) <= fits.tol2 and abs(fits.slope3 - 3) <= fits.tol3, (c3, c4, fits)
        assert fits.w4 == pytest.approx(float(w4.norm()), rel=0.2) and len(fits.fit2) >= 3 and len(fits.fit3) >= 2


def test_expansion_slopes_leave_out_points_at_the_rounding_floor():
    """A flat floor below the error bound (what cond(F) ulps leave) must not enter a fit: with it in, the slope of the
    rest would bend far below 3 (the failure a chapter-5 instance with cond(F) = 5.5e7 showed)."""
    from softq.natural import expansion_error, expansion_slopes

    w2, w3, w4 = (torch.tensor(v, dtype=torch.float64) for v in ([1.0, 2.0], [5.0, -1.0], [10.0, 3.0]))
    etas = torch.logspace(-5, -2, 7, dtype=torch.float64).tolist()
    cond = 1e5
    floor = torch.tensor([0.5, 0.5], dtype=torch.float64) * expansion_error(0.0, cond, 1.0) / 0.71
    gaps, rests = _series(etas, w2, w3, w4, floor)
    fits = expansion_slopes(etas, gaps, rests, w1_norm=1.0, w2_norm=float(w2.norm()), theta_norm=1.0, cond=cond)
    assert fits.fit3[0] > 0 and all(float(rests[i].norm()) >= 100 * expansion_error(etas[i], cond, 1.0, (1.0, 2.24))
                                    for i in fits.fit3)
    assert abs(fits.slope3 - 3) <= fits.tol3
    with pytest.raises(ValueError, match="grid must reach larger steps"):
        expansion_slopes(etas, gaps, rests, w1_norm=1.0, w2_norm=float(w2.norm()), theta_norm=1.0, cond=1e15)
    with pytest.raises(ValueError, match="etas"):
        expansion_slopes(etas[::-1], gaps, rests, w1_norm=1.0, w2_norm=float(w2.norm()), theta_norm=1.0, cond=cond)
    with pytest.raises(ValueError, match="cond"):
        expansion_error(1e-3, 0.5, 1.0)


def test_rounding_bend_bounds_the_slope_change_of_any_relative_error():
    """_rounding_bend: no relative error within the bounds moves a least-squares log-log slope further."""
    from softq.bandit import loglog_slope
    from softq.natural import _rounding_bend

    x = [1e-4, 3e-4, 1e-3, 2e-3, 1e-2]
    y = torch.tensor([v**2 for v in x], dtype=torch.float64)
    rel = [0.01, 0.003, 0.02, 0.001, 0.005]
    base, _ = loglog_slope(x, y)
    bound = _rounding_bend(x, rel)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        signs = torch.randint(0, 2, (5,), generator=gen) * 2 - 1
        moved, _ = loglog_slope(x, y * (1 + signs * torch.tensor(rel, dtype=torch.float64)))
        assert abs(moved - base) <= bound


def test_expansion_slopes_refuse_a_margin_that_lets_the_floor_in():
    from softq.natural import expansion_slopes

    etas = [1e-3, 2e-3, 4e-3]
    vecs = [torch.tensor([e**3], dtype=torch.float64) for e in etas]
    for kw in ({"margin": 1.0}, {"bend": 0.0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            expansion_slopes(etas, [v.norm() for v in vecs], vecs, w1_norm=1.0, w2_norm=1.0, theta_norm=1.0, cond=1.0,
                             **kw)
