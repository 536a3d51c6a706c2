"""Random finite MDPs and exact entropy-regularized evaluation (Section 3 of the paper), in float64 torch.

Notation (``S`` states, ``A`` actions):

- ``P: [S, A, S]`` with ``P[s, a, s'] = P(s' | s, a)``; ``R: [S, A]`` the expected reward ``E[r | s, a]``.
- A policy ``pi: [S, A]`` has rows on the simplex; the reference ``pi_bar`` is ``[S, A]``, ``[A]`` or ``None``
  (uniform), as in :mod:`softq.regularized`; ``KL(s) = D_KL[pi(.|s) || pi_bar(.|s)]``.
- Values are ``v: [..., S]`` and action values ``q: [..., S, A]``; the backups work on any leading batch shape.

Episodic problems mark some states ``terminal``: reaching one ends the episode, so rewards, KL penalties and values
there are 0. Internally every computation uses the *live* (sub-stochastic) dynamics ``P_live``, which drops the
probability of moving into, or out of, a terminal state; with ``gamma = 1`` this keeps every sum finite as long as
each policy ends its episodes with probability 1 (which :func:`random_mdp` ensures with ``p_end > 0``).

Every function is built on :mod:`softq.regularized` (``policy_value``, ``soft_value``, ``boltzmann_policy``, ``kl``):
the formulas are written there once, and here only composed with the dynamics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from softq.config import DTYPE
from softq.regularized import (
    boltzmann_policy,
    kl,
    policy_value,
    soft_value,
    validate_count,
    validate_distribution,
    validate_gamma,
    validate_tau,
)

__all__ = [
    "MDP",
    "random_mdp",
    "random_deterministic_mdp",
    "random_policy",
    "survival_horizon",
    "policy_kl",
    "expected_soft_reward",
    "state_transition",
    "lookahead",
    "v_pi",
    "q_pi",
    "backup_v",
    "backup_q",
    "backup_v_n",
    "backup_q_n",
    "backup_q_powers",
    "boltzmann_backup",
    "boltzmann_backup_n",
    "boltzmann_backup_lambda",
    "SoftSolution",
    "soft_value_iteration",
    "soft_policy_iteration",
    "trajectory_expectations",
    "expected_discounted_sum",
    "Rollout",
    "sample_rollout",
]

_P_ATOL = 1e-9  # rows of P must sum to 1 this closely


@dataclass(frozen=True)
class MDP:
    """A finite MDP: ``P: [S, A, S]`` transition probabilities, ``R: [S, A]`` expected rewards, discount ``gamma``.

    ``terminal: [S]`` bool (or ``None``) marks states that end the episode (see the module docstring). Tensors are
    stored in float64. ``gamma = 1`` requires terminal states. Raises ValueError naming the bad argument.
    """

    P: torch.Tensor
    R: torch.Tensor
    gamma: float
    terminal: torch.Tensor | None = None

    def __post_init__(self) -> None:
        P, R = self.P, self.R
        if not isinstance(P, torch.Tensor) or P.ndim != 3 or P.shape[0] != P.shape[2] or 0 in P.shape:
            shape = tuple(P.shape) if isinstance(P, torch.Tensor) else type(P).__name__
            raise ValueError(f"P must be a tensor of shape [S, A, S], got {shape}")
        P = validate_distribution(P.to(DTYPE), "P", atol=_P_ATOL)
        n_states, n_actions = P.shape[:2]
        if not isinstance(R, torch.Tensor) or tuple(R.shape) != (n_states, n_actions):
            shape = tuple(R.shape) if isinstance(R, torch.Tensor) else type(R).__name__
            raise ValueError(f"R must be a tensor of shape [S, A] = {(n_states, n_actions)}, got {shape}")
        R = R.to(DTYPE)
        if not torch.all(torch.isfinite(R)):
            raise ValueError("R must be finite")
        gamma = validate_gamma(self.gamma)
        terminal = self.terminal
        if terminal is not None:
            if not isinstance(terminal, torch.Tensor) or tuple(terminal.shape) != (n_states,):
                raise ValueError(f"terminal must be a bool tensor of shape [S] = ({n_states},), got {terminal!r}")
            terminal = terminal.to(torch.bool)
            if bool(terminal.all()):
                raise ValueError("terminal must leave at least one non-terminal state")
        if gamma == 1.0 and (terminal is None or not bool(terminal.any())):
            raise ValueError("gamma=1.0 needs terminal states (pass terminal=...), else values are infinite")
        object.__setattr__(self, "P", P)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "terminal", terminal)

    @property
    def n_states(self) -> int:
        return self.P.shape[0]

    @property
    def n_actions(self) -> int:
        return self.P.shape[1]

    @property
    def live(self) -> torch.Tensor:
        """``[S]``: 1.0 at non-terminal states, 0.0 at terminal ones."""
        if self.terminal is None:
            return torch.ones(self.n_states, dtype=DTYPE)
        return (~self.terminal).to(DTYPE)

    @property
    def P_live(self) -> torch.Tensor:
        """``[S, A, S]``: ``P`` with every move into or out of a terminal state removed (sub-stochastic)."""
        live = self.live
        return self.P * live[:, None, None] * live[None, None, :]

    @property
    def R_live(self) -> torch.Tensor:
        """``[S, A]``: ``R`` with 0 at terminal states."""
        return self.R * self.live[:, None]


def random_mdp(
    n_states: int,
    n_actions: int,
    gamma: float,
    seed: int,
    *,
    n_terminal: int = 0,
    p_end: float | tuple[float, float] = 0.0,
    concentration: float = 1.0,
    reward_scale: float = 1.0,
) -> MDP:
    """A random MDP: ``P(.|s, a) ~ Dirichlet(concentration)``, ``R(s, a) ~ N(0, reward_scale^2)``.

    With ``n_terminal > 0`` the last ``n_terminal`` states are terminal (absorbing, reward 0) and every
    non-terminal ``(s, a)`` moves to a uniformly chosen terminal state with probability ``p_end`` (else to a
    Dirichlet-random non-terminal state), so every policy ends its episodes: ``gamma = 1`` is then allowed.
    ``p_end = (low, high)`` draws that probability per ``(s, a)`` uniformly from ``[low, high]``, so that how long
    an episode lasts depends on the policy. Seeded by ``numpy.random.default_rng(seed)``.
    """
    n_states, n_actions = validate_count(n_states, "n_states"), validate_count(n_actions, "n_actions")
    n_terminal = validate_count(n_terminal, "n_terminal", 0)
    if n_terminal >= n_states:
        raise ValueError(f"n_terminal must be < n_states={n_states}, got {n_terminal}")
    low, high = (p_end, p_end) if isinstance(p_end, int | float) else tuple(p_end)
    if not 0.0 <= low <= high <= 1.0 or (low > 0) != (n_terminal > 0):
        raise ValueError(f"p_end must be in (0, 1] (or a pair low <= high there) with terminal states and 0 without,"
                         f" got p_end={p_end!r}")
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(seed)
    n_live = n_states - n_terminal
    P = np.zeros((n_states, n_actions, n_states))
    end = rng.uniform(low, high, size=(n_live, n_actions, 1)) if high > low else np.full((n_live, n_actions, 1), low)
    P[:n_live, :, :n_live] = (1 - end) * rng.dirichlet(np.full(n_live, concentration), size=(n_live, n_actions))
    if n_terminal:
        P[:n_live, :, n_live:] = end / n_terminal
        for s in range(n_live, n_states):
            P[s, :, s] = 1.0
    R = reward_scale * rng.standard_normal((n_states, n_actions))
    R[n_live:] = 0.0
    terminal = None
    if n_terminal:
        terminal = torch.zeros(n_states, dtype=torch.bool)
        terminal[n_live:] = True
    return MDP(torch.tensor(P, dtype=DTYPE), torch.tensor(R, dtype=DTYPE), gamma, terminal)


def random_deterministic_mdp(n_states: int, n_actions: int, gamma: float, seed: int, *,
                             reward_scale: float = 1.0) -> MDP:
    """A random MDP with deterministic transitions: each ``(s, a)`` moves to one uniformly drawn state ``s'``.

    ``P[s, a]`` is one-hot, ``R(s, a) ~ N(0, reward_scale^2)``; no terminal states (so ``gamma < 1``). The setting
    of path consistency (Section 7, eqs 88-90), where ``Q^pi(s_t, a_t) = r_t + gamma V^pi(s_{t+1})`` holds on every
    path and not only in expectation. (:func:`random_mdp` with a small ``concentration`` is only *nearly*
    deterministic.) Seeded by ``numpy.random.default_rng(seed)``.
    """
    n_states, n_actions = validate_count(n_states, "n_states"), validate_count(n_actions, "n_actions")
    if not (isinstance(reward_scale, int | float) and reward_scale >= 0 and np.isfinite(reward_scale)):
        raise ValueError(f"reward_scale must be a finite number >= 0, got {reward_scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(seed)
    nxt = rng.integers(n_states, size=(n_states, n_actions))
    P = np.zeros((n_states, n_actions, n_states))
    np.put_along_axis(P, nxt[..., None], 1.0, axis=-1)
    R = reward_scale * rng.standard_normal((n_states, n_actions))
    return MDP(torch.tensor(P, dtype=DTYPE), torch.tensor(R, dtype=DTYPE), gamma)


def random_policy(n_states: int, n_actions: int, seed: int, concentration: float = 1.0) -> torch.Tensor:
    """``[S, A]``: each row ``~ Dirichlet(concentration)`` (small concentration: near-deterministic policies)."""
    n_states, n_actions = validate_count(n_states, "n_states"), validate_count(n_actions, "n_actions")
    if not concentration > 0:
        raise ValueError(f"concentration must be > 0, got {concentration!r}")
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.dirichlet(np.full(n_actions, concentration), size=n_states), dtype=DTYPE)


# --- argument checks ----------------------------------------------------------------------------------------------


def _policy(mdp: MDP, pi: torch.Tensor, name: str = "pi", batched: bool = False) -> torch.Tensor:
    shape = (mdp.n_states, mdp.n_actions)
    ok = isinstance(pi, torch.Tensor) and (tuple(pi.shape[-2:]) == shape if batched else tuple(pi.shape) == shape)
    if not ok:
        got = tuple(pi.shape) if isinstance(pi, torch.Tensor) else type(pi).__name__
        raise ValueError(f"{name} must have shape {'[..., S, A]' if batched else '[S, A]'} = {shape}, got {got}")
    return validate_distribution(pi.to(DTYPE), name)


def _reference(mdp: MDP, pi_bar: torch.Tensor | None) -> torch.Tensor | None:
    if pi_bar is None:
        return None
    shapes = ((mdp.n_actions,), (mdp.n_states, mdp.n_actions))
    if not isinstance(pi_bar, torch.Tensor) or tuple(pi_bar.shape) not in shapes:
        got = tuple(pi_bar.shape) if isinstance(pi_bar, torch.Tensor) else type(pi_bar).__name__
        raise ValueError(f"pi_bar must be None or have shape [A] or [S, A] (one of {shapes}), got {got}")
    return validate_distribution(pi_bar.to(DTYPE), "pi_bar")


def _values(mdp: MDP, x: torch.Tensor, name: str, action_axis: bool) -> torch.Tensor:
    tail = (mdp.n_states, mdp.n_actions) if action_axis else (mdp.n_states,)
    if not isinstance(x, torch.Tensor) or tuple(x.shape[len(x.shape) - len(tail):]) != tail:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape {'[..., S, A]' if action_axis else '[..., S]'} ending in {tail}, "
                         f"got {got}")
    return x.to(DTYPE)


# --- one step of dynamics -----------------------------------------------------------------------------------------


def policy_kl(mdp: MDP, pi: torch.Tensor, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``KL(s) = D_KL[pi(.|s) || pi_bar(.|s)]`` (Section 3), 0 at terminal states: ``[S]``."""
    pi, pi_bar = _policy(mdp, pi), _reference(mdp, pi_bar)
    return mdp.live * kl(pi, pi_bar)


