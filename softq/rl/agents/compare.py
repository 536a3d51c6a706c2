"""The update rules of Sections 6.1 and 6.3 compared on the same batch: gradients of the losses the agents minimize.

Every gradient here is autograd of :func:`softq.rl.agents.a2c.a2c_loss` (or
:func:`softq.rl.agents.a2c.dueling_soft_q_loss`) on
one rollout, ``T = num_steps`` steps of ``B = num_envs`` environments (:class:`Batch`). Three levels:

- **head gradients** (:func:`head_gradients`): the derivative of the loss with respect to the network's two heads,
  the policy logits ``[T+1, B, A]`` and the value ``[T+1, B]``, computed in float64. ``expected=True`` replaces
  each transition's sampled action ``a_t`` by the average over ``a_t ~ pi(.|s_t)``, everything else held fixed:
  exact (no sampling), because an A2C-style loss is a mean of per-transition terms, the term of transition
  ``(t, b)`` depends on its own action only, and the returns and targets are held fixed (``.detach()``);
- **parameter gradients** (:func:`parameter_gradient`): the head gradients pulled back through the network
  (one vector-Jacobian product), ``[P]``; :func:`transition_gradients`: the same per transition, ``[T, B, P]``;
- **per-transition score vectors** (:func:`score_gradients`): ``grad log pi(a_t|s_t)``, ``grad KL(s_t)``,
  ``grad V(s_t)``, by ``torch.func``, from which the chapters assemble the paper's typed estimators independently.

:func:`compare_rules` puts the rules side by side on one batch (cosine, norm ratio, and the expected-gradient
residual); :func:`agreement_row` does it on the batch a training agent is about to update on, without changing the run
(no random numbers are drawn, no ``.grad`` is touched): :func:`softq.rl.experiments.loop.train` with
``agreement_every=k`` writes one row before every ``k``-th update to ``agreement.csv``, which :func:`read_agreement`
reads.
Chapter 6 (eqs 79-80) and chapter 8 (eqs 84-86) are built on these functions.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, vjp, vmap

from softq import regularized
from softq.rl.agents.a2c import A2C, RULES, a2c_loss, dueling_soft_q_loss

__all__ = [
    "Batch", "LossFn", "rule_loss", "scaled_soft_q_loss", "network_outputs", "head_gradients", "parameter_gradient",
    "transition_gradients", "score_gradients", "cosine", "compare_rules", "AGREEMENT_COLUMNS", "agreement_row",
    "agreement_cells", "read_agreement",
]

#: ``loss(log_pi [T+1, B, A], v [T+1, B], actions, rewards, terminal, reset) -> scalar``, as in ``a2c_loss``.
LossFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Batch:
    """One rollout as :meth:`softq.rl.agents.a2c.A2C.update` sees it.

    ``obs: [T+1, B, *obs_shape]`` (row ``T`` is ``s_T``); ``actions: [T, B]`` long; ``rewards: [T, B]``;
    ``terminal, reset: [T, B]`` bool (``reset`` marks autoreset steps, which are not transitions).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminal: torch.Tensor
    reset: torch.Tensor

    def __post_init__(self) -> None:
        t, b = self.actions.shape
        for name in ("rewards", "terminal", "reset"):
            if tuple(getattr(self, name).shape) != (t, b):
                raise ValueError(f"Batch: {name} has shape {tuple(getattr(self, name).shape)}, actions {(t, b)}")
        if tuple(self.obs.shape[:2]) != (t + 1, b):
            raise ValueError(f"Batch: obs must be [T+1, B, ...] = [{t + 1}, {b}, ...], got {tuple(self.obs.shape)}")

    @classmethod
    def from_agent(cls, agent: A2C) -> Batch:
        """A copy of the agent's buffers: the rollout of its last :meth:`~softq.rl.agents.a2c.A2C.collect`."""
        dev = agent.device
        return cls(agent.buf_obs.clone(), agent.buf_actions.clone(), agent.buf_rewards.to(dev).clone(),
                   agent.buf_terminal.to(dev).clone(), agent.buf_reset.to(dev).clone())

    @property
    def horizon(self) -> int:
        return self.actions.shape[0]

    @property
    def n_real(self) -> int:
        """The number of real transitions (not autoreset steps): what the losses average over."""
        return int((~self.reset).sum())

    def with_actions(self, actions: torch.Tensor) -> Batch:
        return replace(self, actions=actions)

    def columns(self, keep: torch.Tensor) -> Batch:
        """The sub-batch of the environments (columns) where ``keep: [B]`` (bool) is true."""
        return Batch(self.obs[:, keep], self.actions[:, keep], self.rewards[:, keep], self.terminal[:, keep],
                     self.reset[:, keep])

    def unbroken(self) -> Batch:
        """The sub-batch of the environments whose rollout has no episode boundary (no terminal, no reset step):
        there every return is the plain ``sum_{d < T-t} gamma^d (...) + gamma^(T-t) V(s_T)`` of the paper."""
        return self.columns(~(self.terminal | self.reset).any(0))


