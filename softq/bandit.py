"""The entropy-regularized bandit of Section 2 (eqs 1-23): instances, exact expectations, gradient estimators.

Objects, named after the paper:

- :class:`Bandit`: mean rewards ``r_bar: [A]``, Gaussian reward noise ``sigma: [A]`` (``r | a ~ N(r_bar(a),
  sigma(a)^2)``) and a reference policy ``pi_bar: [A]``; :func:`random_bandit` draws one from an explicit seed.
- :func:`eta`: the KL-regularized objective of eq (1), in exact expectation by enumeration over actions.
- :class:`ActionValueMLP`: a small nonlinear ``q_theta(a)`` (one tanh hidden layer over fixed random action
  features), a function of a flat float64 parameter vector ``theta: [P]``.
- :class:`AffineEstimator`: a per-sample gradient estimator ``g(a, r) = c[a] + d[a] r``. The policy-gradient
  estimator of eq (7) and the squared-error gradient of eq (9) are both of this form, so one class gives their exact
  expectation (enumeration over ``a``, ``E[r | a] = r_bar(a)``), their exact per-sample standard deviation, and their
  Monte Carlo estimate from ``N`` samples.
- The decomposition of eqs (14)-(23): :func:`soft_quantities` (``q, v, pi^B, log pi^B, KL`` as differentiable
  functions of ``theta``), :func:`q_regression_loss` (eq 8), :func:`value_error_loss` (eq 23, second term), and the
  three gradients of eq (23) with explicit switches for what is held fixed (:func:`q_regression_gradient`,
  :func:`policy_gradient_term`, :func:`value_error_gradient`).

The Boltzmann policy, soft value and KL are never re-implemented here: they come from :mod:`softq.regularized`.
Every tensor is float64 (``softq.config.DTYPE``); every random draw takes an explicit seed or generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import grad, jacrev

from softq.config import DTYPE, generator
from softq.montecarlo import bernstein_radius
from softq.regularized import (
    boltzmann_policy,
    kl,
    log_boltzmann_policy,
    policy_value,
    soft_value,
    validate_count,
    validate_distribution,
    validate_tau,
)

__all__ = [
    "Bandit",
    "random_bandit",
    "random_policies",
    "sample",
    "expected_reward",
    "eta",
    "ActionValueMLP",
    "SoftQuantities",
    "soft_quantities",
    "SoftJacobians",
    "soft_jacobians",
    "AffineEstimator",
    "policy_gradient_estimator",
    "q_regression_estimator",
    "grad_eta",
    "q_regression_loss",
    "value_error_loss",
    "q_regression_gradient",
    "policy_gradient_term",
    "value_error_gradient",
    "convergence_study",
    "loglog_slope",
    "CentralDifference",
    "central_difference",
]


# ----------------------------------------------------------------------------------------------------------------
# Instances
# ----------------------------------------------------------------------------------------------------------------


def _vector(x: torch.Tensor, name: str, n: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 1 or (n is not None and x.shape[0] != n):
        want = "[A]" if n is None else f"[{n}]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not torch.all(torch.isfinite(x)):
        raise ValueError(f"{name} must be finite, got {x.tolist()}")
    return x.to(DTYPE)


@dataclass(frozen=True)
class Bandit:
    """A bandit with ``A`` actions and Gaussian rewards, plus the reference policy of eq (1).

    Attributes:
        r_bar: ``[A]`` mean rewards ``r_bar(a) = E[r | a]``.
        sigma: ``[A]`` reward noise standard deviations (>= 0): ``r | a ~ N(r_bar(a), sigma(a)^2)``.
        pi_bar: ``[A]`` the reference policy (a distribution; entries may be 0).
    """

    r_bar: torch.Tensor
    sigma: torch.Tensor
    pi_bar: torch.Tensor

    def __post_init__(self) -> None:
        r_bar = _vector(self.r_bar, "r_bar")
        n = r_bar.shape[0]
        sigma = _vector(self.sigma, "sigma", n)
        if torch.any(sigma < 0):
            raise ValueError(f"sigma must be >= 0, got {sigma.tolist()}")
        pi_bar = validate_distribution(_vector(self.pi_bar, "pi_bar", n), "pi_bar")
        object.__setattr__(self, "r_bar", r_bar)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "pi_bar", pi_bar)

    @property
    def n_actions(self) -> int:
        return int(self.r_bar.shape[0])


def random_bandit(
    n_actions: int, seed: int, *, reward_scale: float = 1.0, noise: float = 0.5, uniform_reference: bool = False
) -> Bandit:
    """A random bandit: ``r_bar ~ N(0, reward_scale^2)``, ``sigma ~ noise * U(0.5, 1.5)``, ``pi_bar ~ Dirichlet(1)``.

    Args:
        n_actions: ``A >= 1``.
        seed: non-negative int; the same seed gives the same bandit.
        reward_scale: standard deviation of the mean rewards (> 0).
        noise: typical reward noise standard deviation (>= 0).
        uniform_reference: use ``pi_bar = 1/A`` instead of a Dirichlet draw.
    """
    n_actions = validate_count(n_actions, "n_actions")
    reward_scale = validate_tau(reward_scale, "reward_scale")
    if not (isinstance(noise, int | float) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    gen = generator(seed)
    r_bar = reward_scale * torch.randn(n_actions, generator=gen, dtype=DTYPE)
    sigma = noise * (0.5 + torch.rand(n_actions, generator=gen, dtype=DTYPE))
    if uniform_reference:
        pi_bar = torch.full((n_actions,), 1.0 / n_actions, dtype=DTYPE)
    else:
        pi_bar = random_policies(1, n_actions, gen)[0]
    return Bandit(r_bar, sigma, pi_bar)


def random_policies(
    n: int, n_actions: int, gen: torch.Generator, concentration: float = 1.0
) -> torch.Tensor:
    """``n`` policies drawn from a symmetric Dirichlet(``concentration``) on the simplex: ``[n, A]``, float64.

    ``concentration = 1`` is uniform on the simplex; smaller values put mass near its vertices and edges.
    Drawn as normalized Gamma variates, floored at 1e-300 so every entry stays > 0 (log pi is finite). torch's
    public Gamma sampler takes no generator, so the draw is numpy's, seeded from ``gen`` (same gen, same policies).
    """
    n = validate_count(n, "n")
    n_actions = validate_count(n_actions, "n_actions")
    concentration = validate_tau(concentration, "concentration")
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=gen))
    g = np.random.default_rng(seed).standard_gamma(concentration, size=(n, n_actions))
    g = torch.from_numpy(g).to(DTYPE).clamp_min(1e-300)
    return g / g.sum(-1, keepdim=True)


def sample(
    bandit: Bandit, pi: torch.Tensor, n: int, gen: torch.Generator, reps: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` i.i.d. pairs ``a ~ pi``, ``r ~ N(r_bar(a), sigma(a)^2)``.

    Returns ``(actions, rewards)``: ``[n]`` (long) and ``[n]`` (float64), or ``[reps, n]`` each when ``reps`` is given
    (``reps`` independent batches, e.g. for a Monte Carlo error study).
    """
    pi = validate_distribution(_vector(pi, "pi", bandit.n_actions), "pi")
    n = validate_count(n, "n")
    rows = 1 if reps is None else validate_count(reps, "reps")
    actions = torch.multinomial(pi.expand(rows, -1), n, replacement=True, generator=gen)
    noise = torch.randn(rows, n, generator=gen, dtype=DTYPE)
    rewards = bandit.r_bar[actions] + bandit.sigma[actions] * noise
    if reps is None:
        return actions[0], rewards[0]
    return actions, rewards