def expected_soft_reward(mdp: MDP, pi: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``E_{a~pi}[R(s, a)] - tau KL(s)``: the expected per-step term ``r_t - tau KL_t`` of eq (24), ``[S]``."""
    pi, pi_bar = _policy(mdp, pi), _reference(mdp, pi_bar)
    return mdp.live * policy_value(mdp.R, pi, tau, pi_bar)


def state_transition(mdp: MDP, pi: torch.Tensor) -> torch.Tensor:
    """``P_pi[s, s'] = sum_a pi(a|s) P(s'|s, a)`` (live dynamics): ``[S, S]``."""
    return torch.einsum("sa,sat->st", _policy(mdp, pi), mdp.P_live)


def lookahead(mdp: MDP, v: torch.Tensor) -> torch.Tensor:
    """``E_{(r, s') ~ P(.|s, a)}[r + gamma v(s')]``: one step of dynamics, then ``v``. ``[..., S] -> [..., S, A]``.

    Every backup of Section 3 is this lookahead applied to some value of the next state: eq (25) with ``V^pi``,
    (33) with ``E_pi[Q] - tau KL``, (39) with ``V_Q``; eq (32) averages it over ``a ~ pi``.
    """
    v = _values(mdp, v, "v", action_axis=False)
    return mdp.R_live + mdp.gamma * torch.einsum("sat,...t->...sa", mdp.P_live, v)


# --- exact evaluation of a fixed policy: eqs (24)-(26) ---------------------------------------------------------------


def v_pi(mdp: MDP, pi: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``V^pi(s) = E[sum_t gamma^t (r_t - tau KL_t) | s_0 = s]``, eq (24), by the linear solve
    ``(I - gamma P_pi) V = E_pi[R] - tau KL``. Returns ``[S]``."""
    c = expected_soft_reward(mdp, pi, tau, pi_bar)
    eye = torch.eye(mdp.n_states, dtype=DTYPE)
    return torch.linalg.solve(eye - mdp.gamma * state_transition(mdp, pi), c)


def q_pi(mdp: MDP, pi: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``Q^pi(s, a) = E[r_0 + sum_{t>=1} gamma^t (r_t - tau KL_t) | s_0 = s, a_0 = a]``, eq (25): ``[S, A]``.

    The sum from t = 1 on is ``gamma V^pi(s_1)``, so ``Q^pi = lookahead(V^pi)``; note there is no ``KL_0`` term.
    """
    return lookahead(mdp, v_pi(mdp, pi, tau, pi_bar))


# --- fixed-policy backups: eqs (32)-(35) -------------------------------------------------------------------------


def backup_v(mdp: MDP, pi: torch.Tensor, v: torch.Tensor, tau: float,
             pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``[T_pi V](s) = E_{a~pi, s'}[r - tau KL(s) + gamma V(s')]``, eq (32): ``[..., S] -> [..., S]``."""
    pi, pi_bar = _policy(mdp, pi), _reference(mdp, pi_bar)
    return mdp.live * policy_value(lookahead(mdp, v), pi, tau, pi_bar)


def backup_q(mdp: MDP, pi: torch.Tensor, q: torch.Tensor, tau: float,
             pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``[T_pi Q](s, a) = E_{s'}[r + gamma (E_{a'~pi}[Q(s', a')] - tau KL(s'))]``, eq (33): ``[..., S, A]``.

    ``pi`` may carry the same leading batch shape as ``q`` (e.g. a Boltzmann policy of a batch of Q's).
    """
    pi, pi_bar = _policy(mdp, pi, batched=True), _reference(mdp, pi_bar)
    q = _values(mdp, q, "q", action_axis=True)
    return lookahead(mdp, policy_value(q, pi, tau, pi_bar))


def _n_times(step: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(validate_count(n, "n", 0)):
        x = step(x)
    return x


def backup_q_powers(mdp: MDP, pi: torch.Tensor, q: torch.Tensor, n: int, tau: float,
                    pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``[Q, T_pi Q, T_pi^2 Q, ..., T_pi^n Q]`` stacked: ``[n + 1, ..., S, A]`` (for series such as eq 42)."""
    out = [_values(mdp, q, "q", action_axis=True)]
    for _ in range(validate_count(n, "n", 0)):
        out.append(backup_q(mdp, pi, out[-1], tau, pi_bar))
    return torch.stack(out)


def backup_v_n(mdp: MDP, pi: torch.Tensor, v: torch.Tensor, n: int, tau: float,
               pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``T_pi^n V``: eq (32) applied ``n >= 0`` times, which eq (34) writes as an n-step expected return."""
    return _n_times(lambda x: backup_v(mdp, pi, x, tau, pi_bar), v, n)


def backup_q_n(mdp: MDP, pi: torch.Tensor, q: torch.Tensor, n: int, tau: float,
               pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``T_pi^n Q``: eq (33) applied ``n >= 0`` times, which eq (35) writes as an n-step expected return."""
    return _n_times(lambda x: backup_q(mdp, pi, x, tau, pi_bar), q, n)


# --- Boltzmann backups: eqs (38)-(43) ----------------------------------------------------------------------------


def boltzmann_backup(mdp: MDP, q: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``[T Q](s, a) = E_{s'}[r + gamma V_Q(s')]``, the Boltzmann (soft Bellman optimality) backup, eq (39).

    Equal to ``backup_q(mdp, boltzmann_policy(q), q)``, the (*) form of eq (38). ``[..., S, A] -> [..., S, A]``.
    """
    q = _values(mdp, q, "q", action_axis=True)
    return lookahead(mdp, soft_value(q, tau, _reference(mdp, pi_bar)))


def boltzmann_backup_n(mdp: MDP, q: torch.Tensor, n: int, tau: float,
                       pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``T_{pi^B_Q, n} Q = (T_{pi^B_Q})^n Q``, eqs (40)-(41): n fixed-policy backups with the Boltzmann policy
    of the *input* ``Q`` held fixed. Not ``T^n Q`` for n >= 2 (the policy would change each step)."""
    pi = boltzmann_policy(_values(mdp, q, "q", action_axis=True), tau, _reference(mdp, pi_bar))
    return backup_q_n(mdp, pi, q, n, tau, pi_bar)


def _affine_fixed_point(step: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """Solve ``x = step(x)`` for an affine ``step`` on tensors of ``shape`` (batched over a leading axis) whose
    linear part has spectral radius < 1: ``(I - L) x = step(0)``, with ``L`` read off by stepping the unit vectors."""
    d = int(np.prod(shape))
    offset = step(torch.zeros(shape, dtype=DTYPE)).reshape(d)
    basis = torch.eye(d, dtype=DTYPE).reshape(d, *shape)
    linear = (step(basis).reshape(d, d) - offset).T  # column j: the image of unit vector j
    return torch.linalg.solve(torch.eye(d, dtype=DTYPE) - linear, offset).reshape(shape)


def boltzmann_backup_lambda(mdp: MDP, q: torch.Tensor, lam: float, tau: float,
                            pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """TD(lambda) Boltzmann backup, eq (42): ``(1 - lam) sum_{n>=1} lam^(n-1) (T_{pi^B_Q})^n Q``. ``q: [S, A]``.

    Since ``T = T_{pi^B_Q}`` is affine and the weights sum to 1, ``X = T_lam Q`` solves the linear fixed-point
    equation ``X = (1 - lam) T Q + lam T X`` (a ``lam * gamma`` contraction), which is solved exactly.
    ``lam = 0`` gives ``T Q`` (eq 38); ``lam = 1`` gives ``Q^{pi^B_Q}``, the Q-function of the Boltzmann policy.
    """
    lam = validate_gamma(lam, "lam")
    q = _values(mdp, q, "q", action_axis=True)
    if q.ndim != 2:
        raise ValueError(f"q must have shape [S, A] here (no batch), got {tuple(q.shape)}")
    pi = boltzmann_policy(q, tau, _reference(mdp, pi_bar))
    tq = backup_q(mdp, pi, q, tau, pi_bar)
    return _affine_fixed_point(lambda x: (1 - lam) * tq + lam * backup_q(mdp, pi, x, tau, pi_bar), tuple(q.shape))


# --- optimal entropy-regularized control ------------------------------------------------------------------------


@dataclass
class SoftSolution:
    """Result of :func:`soft_value_iteration` / :func:`soft_policy_iteration`.

    ``q: [S, A]`` (Q*), ``v: [S]`` (``V_{Q*}``, 0 at terminal states), ``pi: [S, A]`` (``pi* = pi^B_{Q*}``),
    ``iterations``, and ``residuals[k] = ||Q_{k+1} - Q_k||_inf``.
    """

    q: torch.Tensor
    v: torch.Tensor
    pi: torch.Tensor
    iterations: int
    residuals: list[float] = field(default_factory=list)


def _solution(mdp: MDP, q: torch.Tensor, tau: float, pi_bar, iterations: int, residuals: list[float]):
    pi_bar = _reference(mdp, pi_bar)
    return SoftSolution(q, mdp.live * soft_value(q, tau, pi_bar), boltzmann_policy(q, tau, pi_bar), iterations,
                        residuals)


def _iterate(step: Callable[[torch.Tensor], torch.Tensor], q: torch.Tensor, mdp: MDP, tau: float, pi_bar,
             tol: float, max_iter: int, name: str) -> SoftSolution:
    """Apply ``q <- step(q)`` until the sup-norm change is at most ``tol``; RuntimeError after ``max_iter`` steps."""
    residuals: list[float] = []
    for k in range(validate_count(max_iter, "max_iter")):
        q_next = step(q)
        residuals.append((q_next - q).abs().max().item())
        q = q_next
        if residuals[-1] <= tol:
            return _solution(mdp, q, tau, pi_bar, k + 1, residuals)
    raise RuntimeError(f"{name}: residual {residuals[-1]:.3g} > tol={tol} after {max_iter} iterations")


def soft_value_iteration(mdp: MDP, tau: float, pi_bar: torch.Tensor | None = None, *, q0: torch.Tensor | None = None,
                         tol: float = 1e-12, max_iter: int = 100_000) -> SoftSolution:
    """Iterate the Boltzmann backup ``Q <- T Q`` (eq 39) from ``q0`` (default 0) until ``||T Q - Q||_inf <= tol``.

    ``T`` is a gamma-contraction in the sup norm, so the error after stopping is at most
    ``gamma / (1 - gamma) * tol``. Raises RuntimeError if ``max_iter`` sweeps do not reach ``tol``.
    """
    validate_tau(tau)
    q = torch.zeros(mdp.n_states, mdp.n_actions, dtype=DTYPE) if q0 is None else _values(mdp, q0, "q0", True)
    return _iterate(lambda q: boltzmann_backup(mdp, q, tau, pi_bar), q, mdp, tau, pi_bar, tol, max_iter,
                    "soft_value_iteration")


def soft_policy_iteration(mdp: MDP, tau: float, pi_bar: torch.Tensor | None = None, *, tol: float = 1e-12,
                          max_iter: int = 1000) -> SoftSolution:
    """Soft policy iteration: ``pi <- pi^B_{Q^pi}`` (eqs 25, 28) from the reference policy, until Q^pi stops moving.

    Each step improves V^pi at every state (soft policy improvement); the fixed point is ``Q* = Q^{pi^B_{Q*}}``.
    """
    pi_bar_checked = _reference(mdp, pi_bar)
    if pi_bar_checked is None:
        pi = torch.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions, dtype=DTYPE)
    else:
        pi = pi_bar_checked.expand(mdp.n_states, mdp.n_actions).clone()
    return _iterate(lambda q: q_pi(mdp, boltzmann_policy(q, tau, pi_bar_checked), tau, pi_bar),
                    q_pi(mdp, pi, tau, pi_bar), mdp, tau, pi_bar, tol, max_iter, "soft_policy_iteration")


# --- exact expectations over trajectories, and sampled rollouts --------------------------------------------------


def trajectory_expectations(mdp: MDP, pi: torch.Tensor, f: torch.Tensor, horizon: int,
                            given: str = "state_action") -> torch.Tensor:
    """Exact ``E[f(s_t, a_t) | start]`` for ``t = 0 .. horizon`` under ``pi`` (live dynamics; f is 0 once the
    episode has ended), by propagating one step of dynamics at a time (the matrix powers of ``P_pi``).

    ``f: [S, A]`` or ``[S]`` (a function of the state only). ``given="state_action"``: start ``s_0 = s, a_0 = a``
    (the ``a_0`` is fixed, later actions ``~ pi``), returns ``[horizon + 1, S, A]``; ``given="state"``: start
    ``s_0 = s`` with ``a_0 ~ pi``, returns ``[horizon + 1, S]``.
    """
    pi = _policy(mdp, pi)
    if given not in ("state_action", "state"):
        raise ValueError(f"given must be 'state_action' or 'state', got {given!r}")
    if isinstance(f, torch.Tensor) and tuple(f.shape) == (mdp.n_states,):
        f = f[:, None].expand(mdp.n_states, mdp.n_actions)
    e = _values(mdp, f, "f", action_axis=True) * mdp.live[:, None]
    if e.ndim != 2:
        raise ValueError(f"f must have shape [S, A] or [S], got {tuple(f.shape)}")
    out = [e]
    for _ in range(validate_count(horizon, "horizon", 0)):
        e = torch.einsum("sat,t->sa", mdp.P_live, (pi * e).sum(-1))
        out.append(e)
    stacked = torch.stack(out)
    return stacked if given == "state_action" else (pi * stacked).sum(-1)


def survival_horizon(mdp: MDP, pi: torch.Tensor, mu0: torch.Tensor, tail: float, *, max_steps: int = 1_000_000
                     ) -> int:
    """The smallest ``H`` with ``P(the episode is still running after H steps) <= tail`` from ``s_0 ~ mu0`` under
    ``pi``: the exact survival probability ``mu0^T P_pi,live^H 1`` (:func:`trajectory_expectations` of the live
    indicator), propagated one step at a time. A sampled rollout of ``H`` steps then truncates an episode with
    probability at most ``tail``. ``mu0: [S]``. Raises ValueError, with the survival reached, if the episodes do not
    end fast enough for ``tail`` within ``max_steps`` (a continuing MDP never does)."""
    pi = _policy(mdp, pi)
    if not (isinstance(tail, int | float) and 0 < tail < 1):
        raise ValueError(f"tail must lie in (0, 1), got {tail!r}")
    alive = _values(mdp, mu0, "mu0", action_axis=False) * mdp.live
    step = state_transition(mdp, pi)  # live dynamics: the mass that ends an episode leaves
    for h in range(validate_count(max_steps, "max_steps", 1) + 1):
        survival = float(alive.sum())
        if survival <= tail:
            return h
        alive = alive @ step
    raise ValueError(f"survival_horizon: P(still running) is {survival:.3g} after {max_steps} steps, above "
                     f"tail = {tail:g}: the episodes end too slowly (or never)")


def expected_discounted_sum(mdp: MDP, pi: torch.Tensor, f: torch.Tensor, n: int, discount: float | None = None,
                            given: str = "state_action") -> torch.Tensor:
    """Exact ``E[sum_{t=0}^{n-1} discount^t f(s_t, a_t) | start]`` (``discount`` defaults to ``mdp.gamma``).

    The expectation operator of eqs (24), (25), (34)-(37), (40)-(43); arguments as :func:`trajectory_expectations`.
    Returns ``[S, A]`` (``given="state_action"``) or ``[S]`` (``given="state"``); ``n = 0`` gives zeros.
    """
    discount = mdp.gamma if discount is None else validate_gamma(discount, "discount")
    if validate_count(n, "n", 0) == 0:
        shape = (mdp.n_states, mdp.n_actions) if given == "state_action" else (mdp.n_states,)
        return torch.zeros(shape, dtype=DTYPE)
    e = trajectory_expectations(mdp, pi, f, n - 1, given)
    w = discount ** torch.arange(n, dtype=DTYPE)
    return torch.einsum("t,t...->...", w, e)


@dataclass
class Rollout:
    """Sampled experience, time first: ``[T, B]`` long ``states``, ``actions``, ``next_states``; float64 ``rewards``
    (``R(s_t, a_t)``); bool ``dones`` (``s_{t+1}`` terminal; the lane then restarts from its start state)."""

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    next_states: torch.Tensor


def _draw(cdf: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One index per row of ``cdf: [B, K]`` (cumulative probabilities), by inverse-CDF sampling."""
    u = torch.rand(cdf.shape[0], 1, generator=g, dtype=cdf.dtype)
    return (cdf < u * cdf[:, -1:]).sum(-1).clamp(max=cdf.shape[-1] - 1)


def sample_rollout(mdp: MDP, pi: torch.Tensor, start: torch.Tensor, horizon: int, seed: int,
                   first_action: torch.Tensor | None = None) -> Rollout:
    """Run ``B = len(start)`` lanes of ``pi`` for ``horizon`` steps from states ``start: [B]``.

    ``first_action: [B]`` forces ``a_0`` (to estimate Q); later actions are drawn from ``pi``. A lane that reaches
    a terminal state restarts from its start state, as a vectorized environment does. Seeded by ``seed``.
    """
    pi = _policy(mdp, pi)
    horizon = validate_count(horizon, "horizon")
    start = torch.as_tensor(start, dtype=torch.long)
    if start.ndim != 1 or bool((start < 0).any()) or bool((start >= mdp.n_states).any()):
        raise ValueError(f"start must be a [B] tensor of states in [0, {mdp.n_states}), got {start!r}")
    terminal = mdp.terminal if mdp.terminal is not None else torch.zeros(mdp.n_states, dtype=torch.bool)
    if bool(terminal[start].any()):
        raise ValueError(f"start must hold non-terminal states, got {start.tolist()}")
    if first_action is not None:
        first_action = torch.as_tensor(first_action, dtype=torch.long)
        if first_action.shape != start.shape or bool((first_action < 0).any()) \
                or bool((first_action >= mdp.n_actions).any()):
            raise ValueError(f"first_action must be a [B] tensor of actions in [0, {mdp.n_actions}), got "
                             f"{first_action!r}")
    g = torch.Generator().manual_seed(seed)
    s = start.clone()
    cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("states", "actions", "rewards", "dones", "next_states")}
    pi_cdf, p_cdf = pi.cumsum(-1), mdp.P.cumsum(-1)
    for t in range(horizon):
        a = _draw(pi_cdf[s], g)
        if t == 0 and first_action is not None:
            a = first_action
        s_next = _draw(p_cdf[s, a], g)
        done = terminal[s_next]
        for k, x in zip(cols, (s, a, mdp.R[s, a], done, s_next), strict=True):
            cols[k].append(x)
        s = torch.where(done, start, s_next)
    return Rollout(**{k: torch.stack(v) for k, v in cols.items()})
