"""The losses the paper's algorithms minimize, written once: the chapters verify them, the agents train with them.

Every loss is returned **per sample** (unreduced, shape ``[...]`` of its inputs): the caller averages or sums.
Targets and advantages are *held fixed* inside each loss (``.detach()``): these are semi-gradient losses, whose
gradient is the estimator the paper writes, not the full derivative of the squared error through the target.

- :func:`policy_gradient_loss`: eq (84), the surrogate whose gradient is the entropy-regularized policy-gradient
  estimator of eqs (48), (52), (79), (80); "naive" and "proper" differ only in the advantage passed in
  (rewards without or with the KL terms, see :func:`softq.regularized.n_step_soft_return`).
- :func:`value_loss`: eqs (53), (85), ``1/2 (V(s_t) - V_hat_t)^2``.
- :func:`soft_q_loss`: eq (44), ``1/2 (Q(s_t, a_t) - y_t)^2``.
- :func:`scale_grad`: the identity in the forward pass, a scaled gradient in the backward pass (Section 6.3).
"""

from __future__ import annotations

import torch

from softq.regularized import validate_tau

__all__ = ["policy_gradient_loss", "value_loss", "soft_q_loss", "scale_grad"]


def _same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {', '.join(f'{k}{v}' for k, v in shapes.items())} must all be equal")


def policy_gradient_loss(log_prob: torch.Tensor, advantage: torch.Tensor, kl: torch.Tensor, tau: float) -> torch.Tensor:
    """Entropy-regularized policy-gradient surrogate, eq (84): ``-log pi(a_t|s_t) * A_t + tau * KL[pi || pi_bar](s_t)``.

    Its gradient is ``-(grad log pi(a_t|s_t) A_t - tau grad KL(s_t))``, minus the estimator of eqs (48)/(52)/(79)/(80)
    for one sample. ``advantage`` is held fixed (detached); ``log_prob`` and ``kl`` carry the gradient.

    Shapes: ``log_prob``, ``advantage``, ``kl``: ``[...]``, all equal; returns ``[...]``.
    """
    tau = validate_tau(tau)
    _same_shape(log_prob=log_prob, advantage=advantage, kl=kl)
    return -log_prob * advantage.detach() + tau * kl


def value_loss(v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Value regression, eqs (53)/(85): ``1/2 (V(s_t) - V_hat_t)^2`` with the target held fixed.

    Shapes: ``v``, ``target``: ``[...]``, equal; returns ``[...]``.
    """
    _same_shape(v=v, target=target)
    return 0.5 * (v - target.detach()) ** 2


def soft_q_loss(q_taken: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Q-learning regression, eq (44): ``1/2 (Q(s_t, a_t) - y_t)^2`` with the target ``y_t`` held fixed.

    ``q_taken`` is ``Q`` at the action taken, e.g. ``q.gather(-1, a[..., None])[..., 0]``; the target comes from
    eq (45) (1-step) or eqs (46)-(47) (n-step). Shapes: ``[...]``, equal; returns ``[...]``.
    """
    _same_shape(q_taken=q_taken, target=target)
    return 0.5 * (q_taken - target.detach()) ** 2


def scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; ``scale * dL/dx`` flows back through it in the backward pass.

    Section 6.3 trains ``Q = V + tau log pi`` by soft-Q regression but scales the gradient entering the value stream
    and the advantage stream so that the update matches A2C's hyperparameters (chapter 8 derives the factors).
    Shapes: any; returns the same shape.
    """
    scale = float(scale)
    frozen = x.detach()
    return frozen + scale * (x - frozen)  # forward: exactly x (x - frozen == 0); backward: scale
