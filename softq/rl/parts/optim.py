"""The optimizers of :mod:`softq.rl.agents.a2c`: TensorFlow 1's RMSProp, which the paper's A2C used, and torch's.

The paper's A2C is OpenAI baselines' ``a2c`` (2017), trained with TensorFlow 1's
``tf.train.RMSPropOptimizer(learning_rate=lr, decay=alpha, epsilon=eps)`` (``alpha = 0.99``, ``eps = 1e-5``,
baselines' ``a2c.py``). Per parameter, with gradient ``g``, TF1's ``ApplyRMSProp`` kernel computes::

    ms  = alpha * ms + (1 - alpha) * g**2          # ms starts at 1 (TF1 creates the "rms" slot with ones)
    mom = momentum * mom + lr * g / sqrt(ms + eps)  # mom starts at 0; baselines: momentum = 0
    p   = p - mom

and, ``centered=True``, ``mg = alpha * mg + (1 - alpha) * g`` (from 0) and ``sqrt(ms - mg**2 + eps)`` instead.
``torch.optim.RMSprop`` differs in two places: its average starts at **0** and it adds ``eps`` **outside** the root,
``p -= lr * g / (sqrt(ms) + eps)``. On the first step ``ms = (1 - alpha) g**2``, so torch moves every weight by about
``lr / sqrt(1 - alpha) = 10 lr`` (a sign step), where TF moves it by ``lr * g / sqrt(alpha + (1 - alpha) g**2 + eps)``
(about ``lr * g`` for small ``g``); the gap fades as ``alpha**t``. And where gradients are tiny the step of TF is
``lr * g / sqrt(eps)`` (eps = 1e-5: a floor of 3.2e-3 under the root's value) against torch's
``lr * g / eps`` (a floor of 1e-5): torch can take steps ~300x larger on a weight whose gradients are small.

:class:`RMSpropTF` is TF1's update; for ``momentum = 0, centered = False`` it is Stable-Baselines3's
``stable_baselines3.common.sb2_compat.rmsprop_tf_like.RMSpropTFLike`` (the public reference). With momentum it
follows TF1 (the learning rate enters the momentum buffer, ``mom += lr * g / ...``), which equals SB3's
``buf += g / ...; p -= lr * buf`` while ``lr`` is constant and differs under a schedule. :func:`make_optimizer`
builds the optimizer an :class:`softq.rl.agents.a2c.Config` names (``optimizer``: :data:`OPTIMIZERS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["OPTIMIZERS", "RMSpropTF", "make_optimizer", "SILENT", "torch_over_tf_step", "gradient_report"]

#: Names :func:`make_optimizer` accepts: TF1's RMSProp (baselines' A2C, the paper's) and torch's.
OPTIMIZERS = ("rmsprop_tf", "rmsprop_torch")


class RMSpropTF(torch.optim.Optimizer):
    """TensorFlow 1's ``RMSPropOptimizer`` (module docstring): ``ms`` from ones, ``eps`` inside the square root.

    Defaults are baselines' A2C: ``lr = 7e-4, alpha = 0.99 (TF's decay), eps = 1e-5``. ``lr`` may be a float or a
    one-element tensor, and may be changed between steps through ``param_groups`` (A2C's linear decay does). A
    tensor ``lr`` on the parameters' accelerator is applied as a tensor (no host read); a CPU one is read as a float.
    ``foreach=None`` (default) updates all parameters of a group with ``torch._foreach_*`` ops (a few kernel calls
    instead of a few per tensor); ``False`` loops over the tensors (same arithmetic, same results).
    State per parameter: ``step`` (int), ``square_avg`` (``ms``), ``momentum_buffer`` (if ``momentum > 0``),
    ``grad_avg`` (if ``centered``); :meth:`state_dict` / :meth:`load_state_dict` round-trip it exactly, and
    loading a state that another optimizer (e.g. ``torch.optim.RMSprop``) saved raises ValueError.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float | Tensor = 7e-4,
                 alpha: float = 0.99, eps: float = 1e-5, momentum: float = 0.0, centered: bool = False,
                 foreach: bool | None = None):
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError(f"lr: a tensor learning rate must have one element, got shape {tuple(lr.shape)}")
        if not 0.0 <= float(lr):
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
        if not 0.0 <= eps:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if not 0.0 <= momentum:
            raise ValueError(f"momentum must be >= 0, got {momentum!r}")
        defaults = {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum, "centered": bool(centered),
                    "foreach": foreach, "tf_rmsprop": True}  # tf_rmsprop: marks a state_dict as this optimizer's
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not all(g.get("tf_rmsprop") for g in state_dict.get("param_groups", [])):
            raise ValueError("RMSpropTF.load_state_dict: this state was not saved by RMSpropTF (torch.optim.RMSprop's "
                             "average starts at 0 and puts eps outside the root: a different optimizer)")
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, square_avgs, grad_avgs, bufs = [], [], [], [], []
            momentum, centered = group["momentum"], group["centered"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RMSpropTF does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)  # TF1: ones
                    if momentum > 0:
                        state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if centered:
                        state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                square_avgs.append(state["square_avg"])
                if momentum > 0:
                    bufs.append(state["momentum_buffer"])
                if centered:
                    grad_avgs.append(state["grad_avg"])
            if not params:
                continue
            lr = group["lr"]
            if isinstance(lr, Tensor) and (lr.device.type == "cpu" or lr.device != params[0].device):
                lr = float(lr)  # reading a CPU tensor costs nothing (and CPU foreach ops with a tensor are slow)
            update = _foreach_update if group["foreach"] in (None, True) else _loop_update
            update(params, grads, square_avgs, grad_avgs, bufs, lr=lr, alpha=group["alpha"], eps=group["eps"],
                   momentum=momentum, centered=centered)
        return loss


