"""Exact entropy-regularized policy gradients of tabular softmax policies (Section 3.6, eqs 48-52).

The policy is a table of logits ``theta: [S, A]`` with ``pi_theta(.|s) = softmax(theta[s])``: the Boltzmann policy of
the logits at unit temperature with a uniform reference, ``log_boltzmann_policy(theta, 1.0)``. Three ways to get a
policy gradient are built here, all on :mod:`softq.tabular` (exact evaluation) and :func:`softq.losses.
policy_gradient_loss` (the eq-84 surrogate, the only place the estimator's formula is written):

- the **true gradient** of the regularized return, by autograd through exact evaluation
  (:func:`regularized_return`, :func:`true_gradient`; eq 51 for ``gamma = 1``);
- the **exact expectation of an estimator** ``E[sum_t grad log pi(a_t|s_t) A_t - tau grad KL(s_t)]`` when the
  states are weighted by an occupancy measure and ``A_t`` has a known conditional mean
  (:func:`expected_estimator`; with the advantages of :func:`proper_advantage` (eq 50) or :func:`naive_advantage`
  (eq 48));
- the estimator itself on rollouts, one gradient per lane (:func:`rollout_estimator`), on sampled rollouts
  (:func:`softq.tabular.sample_rollout`) or on every path of a finite-horizon problem with its probability
  (:func:`enumerate_rollouts`), which gives the exact expectation of the sampled estimator by brute force.

Shapes: ``S`` states, ``A`` actions, rollouts ``[T, B]`` (time first, ``B`` lanes). Everything is float64.
Bad arguments raise ValueError naming the argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import softq.tabular as tb
from softq.config import DTYPE
from softq.losses import policy_gradient_loss
from softq.regularized import (
    kl,
    log_boltzmann_policy,
    validate_count,
    validate_distribution,
    validate_gamma,
    validate_tau,
)

__all__ = [
    "log_policy",
    "policy",
    "logits_of",
    "state_occupancy",
    "stationary_distribution",
    "regularized_return",
    "true_gradient",
    "proper_advantage",
    "naive_advantage",
    "expected_estimator",
    "exact_gradient",
    "rollout_estimator",
    "first_episode_mask",
    "enumerate_rollouts",
    "AscentResult",
    "gradient_ascent",
    "newton_step",
]


# --- the tabular softmax policy ------------------------------------------------------------------------------------


def _theta(mdp: tb.MDP, theta: torch.Tensor, name: str = "theta") -> torch.Tensor:
    shape = (mdp.n_states, mdp.n_actions)
    if not isinstance(theta, torch.Tensor) or tuple(theta.shape[-2:]) != shape:
        got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise ValueError(f"{name} must be a tensor of logits with shape [..., S, A] ending in {shape}, got {got}")
    if not bool(torch.isfinite(theta.detach()).all()):
        raise ValueError(f"{name} must be finite")
    return theta


def log_policy(theta: torch.Tensor) -> torch.Tensor:
    """``log pi_theta(a|s) = log softmax(theta[s])_a``: ``[..., S, A] -> [..., S, A]``.

    The tabular softmax policy is the Boltzmann policy (eq 28) of the logits at ``tau = 1`` with a uniform reference,
    so it is computed by :func:`softq.regularized.log_boltzmann_policy` (stable log-softmax).
    """
    return log_boltzmann_policy(theta, 1.0)


def policy(theta: torch.Tensor) -> torch.Tensor:
    """``pi_theta = softmax(theta)`` over the last axis: ``[..., S, A] -> [..., S, A]``."""
    return log_policy(theta).exp()


def logits_of(pi: torch.Tensor) -> torch.Tensor:
    """Logits ``theta = log pi`` with ``policy(theta) == pi`` (``pi: [..., A]`` with every entry > 0)."""
    validate_distribution(pi, "pi")
    if bool((pi <= 0).any()):
        raise ValueError("pi must have every entry > 0 to be a softmax policy with finite logits")
    return torch.log(pi)


# --- state weights ------------------------------------------------------------------------------------------------


def _start(mdp: tb.MDP, mu0: torch.Tensor) -> torch.Tensor:
    if not isinstance(mu0, torch.Tensor) or tuple(mu0.shape) != (mdp.n_states,):
        got = tuple(mu0.shape) if isinstance(mu0, torch.Tensor) else type(mu0).__name__
        raise ValueError(f"mu0 must be a start distribution of shape [S] = ({mdp.n_states},), got {got}")
    mu0 = validate_distribution(mu0.to(DTYPE), "mu0")
    if mdp.terminal is not None and bool((mu0[mdp.terminal] > 0).any()):
        raise ValueError("mu0 must put no probability on terminal states")
    return mu0


def state_occupancy(mdp: tb.MDP, pi: torch.Tensor, mu0: torch.Tensor, discount: float = 1.0) -> torch.Tensor:
    """``rho(s) = sum_{t>=0} discount^t P(s_t = s | s_0 ~ mu0)`` under ``pi`` (live states only): ``[S]``.

    Solves ``rho^T (I - discount P_pi) = mu0^T``. With ``discount = 1`` this is the expected number of visits to each
    state in an episode, the weight of state s in ``E[sum_t f(s_t)]`` (eqs 48-51); it needs terminal states that every
    policy reaches. Differentiable in ``pi``.
    """
    discount = validate_gamma(discount, "discount")
    mu0 = _start(mdp, mu0)
    if discount == 1.0 and (mdp.terminal is None or not bool(mdp.terminal.any())):
        raise ValueError("discount=1.0 needs an episodic MDP (terminal states), else the occupancy is infinite")
    eye = torch.eye(mdp.n_states, dtype=DTYPE)
    return torch.linalg.solve((eye - discount * tb.state_transition(mdp, pi)).T, mu0 * mdp.live)


def stationary_distribution(mdp: tb.MDP, pi: torch.Tensor) -> torch.Tensor:
    """The distribution ``d`` with ``d^T P_pi = d^T``, ``sum d = 1`` of a continuing MDP: ``[S]``.

    It is the long-run state distribution of a continuing agent, the ``E_{t, s_t}`` of eqs (48)-(52) for A2C
    running forever. Solved as the least-squares solution of the stacked (consistent) linear system.
    """
    if mdp.terminal is not None and bool(mdp.terminal.any()):
        raise ValueError("mdp must be continuing (no terminal states) to have a stationary distribution here")
    n = mdp.n_states
    P_pi = tb.state_transition(mdp, pi)
    lhs = torch.cat([(P_pi.T - torch.eye(n, dtype=DTYPE)), torch.ones(1, n, dtype=DTYPE)])
    rhs = torch.cat([torch.zeros(n, dtype=DTYPE), torch.ones(1, dtype=DTYPE)])
    return torch.linalg.lstsq(lhs, rhs[:, None]).solution[:, 0]


# --- the true gradient --------------------------------------------------------------------------------------------


def regularized_return(mdp: tb.MDP, theta: torch.Tensor, tau: float, pi_bar: torch.Tensor | None,
                       mu0: torch.Tensor, horizon: int | None = None) -> torch.Tensor:
    """``J(theta) = E[sum_t gamma^t (r_t - tau KL_t) | s_0 ~ mu0]`` under ``pi_theta``: a scalar, differentiable.

    ``horizon=None``: ``mu0 . V^pi`` (eq 24, a linear solve, ``gamma = mdp.gamma``). ``horizon=T``: the finite-horizon
    return of eq (51), ``E[sum_{t<T} (r_t - tau KL_t)]`` (undiscounted, ``r_t = KL_t = 0`` for ``t >= T``), by
    propagating state distributions T steps.
    """
    theta = _theta(mdp, theta)
    tau = validate_tau(tau)
    mu0 = _start(mdp, mu0)
    pi = policy(theta)
    if horizon is None:
        return mu0 @ tb.v_pi(mdp, pi, tau, pi_bar)
    c = mdp.R - tau * tb.policy_kl(mdp, pi, pi_bar)[:, None]             # r_t - tau KL_t as a function of (s, a)
    return mu0 @ tb.expected_discounted_sum(mdp, pi, c, validate_count(horizon, "horizon"), 1.0, given="state")


def true_gradient(mdp: tb.MDP, theta: torch.Tensor, tau: float, pi_bar: torch.Tensor | None, mu0: torch.Tensor,
                  horizon: int | None = None) -> torch.Tensor:
    """``grad_theta J(theta)`` of :func:`regularized_return` by autograd through the exact evaluation: ``[S, A]``.

    For an episodic MDP with ``gamma = 1`` (or ``horizon=T``) this is ``g_1`` of eq (51).
    """
    theta = _theta(mdp, theta).detach().to(DTYPE).requires_grad_(True)
    (grad,) = torch.autograd.grad(regularized_return(mdp, theta, tau, pi_bar, mu0, horizon), theta)
    return grad


# --- exact expectations of the estimators --------------------------------------------------------------------------


def proper_advantage(mdp: tb.MDP, pi: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``Q^pi(s, a) - tau KL(s) - V^pi(s)``: ``E[sum_d gamma^d (r_{t+d} - tau KL_{t+d}) | s_t, a_t] - V^pi(s_t)``,
    the weight of ``grad log pi(a_t|s_t)`` in eq (50) (``gamma = mdp.gamma``). ``[S, A]``, 0 at terminal states."""
    return (tb.q_pi(mdp, pi, tau, pi_bar) - tau * tb.policy_kl(mdp, pi, pi_bar)[:, None]
            - tb.v_pi(mdp, pi, tau, pi_bar)[:, None]) * mdp.live[:, None]


