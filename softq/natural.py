"""Section 5 (eqs 66-78): the natural gradient as a least-squares problem, and damped soft Q-learning as a natural step.

The objects, each written once:

- :class:`SoftmaxPolicy`: ``pi_theta(a|s) = softmax_a(logits_theta(s, a))`` for smooth logits:
  :func:`log_linear_policy` (logits linear in ``theta``) and :func:`mlp_policy` (a small tanh network); with
  ``P <= S (A - 1)`` parameters their Fisher matrices are invertible, unlike a table of logits.
- :func:`fisher_matrix` ``F = E[psi psi^T]`` and :func:`score_gradient` ``g = E[psi Delta]`` with
  ``psi = grad log pi_theta(a|s)`` (the two expectations under eq 66), :func:`natural_gradient` ``F^{-1} g``.
- :func:`least_squares_step`: eq (66), ``argmin_w 1/2 sum_i w_i (psi_i . w - eps Delta_i)^2``, solved as a linear
  least-squares problem (SVD), never through ``F``. Over all ``(s, a)`` with weights ``d(s) pi(a|s)`` it is exactly
  ``eps F^{-1} g``; over ``T`` sampled steps it converges to it (:func:`least_squares_covariance` gives the
  sandwich covariance of that convergence).
- :func:`regularized_advantage` (eqs 70, 76), :func:`natural_regression_residual` (eqs 68, 71, 78) and
  :func:`damped_target` (eq 74): the regression problems of the section.
- :func:`gauss_newton_step` (one linearized step of a nonlinear least-squares problem: it *is* eq 66 with the
  Jacobian as ``Psi``), :func:`minimize_least_squares` (its exact minimizer, by Newton's method) and
  :func:`second_order_step` (the ``eps^2`` term of that minimizer): how far the exact solution of (68)/(71)/(78)
  departs from the natural-gradient step.
- :func:`directional_derivatives`: ``f, Df[v], D^2 f[v, v], ...`` by nested forward mode (eq 67's remainder).
- :func:`series_coefficients`, :func:`expansion_error` and :func:`expansion_slopes`: how a minimizer's expansion in
  the step is measured on an instance (the fitted log-log slopes of its remainders, with tolerances derived from the
  next order and from float64 rounding).

Shapes: ``P`` parameters; per-sample arrays ``[...]`` (any shape, flattened to ``N`` rows: ``[S, A]`` for every
state-action pair, ``[T]`` for samples); ``scores: [..., P]``. Weights ``[...]`` are non-negative; ``None`` means
the plain average ``1/N``. Everything is float64. Bad arguments raise ValueError naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.func import hessian, jacfwd, jacrev, jvp

from softq.bandit import loglog_slope
from softq.config import DTYPE, generator
from softq.equivalence import StateActionValueMLP
from softq.policy_gradient import log_policy
from softq.regularized import validate_count, validate_tau

__all__ = [
    "SoftmaxPolicy",
    "log_linear_policy",
    "mlp_policy",
    "fisher_matrix",
    "score_gradient",
    "natural_gradient",
    "least_squares_step",
    "least_squares_covariance",
    "regularized_advantage",
    "natural_regression_residual",
    "damped_target",
    "gauss_newton_step",
    "minimize_least_squares",
    "NoMinimizerError",
    "second_order_step",
    "directional_derivatives",
    "series_coefficients",
    "expansion_error",
    "ExpansionSlopes",
    "expansion_slopes",
]

ResidualFn = Callable[[torch.Tensor], torch.Tensor]


# --- a smooth policy class ---------------------------------------------------------------------------------------


class SoftmaxPolicy:
    """``log pi_theta(a|s) = log softmax_a(logits_theta(s, a))``: ``theta [P] -> [S, A]``, for any smooth
    ``logits_fn: theta [P] -> [S, A]``. The log-softmax is :func:`softq.policy_gradient.log_policy`.

    Build one with :func:`log_linear_policy` or :func:`mlp_policy`. The Fisher matrix can only be invertible if
    ``P <= S (A - 1)`` and no direction of ``theta`` shifts all logits of a state together (a table of logits,
    ``P = S A``, always has such directions: adding a constant to one state's logits changes nothing).
    """

    def __init__(self, logits_fn: Callable[[torch.Tensor], torch.Tensor], n_states: int, n_actions: int,
                 n_params: int, init: Callable[[int], torch.Tensor]) -> None:
        if not callable(logits_fn) or not callable(init):
            raise ValueError("logits_fn and init must be callable")
        self.logits_fn, self._init = logits_fn, init
        self.n_states = validate_count(n_states, "n_states")
        self.n_actions = validate_count(n_actions, "n_actions")
        self.n_params = validate_count(n_params, "n_params")

    def init_params(self, seed: int) -> torch.Tensor:
        """Random ``theta: [P]`` drawn from ``seed``."""
        return self._init(seed)

    def _theta(self, theta: torch.Tensor) -> torch.Tensor:
        if not isinstance(theta, torch.Tensor) or tuple(theta.shape) != (self.n_params,):
            got = getattr(theta, "shape", type(theta))
            raise ValueError(f"theta must have shape [P] = ({self.n_params},), got {got}")
        return theta

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        """``logits_theta(s, a)``: ``[S, A]``."""
        return self.logits_fn(self._theta(theta))

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """``log pi_theta(a|s)``: ``[S, A]``, a pure function of ``theta`` for ``torch.func``."""
        return log_policy(self.logits(theta))

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """``pi_theta(a|s)``: ``[S, A]``."""
        return self.log_prob(theta).exp()


def log_linear_policy(n_states: int, n_actions: int, n_params: int, *, seed: int = 0) -> SoftmaxPolicy:
    """``logits_theta(s, a) = phi(s, a) . theta`` with fixed random features ``phi: [S, A, P] ~ N(0, 1/P)`` (the
    attribute ``features``): an exponential family in ``theta``. ``init_params(seed)`` draws ``theta ~ N(0, I)``."""
    n_states, n_actions = validate_count(n_states, "n_states"), validate_count(n_actions, "n_actions")
    n_params = validate_count(n_params, "n_params")
    features = torch.randn((n_states, n_actions, n_params), generator=generator(seed), dtype=DTYPE)
    features = features / math.sqrt(n_params)
    pol = SoftmaxPolicy(lambda th: features @ th, n_states, n_actions, n_params,
                        lambda s: torch.randn(n_params, generator=generator(s), dtype=DTYPE))
    pol.features = features
    return pol


def mlp_policy(n_states: int, n_actions: int, *, n_features: int = 3, hidden: int = 2, seed: int = 0) -> SoftmaxPolicy:
    """``logits_theta(s, .) = W2 tanh(W1 phi(s) + b1)``: :class:`softq.equivalence.StateActionValueMLP` with the last
    action's row of ``W2`` and the output bias held at 0. (Adding one vector to every row of ``W2``, or one number
    to every output bias, shifts all logits of a state together: directions the policy, hence the Fisher matrix,
    cannot see.) ``P = hidden (n_features + n_actions)``; ``init_params(seed)`` is the network's initialization."""
    net = StateActionValueMLP(n_states, n_actions, n_features=n_features, hidden=hidden, seed=seed)
    n_params = net.n_params - net.hidden - net.n_actions
    frozen = torch.zeros(net.hidden + net.n_actions, dtype=DTYPE)
    return SoftmaxPolicy(lambda th: net(torch.cat([th, frozen])), n_states, n_actions, n_params,
                         lambda s: net.init_params(s)[:n_params])