def rule_loss(rule: str, gamma: float, tau: float, value_coef: float, penalty: str = "kl") -> LossFn:
    """The loss of :func:`a2c_loss` for ``rule`` (naive, proper, soft_q) and ``penalty`` as a :data:`LossFn`."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")

    def loss(log_pi, v, actions, rewards, terminal, reset):
        return a2c_loss(log_pi, v, actions, rewards, terminal, reset, rule, gamma, tau, value_coef, penalty)[0]

    return loss


def scaled_soft_q_loss(gamma: float, tau: float, value_scale: float, advantage_scale: float,
                       penalty: str = "kl") -> LossFn:
    """:func:`dueling_soft_q_loss` with gradient scales ``(value_scale, advantage_scale)`` as a :data:`LossFn`."""

    def loss(log_pi, v, actions, rewards, terminal, reset):
        return dueling_soft_q_loss(log_pi, v, actions, rewards, terminal, reset, gamma, tau,
                                   value_scale=value_scale, advantage_scale=advantage_scale, penalty=penalty)

    return loss


def network_outputs(net: torch.nn.Module, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_pi [T+1, B, A], v [T+1, B])`` of ``net`` on ``obs: [T+1, B, *obs_shape]``, with gradients."""
    t1, b = obs.shape[:2]
    log_pi, v = net(obs.reshape(t1 * b, *obs.shape[2:]))
    return log_pi.reshape(t1, b, -1), v.reshape(t1, b)