def naive_advantage(mdp: tb.MDP, pi: torch.Tensor) -> torch.Tensor:
    """``E[sum_d gamma^d r_{t+d} | s_t, a_t]``: the return of eq (48), rewards only (no KL terms). ``[S, A]``.

    It is ``Q^pi`` of eq (25) with every KL term zero, i.e. with the reference ``pi_bar = pi`` (``KL[pi||pi] = 0``).
    """
    return tb.q_pi(mdp, pi, 1.0, pi_bar=pi) * mdp.live[:, None]


def expected_estimator(theta: torch.Tensor, state_weights: torch.Tensor, advantage: torch.Tensor, tau: float,
                       pi_bar: torch.Tensor | None = None, *, kl_gradient: bool = True) -> torch.Tensor:
    """Exact ``E[sum_t (grad log pi_theta(a_t|s_t) A_t - tau grad KL(s_t))]``: ``[S, A]``.
    ``kl_gradient=False`` leaves out the ``- tau grad KL(s_t)`` term (eq 52 as typed).

    ``state_weights[s] = sum_t P(s_t = s)`` (e.g. :func:`state_occupancy`), ``a_t ~ pi_theta``, and
    ``advantage[s, a] = E[A_t | s_t = s, a_t = a]``. Computed as ``-grad`` of the expected eq-84 surrogate
    ``sum_s w(s) sum_a pi(a|s) policy_gradient_loss(log pi(a|s), advantage(s, a), KL(s), tau)`` with ``w``, ``pi``
    (as weights) and the advantage held fixed. Shapes: ``theta, advantage: [S, A]``, ``state_weights: [S]``.
    """
    tau = validate_tau(tau)
    if not isinstance(theta, torch.Tensor) or theta.ndim != 2:
        raise ValueError(f"theta must be a [S, A] tensor of logits, got {getattr(theta, 'shape', type(theta))}")
    if not isinstance(advantage, torch.Tensor) or advantage.shape != theta.shape:
        raise ValueError(f"advantage must have the shape of theta {tuple(theta.shape)}, "
                         f"got {getattr(advantage, 'shape', type(advantage))}")
    if not isinstance(state_weights, torch.Tensor) or tuple(state_weights.shape) != (theta.shape[0],):
        raise ValueError(f"state_weights must have shape [S] = ({theta.shape[0]},), "
                         f"got {getattr(state_weights, 'shape', type(state_weights))}")
    theta = theta.detach().to(DTYPE).requires_grad_(True)
    log_pi = log_policy(theta)
    kl_s = kl(log_pi.exp(), pi_bar)[:, None].expand_as(log_pi)
    if not kl_gradient:
        kl_s = kl_s.detach()  # the penalty's value stays in the surrogate, its gradient goes
    loss = policy_gradient_loss(log_pi, advantage.to(DTYPE), kl_s, tau)           # [S, A], eq (84) per (s, a)
    weight = state_weights.detach().to(DTYPE)[:, None] * log_pi.detach().exp()  # P(s_t = s, a_t = a) summed over t
    (grad,) = torch.autograd.grad((weight * loss).sum(), theta)
    return -grad


