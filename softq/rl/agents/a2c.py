"""Synchronous advantage actor-critic (A2C) with the paper's three update rules (Sections 6.1 and 6.3).

Every hyperparameter is a field of :class:`Config`, with the defaults the paper started from (the tuned A2C of
OpenAI baselines, 2017): 16 envs, 5-step rollouts, RMSProp (lr 7e-4 decayed linearly to 0, alpha 0.99, eps 1e-5),
gamma 0.99, tau 0.01 against a uniform ``pi_bar`` (an entropy bonus up to a constant), value coefficient c = 0.5,
gradient-norm clipping 0.5, one Nature-CNN trunk shared by the policy and value heads.

One rollout is ``T = num_steps`` steps of ``B = num_envs`` environments: ``obs [T+1, B, ...]`` (row ``T`` is
``s_T``, the state after the rollout), ``actions, rewards, terminal, reset: [T, B]``. A2C's return from step ``t``
looks ``T - t`` steps ahead (:func:`softq.regularized.n_step_soft_return` with ``n=None``) and bootstraps from the
value of ``s_T``. The rules differ only in the loss (:func:`a2c_loss`); every formula comes from ``softq``:

- ``naive`` (eq 79): returns of rewards only, ``n_step_soft_return(r, None, V(s_T), ...)``; the KL enters as the
  one-step term of :func:`softq.losses.policy_gradient_loss` (eq 84); plus ``c`` * :func:`softq.losses.value_loss`
  (eq 85), ``L = L_policy + c L_value`` (eq 86).
- ``proper`` (eq 80): the same, but the returns carry the KL penalties of the acting policy at every step,
  ``n_step_soft_return(r, KL, V(s_T), ...)``, with ``KL_t = kl(pi(.|s_t))`` held fixed.
- ``soft_q`` (Section 6.3): ``Q = V + tau log(pi / pi_bar)`` (:func:`softq.regularized.q_from_value_and_policy`, a
  dueling head) regressed by :func:`softq.losses.soft_q_loss` (eq 44) on the n-step soft target of eq (46),
  ``y_t = tau KL_t + n_step_soft_return(r, KL, V_Q(s_T), ...)``, bootstrapped from the same network (no target
  network), acting with ``pi`` (no epsilon schedule). The gradients entering the two streams are rescaled with
  :func:`softq.losses.scale_grad` so that the update matches A2C's: see :func:`a2c_loss`.

Autoreset (see :mod:`softq.rl.parts.envs`): a ``reset[t]`` step is not a transition. It gets weight 0 in every loss, and
:func:`reset_placeholders` turns it into a terminal "step" whose return is the value of the observation it starts
from -- the final observation of the game that just ended -- so that a time-limit cut on step ``t - 1`` (``terminal =
0``) bootstraps from ``V(s_final)`` and no return ever crosses into the next game.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch

from softq import config as softq_config
from softq import losses, regularized
from softq.rl.agents.base import (
    CONTROL,
    MAX_ENVS,
    MAX_FRAMES,
    RUN,
    NonFiniteLoss,
    RunConfig,
    auto_torch_threads,
    option,
    restore_generator,
)
from softq.rl.parts.envs import CLASSIC_ENVS, VecEnv, make_env
from softq.rl.parts.nets import make_net
from softq.rl.parts.optim import OPTIMIZERS, make_optimizer

__all__ = [
    "RULES", "CARTPOLE", "PAPER_FRAMES", "Config", "paper_protocol_differences", "auto_torch_threads",
    "restore_generator", "NonFiniteLoss", "A2C", "a2c_loss", "dueling_soft_q_loss", "reset_placeholders",
    "masked_mean",
]

RULES = ("naive", "proper", "soft_q")
#: progress.csv columns of an A2C run (``updates`` counts rollouts; the loss terms are of the update before the row).
COLUMNS = ("frames", "updates", "episodes", "score_mean100", "score_count", "loss", "policy_loss", "value_loss",
           "q_loss", "entropy", "kl", "grad_norm", "lr", "sps", "wall_s")
#: The book's live CartPole runs (chapters 6 and 8) change four of the Atari defaults, beside lr and num_envs: the
#: KL form in which those chapters derive the rules; torch's RMSprop, because TensorFlow's starts its squared-
#: gradient average at 1 and takes a few hundred updates to reach its full step, a large part of a short CartPole
#: run (rule proper, KL, gain 0.01, 80k frames, 8 envs, constant lr 2e-3, seed 0: last-100 mean 113 with
#: TensorFlow's, 361 with torch's, measured 2026-12-01); a 0.01 policy-head gain (a nearly uniform first policy);
#: the learning rate decaying to 0 at the run's own end.
CARTPOLE = {"env": "CartPole-v1", "penalty": "kl", "optimizer": "rmsprop_torch", "policy_init_scale": 0.01,
            "schedule_frames": 0}


@dataclass
class Config(RunConfig):
    """Every setting of a run: the fields every algorithm has (:class:`softq.rl.agents.base.RunConfig`) and A2C's own.
    Defaults: the paper's Atari A2C. Bad values raise ValueError naming the field."""

    ALGO: ClassVar[str] = "a2c"

    algo: str = option("a2c", "the algorithm: a2c (this Config) | dqn (softq.rl.agents.dqn.Config)", group=RUN)
    rule: str = option("proper", "the update rule: naive (eq 79) | proper (eq 80) | soft_q (Section 6.3)",
                       choices=RULES, group=RUN)
    penalty: str = option("entropy", "entropy: r + tau H (Figure 1's EntRL, Section 6.3) | kl: r - tau KL[pi || "
                          "uniform]", choices=regularized.PENALTIES)
    num_envs: int = option(16, "environments stepped side by side (B); a rollout is T x B transitions",
                           unit="environments", low=1, high=MAX_ENVS)
    num_steps: int = option(5, "the rollout's length T", unit="agent steps", low=1, high=10_000)
    optimizer: str = option("rmsprop_tf", "rmsprop_tf: TensorFlow's (baselines'), softq.rl.parts.optim | rmsprop_torch",
                            choices=OPTIMIZERS)
    lr: float = option(7e-4, "the learning rate at the start of the schedule", low=0, low_open=True)
    lr_schedule: str = option("linear", "linear: to 0 at schedule_frames (baselines' a2c.learn) | constant "
                              "(run_atari)", choices=("linear", "constant"))
    schedule_frames: int = option(320_000_000, "the learning rate's horizon (the paper's budget); 0: the run's "
                                  "frames", unit="frames", low=0, high=MAX_FRAMES)
    rms_alpha: float = option(0.99, "RMSProp's decay of the squared-gradient average", low=0, high=1)
    rms_eps: float = option(1e-5, "RMSProp's epsilon: TensorFlow's adds it inside the square root, torch's "
                            "outside", low=0, low_open=True)
    tau: float = option(0.01, "the temperature: the coefficient of the penalty", low=0, low_open=True)
    value_coef: float = option(0.5, "c in eq (86), the value loss's weight", low=0)
    max_grad_norm: float = option(0.5, "the gradient is clipped to this global norm before each step", low=0,
                                  low_open=True)
    policy_init_scale: float = option(1.0, "the orthogonal gain of the policy head (baselines 2017: 1.0; 2018 on: "
                                      "0.01)", low=0, low_open=True)
    env_backend: str = option("ale", "ale (ale-py's C++ vector env) | gymnasium (AsyncVectorEnv + wrappers; Atari "
                              "only)", choices=("ale", "gymnasium"), group=CONTROL)
    agreement_every: int = option(0, "how often proper and soft_q are compared on the update's batch (agreement.csv, "
                                  "softq.rl.agents.compare; a measurement only, the run is unchanged); 0: off",
                                  unit="updates", low=0, control=True, group=CONTROL)

    def validate(self) -> None:
        if self.env_backend == "gymnasium" and self.env in CLASSIC_ENVS:
            raise self.bad("env_backend", f"'gymnasium' is for Atari games only (env={self.env!r})")

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def horizon_frames(self) -> int:
        """Frames over which the learning rate decays to 0 (``schedule_frames``, or ``frames`` when that is 0)."""
        return self.schedule_frames or self.frames