def head_gradients(
    log_pi: torch.Tensor, v: torch.Tensor, batch: Batch, loss: LossFn, *, expected: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``d loss / d logits [T+1, B, A]`` and ``d loss / d V [T+1, B]`` in float64, at the heads ``log_pi, v``.

    The logits are ``log_pi`` itself (``log_softmax`` of a log-policy is itself), so the policy gradient returned
    is the one a logits layer receives: it sums to 0 over actions. Row ``T`` (the bootstrap state) gets none.
    ``expected=True``: the average of the gradient over ``a_t ~ pi(.|s_t)`` independently at every transition,
    with the rewards, terminals, resets (hence the returns and targets) held fixed -- exact, by enumerating the
    ``A`` actions (see the module docstring).
    """
    z = log_pi.detach().double().requires_grad_()
    w = v.detach().double().requires_grad_()
    rewards = batch.rewards.double()

    def grads(actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = loss(torch.log_softmax(z, -1), w, actions, rewards, batch.terminal, batch.reset)
        return torch.autograd.grad(value, (z, w))

    if not expected:
        return grads(batch.actions)
    horizon, n_actions = batch.horizon, z.shape[-1]
    pi = torch.softmax(z.detach(), -1)[:horizon]  # [T, B, A]
    g_logits, g_v = torch.zeros_like(z), torch.zeros_like(w)
    for a in range(n_actions):
        gz, gw = grads(torch.full_like(batch.actions, a))
        g_logits[:horizon] += pi[..., a, None] * gz[:horizon]
        g_v[:horizon] += pi[..., a] * gw[:horizon]
    return g_logits, g_v


def _head(net: torch.nn.Module):
    """``(head, params)``: ``head(params, o) -> (log_pi [A], v [])`` for one observation ``o``, for ``torch.func``."""
    params = {k: p.detach() for k, p in net.named_parameters()}

    def head(p, o):
        log_pi, v = functional_call(net, p, (o[None],))
        return log_pi[0], v[0]

    return head, params


def parameter_gradient(net: torch.nn.Module, obs: torch.Tensor, g_logits: torch.Tensor,
                       g_v: torch.Tensor) -> torch.Tensor:
    """The gradient in the network's parameters, ``[P]`` (flattened in ``named_parameters`` order), of a loss
    whose head gradients are ``g_logits [T+1, B, A]``, ``g_v [T+1, B]``: one vector-Jacobian product."""
    log_pi, v = network_outputs(net, obs)
    params = list(net.parameters())
    gs = torch.autograd.grad((log_pi, v), params, grad_outputs=(g_logits.to(log_pi.dtype), g_v.to(v.dtype)),
                             allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gs, params,
                                                                                                  strict=True)])


def _pullback(net: torch.nn.Module, batch: Batch, g_logits: torch.Tensor, g_v: torch.Tensor) -> torch.Tensor:
    """``[T, B, P]``: head gradients ``g_logits [T+1, B, A]``, ``g_v [T+1, B]`` pulled back through the network one
    transition at a time (``vmap`` of a vector-Jacobian product); row ``T`` is ignored."""
    horizon, b = batch.horizon, batch.actions.shape[1]
    head, params = _head(net)
    obs = batch.obs[:horizon].reshape(horizon * b, *batch.obs.shape[2:])

    def one(o, gl_i, gv_i):
        _, pull = vjp(lambda p: head(p, o), params)
        (gp,) = pull((gl_i, gv_i))
        return torch.cat([gp[k].reshape(-1) for k in params])

    gl = g_logits[:horizon].reshape(horizon * b, -1).float()
    gv = g_v[:horizon].reshape(horizon * b).float()
    return vmap(one)(obs, gl, gv).reshape(horizon, b, -1)


def transition_gradients(net: torch.nn.Module, batch: Batch, g_logits: torch.Tensor,
                         g_v: torch.Tensor) -> torch.Tensor:
    """``[T, B, P]``: row ``(t, b)`` is the gradient of transition ``(t, b)``'s own loss term.

    The A2C losses are means over the ``n_real`` real transitions, so :func:`parameter_gradient` equals the sum of
    these rows divided by ``n_real``; autoreset rows are 0. Computed as per-transition vector-Jacobian products.
    """
    return _pullback(net, batch, batch.n_real * g_logits, batch.n_real * g_v)


def score_gradients(net: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """Per transition ``(t, b)``, ``t < T``: ``score = grad log pi(a_t|s_t)``, ``grad_kl = grad KL[pi || uniform](s_t)``
    and ``grad_v = grad V(s_t)``, each ``[T, B, P]``; and the values ``log_pi [T+1, B, A]``, ``v [T+1, B]``.

    Each is the derivative of one head quantity (``log_softmax(logits)[a_t]``, :func:`softq.regularized.kl`,
    ``V``) taken by autograd at the heads, then pulled back through the network per transition.
    """
    horizon = batch.horizon
    with torch.no_grad():
        log_pi, v = network_outputs(net, batch.obs)
    z = log_pi.double().requires_grad_()
    zero_v = torch.zeros_like(v, dtype=torch.float64)
    lp = torch.log_softmax(z, -1)[:horizon]
    (g_score,) = torch.autograd.grad(lp.gather(-1, batch.actions[..., None]).sum(), z, retain_graph=True)
    (g_kl,) = torch.autograd.grad(regularized.kl(lp.exp()).sum(), z)
    ones_v = torch.zeros_like(zero_v)
    ones_v[:horizon] = 1.0
    return {
        "score": _pullback(net, batch, g_score, zero_v),
        "grad_kl": _pullback(net, batch, g_kl, zero_v),
        "grad_v": _pullback(net, batch, torch.zeros_like(z), ones_v),
        "log_pi": log_pi, "v": v,
    }


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """``<x, y> / (|x| |y|)`` in float64."""
    x, y = x.double().reshape(-1), y.double().reshape(-1)
    return float(x @ y / (x.norm() * y.norm()))


def compare_rules(net: torch.nn.Module, batch: Batch, gamma: float, tau: float, value_coef: float,
                  rules: tuple[str, str] = ("proper", "soft_q"), penalty: str = "kl") -> dict[str, Any]:
    """Two rules' gradients on the same batch, sampled and expected (over each ``a_t ~ pi``), with ``penalty``.

    Returns the parameter gradients ``grad[rule]``, ``expected[rule]`` (``[P]``), the head gradients ``heads[rule]``
    and ``expected_heads[rule]`` (float64 pairs), and the numbers ``cosine``, ``norm_ratio`` (|second| / |first|)
    of the sampled gradients, ``expected_cosine``, ``expected_rel_residual`` (|e1 - e2| / |e1| in parameters) and
    ``expected_head_residual`` (max |difference| of the float64 expected head gradients, relative to their max).
    """
    with torch.enable_grad():
        log_pi, v = network_outputs(net, batch.obs)
        out: dict[str, Any] = {"grad": {}, "expected": {}, "heads": {}, "expected_heads": {}}
        for rule in rules:
            loss = rule_loss(rule, gamma, tau, value_coef, penalty)
            for key, heads_key, expected in (("grad", "heads", False), ("expected", "expected_heads", True)):
                heads = head_gradients(log_pi, v, batch, loss, expected=expected)
                out[heads_key][rule] = heads
                out[key][rule] = parameter_gradient(net, batch.obs, *heads)
    first, second = rules
    g1, g2 = out["grad"][first], out["grad"][second]
    e1, e2 = out["expected"][first], out["expected"][second]
    h1, h2 = out["expected_heads"][first], out["expected_heads"][second]
    scale = max(float(h1[0].abs().max()), float(h1[1].abs().max()), 1e-300)
    out.update(
        cosine=cosine(g1, g2), norm_ratio=float(g2.norm() / g1.norm()), expected_cosine=cosine(e1, e2),
        expected_rel_residual=float((e1.double() - e2.double()).norm() / e1.double().norm()),
        expected_head_residual=max(float((h1[0] - h2[0]).abs().max()), float((h1[1] - h2[1]).abs().max())) / scale,
        grad_norm={first: float(g1.norm()), second: float(g2.norm())},
    )
    return out


AGREEMENT_COLUMNS = ("frames", "updates", "cosine", "norm_ratio", "expected_cosine", "expected_rel_residual",
                     "expected_head_residual", "grad_norm_proper", "grad_norm_soft_q", "score_mean100")


def agreement_row(agent: A2C) -> dict[str, float]:
    """:func:`compare_rules` (``proper`` vs ``soft_q``, at the agent's gamma, tau, value coefficient and penalty)
    on the rollout of the agent's last :meth:`~softq.rl.agents.a2c.A2C.collect`, before its update, as a row of
    :data:`AGREEMENT_COLUMNS`. Draws no random numbers and leaves ``.grad`` alone: the run is not changed."""
    cfg = agent.cfg
    r = compare_rules(agent.net, Batch.from_agent(agent), cfg.gamma, cfg.tau, cfg.value_coef, penalty=cfg.penalty)
    return {"frames": agent.frames, "updates": agent.updates, "cosine": r["cosine"], "norm_ratio": r["norm_ratio"],
            "expected_cosine": r["expected_cosine"], "expected_rel_residual": r["expected_rel_residual"],
            "expected_head_residual": r["expected_head_residual"], "grad_norm_proper": r["grad_norm"]["proper"],
            "grad_norm_soft_q": r["grad_norm"]["soft_q"], "score_mean100": agent.score_mean()}


def agreement_cells(row: dict[str, float]) -> list[str]:
    """A row of :func:`agreement_row` as the cells of ``agreement.csv`` (10 significant digits)."""
    return [f"{row[c]:.10g}" for c in AGREEMENT_COLUMNS]


@dataclass(frozen=True)
class AgreementHook:
    """A2C's measurement hook (:class:`softq.rl.agents.base.Hook`): :func:`agreement_row` before every ``every``-th
    update, into ``agreement.csv``."""

    every: int
    file: str = "agreement.csv"
    columns: tuple[str, ...] = AGREEMENT_COLUMNS

    def due(self, agent: A2C) -> bool:
        return agent.updates % self.every == 0

    def row(self, agent: A2C) -> list[str]:
        return agreement_cells(agreement_row(agent))


def read_agreement(path: str | Path) -> dict[str, torch.Tensor]:
    """``agreement.csv`` (a file, or a folder holding one) as ``{column: float64 tensor}``."""
    path = Path(path)
    if path.is_dir():
        path = path / "agreement.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return {c: torch.tensor([float(r[c]) if r[c] != "" else math.nan for r in rows], dtype=torch.float64)
            for c in rows[0]}
