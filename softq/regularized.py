"""The entropy-regularized objects of the paper, written once: tensors in, tensors out.

Conventions (DESIGN.md):
- ``q: [..., A]`` holds action values on the last axis; every function works on any leading batch shape.
- ``pi_bar``: the reference policy, ``[..., A]`` broadcastable to ``q`` (or ``[A]``), or ``None`` for uniform.
- ``tau > 0`` is the temperature; log-sum-exp and log-softmax are computed stably, so ``tau = 1e-3`` with
  ``|q| = 1e4`` gives finite results.
- Bad arguments raise ``ValueError`` naming the argument and its value.

This module imports nothing of softq: everything else builds on it.
"""

from __future__ import annotations

import contextlib
import enum
import math

import torch

__all__ = [
    "validate_tau",
    "validate_gamma",
    "validate_count",
    "validate_distribution",
    "log_reference",
    "soft_value",
    "log_boltzmann_policy",
    "boltzmann_policy",
    "q_from_value_and_policy",
    "kl",
    "entropy",
    "PENALTIES",
    "penalty",
    "policy_value",
    "discounted_sum",
    "n_step_soft_return",
    "td_errors",
    "value_checks",
    "Backup",
    "as_backup",
    "DQN_BACKUPS",
    "backup_value",
    "backup_penalty",
    "q_learning_target",
]

_DIST_ATOL = 1e-6
_VALUE_CHECKS = [True]  # see value_checks(): the checks that read tensor *values* on the host


@contextlib.contextmanager
def value_checks(enabled: bool):
    """Turn the checks that read tensor values (probabilities sum to 1, ``dones`` hold 0/1) on or off in a block.

    Those checks copy a value to the host: inside CUDA-graph capture that is an error, and on a GPU each one stalls
    the pipeline. With ``value_checks(False)`` every function computes exactly the same numbers without them; shape
    and argument (tau, gamma, n) checks stay on. The DQN agent turns them off around its captured update.
    """
    _VALUE_CHECKS.append(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.pop()


def validate_tau(tau: float, name: str = "tau") -> float:
    """Return ``tau`` as a float if it is a finite number > 0, else raise ValueError naming it."""
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {tau!r}") from None
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"{name} must be a finite number > 0, got {tau!r}")
    return t


