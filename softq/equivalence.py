"""Section 4 (eqs 55-65): the soft Q-learning gradient equals a policy gradient plus a value-function gradient.

Everything here is exact, in float64, on a finite MDP (:mod:`softq.tabular`) with a *parametrized*, nonlinear
``Q_theta(s, a)`` (:class:`StateActionValueMLP`: one network over fixed random state features, so states share
parameters and nothing is a table). From ``Q_theta`` come, by eqs (55)-(57), ``V_theta = soft_value(Q_theta)``, the
Boltzmann policy ``pi_theta`` and ``KL_theta(s) = D_KL[pi_theta(.|s) || pi_bar(.|s)]`` (:func:`soft_parts`).

The objects of the theorem:

- :class:`Target` / :func:`soft_q_target`: the n-step soft Q-learning target of eq (46),
  ``y_t = tau KL_t + sum_{d<n} gamma^d (r_{t+d} - tau KL_{t+d}) + gamma^n V(s_{t+n})``, as functions of the state,
  built from any parameters (the online ``theta``, or a target network ``theta_bar``) and any policy for the actions
  after ``a_t``. :func:`target_moments` gives its exact conditional mean and second moment given ``(s_t, a_t)``
  (backward recursions through :func:`softq.tabular.trajectory_expectations`).
- :func:`expected_squared_error`: the exact ``E_{s~d, a~action}[1/2 (Q_theta(s, a) - y)^2]`` of eq (58), a
  differentiable function of every place where parameters enter (``Q`` in the loss, the action distribution, the
  target); :func:`partial_gradients` splits the full derivative of eq (58) into those places.
- :func:`soft_q_gradient` (eq 59, by autograd of :func:`softq.losses.soft_q_loss`) and
  :func:`actor_critic_gradient` (by autograd of :func:`softq.losses.policy_gradient_loss` + ``c``
  :func:`softq.losses.value_loss`, eqs 84-85): the two sides of eq (65) in exact expectation.
- :func:`equivalence_terms`: the same quantities from the explicit formulas (Jacobians times conditional means):
  ``soft_q = E[grad Q (Q - y)]``, ``policy_gradient = E[grad log pi Delta] - tau grad KL``,
  ``value_gradient = E[grad V (V - V_hat)]`` with ``Delta = y - tau KL_theta(s_t) - V_theta(s_t)`` and
  ``V_hat = V_theta(s_t) + Delta``. Eq (65) reads ``soft_q = -tau policy_gradient + value_gradient``.
- :class:`AffineTargetEstimator`: every per-sample gradient here is ``g = u(s, a) + w(s, a) y``, so its exact mean
  and covariance follow from the first two moments of ``y``; :func:`soft_q_estimator`, :func:`actor_critic_estimator`.
- :func:`sample_targets` (rollouts from :func:`softq.tabular.sample_rollout`, targets from
  :func:`softq.regularized.n_step_soft_return`) and :func:`per_sample_gradients` (``torch.func`` per-sample autograd
  of the losses): the estimators on samples.

Shapes: ``S`` states, ``A`` actions, ``P`` parameters; ``theta: [P]``; policies ``[S, A]``; state distributions
``[S]``. Bad arguments raise ValueError naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, vmap

import softq.tabular as tb
from softq.bandit import SoftJacobians, SoftQuantities, soft_jacobians, soft_quantities
from softq.config import DTYPE, generator
from softq.losses import policy_gradient_loss, soft_q_loss, value_loss
from softq.regularized import (
    n_step_soft_return,
    validate_count,
    validate_distribution,
    validate_tau,
)

__all__ = [
    "StateActionValueMLP",
    "Setting",
    "soft_parts",
    "policy",
    "jacobians",
    "expectation",
    "Target",
    "soft_q_target",
    "target_moments",
    "expected_squared_error",
    "soft_q_gradient",
    "actor_critic_gradient",
    "PartialGradients",
    "partial_gradients",
    "EquivalenceTerms",
    "equivalence_terms",
    "AffineTargetEstimator",
    "soft_q_estimator",
    "actor_critic_estimator",
    "sample_targets",
    "per_sample_gradients",
]

QFunction = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# A nonlinear Q_theta(s, a) over state features
# ----------------------------------------------------------------------------------------------------------------


class StateActionValueMLP:
    """``Q_theta(s, .) = W2 tanh(W1 phi(s) + b1) + b2``: ``[S, A]``, one tanh hidden layer over state features.

    ``phi(s): [d]`` are fixed random features of the states (drawn once from ``seed``); with ``d < S`` the states
    share parameters, so ``Q_theta`` is not a table and its gradients couple states. ``theta: [P]`` is one flat
    float64 vector holding ``W1 [h, d], b1 [h], W2 [A, h], b2 [A]`` (``P = h d + h + A h + A``). Calling the object
    maps ``theta -> Q: [S, A]``, a pure function ``torch.func`` can differentiate. With ``n_actions = 1`` it is a
    state-value network (``[S, 1]``). The MDP version of :class:`softq.bandit.ActionValueMLP` (which has features of
    the actions and one state).
    """

    def __init__(self, n_states: int, n_actions: int, *, n_features: int = 3, hidden: int = 8, seed: int = 0) -> None:
        self.n_states = validate_count(n_states, "n_states")
        self.n_actions = validate_count(n_actions, "n_actions")
        self.n_features = validate_count(n_features, "n_features")
        self.hidden = validate_count(hidden, "hidden")
        self.features = torch.randn(self.n_states, self.n_features, generator=generator(seed), dtype=DTYPE)
        h, d, a = self.hidden, self.n_features, self.n_actions
        self.n_params = h * d + h + a * h + a

    def init_params(self, seed: int, scale: float = 1.0) -> torch.Tensor:
        """Random ``theta: [P]``: weights ``~ N(0, scale^2 / fan_in)``, biases ``~ N(0, scale^2 / 4)``."""
        scale = validate_tau(scale, "scale")
        gen = generator(seed)
        h, d, a = self.hidden, self.n_features, self.n_actions
        w1 = torch.randn(h * d, generator=gen, dtype=DTYPE) * scale / math.sqrt(d)
        b1 = torch.randn(h, generator=gen, dtype=DTYPE) * scale / 2
        w2 = torch.randn(a * h, generator=gen, dtype=DTYPE) * scale / math.sqrt(h)
        b2 = torch.randn(a, generator=gen, dtype=DTYPE) * scale / 2
        return torch.cat([w1, b1, w2, b2])

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """``Q_theta: [S, A]`` for ``theta: [P]``."""
        if not isinstance(theta, torch.Tensor) or theta.shape != (self.n_params,):
            raise ValueError(f"theta must have shape [{self.n_params}], got {getattr(theta, 'shape', type(theta))}")
        h, d, a = self.hidden, self.n_features, self.n_actions
        w1 = theta[: h * d].reshape(h, d)
        b1 = theta[h * d : h * d + h]
        w2 = theta[h * d + h : h * d + h + a * h].reshape(a, h)
        b2 = theta[h * d + h + a * h :]
        return torch.tanh(self.features @ w1.T + b1) @ w2.T + b2


# ----------------------------------------------------------------------------------------------------------------
# The problem and the objects of eqs (55)-(57)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One instance of the theorem: an MDP, a parametrized ``q_fn: theta [P] -> Q [S, A]``, the temperature ``tau``,
    the lookahead ``n`` of the soft Q-learning target (eq 46) and the reference policy ``pi_bar`` (``[S, A]``, ``[A]``
    or ``None`` for uniform). The discount is ``mdp.gamma``."""

    mdp: tb.MDP
    q_fn: QFunction
    tau: float
    n: int
    pi_bar: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.mdp, tb.MDP):
            raise ValueError(f"mdp must be a softq.tabular.MDP, got {type(self.mdp).__name__}")
        if not callable(self.q_fn):
            raise ValueError(f"q_fn must be callable (theta -> Q [S, A]), got {type(self.q_fn).__name__}")
        object.__setattr__(self, "tau", validate_tau(self.tau))
        validate_count(self.n, "n")
        if self.pi_bar is not None:
            shapes = ((self.mdp.n_actions,), (self.mdp.n_states, self.mdp.n_actions))
            if not isinstance(self.pi_bar, torch.Tensor) or tuple(self.pi_bar.shape) not in shapes:
                raise ValueError(f"pi_bar must be None or of shape [A] or [S, A] (one of {shapes}), "
                                 f"got {getattr(self.pi_bar, 'shape', type(self.pi_bar))}")
            object.__setattr__(self, "pi_bar", validate_distribution(self.pi_bar.to(DTYPE), "pi_bar"))

    @property
    def gamma(self) -> float:
        return self.mdp.gamma

    def q(self, theta: torch.Tensor) -> torch.Tensor:
        """``Q_theta: [S, A]``, with its shape checked against the MDP."""
        q = self.q_fn(theta)
        want = (self.mdp.n_states, self.mdp.n_actions)
        if not isinstance(q, torch.Tensor) or tuple(q.shape) != want:
            raise ValueError(f"q_fn(theta) must return a [S, A] = {want} tensor, got {getattr(q, 'shape', type(q))}")
        return q