def _foreach_update(params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor], grad_avgs: list[Tensor],
                    bufs: list[Tensor], *, lr: float | Tensor, alpha: float, eps: float, momentum: float,
                    centered: bool) -> None:
    """TF1's RMSProp on lists of tensors with ``torch._foreach_*`` ops (see :func:`_loop_update`, the same steps)."""
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if centered:
        torch._foreach_mul_(grad_avgs, alpha)
        torch._foreach_add_(grad_avgs, grads, alpha=1 - alpha)
        denom = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        torch._foreach_add_(denom, eps)
    else:
        denom = torch._foreach_add(square_avgs, eps)
    torch._foreach_sqrt_(denom)
    if isinstance(lr, Tensor):  # lr * g / denom, in that order (addcdiv's order on a CPU)
        step = torch._foreach_mul(grads, lr)
        torch._foreach_div_(step, denom)
        if momentum > 0:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, step)
            step = bufs
        torch._foreach_sub_(params, step)
    elif momentum > 0:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_addcdiv_(bufs, grads, denom, value=lr)
        torch._foreach_sub_(params, bufs)
    else:
        torch._foreach_addcdiv_(params, grads, denom, value=-lr)


def _loop_update(params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor], grad_avgs: list[Tensor],
                 bufs: list[Tensor], *, lr: float | Tensor, alpha: float, eps: float, momentum: float,
                 centered: bool) -> None:
    """TF1's RMSProp, one tensor at a time: ``ms = alpha ms + (1 - alpha) g^2``, ``d = sqrt(ms [- mg^2] + eps)``,
    ``mom = momentum mom + lr g / d``, ``p -= mom`` (``p -= lr g / d`` without momentum)."""
    for i, (p, g, ms) in enumerate(zip(params, grads, square_avgs, strict=True)):
        ms.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if centered:
            mg = grad_avgs[i].mul_(alpha).add_(g, alpha=1 - alpha)
            denom = ms.addcmul(mg, mg, value=-1).add_(eps).sqrt_()
        else:
            denom = ms.add(eps).sqrt_()
        if isinstance(lr, Tensor):
            step = g.mul(lr).div_(denom)
            if momentum > 0:
                step = bufs[i].mul_(momentum).add_(step)
            p.sub_(step)
        elif momentum > 0:
            p.sub_(bufs[i].mul_(momentum).addcdiv_(g, denom, value=lr))
        else:
            p.addcdiv_(g, denom, value=-lr)