def validate_gamma(gamma: float, name: str = "gamma") -> float:
    """Return ``gamma`` as a float if it lies in [0, 1], else raise ValueError naming it."""
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {gamma!r}") from None
    if not (0.0 <= g <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {gamma!r}")
    return g


def validate_count(x: int, name: str, minimum: int = 1) -> int:
    """Return ``x`` if it is an int (not a bool) >= ``minimum``, else raise ValueError naming it."""
    if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {x!r}")
    return x


def validate_distribution(p: torch.Tensor, name: str = "pi_bar", atol: float = _DIST_ATOL) -> torch.Tensor:
    """Check that ``p: [..., A]`` is a probability distribution over its last axis; return it.

    Raises ValueError naming ``name`` if an entry is negative or not finite, or a row does not sum to 1.
    """
    if not isinstance(p, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of probabilities, got {type(p).__name__}")
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last (action) axis, got shape {tuple(p.shape)}")
    if not _VALUE_CHECKS[-1]:
        return p
    if not torch.all(torch.isfinite(p)) or torch.any(p < 0):
        raise ValueError(f"{name} must have finite non-negative entries, got min {p.min().item():.3g}")
    sums = p.sum(-1)
    worst = (sums - 1).abs().max().item()
    if worst > atol:
        raise ValueError(f"{name} must sum to 1 over its last axis, but a row sums to 1 {'+-'} {worst:.3g}")
    return p


def log_reference(q: torch.Tensor, pi_bar: torch.Tensor | None) -> torch.Tensor:
    """``log pi_bar`` broadcast against ``q: [..., A]``; ``pi_bar=None`` is uniform, ``log(1/A)``."""
    if q.ndim == 0:
        raise ValueError(f"q must have an action axis (shape [..., A]), got a scalar {q.item()!r}")
    n_actions = q.shape[-1]
    if pi_bar is None:
        return torch.full((n_actions,), -math.log(n_actions), dtype=q.dtype, device=q.device)
    validate_distribution(pi_bar, "pi_bar")
    if pi_bar.shape[-1] != n_actions:
        raise ValueError(f"pi_bar has {pi_bar.shape[-1]} actions but q has {n_actions} (q.shape={tuple(q.shape)})")
    return torch.log(pi_bar.to(dtype=q.dtype, device=q.device))


def soft_value(q: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``V_Q = tau * log E_{a ~ pi_bar}[exp(Q(a) / tau)]``: eqs (11), (29), (55).

    Shapes: ``q: [..., A]`` -> ``[...]``. Computed as ``tau * logsumexp(q / tau + log pi_bar)``, which is
    finite for tiny ``tau`` and large ``|q|``; as ``tau -> 0`` it tends to ``max_a q`` over the support of pi_bar.
    """
    tau = validate_tau(tau)
    return tau * torch.logsumexp(q / tau + log_reference(q, pi_bar), dim=-1)


def log_boltzmann_policy(q: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``log pi^B_Q(a) = log pi_bar(a) + (Q(a) - V_Q) / tau``: the log of eqs (2), (10), (12), (28), (30), (56).

    Shapes: ``q: [..., A]`` -> ``[..., A]``. Computed as ``log_softmax(q / tau + log pi_bar)``.
    """
    tau = validate_tau(tau)
    return torch.log_softmax(q / tau + log_reference(q, pi_bar), dim=-1)


def boltzmann_policy(q: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """The Boltzmann policy ``pi^B_Q(a) = pi_bar(a) exp(Q(a)/tau) / E_{a'~pi_bar}[exp(Q(a')/tau)]``.

    Eqs (2) (bandit, with r-bar), (10), (28) (MDP) and (56) (parametrized Q). Shapes: ``[..., A]`` -> ``[..., A]``.
    """
    return log_boltzmann_policy(q, tau, pi_bar).exp()


def q_from_value_and_policy(
    v: torch.Tensor, log_pi: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None
) -> torch.Tensor:
    """``Q(a) = V + tau log(pi(a) / pi_bar(a))``: eqs (14), (57), and the dueling head of Section 6.3.

    Eq (12)/(30) solved for ``Q``: when ``pi = pi^B_Q`` and ``V = V_Q`` it returns ``Q`` itself. Defined where
    ``pi_bar(a) > 0``. Shapes: ``v: [...]``, ``log_pi: [..., A]`` -> ``[..., A]``.
    """
    tau = validate_tau(tau)
    return v[..., None] + tau * (log_pi - log_reference(log_pi, pi_bar))


def kl(pi: torch.Tensor | None = None, pi_bar: torch.Tensor | None = None, *,
       log_pi: torch.Tensor | None = None) -> torch.Tensor:
    """``D_KL[pi || pi_bar] = sum_a pi(a) (log pi(a) - log pi_bar(a))`` over the last axis.

    Shapes: ``pi: [..., A]``, ``pi_bar: [..., A]`` or ``None`` (uniform) -> ``[...]``. Terms with ``pi(a) = 0``
    contribute 0; differentiable in ``pi`` (and in ``pi_bar``) wherever ``pi > 0``.

    Give ``log_pi`` (``[..., A]``, e.g. a ``log_softmax``) instead of ``pi`` to differentiate through the
    log-probabilities, as a policy network does: the terms ``exp(l) (l - log pi_bar)`` then have the finite
    derivative ``exp(l) (l - log pi_bar + 1)`` even where ``exp(l)`` underflows to 0 (a logit gap above about 104
    in float32), where ``xlogy(pi, pi)`` of ``pi = exp(l)`` would back-propagate 0 * inf = NaN.
    """
    pi, log_pi = _probs_and_logs(pi, log_pi)
    log_ref = log_reference(pi, pi_bar)
    if log_pi is None:
        return (torch.xlogy(pi, pi) - pi * log_ref).sum(-1)
    return (pi * (log_pi - log_ref)).sum(-1)


def entropy(pi: torch.Tensor | None = None, *, log_pi: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy ``H[pi] = -sum_a pi(a) log pi(a)``; ``[..., A]`` -> ``[...]``.

    Against a uniform reference over ``A`` actions, ``KL[pi || uniform] = log A - H[pi]`` (Section 3). ``log_pi``
    instead of ``pi``: as in :func:`kl`, a finite gradient through log-probabilities.
    """
    pi, log_pi = _probs_and_logs(pi, log_pi)
    if log_pi is None:
        return -torch.xlogy(pi, pi).sum(-1)
    return -(pi * log_pi).sum(-1)


def _probs_and_logs(pi: torch.Tensor | None, log_pi: torch.Tensor | None):
    """``(pi, log_pi)`` from exactly one of them (``log_pi`` stays ``None`` when ``pi`` was given); validated."""
    if (pi is None) == (log_pi is None):
        raise ValueError("give exactly one of pi and log_pi")
    if log_pi is not None:
        pi = log_pi.exp()
    validate_distribution(pi.detach(), "pi")
    return pi, log_pi


#: The two forms of the penalty against a uniform ``pi_bar`` (Sections 3 and 6): the KL, or minus the entropy.
PENALTIES = ("kl", "entropy")


def penalty(log_pi: torch.Tensor, form: str) -> torch.Tensor:
    """The per-state penalty ``k(s)`` that an entropy-regularized return subtracts as ``- tau k(s)`` (eqs 34, 46).

    ``form="kl"``: ``KL[pi || uniform](s)``, the paper's penalty with ``pi_bar`` uniform (eqs 79, 80). ``"entropy"``:
    ``-H[pi](s) = KL[pi || uniform](s) - log|A|``, the entropy bonus ``+ tau H`` of Figure 1's EntRL and of the
    ``Q = V + tau log pi`` of Section 6.3. The two have the same gradient and differ by ``tau log|A|`` per step in a
    return. From log-probabilities (finite gradients, :func:`kl`). Shapes: ``log_pi: [..., A]`` -> ``[...]``.
    """
    if form == "kl":
        return kl(log_pi=log_pi)
    if form == "entropy":
        return -entropy(log_pi=log_pi)
    raise ValueError(f"penalty must be one of {PENALTIES}, got {form!r}")


def policy_value(q: torch.Tensor, pi: torch.Tensor, tau: float, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``E_{a~pi}[Q(a)] - tau * D_KL[pi || pi_bar]``: the objective maximized in eq (27).

    It is the right side of eq (26) (with ``Q = Q^pi`` it equals ``V^pi``), of eq (31) (at ``pi = pi^B_Q`` it equals
    ``V_Q``), the inner bracket of eqs (33) and (38), and, for a bandit, eq (13).
    Shapes: ``q: [..., A]``, ``pi: [..., A]`` (broadcastable) -> ``[...]``.
    """
    tau = validate_tau(tau)
    if q.ndim == 0 or pi.ndim == 0 or q.shape[-1] != pi.shape[-1]:
        raise ValueError(f"q and pi must share their last (action) axis, got q {tuple(q.shape)}, pi {tuple(pi.shape)}")
    return (pi * q).sum(-1) - tau * kl(pi, pi_bar)


# --- Sample-based targets on rollouts ----------------------------------------------------------------------------
#
# A rollout has time on the first axis: ``[T, ...]`` (``[T, B]`` for B parallel environments). Step t is
# (s_t, a_t, r_t, s_{t+1}); ``dones[t] = 1`` when the episode terminated on that step, i.e. s_{t+1} is terminal
# (its value is 0, and no later reward or KL belongs to this episode). A time-limit cut is *not* a termination:
# pass ``dones[t] = 0`` there and bootstrap from the value of the cut-off state.


def _as_mask(dones: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``1 - dones`` as a float tensor of ``like``'s dtype, after checking shape and 0/1 entries."""
    if not isinstance(dones, torch.Tensor) or dones.shape != like.shape:
        shape = tuple(dones.shape) if isinstance(dones, torch.Tensor) else type(dones).__name__
        raise ValueError(f"dones must be a tensor of shape {tuple(like.shape)} (like rewards), got {shape}")
    d = dones.to(like.dtype)
    if _VALUE_CHECKS[-1] and not torch.all((d == 0) | (d == 1)):
        raise ValueError("dones must hold only 0/1 (or bool) entries")
    return 1 - d


def _rollout_tail(tail: torch.Tensor, like: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """Return ``(tail as [T, ...], per_step)``: a per-step ``[T, ...]`` tensor is kept; a final ``[...]`` one is
    placed at ``T - 1`` (zeros before it, which the caller must never read)."""
    if not isinstance(tail, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tail).__name__}")
    tail = tail.to(like.dtype)
    if tail.shape == like.shape:
        return tail, True
    if tail.shape == like.shape[1:]:
        full = torch.zeros_like(like)
        full[-1] = tail
        return full, False
    raise ValueError(
        f"{name} must have shape {tuple(like.shape)} (one value per step) or {tuple(like.shape[1:])} "
        f"(the value after the last step), got {tuple(tail.shape)}"
    )


def _check_rollout(rewards: torch.Tensor, kls: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor) or rewards.ndim == 0 or rewards.shape[0] == 0:
        raise ValueError("rewards must be a tensor of shape [T, ...] with T >= 1 (time on the first axis)")
    if kls is not None and (not isinstance(kls, torch.Tensor) or kls.shape != rewards.shape):
        shape = tuple(kls.shape) if isinstance(kls, torch.Tensor) else type(kls).__name__
        raise ValueError(f"kls must have the shape of rewards {tuple(rewards.shape)}, got {shape}")
    return rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())


def _check_n(n: int | None, horizon: int, per_step: bool, tail_name: str) -> int:
    if n is None:
        return horizon
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int or None (to the end of the rollout), got {n!r}")
    if not per_step and n < horizon:
        raise ValueError(
            f"n={n} < T={horizon} needs a value after every step: pass {tail_name} of shape [T, ...], not [...]"
        )
    return min(n, horizon)


def _truncated_discounted_sum(c, tail, not_done, discount, steps):
    """``sum_{d<m} discount^d c[t+d] + discount^m tail[t+m-1]``, ``m = min(steps, T - t)``, cut at episode ends.

    To the end of the rollout (``steps = T``) this is the backward recursion
    ``G[t] = c[t] + discount * (1 - dones[t]) * G[t+1]``, ``G[T] = tail[T-1]``: T steps of size B. For a shorter
    lookahead it is built by ``steps`` sweeps of the same recursion, each vectorized over time.
    """
    horizon = c.shape[0]
    if steps >= horizon:
        out = torch.empty_like(c)
        g = tail[-1]
        for t in reversed(range(horizon)):
            g = c[t] + discount * not_done[t] * g
            out[t] = g
        return out
    after = tail  # after[t]: what follows step t in the current sweep (the bootstrap, in the first)
    for _ in range(steps):
        g = c + discount * not_done * after
        after = torch.cat([g[1:], tail[-1:]], dim=0)
    return g


def discounted_sum(x: torch.Tensor, dones: torch.Tensor, discount: float, n: int | None = None) -> torch.Tensor:
    """``sum_{d=0}^{m-1} discount^d x[t+d]`` for every t, cut after a ``dones`` step and at the rollout's end.

    ``m = min(n, T - t)`` (``n=None``: to the end of the rollout). With ``x = td_errors(...)`` and
    ``discount = gamma * lambda`` this is the TD(lambda) sum of eq (43) (the corrected form
    ``tau KL_t + V(s_t) + discounted_sum(delta, dones, gamma * lambda)``); with ``discount = gamma`` and
    ``n`` steps, ``V(s_t) + discounted_sum(delta, dones, gamma, n)`` is the n-step target of eqs (37), (47), (54).
    Shapes: ``x, dones: [T, ...]`` -> ``[T, ...]``.
    """
    x = _check_rollout(x, None)
    discount = validate_gamma(discount, "discount")
    not_done = _as_mask(dones, x)
    steps = _check_n(n, x.shape[0], True, "x")
    return _truncated_discounted_sum(x, torch.zeros_like(x), not_done, discount, steps)


def n_step_soft_return(
    rewards: torch.Tensor,
    kls: torch.Tensor | None,
    bootstrap: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    tau: float,
    n: int | None = None,
) -> torch.Tensor:
    """The n-step entropy-augmented return from every step of a rollout: eqs (34), (41), (46), (54), (80).

    ``G_t = sum_{d=0}^{m-1} gamma^d (r_{t+d} - tau KL_{t+d}) + gamma^m V(s_{t+m})``, ``m = min(n, T - t)``;
    if the episode terminates at a step t + d < t + m, the sum stops after that step and nothing is bootstrapped.

    Args:
        rewards: ``[T, ...]``, ``rewards[t] = r_t``, the reward for action a_t in state s_t.
        kls: ``[T, ...]``, ``kls[t] = KL_t = D_KL[pi(.|s_t) || pi_bar(.|s_t)]`` of the acting policy at s_t; ``None``
            for a plain return (no penalty: the "naive" return of eq (79)).
        bootstrap: ``[T, ...]`` with ``bootstrap[t] = V(s_{t+1})``, the value of the state after step t (its
            entries at ``dones`` steps are ignored); or ``[...]``, ``V(s_T)`` after the last step only, which
            suffices when ``n`` is ``None`` or ``>= T`` (the A2C case).
        dones: ``[T, ...]`` 0/1 or bool, ``dones[t] = 1`` if the episode terminated on step t (s_{t+1} terminal).
        gamma: discount in [0, 1].  tau: temperature > 0 (multiplies ``kls``).
        n: the lookahead; ``None`` means to the end of the rollout.

    Returns ``[T, ...]``. The soft Q-learning target of eq (46) is ``tau * kls + n_step_soft_return(...)``.
    """
    rewards = _check_rollout(rewards, kls)
    gamma, tau = validate_gamma(gamma), validate_tau(tau)
    not_done = _as_mask(dones, rewards)
    tail, per_step = _rollout_tail(bootstrap, rewards, "bootstrap")
    steps = _check_n(n, rewards.shape[0], per_step, "bootstrap")
    c = rewards if kls is None else rewards - tau * kls
    return _truncated_discounted_sum(c, tail, not_done, gamma, steps)


def td_errors(
    rewards: torch.Tensor,
    kls: torch.Tensor | None,
    values: torch.Tensor,
    bootstrap: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    tau: float,
) -> torch.Tensor:
    """Bellman errors ``delta_t = (r_t - tau KL_t) + gamma V(s_{t+1}) - V(s_t)``: eqs (36), (43), (47).

    ``V(s_{t+1})`` is taken as 0 where ``dones[t] = 1``. Args as :func:`n_step_soft_return`, plus
    ``values: [T, ...]``, ``values[t] = V(s_t)``. ``bootstrap`` is ``[T, ...]`` (``V(s_{t+1})`` per step) or
    ``[...]`` (``V(s_T)`` only; then ``V(s_{t+1}) = values[t+1]`` inside the rollout). For the Boltzmann backup
    (eq 43) pass ``V = V_Q`` and the KL of ``pi^B_Q``. Returns ``[T, ...]``.
    """
    rewards = _check_rollout(rewards, kls)
    gamma, tau = validate_gamma(gamma), validate_tau(tau)
    if not isinstance(values, torch.Tensor) or values.shape != rewards.shape:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ValueError(f"values must have the shape of rewards {tuple(rewards.shape)}, got {shape}")
    not_done = _as_mask(dones, rewards)
    tail, per_step = _rollout_tail(bootstrap, rewards, "bootstrap")
    next_values = tail if per_step else torch.cat([values[1:], tail[-1:]], dim=0)
    c = rewards if kls is None else rewards - tau * kls
    return c + gamma * not_done * next_values - values


# --- DQN backups (Section 6.2) ------------------------------------------------------------------------------------
#
# Eqs (82)-(83) as typed, ``y = r + gamma log sum_a' exp(Q(s',a')/tau) - log|A|`` and
# ``y = r + gamma log sum_a' exp(Q(s',a')/tau)``, miss the factors tau (a log-sum-exp of Q/tau is in units of
# 1/tau, and it does not tend to max Q as tau -> 0), and put the -log|A| outside the discount. The corrected
# backups below are the soft values of Section 3 against a uniform pi_bar; chapter 7 shows the typed forms failing.

class Backup(enum.StrEnum):
    """The backups of eqs (81)-(83): standard, soft with a KL penalty against uniform, soft with an entropy bonus.

    One name from the command line (``--backup``, :class:`softq.rl.agents.dqn.Config`'s ``backup``) to the functions
    below; a member is its string (``Backup.SOFT_KL == "soft_kl"``), so configs and logs hold plain strings.
    """

    HARD = "hard"
    SOFT_KL = "soft_kl"
    SOFT_ENT = "soft_ent"


#: The backups' names, in :class:`Backup`'s order.
DQN_BACKUPS = tuple(b.value for b in Backup)


def as_backup(backup: str) -> Backup:
    """``backup`` as a :class:`Backup`; ValueError naming ``backup`` if it is none."""
    try:
        return Backup(backup)
    except ValueError:
        raise ValueError(f"backup must be one of {DQN_BACKUPS}, got {backup!r}") from None


def backup_value(q: torch.Tensor, tau: float, backup: str) -> torch.Tensor:
    """The value of the next state in a DQN target ``y = r + gamma V(s')``: eqs (81)-(83), corrected.

    - ``hard`` (eq 81): ``V = max_a Q(s', a)`` (``tau`` is ignored).
    - ``soft_kl`` (eq 82 corrected): KL penalty against a uniform ``pi_bar``, ``V = V_Q = tau log E_uniform
      exp(Q/tau) = tau log sum_a exp(Q/tau) - tau log|A|``: :func:`soft_value` with ``pi_bar=None``.
    - ``soft_ent`` (eq 83 corrected): entropy bonus, ``V = tau log sum_a exp(Q/tau) = V_Q + tau log|A|``.

    Each equals ``E_{a~pi}[Q(s', a)] - tau * backup_penalty(Q, tau, backup)`` at the Boltzmann policy
    ``pi = pi^B_Q`` (greedy for ``hard``), eq (31). Shapes: ``q: [..., A]`` -> ``[...]``; stable for tiny tau.
    """
    backup = as_backup(backup)
    if q.ndim == 0:
        raise ValueError(f"q must have an action axis (shape [..., A]), got a scalar {q.item()!r}")
    if backup == "hard":
        return q.max(dim=-1).values
    v = soft_value(q, tau)
    return v + validate_tau(tau) * math.log(q.shape[-1]) if backup == "soft_ent" else v


def backup_penalty(q: torch.Tensor, tau: float, backup: str) -> torch.Tensor:
    """The per-state penalty ``k(s)`` that an n-step soft return subtracts as ``- tau k(s)`` (eqs 34, 46).

    At the target network's Boltzmann policy ``pi = pi^B_Q`` (:func:`boltzmann_policy`, uniform ``pi_bar``):
    ``hard``: 0; ``soft_kl``: ``KL[pi || uniform]`` (:func:`kl`); ``soft_ent``: ``-H[pi]`` (:func:`entropy`), i.e.
    ``KL[pi || uniform] - log|A|``: the entropy bonus ``+ tau H`` of Section 6.2. Shapes: ``[..., A]`` -> ``[...]``.
    """
    backup = as_backup(backup)
    if backup == "hard":
        return torch.zeros(q.shape[:-1], dtype=q.dtype, device=q.device)
    return penalty(log_boltzmann_policy(q, tau), "kl" if backup == "soft_kl" else "entropy")


def q_learning_target(
    rewards: torch.Tensor,
    q_next: torch.Tensor,
    terminal: torch.Tensor,
    truncated: torch.Tensor | None,
    gamma: float,
    tau: float,
    backup: str,
) -> torch.Tensor:
    """The n-step DQN target from step t for the backups of eqs (81)-(83); n = 1 gives those equations (corrected).

    ``n = rewards.shape[0]`` steps t, ..., t+n-1 of one window. With ``V = backup_value`` and
    ``k = backup_penalty`` of the target network's ``Q`` (``q_next``), the target is eq (46),

        ``y_t = tau k(s_t) + sum_{d<m} gamma^d (r_{t+d} - tau k(s_{t+d})) + gamma^m V(s_{t+m})``
        ``    = r_t + sum_{1<=d<m} gamma^d (r_{t+d} - tau k(s_{t+d})) + gamma^m V(s_{t+m})``,

    ``m = n``, or fewer where the episode stops inside the window: after a ``terminal`` step t+d the sum ends with
    nothing bootstrapped (``m = d + 1``, no ``V``); after a ``truncated`` step (a time-limit cut, not terminal) it
    ends and bootstraps from ``V(s_{t+d+1})``. The intermediate penalties are those of the target network's
    Boltzmann policy (KL against uniform for ``soft_kl``, minus the entropy for ``soft_ent``, 0 for ``hard``: the
    standard n-step DQN target); the actions a_{t+1..} came from the behaviour policy, uncorrected, as in n-step
    DQN. Computed by :func:`n_step_soft_return` (the cut's bootstrap folded into that step's reward).

    Shapes: ``rewards, terminal, truncated: [n, ...]`` (``truncated=None``: no cuts), ``q_next: [n, ..., A]`` with
    ``q_next[d] = Q(s_{t+d+1}, .)`` -> ``[...]``.
    """
    backup = as_backup(backup)
    rewards = _check_rollout(rewards, None)
    if not isinstance(q_next, torch.Tensor) or tuple(q_next.shape[:-1]) != tuple(rewards.shape):
        shape = tuple(q_next.shape) if isinstance(q_next, torch.Tensor) else type(q_next).__name__
        raise ValueError(f"q_next must have shape {tuple(rewards.shape)} + (A,) (rewards' shape, actions), got {shape}")
    gamma = validate_gamma(gamma)
    v = backup_value(q_next, tau, backup).to(rewards.dtype)  # v[d] = V(s_{t+d+1})
    dones = terminal.to(torch.bool)
    if truncated is not None:
        if not isinstance(truncated, torch.Tensor) or truncated.shape != rewards.shape:
            raise ValueError(f"truncated must have shape {tuple(rewards.shape)} (like rewards) or be None")
        cut = truncated.to(torch.bool) & ~dones
        rewards = rewards + gamma * cut.to(rewards.dtype) * v
        dones = dones | cut
    kls = None
    if backup != "hard" and rewards.shape[0] > 1:  # n = 1: no intermediate state, no penalty
        k = backup_penalty(q_next[:-1], tau, backup).to(rewards.dtype)  # k(s_{t+1}), ..., k(s_{t+n-1})
        kls = torch.cat([torch.zeros_like(rewards[:1]), k], dim=0)  # eq (46)'s tau k(s_t) cancels its d=0 term
    return n_step_soft_return(rewards, kls, v[-1], dones, gamma, tau)[0]