# ----------------------------------------------------------------------------------------------------------------
# The objective, eq (1)
# ----------------------------------------------------------------------------------------------------------------


def expected_reward(pi: torch.Tensor, bandit: Bandit) -> torch.Tensor:
    """``E_{a~pi, r}[r] = sum_a pi(a) r_bar(a)``; ``pi: [..., A]`` -> ``[...]``."""
    if pi.shape[-1] != bandit.n_actions:
        raise ValueError(f"pi has {pi.shape[-1]} actions but the bandit has {bandit.n_actions}")
    return (pi * bandit.r_bar).sum(-1)


def eta(pi: torch.Tensor, bandit: Bandit, tau: float) -> torch.Tensor:
    """The KL-regularized objective, eq (1): ``eta(pi) = E_{a~pi, r}[r] - tau KL[pi || pi_bar]``.

    Exact, by enumeration over actions. ``pi: [..., A]`` -> ``[...]``; differentiable in ``pi`` where ``pi > 0``.
    """
    if pi.shape[-1] != bandit.n_actions:
        raise ValueError(f"pi has {pi.shape[-1]} actions but the bandit has {bandit.n_actions}")
    return policy_value(bandit.r_bar, pi, tau, bandit.pi_bar)


# ----------------------------------------------------------------------------------------------------------------
# A nonlinear parametrized q_theta
# ----------------------------------------------------------------------------------------------------------------