def soft_parts(setting: Setting, theta: torch.Tensor) -> SoftQuantities:
    """``Q_theta [S, A]``, ``V_theta [S]`` (eq 55), ``log pi_theta``, ``pi_theta [S, A]`` (eq 56) and
    ``KL_theta [S]``, all differentiable in ``theta`` (:func:`softq.bandit.soft_quantities`, batched over states)."""
    return soft_quantities(setting.q(theta), setting.tau, setting.pi_bar)


def policy(setting: Setting, theta: torch.Tensor) -> torch.Tensor:
    """The Boltzmann policy ``pi_theta`` of ``Q_theta``, eq (56): ``[S, A]``."""
    return soft_parts(setting, theta).pi


def jacobians(setting: Setting, theta: torch.Tensor) -> SoftJacobians:
    """Exact derivatives in ``theta`` (``torch.func.jacrev``): ``dq [S, A, P]``, ``dv [S, P]``, ``dlog_pi [S, A, P]``,
    ``dpi [S, A, P]``, ``dkl [S, P]`` (the full derivative of ``KL_theta(s)``)."""
    return soft_jacobians(setting.q, theta, setting.tau, setting.pi_bar)


def _state_dist(setting: Setting, d: torch.Tensor | None, name: str = "state_dist") -> torch.Tensor | None:
    if d is None:
        return None
    if not isinstance(d, torch.Tensor) or tuple(d.shape) != (setting.mdp.n_states,):
        raise ValueError(f"{name} must be a [S] = ({setting.mdp.n_states},) distribution, "
                         f"got {getattr(d, 'shape', type(d))}")
    validate_distribution(d.detach(), name)
    if setting.mdp.terminal is not None and bool((d.detach()[setting.mdp.terminal] > 0).any()):
        raise ValueError(f"{name} must put no probability on terminal states")
    return d


