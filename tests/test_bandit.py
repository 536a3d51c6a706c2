"""softq.bandit: instances, eq (1), the estimators of eqs (7) and (9), and the decomposition of eqs (14)-(23)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad

import softq.bandit as bd
from softq.config import DTYPE, generator
from softq.regularized import boltzmann_policy, kl, log_boltzmann_policy, q_from_value_and_policy, soft_value

TAU = 0.7
seeds = st.integers(0, 10_000)
taus = st.floats(0.05, 5.0)
n_actions = st.integers(2, 7)


def _setup(n, seed, tau=TAU):
    b = bd.random_bandit(n, seed=seed)
    net = bd.ActionValueMLP(n, n_features=3, hidden=5, seed=seed + 1)
    return b, net, net.init_params(seed + 2)


# ---------------------------------------------------------------------------------------------------- instances


def test_random_bandit_is_reproducible_and_valid():
    a, b = bd.random_bandit(5, seed=3), bd.random_bandit(5, seed=3)
    assert torch.equal(a.r_bar, b.r_bar) and torch.equal(a.sigma, b.sigma) and torch.equal(a.pi_bar, b.pi_bar)
    assert not torch.equal(a.r_bar, bd.random_bandit(5, seed=4).r_bar)
    assert a.r_bar.dtype == DTYPE and torch.all(a.sigma > 0) and abs(a.pi_bar.sum().item() - 1) < 1e-12
    u = bd.random_bandit(4, seed=0, uniform_reference=True)
    assert torch.allclose(u.pi_bar, torch.full((4,), 0.25, dtype=DTYPE))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(r_bar=torch.zeros(3), sigma=torch.ones(2), pi_bar=torch.ones(3) / 3), "sigma"),
        (dict(r_bar=torch.zeros(3), sigma=-torch.ones(3), pi_bar=torch.ones(3) / 3), "sigma"),
        (dict(r_bar=torch.zeros(3), sigma=torch.ones(3), pi_bar=torch.ones(3)), "pi_bar"),
        (dict(r_bar=torch.tensor([0.0, math.nan]), sigma=torch.ones(2), pi_bar=torch.ones(2) / 2), "r_bar"),
        (dict(r_bar=[0.0, 1.0], sigma=torch.ones(2), pi_bar=torch.ones(2) / 2), "r_bar"),
    ],
)
def test_bandit_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        bd.Bandit(**kwargs)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: bd.random_bandit(0, seed=0), "n_actions"),
        (lambda: bd.random_bandit(3, seed=-1), "seed"),
        (lambda: bd.random_bandit(3, seed=0, noise=-1.0), "noise"),
        (lambda: bd.random_bandit(3, seed=0, reward_scale=0.0), "reward_scale"),
        (lambda: bd.eta(torch.ones(3) / 3, bd.random_bandit(3, seed=0), tau=0.0), "tau"),
        (lambda: bd.sample(bd.random_bandit(3, seed=0), torch.ones(4) / 4, 10, generator(0)), "pi"),
        (lambda: bd.sample(bd.random_bandit(3, seed=0), torch.ones(3) / 3, 0, generator(0)), "n"),
        (lambda: bd.ActionValueMLP(3)(torch.zeros(5, dtype=DTYPE)), "theta"),
        (lambda: bd.random_policies(2, 3, generator(0), concentration=-1.0), "concentration"),
        (lambda: bd.loglog_slope([10], torch.ones(1)), "ns"),
        (lambda: bd.convergence_study(bd.AffineEstimator(torch.zeros(2, 1), torch.zeros(2, 1)), torch.ones(2) / 2,
                                      bd.random_bandit(2, seed=0), [10], reps=2, seed=0), "ns"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_sample_draws_from_pi_and_reward_model():
    b = bd.random_bandit(3, seed=1)
    pi = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE)
    a, r = bd.sample(b, pi, 200_000, generator(0))
    freq = torch.bincount(a, minlength=3).to(DTYPE) / len(a)
    assert torch.all((freq - pi).abs() < 5 * (pi * (1 - pi) / len(a)).sqrt())
    for k in range(3):
        rk = r[a == k]
        assert abs(rk.mean() - b.r_bar[k]) < 5 * b.sigma[k] / math.sqrt(len(rk))
        assert abs(rk.std() / b.sigma[k] - 1) < 0.02
    a2, _ = bd.sample(b, pi, 7, generator(0), reps=4)
    assert a2.shape == (4, 7)


# ---------------------------------------------------------------------------------------------------- eq (1)


@settings(max_examples=40, deadline=None)
@given(n=n_actions, seed=seeds, tau=taus)
def test_boltzmann_policy_beats_random_simplex_points(n, seed, tau):
    """Eq (2): pi^B_{r_bar} maximizes eta; the gap is tau KL[pi || pi^B] (eq 6)."""
    b = bd.random_bandit(n, seed=seed)
    best = boltzmann_policy(b.r_bar, tau, b.pi_bar)
    pis = torch.cat([bd.random_policies(200, n, generator(seed), c) for c in (0.1, 1.0, 10.0)])
    gap = bd.eta(best, b, tau) - bd.eta(pis, b, tau)
    assert torch.all(gap >= 0)
    assert torch.allclose(gap, tau * kl(pis, best), atol=1e-11, rtol=0)
    assert torch.allclose(bd.eta(best, b, tau), soft_value(b.r_bar, tau, b.pi_bar), atol=1e-12, rtol=0)


def test_eta_is_expected_reward_minus_tau_kl():
    b = bd.random_bandit(3, seed=5)
    pi = torch.tensor([0.5, 0.25, 0.25], dtype=DTYPE)
    want = (pi * b.r_bar).sum() - TAU * (pi * torch.log(pi / b.pi_bar)).sum()
    assert torch.allclose(bd.eta(pi, b, TAU), want, atol=1e-14, rtol=0)


# ---------------------------------------------------------------------------------------------------- eqs (7), (9)


@settings(max_examples=25, deadline=None)
@given(n=n_actions, seed=seeds, tau=taus)
def test_policy_gradient_estimator_is_unbiased(n, seed, tau):
    """Eq (7) in exact expectation equals the autograd derivative of eta(pi^B_{q_theta})."""
    b, net, theta = _setup(n, seed)
    pi = boltzmann_policy(net(theta), tau, b.pi_bar)
    est = bd.policy_gradient_estimator(net, theta, b, tau)
    assert torch.allclose(est.exact(pi, b), bd.grad_eta(net, theta, b, tau), atol=1e-12, rtol=0)


@settings(max_examples=25, deadline=None)
@given(n=n_actions, seed=seeds)
def test_q_regression_estimator_is_gradient_of_loss(n, seed):
    b, net, theta = _setup(n, seed)
    pi = bd.random_policies(1, n, generator(seed))[0]
    want = grad(lambda th: bd.q_regression_loss(net(th), pi, b))(theta)
    assert torch.allclose(bd.q_regression_estimator(net, theta).exact(pi, b), want, atol=1e-12, rtol=0)


@settings(max_examples=15, deadline=None)
@given(n=n_actions, seed=seeds)
def test_sampled_estimates_agree_with_exact_within_clt_bound(n, seed):
    b, net, theta = _setup(n, seed)
    pi = boltzmann_policy(net(theta), TAU, b.pi_bar)
    n_samples = 20_000
    for k, est in enumerate([bd.policy_gradient_estimator(net, theta, b, TAU), bd.q_regression_estimator(net, theta)]):
        got = est.sample_mean(*bd.sample(b, pi, n_samples, generator(seed + k)))
        bound = 5.5 * est.std(pi, b) / math.sqrt(n_samples) + 1e-12  # P(|z| > 5.5) ~ 4e-8 per coordinate
        assert torch.all((got - est.exact(pi, b)).abs() <= bound)


def test_sample_mean_is_average_of_per_sample_autograd_gradients():
    """The grouped-by-action sum in AffineEstimator.sample_mean is the plain per-sample average."""
    b, net, theta = _setup(4, 11)
    pi = boltzmann_policy(net(theta), TAU, b.pi_bar)
    a, r = bd.sample(b, pi, 25, generator(1))

    def per_sample_pg(th, ai, ri):
        p = boltzmann_policy(net(th), TAU, b.pi_bar)
        return log_boltzmann_policy(net(th), TAU, b.pi_bar)[ai] * ri - TAU * kl(p, b.pi_bar)

    want_pg = torch.stack([grad(per_sample_pg)(theta, ai, ri) for ai, ri in zip(a, r, strict=True)]).mean(0)
    got_pg = bd.policy_gradient_estimator(net, theta, b, TAU).sample_mean(a, r)
    assert torch.allclose(got_pg, want_pg, atol=1e-13, rtol=0)
    want_q = torch.stack([grad(lambda th, ai=ai, ri=ri: 0.5 * (net(th)[ai] - ri) ** 2)(theta)
                          for ai, ri in zip(a, r, strict=True)]).mean(0)
    assert torch.allclose(bd.q_regression_estimator(net, theta).sample_mean(a, r), want_q, atol=1e-13, rtol=0)


def test_affine_estimator_std_matches_empirical():
    b, net, theta = _setup(3, 2)
    pi = boltzmann_policy(net(theta), TAU, b.pi_bar)
    est = bd.q_regression_estimator(net, theta)
    a, r = bd.sample(b, pi, 1, generator(3), reps=100_000)
    per_sample = est.sample_mean(a, r)  # N = 1: one sample per row
    assert torch.allclose(per_sample.std(0), est.std(pi, b), rtol=0.03, atol=1e-12)


def test_convergence_study_has_slope_minus_half():
    b, net, theta = _setup(4, 0)
    pi = boltzmann_policy(net(theta), TAU, b.pi_bar)
    est = bd.policy_gradient_estimator(net, theta, b, TAU)
    ns = [100, 1_000, 10_000]
    rmse = bd.convergence_study(est, pi, b, ns, reps=100, seed=0)
    slope, _ = bd.loglog_slope(ns, rmse)
    assert abs(slope + 0.5) < 0.06  # 4 standard errors: (2 * 100)^-1/2 / sqrt(sum (log N - mean)^2)
    clt = (est.std(pi, b) ** 2).sum().sqrt() / torch.tensor(ns, dtype=DTYPE).sqrt()
    assert torch.all((rmse / clt - 1).abs() < 0.3)


def test_loglog_slope_recovers_power_law():
    ns = [10, 100, 1000]
    slope, intercept = bd.loglog_slope(ns, torch.tensor([3.0 * n**-0.5 for n in ns], dtype=DTYPE))
    assert slope == pytest.approx(-0.5, abs=1e-12) and intercept == pytest.approx(math.log(3.0), abs=1e-12)


# ---------------------------------------------------------------------------------------------------- eqs (13)-(23)


def test_mlp_is_nonlinear_and_shares_parameters():
    net = bd.ActionValueMLP(4, seed=0)
    t1, t2 = net.init_params(1), net.init_params(2)
    assert net(t1).shape == (4,) and net.n_params == len(t1)
    assert not torch.allclose(net(t1 + t2), net(t1) + net(t2) - net(torch.zeros_like(t1)))


@settings(max_examples=30, deadline=None)
@given(n=n_actions, seed=seeds, tau=taus)
def test_eq13_eq14_identities(n, seed, tau):
    b, net, theta = _setup(n, seed)
    s = bd.soft_quantities(net(theta), tau, b.pi_bar)
    assert torch.allclose(s.v, (s.pi * s.q).sum() - tau * s.kl, atol=1e-12, rtol=0)
    assert torch.allclose(q_from_value_and_policy(s.v, s.log_pi, tau, b.pi_bar), s.q, atol=1e-12, rtol=0)


@settings(max_examples=30, deadline=None)
@given(n=n_actions, seed=seeds, tau=taus)
def test_q_regression_gradient_decomposes_into_policy_and_value_gradients(n, seed, tau):
    """Eq (23) with the semi-gradients of the corrected reading holds to float64 precision."""
    b, net, theta = _setup(n, seed)
    lhs = bd.q_regression_gradient(net, theta, b, tau)
    rhs = bd.policy_gradient_term(net, theta, b, tau) + bd.value_error_gradient(net, theta, b, tau)
    assert torch.allclose(lhs, rhs, atol=1e-11 * (1 + lhs.abs().max()), rtol=0)
    # and the pieces are what the docstrings say
    pi = boltzmann_policy(net(theta), tau, b.pi_bar)
    assert torch.allclose(lhs, bd.q_regression_estimator(net, theta).exact(pi, b), atol=1e-12, rtol=0)
    j = bd.soft_jacobians(net, theta, tau, b.pi_bar)
    s = bd.soft_quantities(net(theta), tau, b.pi_bar)
    want_ve = j.dv * (s.v - (s.pi * b.r_bar).sum() + tau * s.kl)
    assert torch.allclose(bd.value_error_gradient(net, theta, b, tau), want_ve, atol=1e-12, rtol=0)


def test_wrong_readings_of_eq23_break_the_decomposition():
    """Differentiating the held-fixed pieces (sampling policy, KL in the target) gives a visibly different vector."""
    b, net, theta = _setup(5, 0)
    lhs = bd.q_regression_gradient(net, theta, b, TAU)
    pg = bd.policy_gradient_term(net, theta, b, TAU)
    for kwargs in (dict(hold_sampling=False), dict(hold_target=False)):
        wrong = pg + bd.value_error_gradient(net, theta, b, TAU, **kwargs)
        assert (wrong - lhs).abs().max() > 1e-3
    assert (bd.policy_gradient_term(net, theta, b, TAU, hold_sampling=True)
            + bd.value_error_gradient(net, theta, b, TAU) - lhs).abs().max() > 1e-3
    assert (bd.q_regression_gradient(net, theta, b, TAU, hold_sampling=False) - lhs).abs().max() > 1e-3


def test_soft_jacobians_match_finite_differences():
    b, net, theta = _setup(3, 4)
    j = bd.soft_jacobians(net, theta, TAU, b.pi_bar)
    h = 1e-6
    e = torch.zeros_like(theta)
    e[0] = 1.0
    fd = (soft_value(net(theta + h * e), TAU, b.pi_bar) - soft_value(net(theta - h * e), TAU, b.pi_bar)) / (2 * h)
    assert abs(j.dv[0] - fd) < 1e-8
    assert torch.allclose(j.dpi, j.dlog_pi * boltzmann_policy(net(theta), TAU, b.pi_bar)[:, None], atol=1e-13)


def test_central_difference_bound_holds_and_catches_a_wrong_gradient():
    """On f = sum(c * theta^3) the truncation error of D(h) is exactly c h^2 (no O(h^4) rest): the bound holds with
    the factor 3 the docstring derives, and a gradient wrong by more than the bound is caught."""
    c = torch.tensor([1.0, -2.0, 50.0], dtype=DTYPE)
    theta = torch.tensor([0.3, -1.2, 0.7], dtype=DTYPE)
    f = lambda th: (c * th**3).sum()  # noqa: E731
    exact = 3 * c * theta**2
    h = 1e-3
    fd = bd.central_difference(f, theta, h=h)
    truncation = (c * h**2).abs()
    torch.testing.assert_close(fd.value - exact, c * h**2, rtol=1e-6, atol=1e-12)
    assert ((fd.value - exact).abs() <= fd.error).all()
    assert (fd.error >= 3 * truncation * (1 - 1e-6)).all()
    wrong = exact + torch.tensor([0.0, 0.0, 2 * float(fd.error[2])], dtype=DTYPE)
    assert ((wrong - fd.value).abs() > fd.error).any()


def test_central_difference_rejects_bad_arguments():
    f = lambda th: th.sum()  # noqa: E731
    with pytest.raises(ValueError, match="h must be"):
        bd.central_difference(f, torch.zeros(2, dtype=DTYPE), h=0.0)
    with pytest.raises(ValueError, match="theta must be a vector"):
        bd.central_difference(f, torch.zeros(2, 2, dtype=DTYPE))


def test_deviation_bound_holds_where_five_standard_errors_do_not():
    """A rare action with a large g (probability 1e-5, n = 2000: 0.02 expected draws) makes the mean's distribution
    far from Gaussian: one draw of it moves the mean by 1/sqrt(n p) = 7 standard errors. "Within 5 standard errors"
    (nominally failing once in 1.7 million) then fails in about 2% of batches; the bound at delta = 1e-3 holds in all
    20,000."""
    bandit = bd.Bandit(r_bar=torch.tensor([0.0, 0.0], dtype=DTYPE), sigma=torch.tensor([0.1, 0.1], dtype=DTYPE),
                       pi_bar=torch.tensor([0.5, 0.5], dtype=DTYPE))
    pi = torch.tensor([1 - 1e-5, 1e-5], dtype=DTYPE)
    est = bd.AffineEstimator(c=torch.tensor([[0.0], [1e3]], dtype=DTYPE), d=torch.tensor([[1.0], [1.0]], dtype=DTYPE))
    n, reps = 2000, 20_000
    actions, rewards = bd.sample(bandit, pi, n, generator(5), reps=reps)
    err = (est.sample_mean(actions, rewards) - est.exact(pi, bandit)).abs()[:, 0]
    five_se = 5 * est.std(pi, bandit)[0] / math.sqrt(n)
    assert float((err > five_se).double().mean()) > 0.01
    assert not (err > est.deviation_bound(pi, bandit, n, delta=1e-3)[0]).any()


def test_deviation_bound_is_a_few_standard_errors_for_a_gaussian_like_mean():
    bandit = bd.random_bandit(4, seed=3)
    pi = torch.full((4,), 0.25, dtype=DTYPE)
    est = bd.AffineEstimator(c=torch.randn(4, 3, generator=generator(1), dtype=DTYPE),
                             d=torch.randn(4, 3, generator=generator(2), dtype=DTYPE))
    ratio = est.deviation_bound(pi, bandit, 10_000) / (est.std(pi, bandit) / 100)
    assert (ratio > 6).all() and (ratio < 25).all()
    with pytest.raises(ValueError, match="delta"):
        est.deviation_bound(pi, bandit, 10, delta=1.5)
    with pytest.raises(ValueError, match="n must be"):
        est.deviation_bound(pi, bandit, 0)