class ActionValueMLP:
    """A small nonlinear action-value function ``q_theta(a) = w2 . tanh(W1 phi(a) + b1) + b2``.

    ``phi(a): [d]`` are fixed random features of the actions (drawn once from ``seed``), so actions share parameters
    and ``q_theta`` is not a table. ``theta: [P]`` is one flat float64 vector holding ``W1 [h, d], b1 [h], w2 [h],
    b2 []`` (``P = h d + 2 h + 1``); calling the object maps ``theta -> q: [A]``, a pure function that
    ``torch.func.grad``/``jacrev`` can differentiate.
    """

    def __init__(self, n_actions: int, *, n_features: int = 4, hidden: int = 8, seed: int = 0) -> None:
        self.n_actions = validate_count(n_actions, "n_actions")
        self.n_features = validate_count(n_features, "n_features")
        self.hidden = validate_count(hidden, "hidden")
        self.features = torch.randn(self.n_actions, self.n_features, generator=generator(seed), dtype=DTYPE)
        self.n_params = self.hidden * self.n_features + 2 * self.hidden + 1

    def init_params(self, seed: int, scale: float = 1.0) -> torch.Tensor:
        """Random ``theta: [P]``: weights ``~ N(0, scale^2 / fan_in)``, biases ``~ N(0, scale^2 / 4)``."""
        scale = validate_tau(scale, "scale")
        gen = generator(seed)
        h, d = self.hidden, self.n_features
        w1 = torch.randn(h * d, generator=gen, dtype=DTYPE) * scale / math.sqrt(d)
        b1 = torch.randn(h, generator=gen, dtype=DTYPE) * scale / 2
        w2 = torch.randn(h, generator=gen, dtype=DTYPE) * scale / math.sqrt(h)
        b2 = torch.randn(1, generator=gen, dtype=DTYPE) * scale / 2
        return torch.cat([w1, b1, w2, b2])

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """``q_theta: [A]`` for ``theta: [P]``."""
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta must have shape [{self.n_params}], got {tuple(theta.shape)}")
        h, d = self.hidden, self.n_features
        w1 = theta[: h * d].reshape(h, d)
        b1 = theta[h * d : h * d + h]
        w2 = theta[h * d + h : h * d + 2 * h]
        b2 = theta[-1]
        return torch.tanh(self.features @ w1.T + b1) @ w2 + b2


QFunction = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SoftQuantities:
    """The objects of eqs (10)-(14) for one ``q: [A]``, all differentiable functions of whatever made ``q``.

    ``q [A]``; ``v []`` (eq 11, corrected); ``log_pi [A]`` and ``pi [A]`` (the Boltzmann policy, eqs 10/12);
    ``kl []`` = ``KL[pi^B || pi_bar]`` (eq 13).
    """

    q: torch.Tensor
    v: torch.Tensor
    log_pi: torch.Tensor
    pi: torch.Tensor
    kl: torch.Tensor