def _action_policy(setting: Setting, pi: torch.Tensor, name: str = "action") -> torch.Tensor:
    want = (setting.mdp.n_states, setting.mdp.n_actions)
    if not isinstance(pi, torch.Tensor) or tuple(pi.shape) != want:
        raise ValueError(f"{name} must be a policy of shape [S, A] = {want}, got {getattr(pi, 'shape', type(pi))}")
    validate_distribution(pi.detach(), name)
    return pi


def expectation(state_dist: torch.Tensor | None, pi: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``E_{s~d, a~pi}[f(s, a)] = sum_s d(s) sum_a pi(a|s) f(s, a, ...)``: ``f [S, A, ...] -> [...]``.

    ``state_dist=None`` returns the per-state expectations ``E_{a~pi}[f(s, a)]: [S, ...]`` (every identity of this
    module is linear in ``d``, so it holds for every ``d`` iff it holds state by state). Nothing is detached here.
    """
    if pi.ndim != 2 or tuple(f.shape[:2]) != tuple(pi.shape):
        raise ValueError(f"f must have shape [S, A, ...] matching pi {tuple(pi.shape)}, got {tuple(f.shape)}")
    per_state = torch.einsum("sa,sa...->s...", pi, f)
    return per_state if state_dist is None else torch.einsum("s,s...->...", state_dist, per_state)


# ----------------------------------------------------------------------------------------------------------------
# The n-step soft Q-learning target, eq (46), and its exact moments
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The n-step soft Q-learning target of eq (46) as functions of the state:

    ``y_t = tau lead(s_t) + sum_{d=0}^{n-1} gamma^d (R(s_{t+d}, a_{t+d}) - tau kl(s_{t+d})) + gamma^n v(s_{t+n})``,

    with ``a_{t+1}, ..., a_{t+n-1} ~ later``. The paper's target (:func:`soft_q_target` at the online ``theta``) has
    ``lead = kl = KL_theta``, ``v = V_theta`` and ``later = pi_theta``; a target network changes them. Shapes:
    ``lead, kl, v: [S]``, ``later: [S, A]``. Rewards are the MDP's expected rewards ``R(s, a)``; episode ends are
    handled by the MDP's live dynamics (nothing is counted after a terminal state).
    """

    lead: torch.Tensor
    kl: torch.Tensor
    v: torch.Tensor
    later: torch.Tensor


def soft_q_target(setting: Setting, theta: torch.Tensor, later: torch.Tensor | None = None) -> Target:
    """The target of eq (46) built from ``Q_theta`` (the online network, or a target network ``Q_theta_bar``):
    ``lead = kl = KL_theta``, ``v = V_theta``, ``later = pi_theta`` unless another ``later: [S, A]`` is given."""
    s = soft_parts(setting, theta)
    later = s.pi if later is None else _action_policy(setting, later, "later")
    return Target(s.kl, s.kl, s.v, later)


def _check_target(setting: Setting, target: Target) -> Target:
    if not isinstance(target, Target):
        raise ValueError(f"target must be a softq.equivalence.Target, got {type(target).__name__}")
    for name in ("lead", "kl", "v"):
        x = getattr(target, name)
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (setting.mdp.n_states,):
            raise ValueError(f"target.{name} must have shape [S] = ({setting.mdp.n_states},), "
                             f"got {getattr(x, 'shape', type(x))}")
    _action_policy(setting, target.later, "target.later")
    return target


def target_moments(setting: Setting, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(E[y_t | s_t, a_t], E[y_t^2 | s_t, a_t])``, both ``[S, A]``, for the target of eq (46).

    With ``Y_i = sum_{j>=i} gamma^(j-i) f_j`` the tail of ``y`` from step ``i`` (``f_0 = tau lead + R - tau kl``,
    ``f_i = R - tau kl`` for ``0 < i < n``, ``f_n = v``), the recursions
    ``E[Y_i | s_i, a_i] = f_i + gamma E[Y_{i+1} | s_i, a_i]`` and
    ``E[Y_i^2 | s_i, a_i] = f_i^2 + 2 gamma f_i E[Y_{i+1} | s_i, a_i] + gamma^2 E[Y_{i+1}^2 | s_i, a_i]`` run backward
    from ``i = n``; one step ``E[g(s_{i+1}, a_{i+1}) | s_i, a_i]`` is :func:`softq.tabular.trajectory_expectations`
    with ``horizon = 1`` under ``target.later``. Differentiable in every field of ``target``.
    """
    target = _check_target(setting, target)
    mdp, tau, gamma = setting.mdp, setting.tau, setting.gamma
    live = mdp.live[:, None]
    step = lambda g: tb.trajectory_expectations(mdp, target.later, g, 1)[1]  # noqa: E731
    m1 = (target.v[:, None] * live).expand(mdp.n_states, mdp.n_actions)
    m2 = m1**2
    for i in reversed(range(setting.n)):
        f = (mdp.R - tau * target.kl[:, None] + (tau * target.lead[:, None] if i == 0 else 0.0)) * live
        e1, e2 = step(m1), step(m2)
        m1, m2 = f + gamma * e1, f**2 + 2 * gamma * f * e1 + gamma**2 * e2
    return m1, m2


# ----------------------------------------------------------------------------------------------------------------
# The two sides of the theorem in exact expectation
# ----------------------------------------------------------------------------------------------------------------


def _defaults(setting, theta, state_dist, action, target):
    state_dist = _state_dist(setting, state_dist)
    theta0 = theta.detach()
    action = policy(setting, theta0) if action is None else _action_policy(setting, action)
    target = soft_q_target(setting, theta0) if target is None else _check_target(setting, target)
    return state_dist, action, target


def expected_squared_error(setting: Setting, theta: torch.Tensor, state_dist: torch.Tensor,
                           action: torch.Tensor, target: Target) -> torch.Tensor:
    """The soft Q-learning objective of eq (58), exactly: ``E_{s~d, a~action}[1/2 (Q_theta(s, a) - y)^2]``: ``[]``.

    ``= E[1/2 (Q - E[y|s,a])^2 + 1/2 Var[y|s,a]]`` from :func:`target_moments`. Nothing is detached: ``theta`` enters
    through ``Q_theta``, and whatever parameters made ``state_dist``, ``action`` (the distribution of ``a_t``) and
    ``target`` enter through them, so the full derivative of eq (58) and each of its parts can be taken
    (:func:`partial_gradients`). Its semi-gradient (all but ``Q_theta`` held fixed) is :func:`soft_q_gradient`.
    """
    state_dist = _state_dist(setting, state_dist)
    if state_dist is None:
        raise ValueError("state_dist must be a [S] distribution here, got None")
    action = _action_policy(setting, action)
    mean, second = target_moments(setting, target)
    q = setting.q(theta)
    return expectation(state_dist, action, 0.5 * (q - mean) ** 2 + 0.5 * (second - mean**2))


def soft_q_gradient(setting: Setting, theta: torch.Tensor, state_dist: torch.Tensor | None, *,
                    action: torch.Tensor | None = None, target: Target | None = None) -> torch.Tensor:
    """Eq (59) in exact expectation: ``E_{s~d, a~action}[grad Q_theta(s, a) (Q_theta(s, a) - y)]``: ``[P]``.

    Autograd of ``E[soft_q_loss(Q_theta(s, a), E[y|s, a])]`` (:func:`softq.losses.soft_q_loss`, eq 44, target held
    fixed). Exact: ``E[1/2 (Q - y)^2 | s, a] = 1/2 (Q - E[y|s, a])^2 + 1/2 Var[y|s, a]`` and the variance does not
    depend on ``Q``, so the loss at the conditional mean of ``y`` has the same gradient. Defaults:
    ``action = pi_theta`` and the online target of eq (46), both held fixed. ``state_dist=None`` returns the
    per-state gradients ``[S, P]``.
    """
    state_dist, action, target = _defaults(setting, theta, state_dist, action, target)
    mean = target_moments(setting, target)[0].detach()
    action = action.detach()

    def per_state(th: torch.Tensor) -> torch.Tensor:
        return expectation(None, action, soft_q_loss(setting.q(th), mean))

    return _weighted_grad(per_state, theta, state_dist)


def _weighted_grad(per_state: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                   state_dist: torch.Tensor | None) -> torch.Tensor:
    """``grad_theta sum_s d(s) per_state(theta)[s]`` (``d`` held fixed), or the per-state gradients ``[S, P]``."""
    theta = theta.detach()
    if state_dist is not None:
        return grad(lambda th: state_dist.detach() @ per_state(th))(theta)
    return torch.func.jacrev(per_state)(theta)


def actor_critic_gradient(setting: Setting, theta: torch.Tensor, state_dist: torch.Tensor | None,
                          value_coef: float, *, action: torch.Tensor | None = None,
                          target: Target | None = None) -> torch.Tensor:
    """``grad (L_policy + c L_value)`` in exact expectation, the A2C loss of eqs (84)-(86): ``[P]``.

    Autograd of ``E_{s~d, a~action}[policy_gradient_loss(log pi_theta(a|s), Delta, KL_theta(s), tau)
    + c value_loss(V_theta(s), V_hat)]`` (:mod:`softq.losses`) with the advantage
    ``Delta = E[y|s,a] - tau KL_theta(s) - V_theta(s)`` and the value target ``V_hat = V_theta(s) + Delta =
    E[y|s,a] - tau KL_theta(s)`` held fixed, ``y`` the soft Q-learning target (eq 46; ``Delta`` is the
    ``sum_d gamma^d delta_{t+d}`` of eq 47 for the online target). Eq (65) says ``soft_q_gradient =
    tau * actor_critic_gradient(value_coef=1/tau)``. ``state_dist=None``: per-state gradients ``[S, P]``.
    """
    if not (isinstance(value_coef, int | float) and math.isfinite(value_coef) and value_coef >= 0):
        raise ValueError(f"value_coef must be a finite number >= 0, got {value_coef!r}")
    state_dist, action, target = _defaults(setting, theta, state_dist, action, target)
    mean = target_moments(setting, target)[0].detach()
    s0 = soft_parts(setting, theta.detach())
    v_hat = mean - setting.tau * s0.kl[:, None]
    advantage = v_hat - s0.v[:, None]
    action = action.detach()

    def per_state(th: torch.Tensor) -> torch.Tensor:
        s = soft_parts(setting, th)
        shape = s.log_pi.shape
        loss = policy_gradient_loss(s.log_pi, advantage, s.kl[:, None].expand(shape), setting.tau) \
            + value_coef * value_loss(s.v[:, None].expand(shape), v_hat)
        return expectation(None, action, loss)

    return _weighted_grad(per_state, theta, state_dist)


@dataclass(frozen=True)
class PartialGradients:
    """The full derivative of eq (58) split by where ``theta`` enters (each ``[P]``): ``q`` (``Q_theta`` inside the
    square: this is eq 59), ``action`` (the distribution ``pi_theta`` of ``a_t``), ``later`` (the distribution of
    ``a_{t+1}, ..., a_{t+n-1}`` inside the target), ``target`` (the KL terms and the bootstrap ``V_theta(s_{t+n})`` of
    the target). ``total`` is their sum, the full derivative with the state distribution fixed."""

    q: torch.Tensor
    action: torch.Tensor
    later: torch.Tensor
    target: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.q + self.action + self.later + self.target


def partial_gradients(setting: Setting, theta: torch.Tensor, state_dist: torch.Tensor) -> PartialGradients:
    """The four partial derivatives of eq (58)'s objective :func:`expected_squared_error` at the online target, by
    giving each place ``theta`` enters its own copy of ``theta`` (chain rule: the full derivative is their sum)."""
    state_dist = _state_dist(setting, state_dist)
    if state_dist is None:
        raise ValueError("state_dist must be a [S] distribution here, got None")
    copies = [theta.detach().clone().requires_grad_(True) for _ in range(4)]
    tq, ta, tl, tt = copies
    loss = expected_squared_error(setting, tq, state_dist.detach(), policy(setting, ta),
                                  soft_q_target(setting, tt, later=policy(setting, tl)))
    return PartialGradients(*torch.autograd.grad(loss, copies))


# ----------------------------------------------------------------------------------------------------------------
# The explicit formulas: eqs (59), (65)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EquivalenceTerms:
    """Exact expectations from explicit formulas (Jacobians times conditional means), each ``[P]`` (or ``[S, P]``
    per state): ``soft_q = E[grad Q (Q - y)]`` (eq 59); ``policy_gradient = E[grad log pi(a|s) Delta] - tau E[grad
    KL(s)]`` (the entropy-regularized policy-gradient estimator, eqs 50/52 with its KL term); ``value_gradient =
    E[grad V(s) (V(s) - V_hat)]`` (eq 53's semi-gradient); ``delta: [S, A]`` the conditional mean of
    ``Delta = y - tau KL_theta(s_t) - V_theta(s_t)``. Eq (65): ``soft_q = -tau policy_gradient + value_gradient``."""

    soft_q: torch.Tensor
    policy_gradient: torch.Tensor
    value_gradient: torch.Tensor
    delta: torch.Tensor


def equivalence_terms(setting: Setting, theta: torch.Tensor, state_dist: torch.Tensor | None = None, *,
                      action: torch.Tensor | None = None, target: Target | None = None) -> EquivalenceTerms:
    """:class:`EquivalenceTerms` with ``s ~ state_dist`` (``None``: per state), ``a_t ~ action`` (default
    ``pi_theta``) and the target ``target`` (default: the online target of eq 46)."""
    state_dist, action, target = _defaults(setting, theta, state_dist, action, target)
    theta = theta.detach()
    s, jac = soft_parts(setting, theta), jacobians(setting, theta)
    mean = target_moments(setting, target)[0].detach()
    delta = mean - setting.tau * s.kl[:, None] - s.v[:, None]
    ones = torch.ones_like(s.q)
    soft_q = expectation(state_dist, action, jac.dq * (s.q - mean)[..., None])
    pg = expectation(state_dist, action, jac.dlog_pi * delta[..., None]) \
        - setting.tau * expectation(state_dist, action, ones[..., None] * jac.dkl[:, None, :])
    value = -expectation(state_dist, action, jac.dv[:, None, :] * delta[..., None])
    return EquivalenceTerms(soft_q, pg, value, delta)


# ----------------------------------------------------------------------------------------------------------------
# Per-sample estimators: g = u(s, a) + w(s, a) y
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AffineTargetEstimator:
    """A per-sample gradient estimator affine in the target: ``g(s, a, y) = u[s, a] + w[s, a] y``; ``u, w: [S, A, P]``.

    The MDP version of :class:`softq.bandit.AffineEstimator` (there the reward played the role of ``y``). Given a
    state distribution, the distribution of ``a`` and the first two conditional moments of ``y`` (from
    :func:`target_moments`), :meth:`mean`, :meth:`std` and :meth:`total_variance` are exact.
    """

    u: torch.Tensor
    w: torch.Tensor

    def mean(self, state_dist: torch.Tensor, pi: torch.Tensor, y_mean: torch.Tensor) -> torch.Tensor:
        """``E[g] = E_{s,a}[u + w E[y|s,a]]``: ``[P]``."""
        return expectation(state_dist, pi, self.u + self.w * y_mean[..., None])

    def _second(self, state_dist, pi, y_mean, y_second) -> torch.Tensor:
        """``E[g * g]`` per coordinate: ``E_{s,a}[u^2 + 2 u w E[y|s,a] + w^2 E[y^2|s,a]]``: ``[P]``."""
        m, m2 = y_mean[..., None], y_second[..., None]
        return expectation(state_dist, pi, self.u**2 + 2 * self.u * self.w * m + self.w**2 * m2)

    def std(self, state_dist: torch.Tensor, pi: torch.Tensor, y_mean: torch.Tensor,
            y_second: torch.Tensor) -> torch.Tensor:
        """Per-coordinate standard deviation of one sample ``g``: ``[P]``."""
        var = self._second(state_dist, pi, y_mean, y_second) - self.mean(state_dist, pi, y_mean) ** 2
        return var.clamp_min(0).sqrt()

    def total_variance(self, state_dist: torch.Tensor, pi: torch.Tensor, y_mean: torch.Tensor,
                       y_second: torch.Tensor) -> torch.Tensor:
        """``tr Cov[g] = E||g||^2 - ||E g||^2``: ``[]``."""
        return (self._second(state_dist, pi, y_mean, y_second).sum()
                - self.mean(state_dist, pi, y_mean).pow(2).sum()).clamp_min(0)

    def __call__(self, states: torch.Tensor, actions: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample values ``u[s_i, a_i] + w[s_i, a_i] y_i``: ``states, actions, y: [N]`` -> ``[N, P]``."""
        if not (states.shape == actions.shape == y.shape) or states.ndim != 1:
            raise ValueError(f"states, actions and y must be [N] tensors of one shape, got {tuple(states.shape)}, "
                             f"{tuple(actions.shape)}, {tuple(y.shape)}")
        return self.u[states, actions] + self.w[states, actions] * y[:, None].to(DTYPE)


def soft_q_estimator(setting: Setting, theta: torch.Tensor) -> AffineTargetEstimator:
    """Eq (59) per sample: ``grad Q_theta(s, a) (Q_theta(s, a) - y)``, i.e. ``u = grad Q * Q``, ``w = -grad Q``."""
    theta = theta.detach()
    dq, q = jacobians(setting, theta).dq, setting.q(theta)
    return AffineTargetEstimator(dq * q[..., None], -dq)


def actor_critic_estimator(setting: Setting, theta: torch.Tensor, value_coef: float) -> AffineTargetEstimator:
    """The gradient of ``policy_gradient_loss + c value_loss`` per sample (eqs 84-85), with
    ``Delta = y - tau KL(s) - V(s)`` and ``V_hat = y - tau KL(s)``:
    ``-grad log pi(a|s) Delta + tau grad KL(s) + c grad V(s) (V(s) - V_hat)``, i.e.
    ``u = grad log pi (tau KL + V) + tau grad KL + c grad V (V + tau KL)``, ``w = -grad log pi - c grad V``.
    At ``c = 1/tau``, ``tau w = -grad Q``: the two estimators weigh ``y`` identically (eq 57)."""
    theta = theta.detach()
    s, jac = soft_parts(setting, theta), jacobians(setting, theta)
    tau = setting.tau
    base = (tau * s.kl + s.v)[:, None, None]
    u = jac.dlog_pi * base + tau * jac.dkl[:, None, :] + value_coef * jac.dv[:, None, :] * base
    w = -jac.dlog_pi - value_coef * jac.dv[:, None, :]
    return AffineTargetEstimator(u, w)


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------


def sample_targets(setting: Setting, theta: torch.Tensor, state_dist: torch.Tensor, n_samples: int, seed: int,
                   *, action: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``N`` i.i.d. samples ``(s_t, a_t, y_t)``: ``s_t ~ state_dist``, ``a_t ~ action`` (default ``pi_theta``), then
    ``n`` steps of ``pi_theta`` (:func:`softq.tabular.sample_rollout`, one lane per sample) and the online target
    ``y_t = tau KL_t + n_step_soft_return(...)`` of eq (46) (:func:`softq.regularized.n_step_soft_return`).
    Returns ``states, actions: [N]`` (long), ``y: [N]`` (float64). Seeded by ``seed``.
    """
    state_dist = _state_dist(setting, state_dist)
    if state_dist is None:
        raise ValueError("state_dist must be a [S] distribution, got None")
    n_samples = validate_count(n_samples, "n_samples")
    gen = generator(seed)
    s = soft_parts(setting, theta.detach())
    states = torch.multinomial(state_dist.detach(), n_samples, replacement=True, generator=gen)
    first = None
    if action is not None:
        first = torch.multinomial(_action_policy(setting, action).detach()[states], 1, generator=gen)[:, 0]
    roll = tb.sample_rollout(setting.mdp, s.pi, states, setting.n, seed=seed + 1, first_action=first)
    kls = s.kl[roll.states]
    y = setting.tau * kls + n_step_soft_return(roll.rewards, kls, s.v[roll.next_states], roll.dones,
                                               setting.gamma, setting.tau, setting.n)
    return roll.states[0], roll.actions[0], y[0]


def _pick(x: torch.Tensor, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``x[s, a]`` for a ``[S, A]`` tensor and 0-d index tensors, written with ``index_select`` (which ``vmap``
    batches; plain advanced indexing by a batched 0-d tensor does not)."""
    return x.reshape(-1).index_select(0, (s * x.shape[1] + a).reshape(1))[0]


def per_sample_gradients(setting: Setting, theta: torch.Tensor, states: torch.Tensor, actions: torch.Tensor,
                         y: torch.Tensor, value_coef: float | None = None) -> torch.Tensor:
    """One gradient per sample, by ``torch.func.vmap(grad(...))`` of the losses of :mod:`softq.losses`: ``[N, P]``.

    ``value_coef=None``: the soft Q-learning loss ``soft_q_loss(Q_theta(s, a), y)`` (eq 44). Otherwise the A2C loss
    ``policy_gradient_loss(log pi_theta(a|s), Delta, KL_theta(s), tau) + c value_loss(V_theta(s), V_hat)`` with
    ``Delta = y - tau KL_theta(s) - V_theta(s)`` and ``V_hat = y - tau KL_theta(s)`` computed at ``theta`` and held
    fixed (eqs 84-85). ``states, actions, y: [N]``.
    """
    if not (states.shape == actions.shape == y.shape) or states.ndim != 1:
        raise ValueError(f"states, actions and y must be [N] tensors of one shape, got {tuple(states.shape)}, "
                         f"{tuple(actions.shape)}, {tuple(y.shape)}")
    theta = theta.detach()
    tau = setting.tau
    y = y.to(DTYPE)
    if value_coef is None:
        def loss(th, s, a, target):
            return soft_q_loss(_pick(setting.q(th), s, a), target)
        return vmap(grad(loss), in_dims=(None, 0, 0, 0))(theta, states, actions, y)
    s0 = soft_parts(setting, theta)
    v_hat = y - tau * s0.kl[states]
    advantage = v_hat - s0.v[states]

    def a2c(th, s, a, adv, vh):
        part = soft_parts(setting, th)          # every state (th is not batched); then pick sample i's entries
        kl_s, v_s = _pick(part.kl[:, None], s, 0 * a), _pick(part.v[:, None], s, 0 * a)
        return policy_gradient_loss(_pick(part.log_pi, s, a), adv, kl_s, tau) + value_coef * value_loss(v_s, vh)

    return vmap(grad(a2c), in_dims=(None, 0, 0, 0, 0))(theta, states, actions, advantage, v_hat)