#: The paper's A2C budget: 320M frames per run (Section 6.1, "train for 320 million frames"); the learning rate's
#: default schedule ends there (``schedule_frames``).
PAPER_FRAMES = 320_000_000
#: Fields that say what a run is or where and how it runs, not how it learns: never a difference of protocol.
_NOT_PROTOCOL = ("algo", "env", "rule", "seed", "frames", "device", "env_backend", "env_threads", "torch_threads",
                 "log_every", "agreement_every", "checkpoint_minutes", "checkpoint_every", "time_limit_minutes",
                 "hidden")


def paper_protocol_differences(cfg: Config) -> list[str]:
    """How ``cfg`` departs from the paper's A2C protocol (``Config``'s defaults, 320M frames a run), one phrase each:
    the budget first (``"10M of the paper's 320M frames"``), then every learning setting that differs from its
    default (``"optimizer rmsprop_torch (the paper: rmsprop_tf)"``). Empty for the paper's own protocol. The command
    line's ``--dry-run`` prints it; figure captions name it."""
    out = []
    if cfg.frames != PAPER_FRAMES:
        out.append(f"{cfg.frames / 1e6:g}M of the paper's {PAPER_FRAMES / 1e6:g}M frames")
    defaults = Config(env=cfg.env)
    for f in fields(Config):
        if f.name not in _NOT_PROTOCOL and getattr(cfg, f.name) != getattr(defaults, f.name):
            out.append(f"{f.name} {getattr(cfg, f.name)} (the paper: {getattr(defaults, f.name)})")
    return out