def make_optimizer(name: str, params: Iterable[Tensor], lr: float, alpha: float, eps: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`OPTIMIZERS`) over ``params``: ``rmsprop_tf`` is :class:`RMSpropTF`
    (TF1's RMSProp, baselines' A2C: the default), ``rmsprop_torch`` is ``torch.optim.RMSprop``; both with
    smoothing ``alpha`` and ``eps`` (inside the root for TF, outside for torch). Another name raises ValueError."""
    if name == "rmsprop_tf":
        return RMSpropTF(params, lr=lr, alpha=alpha, eps=eps)
    if name == "rmsprop_torch":
        return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


#: A weight whose RMSProp average of g**2 is below SILENT**2 has had no gradient for thousands of updates: its
#: average decays by alpha per update from at least ~1e-20 (alpha = 0.99: 0.99**4000 ~ 4e-18).
SILENT = 1e-15


def torch_over_tf_step(rms: Tensor | float, eps: float) -> Tensor | float:
    """torch's RMSprop step over TensorFlow's for one weight whose mean square gradient is ``ms = rms**2`` and whose
    gradient is ``g`` (any ``g != 0``; elementwise for a tensor ``rms``)::

        (lr g / (sqrt(ms) + eps)) / (lr g / sqrt(ms + eps)) = sqrt(ms + eps) / (sqrt(ms) + eps)

    About ``1 / sqrt(eps)`` where ``rms << eps`` (316 for eps = 1e-5), about ``sqrt(eps) / rms`` between ``eps`` and
    ``sqrt(eps)``, and 1 (to within eps) once ``rms >> sqrt(eps)``."""
    if isinstance(rms, Tensor):
        return (rms.square() + eps).sqrt() / (rms + eps)
    return math.sqrt(rms * rms + eps) / (rms + eps)


def gradient_report(names: list[str], square_avgs: list[Tensor], eps: float) -> list[dict[str, Any]]:
    """What an RMSProp state says about a run's gradients, per parameter tensor (``names[i]``, ``square_avgs[i]``:
    the running mean of ``g**2``, the ``square_avg`` of either optimizer, same order):

    - ``rms_quantiles``: the 5/25/50/75/95% quantiles over the tensor's weights of ``sqrt(square_avg)``, the RMS of
      each weight's recent gradients;
    - ``silent``: the fraction of weights with RMS below :data:`SILENT` (no gradient for thousands of updates);
      ``dead_outputs``: for a weight matrix or filter bank, the output units (rows / filters) all of whose weights
      are silent (a dead ReLU unit: it never activates, so nothing flows back), and ``outputs``;
    - ``torch_over_tf_median``: the median over weights of torch's step over TF's for the same mean square ``ms``
      and gradient ``g``: ``(lr g / (sqrt(ms) + eps)) / (lr g / sqrt(ms + eps)) = sqrt(ms + eps) / (sqrt(ms) + eps)``
      (> 1 wherever ``sqrt(ms)`` is below about ``sqrt(eps)``: TF's eps inside the root shrinks the step; at
      ``ms = 0`` the ratio is ``1 / sqrt(eps)``, 316 for eps = 1e-5).

    Float64 statistics; quantiles from at most 1M weights (an even subsample of larger tensors)."""
    if len(names) != len(square_avgs):
        raise ValueError(f"names: {len(names)} names for {len(square_avgs)} tensors")
    out = []
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    for name, ms in zip(names, square_avgs, strict=True):
        v = ms.detach().double().cpu().clamp_min(0)
        rms = v.sqrt()
        flat = rms.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1_000_000)]
        ratio = torch_over_tf_step(sample, eps)
        row = {"name": name, "shape": list(v.shape), "weights": v.numel(),
               "rms_quantiles": [float(x) for x in torch.quantile(sample, q)],
               "silent": float((flat < SILENT).double().mean()),
               "torch_over_tf_median": float(ratio.median())}
        if v.dim() >= 2:
            per_unit = rms.reshape(v.shape[0], -1).amax(1)
            row.update(outputs=v.shape[0], dead_outputs=int((per_unit < SILENT).sum()))
        out.append(row)
    return out