# --- argument checks -----------------------------------------------------------------------------------------------


def _scores(scores: torch.Tensor) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or scores.ndim < 2 or scores.shape[-1] == 0:
        raise ValueError(f"scores must be a [..., P] tensor (one row per sample), got "
                         f"{getattr(scores, 'shape', type(scores))}")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite")
    return scores.reshape(-1, scores.shape[-1]).to(DTYPE)


def _per_sample(x: torch.Tensor, batch: tuple[int, ...], name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != batch:
        raise ValueError(f"{name} must have shape {batch} (one value per row of scores), got "
                         f"{getattr(x, 'shape', type(x))}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite")
    return x.reshape(-1).to(DTYPE)


def _weights(weights: torch.Tensor | None, batch: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(batch)
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=DTYPE)
    w = _per_sample(weights, batch, "weights")
    if bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got min {w.min().item():.3g}, "
                         f"sum {w.sum().item():.3g}")
    return w


def _eps(eps: float, name: str = "eps") -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {eps!r}") from None
    if not math.isfinite(e):
        raise ValueError(f"{name} must be a finite number, got {eps!r}")
    return e


# --- Fisher matrix, policy gradient, natural gradient --------------------------------------------------------------


def fisher_matrix(scores: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``F = sum_i w_i psi_i psi_i^T``, the average Fisher information matrix of Section 5: ``[P, P]``.

    ``scores: [..., P]`` with ``psi_i = grad_theta log pi_theta(a_i|s_i)``; ``weights: [...]``. With weights
    ``d(s) pi_theta(a|s)`` over every ``(s, a)`` this is ``E_{s~d, a~pi}[psi psi^T]`` exactly; with ``None`` over
    ``T`` samples it is ``Psi^T Psi / T``.
    """
    psi = _scores(scores)
    w = _weights(weights, tuple(scores.shape[:-1]))
    return psi.T @ (w[:, None] * psi)


def score_gradient(scores: torch.Tensor, advantages: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """``g = sum_i w_i psi_i Delta_i``, the policy gradient ``E[grad log pi(a|s) Delta]`` of eq (66): ``[P]``.

    With the entropy-regularized advantage of eq (70) (:func:`regularized_advantage`) it is eq (69)'s gradient.
    Shapes: ``scores: [..., P]``, ``advantages, weights: [...]``.
    """
    psi = _scores(scores)
    batch = tuple(scores.shape[:-1])
    return psi.T @ (_weights(weights, batch) * _per_sample(advantages, batch, "advantages"))


def natural_gradient(fisher: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``F^{-1} g``: ``fisher [P, P]`` (symmetric positive semi-definite), ``g [P]`` -> ``[P]``.

    Solved by a symmetric eigen-decomposition (``torch.linalg.pinv(hermitian=True)``); if ``F`` is singular (e.g. a
    table of logits) this is the minimum-norm solution ``F^+ g``, as is :func:`least_squares_step`'s.
    """
    if not isinstance(fisher, torch.Tensor) or fisher.ndim != 2 or fisher.shape[0] != fisher.shape[1]:
        raise ValueError(f"fisher must be a square [P, P] matrix, got {getattr(fisher, 'shape', type(fisher))}")
    if not isinstance(g, torch.Tensor) or tuple(g.shape) != (fisher.shape[0],):
        raise ValueError(f"g must have shape [P] = ({fisher.shape[0]},), got {getattr(g, 'shape', type(g))}")
    if not bool(torch.isfinite(fisher).all()) or not bool(torch.isfinite(g).all()):
        raise ValueError("fisher and g must be finite")
    if not torch.allclose(fisher, fisher.T, rtol=1e-10, atol=1e-12 * float(fisher.abs().max())):
        raise ValueError("fisher must be symmetric")
    return torch.linalg.pinv(fisher.to(DTYPE), hermitian=True) @ g.to(DTYPE)


def least_squares_step(scores: torch.Tensor, advantages: torch.Tensor, eps: float = 1.0,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq (66): ``w = argmin_w 1/2 sum_i w_i (psi_i . w - eps Delta_i)^2`` (the minimum-norm one): ``[P]``.

    Solved as the linear least-squares problem ``sqrt(w) Psi w = sqrt(w) eps Delta`` by an SVD-based solver
    (``gelsd``), not through the normal equations, so that comparing it with ``eps F^{-1} g`` is a real check.
    Its normal equations read ``F w = eps g`` with :func:`fisher_matrix` and :func:`score_gradient` (same weights).
    Shapes: ``scores: [..., P]``, ``advantages, weights: [...]``.
    """
    psi = _scores(scores)
    batch = tuple(scores.shape[:-1])
    root = _weights(weights, batch).sqrt()
    rhs = root * _eps(eps) * _per_sample(advantages, batch, "advantages")
    return torch.linalg.lstsq(root[:, None] * psi, rhs[:, None], driver="gelsd").solution[:, 0]


def least_squares_covariance(scores: torch.Tensor, residual_second_moment: torch.Tensor,
                             weights: torch.Tensor | None = None) -> torch.Tensor:
    """The asymptotic covariance of eq (66)'s solution on ``T`` sampled steps: ``T Cov[w_T] -> F^{-1} M F^{-1}``.

    ``M = E[psi psi^T e^2]`` with ``e = eps Delta - psi . w*`` the residual at the population solution ``w*``;
    ``residual_second_moment[...] = E[e^2 | s, a]`` and ``weights`` the sampling distribution of ``(s, a)``.
    (The "sandwich" formula: ``w_T - w* = (Psi^T Psi / T)^{-1} Psi^T e / T``, and ``Psi^T e / T`` is a mean of
    ``T`` i.i.d. zero-mean vectors.) Needs an invertible ``F``. Returns ``[P, P]``.
    """
    psi = _scores(scores)
    batch = tuple(scores.shape[:-1])
    w = _weights(weights, batch)
    e2 = _per_sample(residual_second_moment, batch, "residual_second_moment")
    if bool((e2 < 0).any()):
        raise ValueError("residual_second_moment must be >= 0")
    f_inv = torch.linalg.inv(fisher_matrix(scores, weights))
    middle = psi.T @ ((w * e2)[:, None] * psi)
    return f_inv @ middle @ f_inv


# --- the regression problems of Section 5 ---------------------------------------------------------------------------


def regularized_advantage(advantage: torch.Tensor, log_ratio: torch.Tensor, kl: torch.Tensor,
                          tau: float) -> torch.Tensor:
    """``Delta - tau (log(pi(a|s) / pi_bar(a|s)) - KL[pi || pi_bar](s))``: the weight of ``grad log pi`` in eq (70),
    and ``Q_hat - Q_old`` of eq (76). Shapes: ``advantage, log_ratio: [...]``, ``kl`` broadcastable (``[S, 1]``
    against ``[S, A]``) -> ``[...]``. ``log_ratio`` and ``kl`` must belong to the *same* policy (eq 70: pi_theta at
    the point where the gradient is taken; in eqs 71, 76, 78 that is pi_theta_old).
    """
    tau = validate_tau(tau)
    return advantage - tau * (log_ratio - kl)


def natural_regression_residual(log_pi: torch.Tensor, log_pi_old: torch.Tensor, advantage: torch.Tensor,
                                eps: float) -> torch.Tensor:
    """``log pi_theta(a|s) - log pi_theta_old(a|s) - eps Delta``: the residual squared in eqs (68), (71), (78).

    Eq (68) with the advantage ``Delta``; eq (71) (corrected) with :func:`regularized_advantage` at ``pi_theta_old``.
    Its Gauss-Newton step at ``theta_old`` is eq (66)'s solution ``eps F^{-1} g``. Shapes: all ``[...]``.
    """
    return log_pi - log_pi_old - _eps(eps) * advantage


def damped_target(q_old: torch.Tensor, q_hat: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq (74): ``Q_hat^eps = (1 - eps) Q_old + eps Q_hat``, between the old Q-value and the backed-up target.

    ``eps = 1`` is the plain soft Q-learning target, ``eps = 0`` no update. Shapes: ``q_old, q_hat: [...]``, equal.
    """
    if not isinstance(q_old, torch.Tensor) or not isinstance(q_hat, torch.Tensor) or q_old.shape != q_hat.shape:
        raise ValueError(f"q_old and q_hat must be tensors of one shape, got {getattr(q_old, 'shape', type(q_old))} "
                         f"and {getattr(q_hat, 'shape', type(q_hat))}")
    eps = _eps(eps)
    return (1 - eps) * q_old + eps * q_hat


# --- nonlinear least squares: one Gauss-Newton step, the exact minimizer, its expansion in eps ----------------------


def _theta(theta: torch.Tensor, name: str = "theta") -> torch.Tensor:
    if not isinstance(theta, torch.Tensor) or theta.ndim != 1 or not bool(torch.isfinite(theta).all()):
        raise ValueError(f"{name} must be a finite [P] tensor, got {getattr(theta, 'shape', type(theta))}")
    return theta.detach().to(DTYPE)


def _residuals(residual_fn: ResidualFn, theta: torch.Tensor) -> torch.Tensor:
    if not callable(residual_fn):
        raise ValueError(f"residual_fn must be callable (theta [P] -> residuals [...]), "
                         f"got {type(residual_fn).__name__}")
    r = residual_fn(theta)
    if not isinstance(r, torch.Tensor) or r.ndim == 0:
        raise ValueError(f"residual_fn(theta) must return a tensor of residuals [...], got {type(r).__name__}")
    return r


def _objective(residual_fn: ResidualFn, w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda th: 0.5 * (w * residual_fn(th).reshape(-1) ** 2).sum()


def gauss_newton_step(residual_fn: ResidualFn, theta: torch.Tensor,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """One Gauss-Newton step ``delta`` for ``min_theta 1/2 sum_i w_i r_i(theta)^2`` from ``theta``: ``[P]``.

    Linearizing ``r(theta + delta) ~ r(theta) + J delta`` (``J = dr/dtheta``, exact by ``torch.func.jacrev``) gives a
    linear least-squares problem, which is eq (66) with ``Psi = J`` and ``eps Delta = -r(theta)``: this function is
    :func:`least_squares_step` ``(J, -r, 1, weights)``. For eq (68) at ``theta_old``, ``J = Psi`` and
    ``r = -eps Delta``, so the step is ``eps F^{-1} g``. ``residual_fn: theta [P] -> [...]``; ``weights: [...]``.
    """
    theta = _theta(theta)
    r = _residuals(residual_fn, theta)
    jac = jacrev(residual_fn)(theta)                                          # [..., P]
    return least_squares_step(jac, -r.detach(), 1.0, weights)


def _accept(loss: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, value: float,
            grad_norm: float) -> bool:
    """Whether a step to ``theta`` is taken: the loss does not increase, or the increase is rounding.

    Near a minimum the last Newton steps lower ``L`` by far less than the rounding of ``L`` itself (a step of 1e-10
    lowers it by ~1e-20 when ``L`` ~ 1e-7 is computed to ~1e-13 relative); comparing losses alone then refuses every
    step and the solver stops early, at a gradient of ~1e-11 instead of ~1e-17. A step whose loss is within
    ``1e-10 |L|`` of the last is taken when it halves the gradient's norm.
    """
    new = float(loss(theta))
    if new <= value:
        return True
    return new - value <= 1e-10 * abs(value) and float(jacrev(loss)(theta).norm()) <= 0.5 * grad_norm


class NoMinimizerError(RuntimeError):
    """:func:`minimize_least_squares` did not converge: along the Hessian's flattest directions the loss still
    falls, so a minimizer is far from ``theta0``, or there is none (the infimum lies at infinity, as for a
    saturating network asked for a target it can only approach)."""


def minimize_least_squares(residual_fn: ResidualFn, theta0: torch.Tensor, weights: torch.Tensor | None = None, *,
                           tol: float = 1e-13, max_iter: int = 200) -> torch.Tensor:
    """A minimizer of ``L(theta) = 1/2 sum_i w_i r_i(theta)^2``, reached from ``theta0``: ``[P]``.

    Newton's method with the exact Hessian ``H`` (``torch.func.hessian``), damped Levenberg-Marquardt style
    (``H + lam I``, ``lam`` raised until ``L`` does not increase, lowered again after each accepted step) and
    minimum-norm where ``H`` is singular (flat directions, as for a table of logits). A step is taken when ``L`` does
    not increase beyond rounding (:func:`_accept`: within ``1e-10 |L|`` and halving the gradient). Stops when a step
    is shorter than ``tol (1 + |theta|)``: near a minimum with a positive-definite Hessian the undamped steps converge
    quadratically, so the error left is far below ``tol``. Raises :class:`NoMinimizerError` if ``max_iter`` steps do
    not get there, with the loss, the last step, the gradient and the Hessian's spectrum. (A nonlinear problem can
    have several minima; this is the one the damped Newton path from ``theta0`` finds, which for the small steps of
    this chapter is the one nearest ``theta0``.)
    """
    theta = _theta(theta0, "theta0")
    r0 = _residuals(residual_fn, theta)
    w = _weights(weights, tuple(r0.shape))
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    validate_count(max_iter, "max_iter")
    loss = _objective(residual_fn, w)
    eye = torch.eye(theta.numel(), dtype=DTYPE)
    lam = 0.0
    for _ in range(max_iter):
        value, grad_l, hess = float(loss(theta)), jacrev(loss)(theta), hessian(loss)(theta)
        scale = float(hess.diagonal().abs().max()) + 1e-300
        while True:
            step = -torch.linalg.pinv(hess + lam * eye, hermitian=True) @ grad_l
            if _accept(loss, theta + step, value, float(grad_l.norm())):
                break
            lam = max(10 * lam, 1e-10 * scale)
            if lam > 1e12 * scale:
                raise RuntimeError("minimize_least_squares: no step decreases the loss (lam grew past 1e12 |H|)")
        theta = theta + step
        if float(step.norm()) <= tol * (1 + float(theta.norm())):
            return theta
        lam = 0.0 if lam <= 1e-10 * scale else lam / 10
    eig = torch.linalg.eigvalsh(hess)
    raise NoMinimizerError(f"minimize_least_squares: no convergence in {max_iter} iterations (loss {value:.6g}, "
                           f"last step {float(step.norm()):.3g}, gradient {float(grad_l.norm()):.3g}, |theta| "
                           f"{float(theta.norm()):.3g}; the Hessian's eigenvalues from {float(eig[0]):.3g} to "
                           f"{float(eig[-1]):.3g}: a minimizer far away, or none, along its flattest directions)")


def second_order_step(fn: ResidualFn, theta: torch.Tensor, targets: torch.Tensor,
                      weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w1, w2)`` with ``argmin_th 1/2 sum_i w_i (f_i(th) - f_i(theta) - eps t_i)^2 = theta + eps w1 + eps^2 w2
    + O(eps^3)``: the minimizer of eqs (68)/(71) (``f = log pi``, ``t`` the advantage) to second order. ``[P]`` each.

    Expanding the normal equations ``sum_i w_i grad f_i(th) r_i(th) = 0`` in ``eps`` (``J`` the Jacobian, ``H_i`` the
    Hessian of ``f_i`` at ``theta``, ``F = J^T W J``): order ``eps`` gives ``w1 = F^{-1} J^T W t`` (the natural
    gradient, eq 66); order ``eps^2`` gives ``F w2 = -[1/2 J^T W (w1^T H_i w1)_i + sum_i w_i e_i H_i w1]`` with
    ``e = J w1 - t`` the residual of the first-order fit. The first term is the curvature of ``f`` along the step,
    the second is there because the linear fit is not exact. Needs an invertible ``F``.
    Shapes: ``fn: theta [P] -> [...]``, ``targets, weights: [...]``.
    """
    theta = _theta(theta)
    f0 = _residuals(fn, theta)
    batch = tuple(f0.shape)
    w = _weights(weights, batch)
    t = _per_sample(targets, batch, "targets")
    flat = lambda th: fn(th).reshape(-1)                                   # noqa: E731
    jac = jacrev(flat)(theta)                                               # [N, P]
    hess = jacfwd(jacrev(flat))(theta)                                      # [N, P, P]
    fisher = jac.T @ (w[:, None] * jac)
    w1 = torch.linalg.solve(fisher, jac.T @ (w * t))
    e = jac @ w1 - t
    curvature = torch.einsum("p,npq,q->n", w1, hess, w1)
    w2 = -torch.linalg.solve(fisher, 0.5 * jac.T @ (w * curvature) + torch.einsum("n,npq,q->p", w * e, hess, w1))
    return w1, w2


def directional_derivatives(fn: ResidualFn, theta: torch.Tensor, direction: torch.Tensor,
                            order: int = 2) -> list[torch.Tensor]:
    """``[f(theta), Df[v], D^2 f[v, v], ..., D^order f[v, ..., v]]`` along ``v = direction`` by nested forward-mode
    ``jvp``, so that ``f(theta + eps v) = sum_k eps^k / k! D^k f[v]^k + O(eps^(order+1))`` (eq 67 is ``k <= 1``).
    Shapes: ``theta, direction: [P]``; ``fn: theta -> [...]``; each entry ``[...]``.
    """
    theta = _theta(theta)
    if not isinstance(direction, torch.Tensor) or direction.shape != theta.shape:
        raise ValueError(f"direction must have the shape of theta {tuple(theta.shape)}, "
                         f"got {getattr(direction, 'shape', type(direction))}")
    order = validate_count(order, "order", 0)
    v = direction.detach().to(DTYPE)
    derivs: list[ResidualFn] = [fn]
    for _ in range(order):
        prev = derivs[-1]
        derivs.append(lambda th, prev=prev: jvp(prev, (th,), (v,))[1])
    return [f(theta) for f in derivs]


def series_coefficients(eta_a: float, rest_a: torch.Tensor, eta_b: float, rest_b: torch.Tensor,
                        order: int) -> tuple[float, float]:
    """``(|w_k|, |w_{k+1}|)`` of a remainder ``rest(eta) = eta^k w_k + eta^(k+1) w_(k+1) + ...`` (``k = order``),
    measured from two of its values, ``rest_a = rest(eta_a)`` and ``rest_b = rest(eta_b)``, ``0 < eta_a < eta_b``:

        |w_k| ~ |rest_b| / eta_b^k,
        |w_(k+1)| ~ |rest_b - (eta_b / eta_a)^k rest_a| / (eta_b^k (eta_b - eta_a)),

    the second exact up to ``O(eta_b)`` relative terms since ``rest_b - (eta_b/eta_a)^k rest_a = eta_b^k (eta_b -
    eta_a) w_(k+1) + ...``. Chapter 5 sizes the next order of the damped regression's expansion (eq 78) with it,
    to set the tolerance of a fitted slope. Shapes: ``rest_a, rest_b: [P]`` (or any one shape).
    """
    order = validate_count(order, "order", 1)
    for name, eta in (("eta_a", eta_a), ("eta_b", eta_b)):
        if not (isinstance(eta, int | float) and math.isfinite(eta) and eta > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {eta!r}")
    if not eta_a < eta_b:
        raise ValueError(f"eta_a must be < eta_b, got eta_a={eta_a!r}, eta_b={eta_b!r}")
    if not (isinstance(rest_a, torch.Tensor) and isinstance(rest_b, torch.Tensor) and rest_a.shape == rest_b.shape):
        raise ValueError(f"rest_a and rest_b must be tensors of one shape, got {getattr(rest_a, 'shape', rest_a)!r} "
                         f"and {getattr(rest_b, 'shape', rest_b)!r}")
    w_k = float(rest_b.norm()) / eta_b**order
    w_next = float((rest_b - (eta_b / eta_a) ** order * rest_a).norm()) / (eta_b**order * (eta_b - eta_a))
    return w_k, w_next


def expansion_error(eta: float, cond: float, theta_norm: float, w_norms: Sequence[float] = ()) -> float:
    """A bound on the float64 error of the remainder ``theta*(eta) - theta - eta w1 - eta^2 w2 - ...`` of a minimizer's
    expansion: ``cond ulp (1 + |theta| + sum_k eta^k |w_k|)``, with ``w_norms = (|w1|, |w2|, ...)`` the subtracted
    terms.

    Why: the minimizer ``theta*`` solves ``grad L = 0``. Rounding moves the computed gradient by ulps of its terms,
    and the minimizer by ``H^{-1}`` times that, up to ``cond(H)`` ulps of ``|theta*| <= |theta| + eta |w1| + ...``.
    For the damped regression of eq (78) near ``theta`` the Hessian is ``tau^2 F`` (its Gauss-Newton part), so
    ``cond = cond(F)``. Each ``w_k`` solves a linear system with ``F``: ``cond(F)`` ulps of ``|w_k|``.
    """
    for name, v in (("eta", eta), ("theta_norm", theta_norm)):
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not (isinstance(cond, int | float) and math.isfinite(cond) and cond >= 1):
        raise ValueError(f"cond must be a finite number >= 1, got {cond!r}")
    terms = sum(eta ** (k + 1) * float(w) for k, w in enumerate(w_norms))
    return cond * torch.finfo(DTYPE).eps * (1 + theta_norm + terms)


@dataclass(frozen=True)
class ExpansionSlopes:
    """What :func:`expansion_slopes` measured: the fitted slopes of ``|gap|`` (order 2) and ``|rest|`` (order 3), the
    grid points each fit used, each tolerance (``truncation + rounding``) and the next orders ``|w3|``, ``|w4|``."""

    slope2: float
    tol2: float
    fit2: tuple[int, ...]
    slope3: float
    tol3: float
    fit3: tuple[int, ...]
    w3: float
    w4: float


def _rounding_bend(x: list[float], rel: list[float]) -> float:
    """The most a least-squares log-log slope over ``log x`` can move when each value carries a relative error of at
    most ``rel[i] < 1``: ``sum_i |xc_i| |log(1 - rel_i)| / sum_i xc_i^2`` (``xc`` = centered ``log x``)."""
    lx = [math.log(v) for v in x]
    mean = sum(lx) / len(lx)
    xc = [v - mean for v in lx]
    return sum(abs(c) * -math.log1p(-r) for c, r in zip(xc, rel, strict=True)) / sum(c * c for c in xc)


def expansion_slopes(etas: Sequence[float], gaps: Sequence[torch.Tensor], rest_vecs: Sequence[torch.Tensor], *,
                     w1_norm: float, w2_norm: float, theta_norm: float, cond: float, measure_below: float = math.inf,
                     margin: float = 100.0, bend: float = 0.05) -> ExpansionSlopes:
    """Fit the log-log slopes of a minimizer's expansion ``theta*(eta) = theta + eta w1 + eta^2 w2 + eta^3 w3 + ...``
    on a grid of steps, with tolerances derived from the instance.

    ``gaps[i] = |theta*(eta_i) - theta - eta_i w1|`` has slope 2 and ``rest_vecs[i] = theta*(eta_i) - theta - eta_i w1
    - eta_i^2 w2`` has slope 3, up to two deviations, each bounded and added to the tolerance:

    - **the next order**: ``eta^3 w3`` moves the local slope of ``|gap|`` by at most ``eta |w3|/|w2|``, and ``eta^4
      w4`` that of ``|rest|`` by ``eta |w4|/|w3|``; twice the bound at the largest fitted ``eta``. ``|w3|`` and
      ``|w4|`` are measured (:func:`series_coefficients`) from the rests at the two largest resolved ``eta`` below
      ``measure_below``.
    - **rounding**: each value carries at most :func:`expansion_error` (``cond`` ulps of the magnitudes involved). A
      point enters a fit only if its value stands ``margin`` times above that error; the error left bends the fitted
      slope by at most :func:`_rounding_bend`.

    Each fit uses the resolved points where the next order moves the local slope by at most ``bend`` (at least three
    points for the gap and two for the rest: the smallest resolved ones). ``etas`` ascending. Raises ValueError when
    fewer points are resolved: the grid then has to reach larger steps.
    """
    n = len(etas)
    if n < 3 or len(gaps) != n or len(rest_vecs) != n:
        raise ValueError(f"etas, gaps and rest_vecs must have one length >= 3, got {n}, {len(gaps)}, {len(rest_vecs)}")
    if any(not (b > a > 0) for a, b in zip(etas, etas[1:], strict=False)) or not etas[0] > 0:
        raise ValueError(f"etas must be > 0 and ascending, got {list(etas)!r}")
    if not (isinstance(margin, int | float) and margin > 1 and isinstance(bend, int | float) and bend > 0):
        raise ValueError(f"margin must be > 1 and bend > 0, got margin={margin!r}, bend={bend!r}")
    gap = [float(g) for g in gaps]
    rest = [float(r.norm()) for r in rest_vecs]
    err_gap = [expansion_error(e, cond, theta_norm, (w1_norm,)) for e in etas]
    err_rest = [expansion_error(e, cond, theta_norm, (w1_norm, w2_norm)) for e in etas]
    resolved2 = [i for i in range(n) if gap[i] >= margin * err_gap[i]]
    resolved3 = [i for i in range(n) if rest[i] >= margin * err_rest[i]]
    if len(resolved2) < 3 or len(resolved3) < 2:
        raise ValueError(f"only {len(resolved2)} gaps and {len(resolved3)} rests of the {n} grid points stand "
                         f"{margin:g}x above their float64 error (cond {cond:.3g}, at the largest step "
                         f"{err_rest[-1]:.3g}): the grid must reach larger steps")
    below = [i for i in resolved3 if etas[i] <= measure_below]
    a, b = below[-2:] if len(below) >= 2 else resolved3[:2]
    w3, w4 = series_coefficients(etas[a], rest_vecs[a], etas[b], rest_vecs[b], order=3)
    eta_fit = bend * min(w2_norm / w3, w3 / w4)

    def fit(resolved: list[int], values: list[float], errors: list[float], least: int, ratio: float):
        idx = [i for i in resolved if etas[i] <= eta_fit]
        idx = idx if len(idx) >= least else resolved[:least]
        slope, _ = loglog_slope([etas[i] for i in idx], torch.tensor([values[i] for i in idx], dtype=DTYPE))
        tol = 2 * etas[idx[-1]] * ratio + _rounding_bend([etas[i] for i in idx], [errors[i] / values[i] for i in idx])
        return slope, tol, tuple(idx)

    slope2, tol2, fit2 = fit(resolved2, gap, err_gap, 3, w3 / w2_norm)
    slope3, tol3, fit3 = fit(resolved3, rest, err_rest, 2, w4 / w3)
    return ExpansionSlopes(slope2, tol2, fit2, slope3, tol3, fit3, w3, w4)