def soft_quantities(q: torch.Tensor, tau: float, pi_bar: torch.Tensor | None) -> SoftQuantities:
    """``q, v_q, log pi^B_q, pi^B_q, KL[pi^B_q || pi_bar]`` from :mod:`softq.regularized`; ``q: [..., A]`` (a bandit's
    ``[A]``, or ``[S, A]`` for every state of an MDP, as :mod:`softq.equivalence` uses it)."""
    log_pi = log_boltzmann_policy(q, tau, pi_bar)
    pi = log_pi.exp()
    return SoftQuantities(q, soft_value(q, tau, pi_bar), log_pi, pi, kl(pi, pi_bar))


@dataclass(frozen=True)
class SoftJacobians:
    """Derivatives in ``theta: [P]`` of the objects of eqs (10)-(14), by ``torch.func.jacrev``.

    ``dq [A, P]`` = nabla q_theta(a); ``dv [P]`` = nabla v_theta; ``dlog_pi [A, P]`` = nabla log pi^B(a) (the score);
    ``dpi [A, P]`` = nabla pi^B(a); ``dkl [P]`` = nabla KL[pi^B || pi_bar] (the full derivative).
    """

    dq: torch.Tensor
    dv: torch.Tensor
    dlog_pi: torch.Tensor
    dpi: torch.Tensor
    dkl: torch.Tensor