def exact_gradient(mdp: tb.MDP, theta: torch.Tensor, tau: float, pi_bar: torch.Tensor | None,
                   state_weights: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
                   estimator: str = "proper") -> torch.Tensor:
    """The exact expected estimator at ``theta``: ``"proper"`` is ``g_gamma`` of eq (50) (KL terms in the return),
    ``"naive"`` is eq (48) (rewards only, one-step KL gradient); ``gamma = mdp.gamma``. ``[S, A]``.

    ``state_weights``: ``[S]``, or a function of ``pi`` returning them, e.g.
    ``lambda p: state_occupancy(mdp, p, mu0)``.
    """
    theta = _theta(mdp, theta).detach().to(DTYPE)
    pi = policy(theta)
    w = state_weights(pi) if callable(state_weights) else state_weights
    if estimator == "proper":
        adv = proper_advantage(mdp, pi, tau, pi_bar)
    elif estimator == "naive":
        adv = naive_advantage(mdp, pi)
    else:
        raise ValueError(f"estimator must be 'proper' or 'naive', got {estimator!r}")
    return expected_estimator(theta, w, adv, tau, pi_bar) * mdp.live[:, None]


# --- the estimator on rollouts -------------------------------------------------------------------------------------


def rollout_estimator(theta: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor,
                      tau: float, pi_bar: torch.Tensor | None = None,
                      step_weights: torch.Tensor | None = None) -> torch.Tensor:
    """One policy-gradient estimate per lane, by autograd of the eq-84 surrogate summed over time: ``[B, S, A]``.

    ``g_b = -grad_theta sum_t m[t, b] policy_gradient_loss(log pi(a_t|s_t), A_t, KL(s_t), tau)``, i.e.
    ``sum_t m[t, b] (grad log pi(a_t|s_t) A_t - tau grad KL(s_t))`` for lane b. The advantages ``A_t`` come from
    :func:`softq.regularized.n_step_soft_return` (with ``kls``: eqs 49/52; without: eq 48) and are held fixed.
    Shapes: ``theta: [S, A]``; ``states, actions, advantages`` and ``step_weights`` (default all ones; e.g.
    :func:`first_episode_mask`): ``[T, B]``. Average over lanes (or weight them by path probabilities) to estimate the
    expected gradient.
    """
    tau = validate_tau(tau)
    if not isinstance(theta, torch.Tensor) or theta.ndim != 2:
        raise ValueError(f"theta must be a [S, A] tensor of logits, got {getattr(theta, 'shape', type(theta))}")
    for name, x in (("states", states), ("actions", actions), ("advantages", advantages)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape != states.shape:
            raise ValueError(f"{name} must be a [T, B] tensor like states {tuple(states.shape)}, "
                             f"got {getattr(x, 'shape', type(x))}")
    n_states, n_actions = theta.shape
    if bool((states < 0).any() | (states >= n_states).any()) or bool((actions < 0).any()
                                                                     | (actions >= n_actions).any()):
        raise ValueError(f"states must lie in [0, {n_states}) and actions in [0, {n_actions})")
    m = torch.ones_like(advantages, dtype=DTYPE) if step_weights is None else step_weights.to(DTYPE)
    if m.shape != states.shape:
        raise ValueError(f"step_weights must have shape {tuple(states.shape)}, got {tuple(m.shape)}")
    lanes = states.shape[1]
    theta_b = theta.detach().to(DTYPE).expand(lanes, n_states, n_actions).clone().requires_grad_(True)  # [B, S, A]
    log_pi = log_policy(theta_b)
    kl_b = kl(log_pi.exp(), pi_bar)                                                      # [B, S]
    lane = torch.arange(lanes).expand_as(states)
    loss = policy_gradient_loss(log_pi[lane, states, actions], advantages.to(DTYPE), kl_b[lane, states], tau)
    (grad,) = torch.autograd.grad((m * loss).sum(), theta_b)                 # lane b's loss touches theta_b[b] only
    return -grad


def first_episode_mask(dones: torch.Tensor) -> torch.Tensor:
    """``[T, B]`` float: 1 for the steps of each lane's first episode (up to and including its first ``done``), else 0.

    :func:`softq.tabular.sample_rollout` restarts a lane after a terminal state; this keeps one whole episode per lane.
    """
    if not isinstance(dones, torch.Tensor) or dones.ndim != 2:
        raise ValueError(f"dones must be a [T, B] tensor, got {getattr(dones, 'shape', type(dones))}")
    ended_before = torch.cumsum(dones.to(torch.long), 0) - dones.to(torch.long)      # dones strictly before step t
    return (ended_before == 0).to(DTYPE)


def enumerate_rollouts(mdp: tb.MDP, pi: torch.Tensor, mu0: torch.Tensor,
                       horizon: int) -> tuple[tb.Rollout, torch.Tensor]:
    """Every path ``s_0, a_0, s_1, ..., a_{T-1}, s_T`` of a ``T``-step problem, with its probability.

    Returns ``(rollout, prob)``: a :class:`softq.tabular.Rollout` with ``[T, B]`` fields, ``B = S (A S)^T`` paths
    (``dones`` all False: the horizon, not a terminal state, ends them), and ``prob: [B]``
    ``= mu0(s_0) prod_t pi(a_t|s_t) P(s_{t+1}|s_t, a_t)``, summing to 1. The exact expectation of any function of the
    path is ``(prob * f(rollout)).sum()``. Needs a continuing MDP (no terminal states) and ``B <= 10^6``.
    """
    if mdp.terminal is not None and bool(mdp.terminal.any()):
        raise ValueError("mdp must be continuing (no terminal states): the horizon ends every path")
    horizon = validate_count(horizon, "horizon")
    pi, mu0 = validate_distribution(pi.detach().to(DTYPE), "pi"), _start(mdp, mu0)
    n_s, n_a = mdp.n_states, mdp.n_actions
    if tuple(pi.shape) != (n_s, n_a):
        raise ValueError(f"pi must have shape [S, A] = {(n_s, n_a)}, got {tuple(pi.shape)}")
    if n_s * (n_a * n_s) ** horizon > 1_000_000:
        raise ValueError(f"horizon={horizon} gives {n_s * (n_a * n_s) ** horizon} paths (> 10^6): too many")
    s = torch.arange(n_s)
    prob = mu0.clone()
    cols: dict[str, list[torch.Tensor]] = {"states": [], "actions": [], "next_states": []}
    for _ in range(horizon):
        paths = s.numel()
        keep = torch.arange(paths).repeat_interleave(n_a * n_s)                  # each path branches A * S ways
        a = torch.arange(n_a).repeat_interleave(n_s).repeat(paths)
        s_next = torch.arange(n_s).repeat(paths * n_a)
        s = s[keep]
        prob = prob[keep] * pi[s, a] * mdp.P[s, a, s_next]
        for k in cols:
            cols[k] = [x[keep] for x in cols[k]]
        for k, x in zip(cols, (s, a, s_next), strict=True):
            cols[k].append(x)
        s = s_next
    out = {k: torch.stack(v) for k, v in cols.items()}
    rollout = tb.Rollout(out["states"], out["actions"], mdp.R[out["states"], out["actions"]],
                         torch.zeros_like(out["states"], dtype=torch.bool), out["next_states"])
    return rollout, prob


# --- exact gradient ascent ----------------------------------------------------------------------------------------


@dataclass
class AscentResult:
    """Result of :func:`gradient_ascent`: final logits ``theta: [S, A]``, ``returns[k] = J(theta_k)``,
    ``grad_norms[k] = ||g(theta_k)||`` of the followed direction (k = 0..number of steps taken), ``converged``:
    whether ``||g||`` reached the ascent's ``tol`` (always False without one), and ``newton_steps``: how many of the
    steps were Newton steps (the last ones)."""

    theta: torch.Tensor
    returns: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    converged: bool = False
    newton_steps: int = 0


def gradient_ascent(mdp: tb.MDP, theta0: torch.Tensor, tau: float, pi_bar: torch.Tensor | None, mu0: torch.Tensor,
                    direction: Callable[[torch.Tensor], torch.Tensor], steps: int, lr: float,
                    tol: float | None = None, newton_steps: int = 0) -> AscentResult:
    """``theta_{k+1} = theta_k + lr * direction(theta_k)`` for ``steps`` steps, recording ``J(theta_k)``
    (:func:`regularized_return` with ``gamma = mdp.gamma``) and ``||direction(theta_k)||``. With ``tol``, ``steps``
    is a maximum: the ascent stops at the first ``theta_k`` with ``||direction(theta_k)|| <= tol``
    (``converged = True``), so that it reaches the same accuracy whatever the instance's conditioning.

    ``newton_steps``: if the fixed-step phase ends above ``tol``, at most this many Newton steps on
    ``direction(theta) = 0`` follow (:func:`newton_step`), recorded the same way. A fixed step converges at the rate
    of the flattest direction, and a policy near-deterministic in a rarely visited state makes that rate tiny (the
    curvature there is ``tau rho(s) Cov_pi``); Newton's method does not care.

    ``direction`` maps logits ``[S, A]`` to an ascent direction ``[S, A]``, e.g. the exact expectation of the proper or
    the naive estimator (:func:`exact_gradient`), or :func:`true_gradient`.
    """
    theta = _theta(mdp, theta0, "theta0").detach().to(DTYPE).clone()
    steps = validate_count(steps, "steps", 0)
    newton_steps = validate_count(newton_steps, "newton_steps", 0)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0 or None, got {tol!r}")
    if newton_steps and tol is None:
        raise ValueError("newton_steps needs a tol to stop at")
    out = AscentResult(theta)
    for k in range(steps + newton_steps + 1):
        out.returns.append(regularized_return(mdp, theta, tau, pi_bar, mu0).item())
        g = direction(theta)
        out.grad_norms.append(g.norm().item())
        if tol is not None and out.grad_norms[-1] <= tol:
            out.converged = True
            break
        if k < steps:
            theta = theta + lr * g
        elif k < steps + newton_steps:
            theta = theta + newton_step(direction, theta, g)
            out.newton_steps += 1
    out.theta = theta
    return out


def newton_step(direction: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                value: torch.Tensor | None = None, h: float = 1e-6) -> torch.Tensor:
    """One Newton step ``delta`` toward a zero of the field ``g = direction(theta)``: ``[S, A]``, like ``theta``.

    ``delta = -J^+ g`` with ``J = dg/dtheta`` by central differences of step ``h`` (the fields of this module compute
    their gradients with autograd inside, so a functional transform cannot differentiate them) and the
    pseudo-inverse because the logits of a state are defined up to a constant (``J`` is singular along those
    directions). The step is halved, up to 40 times, until ``||g||`` decreases. ``value``: ``direction(theta)`` if
    already computed.
    """
    if not (isinstance(h, (int, float)) and 0 < h < 1):
        raise ValueError(f"h must be a step in (0, 1), got {h!r}")
    g = direction(theta) if value is None else value
    n = theta.numel()
    cols = []
    for i in range(n):
        e = torch.zeros(n, dtype=theta.dtype)
        e[i] = h
        e = e.reshape(theta.shape)
        cols.append(((direction(theta + e) - direction(theta - e)) / (2 * h)).reshape(-1))
    delta = -(torch.linalg.pinv(torch.stack(cols, 1)) @ g.reshape(-1)).reshape(theta.shape)
    norm = float(g.norm())
    for _ in range(40):
        if float(direction(theta + delta).norm()) < norm:
            return delta
        delta = delta / 2
    raise RuntimeError(f"newton_step: no step along the Newton direction decreases ||direction|| = {norm:.3g}")
