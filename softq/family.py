"""The family around the theorem (Section 7 and later work): PGQ, path consistency, Soft Actor-Critic, Munchausen.

Each function here is a formula of a related method, composed from :mod:`softq.regularized` and
:mod:`softq.tabular` so that the comparison with this paper's objects is made on the very functions the book
verifies. Chapter 9 checks them.

- :func:`pgq_q`: PGQ's decomposition (O'Donoghue et al. 2016), eq (87) corrected: ``Q = V + tau (log pi + S[pi])``.
- :func:`policy_advantage`: ``tau log(pi / pi_bar)``, the left side of eq (89).
- :func:`follow_actions`, :func:`path_sums`: the n-step path consistency of PCL (Nachum et al. 2017), eqs (88)-(90),
  along any action sequence.
- :func:`sac_policy_improvement`, :func:`sac_backup`: Soft Actor-Critic's (Haarnoja et al. 2018) policy step (a KL
  projection onto the Boltzmann policy) and its entropy-bonus soft Q target.
- :func:`munchausen_backup`, :func:`mirror_descent_backup`: Munchausen value iteration (Vieillard et al. 2020) and
  the KL-regularized (towards the previous policy) soft value iteration it equals.

Shapes as in :mod:`softq.tabular`: ``q: [S, A]``, ``v: [S]``, ``pi, log_pi: [S, A]``, rollouts ``[T, B]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import softq.tabular as tb
from softq.config import DTYPE
from softq.regularized import (
    boltzmann_policy,
    discounted_sum,
    entropy,
    kl,
    log_boltzmann_policy,
    n_step_soft_return,
    q_from_value_and_policy,
    soft_value,
    td_errors,
    validate_count,
    validate_gamma,
    validate_tau,
)

__all__ = [
    "pgq_q",
    "policy_advantage",
    "follow_actions",
    "PathSums",
    "path_sums",
    "sac_policy_objective",
    "sac_policy_improvement",
    "sac_backup",
    "munchausen_backup",
    "geometric_reference",
    "mirror_descent_backup",
    "entropy_bonus_offset",
]


# --- PGQ: eq (87) -------------------------------------------------------------------------------------------------


def pgq_q(v: torch.Tensor, log_pi: torch.Tensor, tau: float) -> torch.Tensor:
    """PGQ's decomposition, eq (87) *corrected*: ``Q(s, a) = V(s) + tau (log pi(a|s) + S[pi(.|s)])``.

    ``S`` is the Shannon entropy, so the term multiplying ``tau`` has mean zero under ``pi`` and ``V = E_pi[Q]``
    (PGQ's value, which leaves out the first-step entropy). The paper types ``tau S`` inside the parentheses
    (``tau^2 S`` overall). Shapes: ``v: [...]``, ``log_pi: [..., A]`` -> ``[..., A]``.
    """
    tau = validate_tau(tau)
    if v.shape != log_pi.shape[:-1]:
        raise ValueError(f"v must have shape log_pi.shape[:-1] = {tuple(log_pi.shape[:-1])}, got {tuple(v.shape)}")
    return v[..., None] + tau * (log_pi + entropy(log_pi.exp())[..., None])


def policy_advantage(log_pi: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``tau log(pi(a|s) / pi_bar(a|s))``: the left side of eq (89), the advantage ``Q - V`` that ``pi`` implies if it
    is the Boltzmann policy of ``Q`` (eq 57 with ``V = 0``). Shapes: ``log_pi: [..., A]`` -> ``[..., A]``."""
    return q_from_value_and_policy(torch.zeros(log_pi.shape[:-1], dtype=log_pi.dtype), log_pi, tau, pi_bar)


# --- path consistency: eqs (88)-(90) ------------------------------------------------------------------------------


def follow_actions(mdp: tb.MDP, start: torch.Tensor, actions: torch.Tensor, seed: int = 0) -> tb.Rollout:
    """Take the given actions ``actions: [T, B]`` (any sequence: off-policy, even adversarial) from ``start: [B]``.

    Next states are drawn from ``P`` (seeded by ``seed``; with deterministic dynamics every draw is the one next
    state). The MDP must have no terminal states. Returns a :class:`softq.tabular.Rollout` (``dones`` all False).
    """
    if mdp.terminal is not None and bool(mdp.terminal.any()):
        raise ValueError("mdp must have no terminal states for follow_actions (paths of a continuing MDP)")
    start = torch.as_tensor(start, dtype=torch.long)
    if start.ndim != 1 or bool((start < 0).any()) or bool((start >= mdp.n_states).any()):
        raise ValueError(f"start must be a [B] tensor of states in [0, {mdp.n_states}), got {start!r}")
    actions = torch.as_tensor(actions, dtype=torch.long)
    if actions.ndim != 2 or actions.shape[1] != start.shape[0] or actions.shape[0] == 0:
        raise ValueError(f"actions must have shape [T, B] with T >= 1 and B = len(start) = {start.shape[0]}, "
                         f"got {tuple(actions.shape)}")
    if bool((actions < 0).any()) or bool((actions >= mdp.n_actions).any()):
        raise ValueError(f"actions must lie in [0, {mdp.n_actions}), got min {actions.min()}, max {actions.max()}")
    g = torch.Generator().manual_seed(validate_count(seed, "seed", 0))
    cdf = mdp.P.cumsum(-1)
    s, states, nexts = start, [], []
    for a in actions:
        u = torch.rand(s.shape[0], 1, generator=g, dtype=DTYPE)
        s_next = (cdf[s, a] < u).sum(-1).clamp(max=mdp.n_states - 1)
        states.append(s)
        nexts.append(s_next)
        s = s_next
    states_t = torch.stack(states)
    return tb.Rollout(states_t, actions, mdp.R[states_t, actions], torch.zeros_like(actions, dtype=torch.bool),
                      torch.stack(nexts))


@dataclass
class PathSums:
    """The discounted sums of eqs (88)-(90) over every window ``t .. t+m-1`` of a path, ``m = min(n, T - t)``.

    All ``[T, B]`` (window start ``t``, lane ``b``):

    - ``advantage``: ``sum_d gamma^d A(s_{t+d}, a_{t+d})`` with ``A = Q - V``, the left side of eq (88);
    - ``td``: ``sum_d gamma^d (r_{t+d} + gamma V(s_{t+d+1}) - V(s_{t+d}))``, the middle of eq (88);
    - ``ret``: ``sum_d gamma^d r_{t+d} + gamma^m V(s_{t+m}) - V(s_t)``, the right side of eqs (88) and (90);
    - ``log_ratio``: ``sum_d gamma^d tau log(pi/pi_bar)(a_{t+d}|s_{t+d})``, the left side of eq (90).
    """

    advantage: torch.Tensor
    td: torch.Tensor
    ret: torch.Tensor
    log_ratio: torch.Tensor

    @property
    def consistency(self) -> torch.Tensor:
        """``log_ratio - ret``: eq (90)'s LHS minus RHS, PCL's consistency error (0 at the optimum, deterministic)."""
        return self.log_ratio - self.ret


def path_sums(mdp: tb.MDP, roll: tb.Rollout, q: torch.Tensor, v: torch.Tensor, log_pi: torch.Tensor, tau: float,
              pi_bar: torch.Tensor | None = None, n: int | None = None) -> PathSums:
    """Every n-step window of eqs (88)-(90) along the paths of ``roll`` (from :func:`follow_actions`).

    ``q: [S, A]`` and ``v: [S]`` are the Q and V of eq (88) (e.g. ``Q^pi``, ``V^pi``); ``log_pi: [S, A]`` the policy
    of eq (90); ``n`` the window (``None``: to the end of the path). Built on ``discounted_sum``, ``td_errors`` and
    ``n_step_soft_return`` (no KL terms: eqs 88-90 carry them inside ``V`` and ``log(pi/pi_bar)``).
    """
    tau = validate_tau(tau)
    shape = (mdp.n_states, mdp.n_actions)
    for name, x, want in (("q", q, shape), ("v", v, shape[:1]), ("log_pi", log_pi, shape)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != want:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape {list(want)}, got {got}")
    s, a, s1, r, dones = roll.states, roll.actions, roll.next_states, roll.rewards, roll.dones
    g = mdp.gamma
    td = td_errors(r, None, v[s], v[s1], dones, g, tau)
    return PathSums(
        advantage=discounted_sum((q - v[:, None])[s, a], dones, g, n),
        td=discounted_sum(td, dones, g, n),
        ret=n_step_soft_return(r, None, v[s1], dones, g, tau, n) - v[s],
        log_ratio=discounted_sum(policy_advantage(log_pi, tau, pi_bar)[s, a], dones, g, n),
    )


# --- Soft Actor-Critic ----------------------------------------------------------------------------------------------


def sac_policy_objective(pi: torch.Tensor, q: torch.Tensor, tau: float,
                         pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """SAC's policy loss per state: ``D_KL[pi(.|s) || pi^B_Q(.|s)]``, with ``pi^B_Q = pi_bar exp(Q/tau) / Z``.

    (SAC writes ``exp(Q/tau) / Z``, i.e. a uniform ``pi_bar``.) Shapes: ``pi, q: [..., A]`` -> ``[...]``.
    """
    return kl(pi, boltzmann_policy(q, tau, pi_bar))


#: The first trust radius of :func:`sac_policy_improvement`: the largest change of a logit in its first Newton step
#: (a probability ratio of e); the radius then adapts.
FIRST_LOGIT_STEP = 1.0
#: ... and its largest: a few units of logit a step, so that no step jumps across the softmax into saturation.
MAX_LOGIT_STEP = 4.0


def sac_policy_improvement(q: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None, *,
                           features: torch.Tensor | None = None, tol: float = 1e-12,
                           max_steps: int = 1000) -> torch.Tensor:
    """SAC's policy improvement step: ``argmin_{pi in Pi} sum_s D_KL[pi(.|s) || pi^B_Q(.|s)]``, by Newton's method.

    ``Pi`` is the softmax policies with logits ``z[s, a]``: free (``features=None``, the exact/tabular class, whose
    minimizer is ``pi^B_Q`` itself) or linear, ``z = features @ w`` with ``features: [S, A, F]`` (a restricted
    class: the step is then a KL projection). Starts from uniform logits and takes saddle-free Newton steps (the
    Hessian with its eigenvalues' absolute values, its flat directions left out), each within a trust region on the
    logits (from :data:`FIRST_LOGIT_STEP`, doubled after a whole step up to :data:`MAX_LOGIT_STEP`, halved after a
    shortened one: a full step
    from a flat start can land in a saturated softmax, whose vanishing gradient mimics a minimizer) and
    backtracked, until the
    largest gradient entry is at most ``tol``: the same accuracy whatever the instance's conditioning (a
    ``RuntimeError`` after ``max_steps`` steps). The objective is computed in log space,
    ``sum_a pi (log pi - log pi^B_Q)``, to stay accurate near the minimizer. Returns ``pi: [S, A]``.
    """
    from torch.func import grad, hessian

    tau = validate_tau(tau)
    if q.ndim != 2:
        raise ValueError(f"q must have shape [S, A], got {tuple(q.shape)}")
    if features is not None and (features.ndim != 3 or tuple(features.shape[:2]) != tuple(q.shape)):
        raise ValueError(f"features must have shape [S, A, F] = [{q.shape[0]}, {q.shape[1]}, F], "
                         f"got {tuple(features.shape)}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    log_target = log_boltzmann_policy(q.detach(), tau, pi_bar)
    shape = tuple(q.shape) if features is None else (features.shape[-1],)
    feats = None if features is None else features.to(DTYPE)

    def logits(w: torch.Tensor) -> torch.Tensor:
        return w.reshape(shape) if feats is None else feats @ w

    def objective(w: torch.Tensor) -> torch.Tensor:
        log_pi = torch.log_softmax(logits(w), -1)
        return (log_pi.exp() * (log_pi - log_target)).sum()

    w = torch.zeros(math.prod(shape), dtype=DTYPE)
    f, g = objective(w), grad(objective)(w)
    radius = FIRST_LOGIT_STEP
    for _ in range(validate_count(max_steps, "max_steps")):
        if g.abs().max().item() <= tol:
            return torch.softmax(logits(w), -1)
        # saddle-free Newton: |eigenvalues| of the Hessian (far from the minimizer the objective is not convex in
        # the logits), its flat directions (a constant added to one state's logits) left out
        lam, vec = torch.linalg.eigh(hessian(objective)(w))
        keep = lam.abs() > 1e-12 * lam.abs().max()
        step = -vec[:, keep] @ ((vec[:, keep].T @ g) / lam[keep].abs())
        # a trust region on the logits: no logit moves by more than `radius` in one step. Where the curvature is
        # small (a near-uniform start, a large Q / tau) a full Newton step can jump into a saturated softmax, whose
        # vanishing gradient would pass the test above far from the minimizer. The radius doubles after a step
        # taken whole and halves after one the line search had to shorten
        longest = logits(step).abs().max().item()
        capped = longest > radius
        step = step * min(1.0, radius / max(longest, 1e-300))
        t = 1.0
        while t > 1e-12:  # backtrack: sufficient decrease, or (where rounding hides it) a smaller gradient
            f_new, g_new = objective(w + t * step), grad(objective)(w + t * step)
            if f_new <= f + 1e-4 * t * (g @ step) or (f_new <= f + 1e-14 and g_new.norm() < g.norm()):
                break
            t /= 2
        w, f, g = w + t * step, f_new, g_new
        radius = min(2 * radius, MAX_LOGIT_STEP) if t == 1.0 and capped else (
            radius if t == 1.0 else max(radius / 2, 1e-3))
    raise RuntimeError(f"sac_policy_improvement: gradient {g.abs().max().item():.1e} > tol = {tol} after "
                       f"{max_steps} Newton steps")


def sac_backup(mdp: tb.MDP, pi: torch.Tensor, q: torch.Tensor, tau: float) -> torch.Tensor:
    """SAC's soft Q target in expectation: ``r + gamma E_{s'} E_{a'~pi}[Q(s', a') - tau log pi(a'|s')]``.

    The entropy-bonus form: ``E_{a'~pi}[-tau log pi] = tau S[pi(.|s')]``. With a uniform reference it is this
    paper's fixed-policy backup (eq 33) plus ``gamma tau log|A|``. Shapes: ``pi, q: [S, A]`` -> ``[S, A]``.
    """
    tau = validate_tau(tau)
    for name, x in (("pi", pi), ("q", q)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (mdp.n_states, mdp.n_actions):
            raise ValueError(f"{name} must have shape [S, A] = [{mdp.n_states}, {mdp.n_actions}], "
                             f"got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    return tb.lookahead(mdp, (pi * q).sum(-1) + tau * entropy(pi))


# --- Munchausen value iteration ------------------------------------------------------------------------------------


def munchausen_backup(mdp: tb.MDP, q: torch.Tensor, tau: float, alpha: float) -> torch.Tensor:
    """Munchausen soft value iteration (M-VI, Vieillard et al. 2020), one step, unclipped:

    ``Q_{k+1}(s, a) = r + alpha tau log pi_k(a|s) + gamma E_{s'} E_{a'~pi_k}[Q_k(s', a') - tau log pi_k(a'|s')]``,
    ``pi_k = softmax(Q_k / tau)``: the SAC target (:func:`sac_backup`) with ``alpha tau log pi_k`` added to the reward.
    ``alpha = 0`` is soft value iteration with an entropy bonus. ``q: [S, A]`` -> ``[S, A]``.
    """
    tau, alpha = validate_tau(tau), validate_gamma(alpha, "alpha")
    log_pi = log_boltzmann_policy(q, tau)
    return alpha * tau * log_pi * mdp.live[:, None] + sac_backup(mdp, log_pi.exp(), q, tau)


def geometric_reference(pi_prev: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pi_bar, log Z)`` with ``pi_bar = pi_prev^alpha / Z``, ``Z(s) = sum_a pi_prev(a|s)^alpha``.

    Then ``-alpha tau KL[pi || pi_prev] + (1 - alpha) tau S[pi] = -tau KL[pi || pi_bar] + tau log Z`` for every ``pi``:
    a KL penalty towards the previous policy plus an entropy bonus is one KL penalty towards ``pi_bar``.
    Shapes: ``pi_prev: [..., A]`` -> ``([..., A], [...])``.
    """
    alpha = validate_gamma(alpha, "alpha")
    log_w = alpha * torch.log(pi_prev)
    log_z = torch.logsumexp(log_w, -1)
    return (log_w - log_z[..., None]).exp(), log_z


def mirror_descent_backup(mdp: tb.MDP, q: torch.Tensor, pi_prev: torch.Tensor, tau: float,
                          alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """KL-regularized soft value iteration towards the previous policy (MD-VI with ``lambda = alpha tau`` and entropy
    ``(1 - alpha) tau``), in this paper's terms: ``(T Q, pi^B_Q)`` with temperature ``tau`` and reference
    ``pi_bar = pi_prev^alpha / Z`` (:func:`geometric_reference`):

    ``pi_{k+1} = pi^B_Q`` (eq 28) and ``Q_{k+1} = E_{s'}[r + gamma (V_Q(s') + tau log Z(s'))]`` (eq 39 plus the
    normalizer). With ``alpha = 1`` it is exactly this paper's Boltzmann backup (eq 39) with ``pi_bar = pi_prev``.
    Returns ``(q_next: [S, A], pi_next: [S, A])``.
    """
    tau = validate_tau(tau)
    pi_bar, log_z = geometric_reference(tb._policy(mdp, pi_prev, "pi_prev"), alpha)
    q = tb._values(mdp, q, "q", action_axis=True)
    return tb.lookahead(mdp, soft_value(q, tau, pi_bar) + tau * log_z), boltzmann_policy(q, tau, pi_bar)


def entropy_bonus_offset(mdp: tb.MDP, tau: float) -> float:
    """``gamma tau log|A| / (1 - gamma)``: how much an entropy-bonus Q exceeds the KL-to-uniform Q of the same policy
    in a continuing MDP (each later step adds ``tau log|A|``). Requires ``gamma < 1``."""
    tau = validate_tau(tau)
    if mdp.gamma >= 1:
        raise ValueError(f"mdp.gamma must be < 1 for a constant offset, got {mdp.gamma}")
    return mdp.gamma * tau * math.log(mdp.n_actions) / (1 - mdp.gamma)