def soft_jacobians(q_fn: QFunction, theta: torch.Tensor, tau: float, pi_bar: torch.Tensor | None) -> SoftJacobians:
    """All of :class:`SoftJacobians` for ``q_theta = q_fn(theta)``, in one reverse-mode Jacobian."""
    tau = validate_tau(tau)

    def flat(th: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = soft_quantities(q_fn(th), tau, pi_bar)
        return s.q, s.v, s.log_pi, s.pi, s.kl

    return SoftJacobians(*jacrev(flat)(theta))


# ----------------------------------------------------------------------------------------------------------------
# Gradient estimators, eqs (7) and (9)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AffineEstimator:
    """A per-sample estimator of a vector in ``R^P`` that is affine in the reward: ``g(a, r) = c[a] + d[a] r``.

    ``c, d: [A, P]``. Given a sampling policy ``pi: [A]`` and a :class:`Bandit`:

    - :meth:`exact`: ``E_{a~pi, r}[g] = sum_a pi(a) (c[a] + d[a] r_bar(a))`` by enumeration;
    - :meth:`std`: the exact per-coordinate standard deviation of one sample, from
      ``E_r[(c + d r)^2] = (c + d r_bar)^2 + d^2 sigma^2``; a mean of ``N`` samples has ``std / sqrt(N)``;
    - :meth:`sample_mean`: ``(1/N) sum_i g(a_i, r_i)`` for drawn ``(a_i, r_i)``;
    - :meth:`deviation_bound`: how far that mean can sit from :meth:`exact`, whatever the shape of ``g``'s
      distribution, except with probability ``delta``.
    """

    c: torch.Tensor
    d: torch.Tensor

    def exact(self, pi: torch.Tensor, bandit: Bandit) -> torch.Tensor:
        """``E_{a~pi, r}[c[a] + d[a] r]: [P]``."""
        return pi @ (self.c + self.d * bandit.r_bar[:, None])

    def std(self, pi: torch.Tensor, bandit: Bandit) -> torch.Tensor:
        """Standard deviation of one sample ``g(a, r)``, per coordinate: ``[P]``."""
        mean_given_a = self.c + self.d * bandit.r_bar[:, None]
        second = pi @ (mean_given_a**2 + (self.d * bandit.sigma[:, None]) ** 2)
        return (second - self.exact(pi, bandit) ** 2).clamp_min(0).sqrt()

    def deviation_bound(self, pi: torch.Tensor, bandit: Bandit, n: int, delta: float = 1e-9) -> torch.Tensor:
        """``t: [P]`` with ``P(|sample mean of n draws - exact| >= t) <= delta`` per coordinate, for any ``pi``.

        "Within 5 standard errors" assumes the mean is nearly Gaussian; it is not when ``pi`` puts a tiny
        probability ``p`` on an action with a large ``g`` (a peaked Boltzmann policy at small ``tau``): one such
        draw moves the mean by about ``1 / sqrt(n p)`` standard errors. This bound holds without that assumption.
        Write ``g = m[a] + d[a] sigma(a) eps`` with ``m = c + d r_bar`` and ``eps ~ N(0, 1)``:

        - the action part ``m[a]`` is bounded, ``|m[a] - mu| <= M`` over the actions ``pi`` can draw, with variance
          ``v``; Bernstein's inequality, ``P(|mean - mu| >= t) <= 2 exp(-n t^2 / (2 v + 2 M t / 3))``, solved for
          ``t`` at ``delta / 2``: ``t_1 = (M L / 3 + sqrt((M L / 3)^2 + 2 n v L)) / n``, ``L = log(4 / delta)``
          (``montecarlo.bernstein_radius``);
        - given the actions, the noise part's mean is Gaussian with variance at most ``s^2 / n``,
          ``s = max_a |d[a] sigma(a)|``: ``t_2 = s sqrt(2 L / n)`` at ``delta / 2``.

        The sum ``t_1 + t_2`` holds with probability ``>= 1 - delta`` (a union bound). For a nearly Gaussian mean it
        is about ``sqrt(2 log(4 / delta))`` standard errors: 6.65 at the default ``delta``.
        """
        validate_count(n, "n")
        if not (isinstance(delta, float) and 0 < delta < 1):
            raise ValueError(f"delta must be a probability in (0, 1), got {delta!r}")
        m = self.c + self.d * bandit.r_bar[:, None]                      # [A, P]
        mu = pi @ m
        drawn = pi > 0
        M = (m[drawn] - mu).abs().amax(0)
        v = (pi @ (m - mu) ** 2).clamp_min(0)
        s = (self.d * bandit.sigma[:, None])[drawn].abs().amax(0)
        return bernstein_radius(v, M, n, delta / 2) + s * math.sqrt(2 * math.log(4 / delta) / n)

    def sample_mean(self, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """``(1/N) sum_i (c[a_i] + d[a_i] r_i)``; ``actions, rewards: [..., N]`` -> ``[..., P]``.

        The sum is taken grouped by action (counts and reward sums per action, then one matrix product): the same
        sum in a different order, which keeps memory at ``O(N)`` rather than ``O(N P)``.
        """
        if actions.shape != rewards.shape:
            raise ValueError(f"actions {tuple(actions.shape)} and rewards {tuple(rewards.shape)} differ in shape")
        n_actions = self.c.shape[0]
        shape = (*actions.shape[:-1], n_actions)
        counts = torch.zeros(shape, dtype=DTYPE).scatter_add_(-1, actions, torch.ones_like(rewards))
        sums = torch.zeros(shape, dtype=DTYPE).scatter_add_(-1, actions, rewards)
        return (counts @ self.c + sums @ self.d) / actions.shape[-1]


def _boltzmann_of(q_fn: QFunction, theta: torch.Tensor, bandit: Bandit, tau: float) -> torch.Tensor:
    return boltzmann_policy(q_fn(theta), tau, bandit.pi_bar)


def grad_eta(q_fn: QFunction, theta: torch.Tensor, bandit: Bandit, tau: float) -> torch.Tensor:
    """The true policy gradient ``nabla_theta eta(pi_theta)`` by autograd, ``pi_theta = pi^B_{q_theta}``: ``[P]``.

    The full derivative of eq (1) at ``pi_theta``: the reference for eq (7).
    """
    return grad(lambda th: eta(_boltzmann_of(q_fn, th, bandit, tau), bandit, tau))(theta)


def policy_gradient_estimator(q_fn: QFunction, theta: torch.Tensor, bandit: Bandit, tau: float) -> AffineEstimator:
    """The score-function estimator of eq (7) for ``pi_theta = pi^B_{q_theta}``, one sample ``(a, r)``:

    ``g(a, r) = nabla_theta log pi_theta(a) r - tau nabla_theta KL[pi_theta || pi_bar]``, i.e. ``c[a] = -tau nabla KL``,
    ``d[a] = nabla_theta log pi_theta(a)`` (the score, ``[A, P]``, by ``jacrev``). Sample with ``a ~ pi_theta``.
    """
    tau = validate_tau(tau)
    score = jacrev(lambda th: log_boltzmann_policy(q_fn(th), tau, bandit.pi_bar))(theta)
    grad_kl = grad(lambda th: kl(_boltzmann_of(q_fn, th, bandit, tau), bandit.pi_bar))(theta)
    return AffineEstimator(c=(-tau * grad_kl).expand_as(score).clone(), d=score)


def q_regression_estimator(q_fn: QFunction, theta: torch.Tensor) -> AffineEstimator:
    """The per-sample squared-error gradient of eq (9): ``g(a, r) = nabla_theta q_theta(a) (q_theta(a) - r)``.

    ``c[a] = J[a] q_theta(a)``, ``d[a] = -J[a]`` with ``J = nabla_theta q_theta: [A, P]``. The sampling policy ``pi``
    of eq (8) is whatever the samples come from; it is not differentiated (eq 9 is the gradient of ``L_pi`` at fixed
    ``pi``).
    """
    jac = jacrev(q_fn)(theta)
    q = q_fn(theta).detach()
    return AffineEstimator(c=jac * q[:, None], d=-jac)


# ----------------------------------------------------------------------------------------------------------------
# The decomposition, eqs (14)-(23)
# ----------------------------------------------------------------------------------------------------------------


def q_regression_loss(q: torch.Tensor, pi: torch.Tensor, bandit: Bandit) -> torch.Tensor:
    """The squared-error loss of eq (8), exactly: ``L_pi = 1/2 E_{a~pi, r}[(q(a) - r)^2]``.

    ``= 1/2 sum_a pi(a) [(q(a) - r_bar(a))^2 + sigma(a)^2]``; ``q, pi: [A]`` -> ``[]``.
    """
    return 0.5 * (pi * ((q - bandit.r_bar) ** 2 + bandit.sigma**2)).sum(-1)


def value_error_loss(
    v: torch.Tensor, pi: torch.Tensor, kl_value: torch.Tensor, bandit: Bandit, tau: float
) -> torch.Tensor:
    """The value error of eq (23), exactly: ``1/2 E_{a~pi, r}[(v - (r - tau KL))^2]``.

    ``= 1/2 sum_a pi(a) [(v - r_bar(a) + tau KL)^2 + sigma(a)^2]``; ``v, kl_value: []``, ``pi: [A]`` -> ``[]``.
    The target ``r - tau KL[pi^B || pi_bar]`` is the entropy-augmented reward that ``v`` is fitted to.
    """
    tau = validate_tau(tau)
    return 0.5 * (pi * ((v - bandit.r_bar + tau * kl_value) ** 2 + bandit.sigma**2)).sum(-1)


def _held(x: torch.Tensor, hold: bool) -> torch.Tensor:
    return x.detach() if hold else x


def q_regression_gradient(
    q_fn: QFunction, theta: torch.Tensor, bandit: Bandit, tau: float, *, hold_sampling: bool = True
) -> torch.Tensor:
    """``nabla_theta L_{pi^B}(q_theta)``, the left side of eqs (15)-(23): eq (9) with ``pi = pi^B_{q_theta}``: ``[P]``.

    ``hold_sampling=True`` (the paper's meaning, eq 9): the sampling policy ``pi^B`` is held fixed. ``False``
    differentiates ``theta -> L_{pi^B_theta}(theta)`` through the sampling policy as well (not eq 9).
    """
    tau = validate_tau(tau)

    def loss(th: torch.Tensor) -> torch.Tensor:
        s = soft_quantities(q_fn(th), tau, bandit.pi_bar)
        return q_regression_loss(s.q, _held(s.pi, hold_sampling), bandit)

    return grad(loss)(theta)


def policy_gradient_term(
    q_fn: QFunction, theta: torch.Tensor, bandit: Bandit, tau: float, *, hold_sampling: bool = False
) -> torch.Tensor:
    """The first term of eq (23): ``-tau nabla_theta E_{a~pi^B, r}[r - tau KL[pi^B || pi_bar]] = -tau nabla eta(pi^B)``.

    ``hold_sampling=False`` (correct): the full derivative, through the sampling policy and the KL, i.e. ``-tau``
    times the policy gradient of eq (7). ``True`` holds the sampling policy fixed (then only the KL is differentiated).
    """
    tau = validate_tau(tau)

    def loss(th: torch.Tensor) -> torch.Tensor:
        s = soft_quantities(q_fn(th), tau, bandit.pi_bar)
        return -tau * (expected_reward(_held(s.pi, hold_sampling), bandit) - tau * s.kl)

    return grad(loss)(theta)


def value_error_gradient(
    q_fn: QFunction,
    theta: torch.Tensor,
    bandit: Bandit,
    tau: float,
    *,
    hold_sampling: bool = True,
    hold_target: bool = True,
) -> torch.Tensor:
    """The second term of eq (23): ``nabla_theta E_{a~pi^B, r}[1/2 (v_theta - (r - tau KL[pi^B || pi_bar]))^2]``.

    Correct (defaults): a semi-gradient in which only ``v_theta`` is differentiated, so it equals
    ``nabla v_theta (v_theta - E_{pi^B}[r_bar] + tau KL)``; the sampling policy ``pi^B`` (``hold_sampling``) and the
    KL inside the target (``hold_target``) are held fixed. Set either to ``False`` to see what goes wrong.
    """
    tau = validate_tau(tau)

    def loss(th: torch.Tensor) -> torch.Tensor:
        s = soft_quantities(q_fn(th), tau, bandit.pi_bar)
        return value_error_loss(s.v, _held(s.pi, hold_sampling), _held(s.kl, hold_target), bandit, tau)

    return grad(loss)(theta)


# ----------------------------------------------------------------------------------------------------------------
# Monte Carlo convergence
# ----------------------------------------------------------------------------------------------------------------


def convergence_study(
    estimator: AffineEstimator,
    pi: torch.Tensor,
    bandit: Bandit,
    ns: Sequence[int],
    reps: int,
    seed: int,
) -> torch.Tensor:
    """Root-mean-square error of the ``N``-sample mean of ``estimator`` for each ``N`` in ``ns``: ``[len(ns)]``.

    ``rmse(N) = sqrt(mean over reps of ||estimate - exact||^2)``, with ``reps`` independent batches of ``N`` samples
    drawn with ``a ~ pi`` from one generator seeded ``seed``. The CLT predicts ``rmse(N) = sqrt(sum_p std_p^2 / N)``.
    """
    reps = validate_count(reps, "reps")
    if len(ns) < 2:
        raise ValueError(f"ns must hold at least two sample sizes, got {list(ns)!r}")
    gen = generator(seed)
    exact = estimator.exact(pi, bandit)
    out = []
    for n in ns:
        actions, rewards = sample(bandit, pi, int(n), gen, reps=reps)
        err = estimator.sample_mean(actions, rewards) - exact
        out.append(err.pow(2).sum(-1).mean().sqrt())
    return torch.stack(out)


def loglog_slope(ns: Sequence[int], errors: torch.Tensor) -> tuple[float, float]:
    """Least-squares fit ``log error = slope log N + intercept``; returns ``(slope, intercept)``."""
    x = torch.log(torch.as_tensor(list(ns), dtype=DTYPE))
    y = torch.log(torch.as_tensor(errors, dtype=DTYPE))
    if x.shape != y.shape or x.numel() < 2:
        raise ValueError(f"ns and errors must have the same length >= 2, got {x.numel()} and {y.numel()}")
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc**2).sum())
    return slope, float(y.mean() - slope * x.mean())