# --- the update rules ---------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``x: [T, B]`` over the entries with ``weight = 1`` (the real transitions)."""
    return (x * weight).sum() / weight.sum().clamp_min(1)


def reset_placeholders(
    rewards: torch.Tensor, kls: torch.Tensor, terminal: torch.Tensor, reset: torch.Tensor, state_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rewrite autoreset steps so that :func:`n_step_soft_return` never crosses a game boundary.

    A ``reset[t]`` step starts from the previous game's final observation ``s_t`` and is no transition. It becomes
    a terminal step with reward ``V(s_t)`` and no KL: so its return is exactly ``V(s_final)``, which is what a
    time-limit cut on step ``t - 1`` (not terminal) must bootstrap from, and after a true terminal step it is never
    read. Shapes: ``rewards, kls, terminal, reset: [T, B]``, ``state_values: [T+1, B]`` (held fixed);
    returns ``(rewards, kls, dones)``, each ``[T, B]``.
    """
    horizon = rewards.shape[0]
    rewards = torch.where(reset, state_values[:horizon].detach().to(rewards.dtype), rewards)
    kls = torch.where(reset, torch.zeros_like(kls), kls)
    return rewards, kls, terminal | reset


def a2c_loss(
    log_pi: torch.Tensor,
    v: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    terminal: torch.Tensor,
    reset: torch.Tensor,
    rule: str,
    gamma: float,
    tau: float,
    value_coef: float,
    penalty: str = "kl",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss one A2C update minimizes, for ``rule`` in :data:`RULES`, and detached diagnostics.

    Shapes: ``log_pi: [T+1, B, A]`` and ``v: [T+1, B]`` from the network on ``obs[0..T]`` (row ``T``: ``s_T``; only
    its value is read, held fixed); ``actions: [T, B]`` long; ``rewards: [T, B]``; ``terminal, reset: [T, B]`` bool.
    Uniform ``pi_bar``. ``penalty`` (:data:`softq.regularized.PENALTIES`): the per-step penalty ``k_t`` of the
    regularized return, ``"kl"`` (``KL[pi || uniform](s_t)``, eqs 79, 80) or ``"entropy"`` (``-H[pi](s_t)``: the
    entropy bonus of Figure 1's EntRL and Section 6.3's ``Q = V + tau log pi``); :func:`softq.regularized.penalty`.

    - naive / proper (eqs 79, 80, 84-86): ``G = n_step_soft_return(r, k or None, V(s_T))``, advantage
      ``G - V(s_t)``, loss ``policy_gradient_loss(log pi(a_t|s_t), G - V, k_t, tau) + c value_loss(V, G)``. The
      gradient of ``k_t`` is the same in both forms; for ``naive`` the two forms give the same update.
    - soft_q (Section 6.3, eqs 44, 46): ``Q = q_from_value_and_policy(V', log pi', tau)`` where ``V'`` and
      ``log pi'`` are ``V`` and ``log pi`` with their *gradients* rescaled by ``scale_grad``: the value stream by
      ``c`` and the advantage stream ``tau log pi`` by ``1 / tau``. By the equivalence theorem (eqs 58-65), in
      expectation ``grad soft_q_loss = tau * grad L_policy + grad L_value`` (eq 86 with c = 1/tau, up to the factor
      tau); the rescaling gives ``grad L_policy + c grad L_value``, i.e. A2C's hyperparameters. The paper prints
      the advantage-stream factor as "1/gamma": an erratum for 1/tau (the book's errata list).
      Target ``y_t = tau k_t + n_step_soft_return(r, k, V_Q(s_T))`` with ``V_Q`` the soft value of ``Q`` (equal
      to ``V`` for this parametrization), held fixed; loss ``soft_q_loss(Q(s_t, a_t), y_t)``.

    Every loss is averaged over the real transitions (``~reset``).
    """
    horizon = actions.shape[0]
    weight = (~reset).to(v.dtype)
    ks = regularized.penalty(log_pi[:horizon], penalty)  # [T, B]: k(s_t), carries the gradient
    log_prob = log_pi[:horizon].gather(-1, actions[..., None])[..., 0]
    entropy = regularized.entropy(log_pi=log_pi[:horizon].detach())
    stats: dict[str, torch.Tensor] = {
        "entropy": masked_mean(entropy, weight),
        "kl": masked_mean(math.log(log_pi.shape[-1]) - entropy, weight),  # KL[pi || uniform] = log|A| - H
    }
    if rule in ("naive", "proper"):
        state_values = v.detach()
        r, k_fixed, dones = reset_placeholders(rewards, ks.detach(), terminal, reset, state_values)
        returns = regularized.n_step_soft_return(
            r, k_fixed if rule == "proper" else None, state_values[horizon], dones, gamma, tau
        )
        policy = masked_mean(losses.policy_gradient_loss(log_prob, returns - state_values[:horizon], ks, tau), weight)
        value = masked_mean(losses.value_loss(v[:horizon], returns), weight)
        loss = policy + value_coef * value
        stats.update(policy_loss=policy.detach(), value_loss=value.detach(),
                     q_loss=torch.full((), float("nan"), device=loss.device))
    elif rule == "soft_q":
        # Section 6.3 scaling; the paper's "1/gamma" for the advantage stream is an erratum for 1/tau.
        loss = dueling_soft_q_loss(log_pi, v, actions, rewards, terminal, reset, gamma, tau,
                                   value_scale=value_coef, advantage_scale=1.0 / tau, kls=ks.detach(),
                                   penalty=penalty)
        nan = torch.full((), float("nan"), device=loss.device)
        stats.update(policy_loss=nan, value_loss=nan, q_loss=loss.detach())
    else:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    stats["loss"] = loss.detach()
    return loss, stats


def dueling_soft_q_loss(
    log_pi: torch.Tensor,
    v: torch.Tensor,
    actions: torch.Tensor,
    rewards: torch.Tensor,
    terminal: torch.Tensor,
    reset: torch.Tensor,
    gamma: float,
    tau: float,
    value_scale: float = 1.0,
    advantage_scale: float = 1.0,
    kls: torch.Tensor | None = None,
    penalty: str = "kl",
) -> torch.Tensor:
    """Soft Q-learning (eqs 44, 46) of the dueling ``Q = V' + tau log pi'`` (Section 6.3), gradients rescaled.

    ``V'`` and ``log pi'`` are ``v`` and ``log_pi`` with their gradients multiplied by ``value_scale`` and
    ``advantage_scale`` (:func:`softq.losses.scale_grad`; the forward pass is unchanged). ``(1, 1)`` is plain soft
    Q-learning, whose expected gradient is ``tau`` times A2C's with value coefficient ``c = 1/tau`` (chapter 4);
    :func:`a2c_loss` rule ``soft_q`` is ``(value_coef, 1/tau)``, A2C's expected gradient with coefficient ``c``
    (chapter 8). ``penalty="kl"``: ``Q = V + tau log(pi / uniform)`` with the soft value ``V_Q`` against a uniform
    ``pi_bar`` (DQN's ``soft_kl`` backup); ``"entropy"``: ``Q = V + tau log pi``, as Section 6.3 writes it, with
    ``V_Q = tau log sum_a exp(Q/tau)`` (``soft_ent``); in both, ``V_Q = V``.
    Target ``y_t = tau k_t + n_step_soft_return(r, k, V_Q(s_T))``, held fixed; mean over the real
    transitions (``~reset``). Shapes as in :func:`a2c_loss`; ``kls: [T, B]``, the penalty ``k`` of ``pi`` at
    ``s_0..s_{T-1}`` (:func:`softq.regularized.penalty`; computed from ``log_pi`` when not given), is held fixed.
    Returns the scalar loss.
    """
    horizon = actions.shape[0]
    weight = (~reset).to(v.dtype)
    if kls is None:
        kls = regularized.penalty(log_pi[:horizon], penalty)
    q = regularized.q_from_value_and_policy(
        losses.scale_grad(v, value_scale), losses.scale_grad(log_pi, advantage_scale), tau
    )  # [T+1, B, A]: V + tau log(pi / uniform)
    backup = {"kl": "soft_kl", "entropy": "soft_ent"}[penalty]
    if penalty == "entropy":
        q = q - tau * math.log(log_pi.shape[-1])  # V + tau log pi
    state_values = regularized.backup_value(q.detach(), tau, backup)  # V_Q(s) = V(s) here
    r, kl_fixed, dones = reset_placeholders(rewards, kls.detach(), terminal, reset, state_values)
    target = tau * kl_fixed + regularized.n_step_soft_return(r, kl_fixed, state_values[horizon], dones, gamma, tau)
    q_taken = q[:horizon].gather(-1, actions[..., None])[..., 0]
    return masked_mean(losses.soft_q_loss(q_taken, target), weight)


# --- the agent ----------------------------------------------------------------------------------------------------


class A2C:
    """Environments, network, optimizer and random state of one run: :meth:`step` is one rollout + one update.

    :meth:`state_dict` / :meth:`load_state_dict` capture everything a CPU run needs to continue bit for bit
    (the environments too, when they are restorable: classic control).

    :meth:`collect` acts without autograd graphs (one network call per step on the ``B`` observations, then one on
    ``s_T``, whose value bootstraps the returns, held fixed); :meth:`update` evaluates the network once more, on
    the rollout's ``T x B`` observations as one batch, and back-propagates through that call, as baselines' A2C
    does. Keeping the rollout's own ``T`` graphs instead (the weights do not change during a rollout) computes
    the same gradient, but as ``T`` backward passes of ``B`` rows: measured slower in bf16 and no faster in
    float32 (2026-12-03, Intel Xeon with AMX, 2 cores; results/bench/README.md). The Nature CNN runs in
    ``channels_last`` memory format, and with ``precision="bf16"`` under bf16 autocast, one autocast region per
    rollout and one per update, so that each weight is cast to bf16 once per region (the losses, the returns and
    the optimizer stay float32).
    """

    columns = COLUMNS

    def __init__(self, cfg: Config, env: VecEnv | None = None):
        self.cfg = cfg
        self.device = softq_config.device(None if cfg.device == "auto" else cfg.device)
        torch.set_num_threads(cfg.torch_threads or auto_torch_threads(cfg.env, self.device))
        self.env = env or make_env(cfg.env, cfg.num_envs, threads=cfg.env_threads, backend=cfg.env_backend)
        torch.manual_seed(cfg.seed)  # the initial weights; numpy's global RNG is not used (the envs own theirs)
        self.net = make_net(self.env.obs_shape, self.env.n_actions, cfg.hidden,
                            policy_init_scale=cfg.policy_init_scale).to(self.device)
        if self.net.image:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(cfg.optimizer, self.net.parameters(), lr=cfg.lr, alpha=cfg.rms_alpha,
                                  eps=cfg.rms_eps)
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.frames_per_update = cfg.steps_per_update * self.env.frames_per_step
        self.total_updates = -(-cfg.frames // self.frames_per_update)
        self.updates = 0
        self.episodes = 0
        self.scores: deque[float] = deque(maxlen=100)
        self.obs = self.env.reset(seed=cfg.seed)
        t, b = cfg.num_steps, cfg.num_envs
        obs_dtype = torch.uint8 if self.env.obs_dtype == np.uint8 else torch.float32
        self.info: dict[str, Any] = {}  # what a resume could not restore (config.json "starts")
        self.buf_obs = torch.zeros((t + 1, b, *self.env.obs_shape), dtype=obs_dtype, device=self.device)
        self.buf_actions = torch.zeros((t, b), dtype=torch.long, device=self.device)
        # host side, pinned on CUDA so that the copies to the device are asynchronous; each buffer is rewritten only
        # after a host read of the device (the sampled actions, the update's statistics) that its copy precedes
        pin = self.device.type == "cuda"
        self._obs_host = torch.zeros((b, *self.env.obs_shape), dtype=obs_dtype, pin_memory=pin)
        self.buf_rewards = torch.zeros((t, b), dtype=torch.float32, pin_memory=pin)
        self.buf_terminal = torch.zeros((t, b), dtype=torch.bool, pin_memory=pin)
        self.buf_reset = torch.zeros((t, b), dtype=torch.bool, pin_memory=pin)
        self._bootstrap: tuple[torch.Tensor, torch.Tensor] | None = None  # (log_pi, v) at s_T, from collect()

    @property
    def frames(self) -> int:
        return self.updates * self.frames_per_update

    def autocast(self) -> torch.autocast:
        """The autocast region of the run's ``precision`` (bf16 autocast, or disabled for float32)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_pi [N, A], v [N])`` of the network on ``obs [N, ...]``, at the run's ``precision`` (the heads'
        outputs are float32 either way: :class:`softq.rl.parts.nets.ActorCritic`)."""
        with self.autocast():
            return self.net(obs)

    def collect(self) -> None:
        """One rollout of ``num_steps`` steps into the buffers, acting with ``pi`` (the behaviour policy), and the
        network's ``(log_pi, v)`` at ``s_T`` for :meth:`update`; no autograd graph is kept."""
        with torch.no_grad(), self.autocast():
            self._collect()

    def _collect(self) -> None:
        self._bootstrap = None
        for t in range(self.cfg.num_steps):
            self._upload_obs(t)
            log_pi, _ = self.forward(self.buf_obs[t])
            actions = torch.multinomial(log_pi.exp(), 1, generator=self.gen)[:, 0]
            self.buf_actions[t] = actions
            out = self.env.step(actions.cpu().numpy())
            self.buf_rewards[t] = torch.from_numpy(out.reward)
            self.buf_terminal[t] = torch.from_numpy(out.terminal)
            self.buf_reset[t] = torch.from_numpy(out.reset)
            self.scores.extend(out.scores)
            self.episodes += len(out.scores)
            self.obs = out.obs
        self._upload_obs(-1)
        self._bootstrap = self.forward(self.buf_obs[-1])  # s_T: its value bootstraps the returns, held fixed

    def _upload_obs(self, row: int) -> None:
        """``buf_obs[row] = self.obs``, through the (pinned) host buffer."""
        self._obs_host.numpy()[...] = self.obs
        self.buf_obs[row].copy_(self._obs_host, non_blocking=True)

    def lr(self) -> float:
        """The learning rate of the next update: ``lr (1 - frames / horizon_frames)``, floored at 0 (or constant)."""
        cfg = self.cfg
        if cfg.lr_schedule == "constant":
            return cfg.lr
        return cfg.lr * max(0.0, 1.0 - self.frames / cfg.horizon_frames)

    def update(self) -> dict[str, float]:
        """One gradient step on the rollout of :meth:`collect`; raises :class:`NonFiniteLoss` on a NaN/inf loss or
        gradient norm.

        The update reads the device once, at its end (the statistics and whether the loss and the gradient norm
        were finite), and computes the loss inside :func:`softq.regularized.value_checks` ``(False)``: on a GPU no
        host read stalls the stream between the forward pass, the backward pass and the optimizer step. A
        non-finite value is therefore detected after the step: the agent in memory is then spoiled, the run stops,
        and the last good checkpoint on disk (written before this update) is what ``--resume`` continues from.
        """
        cfg = self.cfg
        t, b = cfg.num_steps, cfg.num_envs
        if self._bootstrap is None:
            raise RuntimeError("A2C.update needs a fresh rollout: call collect() first")
        log_pi_t, v_t = self.forward(self.buf_obs[:t].flatten(0, 1))  # [T B, A], [T B]: one batch, with its graph
        last_log_pi, last_v = self._bootstrap
        self._bootstrap = None
        log_pi = torch.cat([log_pi_t.view(t, b, -1), last_log_pi[None]])  # [T+1, B, A]
        v = torch.cat([v_t.view(t, b), last_v[None]])  # [T+1, B]
        dev = self.device
        with regularized.value_checks(False):
            loss, stats = a2c_loss(
                log_pi, v, self.buf_actions,
                *(x.to(dev, non_blocking=True) for x in (self.buf_rewards, self.buf_terminal, self.buf_reset)),
                cfg.rule, cfg.gamma, cfg.tau, cfg.value_coef, cfg.penalty,
            )
        lr = self.lr()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.max_grad_norm)
        self.opt.step()
        self.updates += 1
        names = list(stats)
        values = torch.stack([stats[k].to(dev, torch.float32) for k in names]
                             + [grad_norm.float(), loss.detach().float()]).tolist()
        out = dict(zip(names + ["grad_norm"], values[:-1], strict=True))
        if not (math.isfinite(values[-1]) and math.isfinite(out["grad_norm"])):
            raise NonFiniteLoss(
                f"non-finite loss ({values[-1]}) or gradient norm ({out['grad_norm']}) at update {self.updates} "
                f"(frame {self.frames - self.frames_per_update}) of rule={cfg.rule} env={cfg.env} seed={cfg.seed}: "
                "stopped; checkpoint.pt, if the run has written one, holds its last good state"
            )
        out["lr"] = lr
        return out

    def assert_finite(self) -> None:
        """Raise :class:`NonFiniteLoss` if any weight or optimizer state is NaN/inf (checked before a checkpoint)."""
        tensors = list(self.net.parameters()) + [x for st in self.opt.state.values() for x in st.values()
                                                 if isinstance(x, torch.Tensor) and x.is_floating_point()]
        if tensors and not bool(torch.stack([torch.isfinite(x).all() for x in tensors]).all()):
            raise NonFiniteLoss(f"non-finite weights or optimizer state at update {self.updates} of rule="
                                f"{self.cfg.rule} env={self.cfg.env} seed={self.cfg.seed}: not checkpointed")

    def step(self) -> dict[str, float]:
        """One rollout and one update."""
        self.collect()
        return self.update()

    def hooks(self) -> list:
        """With ``agreement_every``: the measurement of ``proper`` against ``soft_q`` on the batch of every
        ``agreement_every``-th update (:class:`softq.rl.agents.compare.AgreementHook`, ``agreement.csv``)."""
        if not self.cfg.agreement_every:
            return []
        from softq.rl.agents.compare import AgreementHook

        return [AgreementHook(self.cfg.agreement_every)]

    def score_mean(self) -> float:
        """Mean unclipped score of the last 100 (or fewer) finished games; NaN before the first."""
        return float(np.mean(self.scores)) if self.scores else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {
            "net": self.net.state_dict(), "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
            "gen_device": self.device.type,
            "torch_rng": torch.get_rng_state(),
            "updates": self.updates, "episodes": self.episodes, "scores": list(self.scores),
            "env": self.env.state_dict(), "obs": np.array(self.obs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`state_dict`. Returns whether the environments were restored too; when they were not
        (Atari) the games in progress are lost and the environments start fresh games, on the seeds of the next start
        (:func:`softq.rl.parts.envs.env_seeds`)."""
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.info["action_rng_restored"] = restore_generator(self.gen, state["gen"], state.get("gen_device", "cpu"))
        torch.set_rng_state(state["torch_rng"])
        self.updates, self.episodes = state["updates"], state["episodes"]
        self.scores = deque(state["scores"], maxlen=100)
        if self.env.load_state_dict(state["env"]):
            self.obs = state["obs"]
            return True
        # fresh games on seeds no earlier start of this run (nor any other run) used: softq.rl.parts.envs.env_seeds
        self.obs = self.env.reset(seed=self.cfg.seed, start=state["env"].get("start", 0) + 1)
        return False
