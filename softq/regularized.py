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

import math

import torch

__all__ = [
    "validate_tau",
    "validate_gamma",
    "validate_distribution",
    "log_reference",
    "soft_value",
    "log_boltzmann_policy",
    "boltzmann_policy",
    "kl",
    "entropy",
]

_DIST_ATOL = 1e-6


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


def validate_distribution(p: torch.Tensor, name: str = "pi_bar", atol: float = _DIST_ATOL) -> torch.Tensor:
    """Check that ``p: [..., A]`` is a probability distribution over its last axis; return it.

    Raises ValueError naming ``name`` if an entry is negative or not finite, or a row does not sum to 1.
    """
    if not isinstance(p, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of probabilities, got {type(p).__name__}")
    if p.ndim == 0 or p.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last (action) axis, got shape {tuple(p.shape)}")
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


def kl(pi: torch.Tensor, pi_bar: torch.Tensor | None = None) -> torch.Tensor:
    """``D_KL[pi || pi_bar] = sum_a pi(a) (log pi(a) - log pi_bar(a))`` over the last axis.

    Shapes: ``pi: [..., A]``, ``pi_bar: [..., A]`` or ``None`` (uniform) -> ``[...]``. Terms with ``pi(a) = 0``
    contribute 0; differentiable in ``pi`` (and in ``pi_bar``) wherever ``pi > 0``.
    """
    validate_distribution(pi.detach(), "pi")
    log_ref = log_reference(pi, pi_bar)
    return (torch.xlogy(pi, pi) - pi * log_ref).sum(-1)


def entropy(pi: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``H[pi] = -sum_a pi(a) log pi(a)``; ``[..., A]`` -> ``[...]``.

    Against a uniform reference over ``A`` actions, ``KL[pi || uniform] = log A - H[pi]`` (Section 3).
    """
    validate_distribution(pi.detach(), "pi")
    return -torch.xlogy(pi, pi).sum(-1)