@dataclass(frozen=True)
class CentralDifference:
    """A gradient by central differences, ``value: [P]``, and a bound on its error, ``error: [P]``."""

    value: torch.Tensor
    error: torch.Tensor


def central_difference(f: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                       h: float = 1e-5) -> CentralDifference:
    """The gradient of a scalar ``f`` at ``theta: [P]`` by central differences of step ``h``, with its error bound.

    Truncation, read off the instance: ``D(h)_i = (f(theta + h e_i) - f(theta - h e_i)) / 2h = g_i + c_i h^2 +
    O(h^4)`` (Taylor), so ``D(2h) - D(h) = 3 c_i h^2 + O(h^4)`` is three times the truncation error of ``D(h)``.

    Rounding, measured: each evaluation of ``f`` carries an error ``e`` of its own (for a KL, the size of its terms
    ``pi log pi``, not of the KL, sets it), and ``D(h)`` carries ``(e_+ - e_-) / 2h``. Along each ``e_i`` the five
    values ``f(theta + k h e_i)``, ``k = -2..2``, give the fourth difference ``f_-2 - 4 f_-1 + 6 f_0 - 4 f_1 + f_2
    = h^4 f + (rounding)``; at a step where ``h^4 f`` is far below rounding, it is the rounding of the very
    evaluations ``D(h)`` uses (Moré and Wild's noise estimate, 2011), with standard deviation ``sqrt(70)`` times
    that of ``e``. So ``m = max_i |fourth difference_i|`` is a few times ``e``'s spread, and ``m / h`` bounds the
    rounding of ``D(h)`` with room to spare.

    The bound returned is ``|D(2h) - D(h)| + m / h + eps (max |f| / h + 16 max_i |D(h)_i|)``. The last terms are
    floors for where the evaluations agree exactly (``m = 0``, ``D(2h) = D(h)``): a change of ``f`` below one ulp
    cannot be seen, so ``D(h)`` resolves nothing finer than ``eps |f| / h`` (a saturated Boltzmann policy's KL is
    flat in float64 while autograd still returns a gradient of 1e-17), and the gradient it is compared with carries
    its own rounding, a few ulps of the vector's size.
    A check ``|autograd - D(h)| <= error`` then fails for a wrong gradient whenever the wrong part exceeds the
    function's curvature at scale ``h`` and its rounding.
    """
    if not (isinstance(h, (int, float)) and 0 < h < 1):
        raise ValueError(f"h must be a step in (0, 1), got {h!r}")
    if theta.dim() != 1:
        raise ValueError(f"theta must be a vector [P], got shape {tuple(theta.shape)}")
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    at = {k: torch.stack([f(theta + k * h * e) for e in eye]) for k in (-2, -1, 1, 2)}   # [P] each
    f0 = f(theta)
    d1 = (at[1] - at[-1]) / (2 * h)
    d2 = (at[2] - at[-2]) / (4 * h)
    fourth = at[-2] - 4 * at[-1] + 6 * f0 - 4 * at[1] + at[2]
    size = max(float(v.abs().max()) for v in (*at.values(), f0))
    floor = torch.finfo(theta.dtype).eps * (size / h + 16 * float(d1.abs().max()))
    return CentralDifference(value=d1, error=(d2 - d1).abs() + float(fourth.abs().max()) / h + floor)
