"""DQN with the standard and the soft backups of Section 6.2, eqs (81)-(83), and their n-step forms.

The paper "made a one-line change to a DQN implementation": only the target ``y_t`` differs between the runs;
network, replay, target network and epsilon-greedy exploration are identical. Here the one line is
:func:`softq.regularized.q_learning_target` with ``backup`` = ``target``:

- ``hard`` (eq 81): ``y = r + gamma max_a' Qbar(s', a')``.
- ``soft_kl`` (eq 82, corrected): KL penalty against a uniform ``pi_bar``,
  ``y = r + gamma V(s')``, ``V = tau log sum_a' exp(Qbar(s', a')/tau) - tau log|A|`` (:func:`softq.regularized.
  soft_value`). As typed, eq (82) reads ``r + gamma log sum exp(Q/tau) - log|A|``: the factors tau are missing and
  -log|A| sits outside the discount (the book's chapter 7 shows the typed form failing, e.g. not tending to eq 81
  as tau -> 0).
- ``soft_ent`` (eq 83, corrected): entropy bonus, ``y = r + gamma tau log sum_a' exp(Qbar(s', a')/tau)``
  ``= r + gamma (V_Q + tau log|A|)``; typed without the factors tau.

``n_step`` > 1 (the paper's "5-step Q-learning") uses eq (46): ``y_t = r_t + sum_{1<=d<n} gamma^d (r_{t+d} -
tau k(s_{t+d})) + gamma^n V(s_{t+n})`` with the penalty ``k`` of the target network's Boltzmann policy
(KL against uniform, minus the entropy for ``soft_ent``, 0 for ``hard``); it stops at a terminal step (a lost life
included) and bootstraps at a time-limit cut. n = 1 is eqs (81)-(83) exactly. Regression with
:func:`softq.losses.soft_q_loss` (eq 44, ``1/2 (Q - y)^2``) or a Huber loss. The ``hard`` n-step target reads
``max Qbar`` at one state per window, the one it bootstraps from (:func:`bootstrap_index`), so the target network
runs on ``N`` states, not ``n*N`` (:meth:`DQN.target`; the same target).

Reference and hyperparameters. The paper does not list its DQN's settings (OpenAI's internal DQN of 2017). We use
CleanRL's ``dqn_atari.py`` (Huang et al. 2022; Nature DQN, Mnih et al. 2015): it is public, single-file, and its
published Pong runs reach about 20; its defaults are this :class:`Config`'s: Nature network, replay of 1M
transitions, Adam (lr 1e-4, eps 1e-8), squared-error loss (CleanRL uses MSE, not Nature's Huber; ``--loss huber``
gives Huber with delta 1), no gradient clipping, batch 32, gamma 0.99, learning starts after 80k steps, one
gradient step per 4 env steps, the target network copied every 1000 env steps, epsilon 1.0 -> 0.01 linearly over
the first 10% of the schedule's horizon. CleanRL's horizon is its run, 10M *agent steps*: epsilon reaches 0.01 after
1M steps. The paper plots frames (our ``frames`` counts emulator frames, 4 per agent step) and trains 40M frames =
10M steps (Figure 2), so the horizon is ``schedule_frames`` (default: 40M frames on Atari), **not** where a run
stops: epsilon reaches 0.01 at 4M frames = 1M steps, exactly CleanRL's, and a run of any length (10M frames, a
quarter of the paper's) is the first part of the 40M-frame run (``schedule_frames = 0``: the run's own ``frames``;
classic control uses its run's length by default, having no paper budget). Differences, for speed: ``num_envs``
environments step together (default 8; CleanRL uses 1); each vector step adds ``num_envs`` transitions and, after
learning starts, does ``num_envs / train_frequency`` gradient steps, so the replay ratio (one batch of 32 per 4
env steps) and every schedule in env steps are CleanRL's. The trunk is initialized orthogonally
(:mod:`softq.rl.parts.nets`). Life loss is terminal for learning; scores are full games, unclipped
(:mod:`softq.rl.parts.envs`).

Replay (:mod:`softq.rl.parts.replay`): each frame stored once on the training device, sampled by index arithmetic in
torch. On CUDA (``cuda_graph=auto``) the whole gradient step -- sampling, stack rebuilding, target, loss, backward,
Adam -- and the acting forward pass are captured in CUDA graphs and replayed, so Python launches two graphs per
vector step; on CPU the same code runs eagerly (the flag is then ignored, and recorded as such). A non-finite
loss or gradient norm sets a device flag; on CPU it is read after every gradient step (free), on CUDA only at log
rows (a read is a host-device sync), and :meth:`DQN.assert_finite` (flag and weights) runs before every checkpoint,
so a NaN stops the run before it could be saved as the last good state.

Speed. The trained Nature CNN runs in channels_last (NHWC) memory format; on CPU, Adam is torch's fused one (one
pass over the 1.7M weights). ``precision="bf16"`` (an option; default fp32) runs the convolutions' forward and
backward under bf16 autocast (:meth:`DQN.q_values`; the 3136 -> 512 layer, the head, targets, loss and Adam stay
float32).

Checkpoints (:mod:`softq.rl.experiments.loop`). A replay of at most ``checkpoint_replay_mb`` MiB (classic control) is
saved in the checkpoint together with the environments, so a CPU run resumes bit for bit. A larger one (Atari: 7 GB
per 1M transitions; ale-py's emulators cannot be saved either) is **not** saved: resume starts fresh games with an
empty replay, collects ``learning_starts`` new steps with the current network and epsilon before training again, and
records ``"replay_restored": false`` in ``config.json`` ("starts").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from softq import config as softq_config
from softq import losses, regularized
from softq.rl.agents.base import (
    CONTROL,
    MAX_ENVS,
    MAX_FRAMES,
    PRECISIONS,
    RUN,
    NonFiniteLoss,
    RunConfig,
    auto_torch_threads,
    option,
    restore_generator,
    variant_name,
)
from softq.rl.parts.envs import CLASSIC_ENVS, VecEnv, make_env
from softq.rl.parts.nets import make_q_net
from softq.rl.parts.replay import FrameReplay

__all__ = ["BACKUPS", "PRECISIONS", "ATARI_SCHEDULE_FRAMES", "PONG_CPU", "PRESETS", "COLUMNS", "Config", "DQN",
           "dqn_loss", "bootstrap_index"]

BACKUPS = regularized.DQN_BACKUPS  # ("hard", "soft_kl", "soft_ent"): regularized.Backup's names
#: The horizon of epsilon's schedule on Atari (``schedule_frames = -1``): the paper's DQN budget (Figure 2, 40M frames)
ATARI_SCHEDULE_FRAMES = 40_000_000
#: A DQN configuration that learns Pong within a CPU budget (Figure 2's Pong panel on a 2-core machine): the
#: settings of Tianshou's ``examples/atari/atari_dqn.py`` (thu-ml/tianshou; its README: Pong to a best reward of 20
#: in about 15 epochs of 100k env steps, i.e. 1.5M env steps = 6M frames). 10 environments, replay of 100k
#: transitions, Adam lr 1e-4, batch 32, one gradient step per 10 env steps (``update_per_step=0.1``), the target
#: network copied every 500 gradient steps (= 5000 env steps), learning from 320 env steps on, epsilon 1.0 -> 0.05
#: over the first 1M env steps (4M frames), then constant. Differences from Tianshou, kept so that the variants stay
#: Figure 2's: the lookahead ``n_step`` is each variant's (1 or 5; Tianshou's default is 3), the target is the
#: variant's (Tianshou's ``DQNPolicy`` defaults to double Q-learning), and the loss is ``1/2 (Q - y)^2`` (Tianshou:
#: ``(Q - y)^2``; Adam makes the factor almost immaterial). CleanRL's settings stay the defaults of :class:`Config`
#: (``make train`` with a GPU). A run stops at the schedule's end, 4M frames (10% of Figure 2's budget). Trained
#: here (2026-12-02/03, seeds 0 and 1, results/dqn-PongNoFrameskip-v4/, chapter 7): last-100 scores at 4M frames
#: -10.9 and -12.8 with the standard target, +5.5 and +2.3 with the standard 5-step target.
PONG_CPU = {"num_envs": 10, "buffer_size": 100_000, "batch_size": 32, "lr": 1e-4, "learning_starts": 320,
            "train_frequency": 10, "target_update": 5000, "eps_start": 1.0, "eps_end": 0.05,
            "exploration_fraction": 1.0, "schedule_frames": 4_000_000, "frames": 4_000_000}
#: Named sets of defaults for ``python -m softq.rl train --algo dqn --preset NAME`` (explicit options override them):
#: ``cleanrl`` is :class:`Config`'s own defaults, ``pong-cpu`` is :data:`PONG_CPU`.
PRESETS = {"cleanrl": {}, "pong-cpu": PONG_CPU}
#: progress.csv columns of a DQN run (``updates`` counts vector steps, ``grad_steps`` gradient steps).
#: ``target_entropy``: the mean over the batch of the entropy of the target network's Boltzmann policy
#: ``softmax(Qbar(s', .) / tau)`` at the next state ``s'`` each target bootstraps from (the policy the soft targets
#: average over; for ``hard``, whose greedy policy has entropy 0, the same diagnostic at the run's ``tau``).
#: ``action_gap``: the mean over the batch of the online network's best minus second-best ``Q(s_t, .)``. Both, like
#: ``loss``, ``q_mean``, ``target_mean`` and ``grad_norm``, are of the last gradient step before the row.
COLUMNS = ("frames", "updates", "grad_steps", "episodes", "score_mean100", "score_count", "loss", "q_mean",
           "target_mean", "grad_norm", "target_entropy", "action_gap", "epsilon", "lr", "sps", "wall_s")


@dataclass
class Config(RunConfig):
    """Every setting of a DQN run: the fields every algorithm has (:class:`softq.rl.agents.base.RunConfig`) and DQN's
    own. Defaults: CleanRL's dqn_atari (module docstring). Bad values raise ValueError naming the field."""

    ALGO: ClassVar[str] = "dqn"
    #: ``config.json``'s older names of fields: ``target`` (until the backup got one name) is ``backup``.
    RENAMED: ClassVar[dict[str, str]] = {"target": "backup"}

    algo: str = option("dqn", "the algorithm: dqn (this Config) | a2c (softq.rl.agents.a2c.Config)", group=RUN)
    log_every: int = option(1000, "how often progress.csv gets a row", unit="vector steps", low=1, group=CONTROL)
    checkpoint_every: int = option(0, "vector steps between checkpoints (0: off); for tests", unit="vector steps",
                                   low=0, control=True, group=CONTROL)
    backup: str = option("hard", "the backup in the regression target y: hard (eq 81) | soft_kl (eq 82, corrected) "
                         "| soft_ent (eq 83, corrected)", choices=BACKUPS, group=RUN, aliases=("--target",))
    tau: float = option(0.1, "the temperature of the soft targets (the paper: 0.1 and 0.01); unused by hard", low=0,
                        low_open=True, group=RUN)
    n_step: int = option(1, "the target's lookahead n (the paper: 1 and 5)", unit="agent steps", low=1, high=1000,
                         group=RUN)
    num_envs: int = option(8, "environments stepped side by side; one vector step is num_envs env steps",
                           unit="environments", low=1, high=MAX_ENVS)
    buffer_size: int = option(1_000_000, "the replay's capacity", unit="transitions", low=1, high=10**9)
    batch_size: int = option(32, "transitions per gradient step", unit="transitions", low=1, high=2**20)
    lr: float = option(1e-4, "Adam's learning rate", low=0, low_open=True)
    adam_eps: float = option(1e-8, "Adam's epsilon", low=0, low_open=True)
    learning_starts: int = option(80_000, "env steps before the first gradient step", unit="env steps", low=0)
    train_frequency: int = option(4, "env steps per gradient step", unit="env steps", low=1)
    target_update: int = option(1000, "env steps between copies of the online network into the target network",
                                unit="env steps", low=1)
    eps_start: float = option(1.0, "epsilon-greedy: epsilon at the start of its schedule", low=0, high=1)
    eps_end: float = option(0.01, "epsilon at the end of its schedule (then constant)", low=0, high=1)
    exploration_fraction: float = option(0.1, "the fraction of the schedule's horizon over which epsilon decays "
                                         "linearly", low=0, high=1)
    schedule_frames: int = option(-1, "the horizon of epsilon's schedule: -1 (auto): 40M on Atari (Figure 2's "
                                  "budget), frames on classic control; 0: frames (the run's own length); > 0: that "
                                  "many frames", unit="frames", low=-1, high=MAX_FRAMES)
    loss: str = option("mse", "mse: soft_q_loss, 1/2 (Q - y)^2 (eq 44) | huber: smooth L1, delta 1",
                       choices=("mse", "huber"))
    max_grad_norm: float = option(0.0, "the gradient is clipped to this global norm; 0: no clipping (CleanRL)",
                                  low=0)
    cuda_graph: str = option("auto", "auto: on with CUDA, off on CPU | on | off", choices=("auto", "on", "off"),
                             control=True, group=CONTROL)
    checkpoint_replay_mb: float = option(256.0, "checkpoints hold the replay (and the envs) when it is at most this "
                                         "large", unit="MB", low=0, control=True, group=CONTROL)

    def validate(self) -> None:
        if self.buffer_size // self.num_envs < self.n_step + 6:
            raise self.bad("buffer_size", f"must hold at least {(self.n_step + 6) * self.num_envs} transitions "
                                          f"(num_envs={self.num_envs}, n_step={self.n_step})")

    @property
    def rule(self) -> str:
        """The variant's name in the results layout: ``hard``, ``soft_ent_tau0.1``, ``soft_kl_tau0.01_n5``, ..."""
        return variant_name(self.backup, self.tau, self.n_step)

    @property
    def horizon_frames(self) -> int:
        """Frames over which epsilon's schedule runs: ``schedule_frames``; ``frames`` when it is 0; with -1 (auto)
        :data:`ATARI_SCHEDULE_FRAMES` on Atari and ``frames`` on classic control."""
        if self.schedule_frames > 0:
            return self.schedule_frames
        if self.schedule_frames == -1 and self.env not in CLASSIC_ENVS:
            return ATARI_SCHEDULE_FRAMES
        return self.frames

    @property
    def steps_per_update(self) -> int:
        """Env steps per :meth:`DQN.step` (one vector step)."""
        return self.num_envs


def dqn_loss(q_taken: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean regression loss of ``Q(s_t, a_t)`` on the fixed target ``y_t``; ``[N], [N] -> []``.

    ``mse``: :func:`softq.losses.soft_q_loss` (eq 44), ``1/2 (Q - y)^2``; ``huber``: ``1/2 (Q - y)^2`` for
    ``|Q - y| <= 1``, ``|Q - y| - 1/2`` beyond (Nature DQN's error clipping).
    """
    if loss == "mse":
        return losses.soft_q_loss(q_taken, target).mean()
    if loss == "huber":
        return F.huber_loss(q_taken, target.detach(), delta=1.0)
    raise ValueError(f"loss must be 'mse' or 'huber', got {loss!r}")


def bootstrap_index(terminal: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Per window, the index ``m`` of the next state an n-step target reads ``V`` at: ``[n, N], [n, N] -> [N]`` long.

    ``m`` is the first step ``d`` of the window that is ``terminal`` or ``truncated``, else ``n - 1``: after a cut the
    target bootstraps from ``V(s_{t+m+1}) = V(next_obs[m])``, at a terminal it adds no ``V`` at all (eq 46; its
    entry ``m`` is then multiplied by 0), and a window without an end bootstraps from its last next state. Only
    device ops of fixed shapes (capturable in a CUDA graph).
    """
    n = terminal.shape[0]
    stop = (terminal | truncated).to(torch.int32)
    before = (torch.cumsum(stop, dim=0) == 0).sum(dim=0)  # steps of the window before its first end
    return before.clamp_(max=n - 1)


def _split_trunk(trunk: torch.nn.Sequential) -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    """``(low, high)``: the trunk's layers before its first ``Flatten`` (the convolutions) and from it on; an MLP
    trunk (no Flatten) is all ``low``."""
    k = next((i for i, m in enumerate(trunk) if isinstance(m, torch.nn.Flatten)), len(trunk))
    return trunk[:k], trunk[k:]


class _Stats(Mapping):
    """The last update's statistics, read from the device only when a log row asks for them."""

    def __init__(self, device_values: torch.Tensor | None, names: tuple[str, ...], host: dict[str, float]):
        self._dev, self._names, self._host, self._vals = device_values, names, host, None

    def _load(self) -> dict[str, float]:
        if self._vals is None:
            vals = self._dev.tolist() if self._dev is not None else [float("nan")] * len(self._names)
            self._vals = {**dict(zip(self._names, vals, strict=True)), **self._host}
        return self._vals

    def __getitem__(self, key: str) -> float:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


class DQN:
    """Environments, online and target networks, replay, optimizer and random state of one DQN run.

    :meth:`step` is one vector step (``num_envs`` env steps) and the gradient steps it makes due.
    """

    STAT_NAMES = ("loss", "q_mean", "target_mean", "grad_norm", "target_entropy", "action_gap")
    columns = COLUMNS

    def __init__(self, cfg: Config, env: VecEnv | None = None):
        self.cfg = cfg
        self.device = softq_config.device(None if cfg.device == "auto" else cfg.device)
        if self.device.type == "cuda":
            # streams, events and graph capture bind to the *current* device: make it ours (cuda:1 on a 2-GPU host)
            torch.cuda.set_device(self.device)
        torch.set_num_threads(cfg.torch_threads or auto_torch_threads(cfg.env, self.device))
        self.env = env or make_env(cfg.env, cfg.num_envs, threads=cfg.env_threads)
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(cfg.seed)
        self.net = make_q_net(self.env.obs_shape, self.env.n_actions, cfg.hidden).to(self.device)
        self.target_net = make_q_net(self.env.obs_shape, self.env.n_actions, cfg.hidden).to(self.device)
        # Nature CNN memory formats: NHWC (channels_last) for the trained network (forward + backward: faster on CPU)
        # and for the target network in bf16; NCHW for the fp32 target network (forward only: NHWC gains nothing
        # there and its input would need a transposed copy)
        self.channels_last = {self.net: self.net.image,
                              self.target_net: self.net.image and cfg.precision == "bf16"}
        for net, nhwc in self.channels_last.items():
            if nhwc:
                net.to(memory_format=torch.channels_last)
        self.target_net.load_state_dict(self.net.state_dict())
        self.target_net.requires_grad_(False)
        self._parts = {net: _split_trunk(net.trunk) for net in (self.net, self.target_net)}  # for bf16: q_values
        self.params = list(self.net.parameters())
        self.use_graph = self.device.type == "cuda" and cfg.cuda_graph != "off"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest convolutions
        if cfg.cuda_graph == "on" and self.device.type != "cuda":
            print(f"cuda_graph=on ignored on {self.device}: CUDA graphs need a CUDA device; running eagerly")
        # CPU: torch's fused Adam (one pass over the weights instead of about ten); CUDA: the capturable foreach one
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, eps=cfg.adam_eps, capturable=self.use_graph,
                                    fused=True if self.device.type == "cpu" else None)
        self.rng = np.random.default_rng(cfg.seed)  # epsilon-greedy
        # replay sampling: a generator of our own on CPU (saved in checkpoints); CUDA graphs need the default one
        self.gen = None if self.use_graph else torch.Generator(device=self.device).manual_seed(cfg.seed)
        obs_dtype = torch.uint8 if self.env.obs_dtype == np.uint8 else torch.float32
        self.replay = FrameReplay(cfg.buffer_size, cfg.num_envs, self.env.obs_shape, cfg.n_step, self.device,
                                  obs_dtype)
        self.frames_per_update = cfg.num_envs * self.env.frames_per_step
        self.total_updates = -(-cfg.frames // self.frames_per_update)
        self.total_env_steps = self.total_updates * cfg.num_envs
        self.updates = self.env_steps = self.grad_steps = self.episodes = 0
        self.train_credit = 0  # env steps not yet paid for by a gradient step (one per train_frequency)
        self.learn_from = cfg.learning_starts  # env step from which gradient steps are made
        self.scores: deque[float] = deque(maxlen=100)
        self.obs = self.env.reset(seed=cfg.seed)
        self.replay.start(self.obs)
        self._stats = torch.full((len(self.STAT_NAMES),), float("nan"), device=self.device)
        self._bad = torch.zeros((), dtype=torch.bool, device=self.device)  # a non-finite loss or gradient norm
        #: read the non-finite flag after every gradient step (free on a CPU), or only at log rows (CUDA: a read is a
        #: host-device sync); :meth:`assert_finite` checks the flag and the weights (runs.train: before checkpoints)
        self.check_every_step = self.device.type != "cuda"
        self._have_stats = False
        self._graph = self._act_graph = None
        self._eager_updates = 0
        self.sample_u: torch.Tensor | None = None  # fixed replay draws instead of the generator's (graph_check)
        #: env steps over which epsilon decays: exploration_fraction of the schedule's horizon (Config.horizon_frames)
        self.epsilon_decay_env_steps = cfg.exploration_fraction * cfg.horizon_frames / self.env.frames_per_step
        self.info: dict[str, Any] = {"cuda_graph": self.use_graph,
                                     "replay_bytes_per_transition": self.replay.bytes_per_transition(),
                                     "epsilon_decay_env_steps": self.epsilon_decay_env_steps}

    @property
    def frames(self) -> int:
        return self.updates * self.frames_per_update

    def epsilon(self) -> float:
        """Linear from ``eps_start`` to ``eps_end`` over the first ``exploration_fraction`` of the schedule's horizon
        (:attr:`Config.horizon_frames`, in env steps: ``epsilon_decay_env_steps``), then ``eps_end``; the same at a
        given env step whatever ``frames`` the run stops at (CleanRL's ``linear_schedule``)."""
        cfg = self.cfg
        duration = self.epsilon_decay_env_steps
        if duration <= 0:
            return cfg.eps_end
        return max(cfg.eps_end, cfg.eps_start + (cfg.eps_end - cfg.eps_start) * self.env_steps / duration)

    # --- acting ---------------------------------------------------------------------------------------------

    def q_values(self, net: torch.nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """``Q(s, .) [N, A]`` float32 of ``net`` (the online or the target network) on ``obs [N, *obs_shape]``.

        Images go in the network's memory format (``channels_last`` or not: ``self.channels_last``).
        ``precision="bf16"``: the convolutions (classic control: the MLP trunk) run under bf16 autocast, the fully
        connected 3136 -> 512 layer and the head in float32 on their output cast back: convolutions are compute-bound
        (bf16 helps), that layer is bound by reading its 1.6M weights (a bf16 copy per pass would cost more than it
        saves), and the action values, their argmax and the loss keep float32's resolution (bf16 spaces values near
        1 by 0.008).
        """
        if self.channels_last[net]:  # the same values as obs.float(), in NHWC
            obs = obs.float().contiguous(memory_format=torch.channels_last)
        if self.cfg.precision == "fp32":
            return net(obs)
        low, high = self._parts[net]
        x = obs.float() / 255.0 if net.image else obs.float()  # QNetwork.forward's input scaling
        with torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False):
            h = low(x)
        return net.head(high(h.float()))

    def _greedy(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(obs)
        if not self.use_graph:
            with torch.no_grad():
                return self.q_values(self.net, x.to(self.device)).argmax(-1).cpu().numpy()
        if self._act_graph is None:
            self._act_host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            self._act_in = x.to(self.device).clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(3):
                    self.q_values(self.net, self._act_in)
            torch.cuda.current_stream().wait_stream(side)
            self._act_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._act_graph), torch.no_grad():
                self._act_out = self.q_values(self.net, self._act_in).argmax(-1)
        self._act_host.copy_(x)  # the previous copy is done: its .cpu() below waited for the stream
        self._act_in.copy_(self._act_host, non_blocking=True)
        self._act_graph.replay()
        return self._act_out.cpu().numpy()

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Epsilon-greedy actions ``[B]`` for ``obs [B, *obs_shape]`` (the same exploration for every target)."""
        b = self.cfg.num_envs
        explore = self.rng.random(b) < self.epsilon()
        random_actions = self.rng.integers(0, self.env.n_actions, b)
        if explore.all():
            return random_actions
        return np.where(explore, random_actions, self._greedy(obs))

    # --- learning -------------------------------------------------------------------------------------------

    def target(self, batch) -> torch.Tensor:
        """The fixed targets ``y [N]`` of a :class:`softq.rl.parts.replay.Batch` (:meth:`target_and_bootstrap_q`)."""
        return self.target_and_bootstrap_q(batch)[0]

    def target_and_bootstrap_q(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y [N], q_boot [N, A])``: the fixed targets of a :class:`softq.rl.parts.replay.Batch`, eqs (81)-(83),
        n-step eq (46), from the target network (:func:`softq.regularized.q_learning_target`), and the target network's
        ``Qbar(s', .)`` at the next state each target bootstraps from (:func:`bootstrap_index`; a diagnostic: its
        rows after a terminal step enter no target). Call under ``torch.no_grad()``.

        Soft targets need ``Qbar`` at all n next states (their penalties ``k``), so the target network runs on the
        ``[n*N]`` states ``next_obs``. The ``hard`` target needs only the one it bootstraps from
        (:func:`bootstrap_index`): the network runs on those ``[N]`` states, their values are put at their steps of
        an otherwise zero ``q_next [n, N, A]``, and ``q_learning_target`` gives the same target as with every
        state evaluated (the other entries enter only multiplied by 0).
        """
        cfg = self.cfg
        n, size = batch.rewards.shape
        m = bootstrap_index(batch.terminal, batch.truncated)
        cols = torch.arange(size, device=m.device)
        if cfg.backup == "hard" and n > 1:
            q_boot = self.q_values(self.target_net, batch.next_obs[m, cols])  # [N, A]
            q_next = torch.zeros((n, *q_boot.shape), dtype=q_boot.dtype, device=q_boot.device)
            q_next[m, cols] = q_boot
        else:
            q_next = self.q_values(self.target_net, batch.next_obs.reshape(n * size, *batch.next_obs.shape[2:]))
            q_next = q_next.view(n, size, -1)
            q_boot = q_next[m, cols]
        y = regularized.q_learning_target(batch.rewards, q_next, batch.terminal, batch.truncated,
                                          cfg.gamma, cfg.tau, cfg.backup)
        return y, q_boot

    def _update_body(self) -> None:
        """One gradient step on a sampled batch; only device work (capturable). Writes ``_stats`` and ``_bad``."""
        cfg = self.cfg
        batch = self.replay.sample(cfg.batch_size, self.gen, self.sample_u)
        with torch.no_grad():
            y, q_boot = self.target_and_bootstrap_q(batch)
        q_all = self.q_values(self.net, batch.obs)
        q_taken = q_all.gather(1, batch.actions[:, None])[:, 0]
        loss = dqn_loss(q_taken, y, cfg.loss)
        loss.backward()
        if cfg.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        else:  # no clipping: the norm alone (clip_grad_norm_ with an infinite bound would rescale every grad by 1)
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params])
        self.opt.step()
        loss, grad_norm = loss.detach(), grad_norm.detach()
        with torch.no_grad():
            log_pi = regularized.log_boltzmann_policy(q_boot, cfg.tau)
            top2 = q_all.detach().topk(2, dim=-1).values  # every env here has at least 2 actions
            diagnostics = [regularized.entropy(log_pi=log_pi).mean(), (top2[:, 0] - top2[:, 1]).mean()]
        self._stats.copy_(torch.stack([loss, q_taken.detach().mean(), y.mean(), grad_norm, *diagnostics]))
        self._bad.logical_or_(~(torch.isfinite(loss) & torch.isfinite(grad_norm)))

    def update(self) -> None:
        """One gradient step (captured in a CUDA graph after three eager warm-up steps when ``use_graph``)."""
        with regularized.value_checks(False):
            if not self.use_graph:
                self.opt.zero_grad(set_to_none=True)
                self._update_body()
            elif self._graph is None and self._eager_updates < 3:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self.opt.zero_grad(set_to_none=True)
                    self._update_body()
                torch.cuda.current_stream().wait_stream(side)
                self._eager_updates += 1
            else:
                if self._graph is None:
                    self.opt.zero_grad(set_to_none=True)
                    self._graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(self._graph):
                        self._update_body()
                self._graph.replay()
        self.grad_steps += 1
        self._have_stats = True

    def sync_target(self) -> None:
        """Copy the online network into the target network, in place (a captured graph keeps reading it)."""
        with torch.no_grad():
            for p_target, p in zip(self.target_net.parameters(), self.net.parameters(), strict=True):
                p_target.copy_(p)

    def step(self) -> Mapping[str, float]:
        """One vector step of every env, into the replay; then the gradient steps and target copies now due."""
        cfg = self.cfg
        eps = self.epsilon()
        actions = self.act(self.obs)
        out = self.env.step(actions)
        self.replay.add(actions, out.reward, out.terminal, out.truncated, out.reset, out.obs)
        self.obs = out.obs
        self.scores.extend(out.scores)
        self.episodes += len(out.scores)
        before = self.env_steps
        self.env_steps += cfg.num_envs
        self.updates += 1
        trained = False
        if self.env_steps > self.learn_from and len(self.replay) >= cfg.batch_size:
            self.train_credit += cfg.num_envs
            while self.train_credit >= cfg.train_frequency:
                self.train_credit -= cfg.train_frequency
                self.update()
                trained = True
        if self.env_steps // cfg.target_update > before // cfg.target_update:
            self.sync_target()
        if trained and self.check_every_step and bool(self._bad):
            raise NonFiniteLoss(self._non_finite("loss or gradient"))
        if not self.check_every_step and (self.updates % cfg.log_every == 0 or self.updates == self.total_updates):
            self.assert_finite()  # at runs.train's log rows: one host-device sync per log_every vector steps
        host = {"epsilon": eps, "lr": cfg.lr, "grad_steps": self.grad_steps}
        return _Stats(self._stats if self._have_stats else None, self.STAT_NAMES, host)

    def _non_finite(self, what: str) -> str:
        cfg = self.cfg
        return (f"non-finite {what} at gradient step <= {self.grad_steps} (vector step {self.updates}, frame "
                f"{self.frames}) of dqn backup={cfg.backup} env={cfg.env} seed={cfg.seed}: stopped; checkpoint.pt, if "
                "the run has written one, holds its last good state")

    def hooks(self) -> list:
        """DQN takes no measurement before its updates."""
        return []

    def assert_finite(self) -> None:
        """Raise :class:`softq.rl.agents.a2c.NonFiniteLoss` if a gradient step so far had a non-finite loss or gradient
        norm, or a weight of the online or target network is non-finite.

        One read of the device (on CUDA a host-device sync, which :meth:`step` makes only at log rows):
        ``runs.train`` calls it before every checkpoint, so a spoiled state never replaces the last good one.
        """
        weights = [~torch.isfinite(p).all() for net in (self.net, self.target_net) for p in net.parameters()]
        flags = torch.stack([self._bad, torch.stack(weights).any()]).tolist()
        if flags[0]:
            raise NonFiniteLoss(self._non_finite("loss or gradient"))
        if flags[1]:
            raise NonFiniteLoss(self._non_finite("weights"))

    def score_mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")

    # --- checkpoints ----------------------------------------------------------------------------------------

    def replay_saved(self) -> bool:
        """Whether checkpoints hold the replay: it is small enough and the environments can be saved too."""
        return self.env.restorable and self.replay.nbytes() <= self.cfg.checkpoint_replay_mb * 2**20

    def state_dict(self) -> dict[str, Any]:
        saved = self.replay_saved()
        return {
            "net": self.net.state_dict(), "target_net": self.target_net.state_dict(), "opt": self.opt.state_dict(),
            "rng": self.rng.bit_generator.state, "gen": None if self.gen is None else self.gen.get_state(),
            "gen_device": self.device.type,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "counters": {k: getattr(self, k) for k in ("updates", "env_steps", "grad_steps", "episodes",
                                                       "train_credit", "learn_from")},
            "scores": list(self.scores), "env": self.env.state_dict(), "obs": np.array(self.obs),
            "replay": self.replay.state_dict() if saved else None,
            "have_stats": self._have_stats, "stats": self._stats.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`state_dict`; returns whether the environments were restored. Without a saved replay
        the replay starts empty and training waits ``learning_starts`` env steps (``self.info`` records it)."""
        self.net.load_state_dict(state["net"])
        self.target_net.load_state_dict(state["target_net"])
        # the optimizer's param groups carry `capturable`: keep this run's (a resume may switch CPU <-> CUDA graphs)
        # (and `fused`, `foreach`: this device's implementation)
        opt, impl = state["opt"], {k: self.opt.defaults[k] for k in ("capturable", "fused", "foreach")}
        self.opt.load_state_dict({**opt, "param_groups": [{**g, **impl} for g in opt["param_groups"]]})
        self._graph = self._act_graph = None  # a graph captured before would keep reading the replaced tensors
        self._eager_updates = 0
        self._bad.zero_()  # a checkpoint is saved only after assert_finite()
        self.rng.bit_generator.state = state["rng"]
        if self.gen is None:  # CUDA graphs: the replay draws from the default CUDA generator, restored below
            self.info["replay_rng_restored"] = state.get("cuda_rng") is not None
        else:
            self.info["replay_rng_restored"] = restore_generator(self.gen, state["gen"], state.get("gen_device", "cpu"))
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        for k, v in state["counters"].items():
            setattr(self, k, v)
        self.scores = deque(state["scores"], maxlen=100)
        self._have_stats = state["have_stats"]
        stats = state["stats"]  # a checkpoint of code before the diagnostics: its first four statistics
        self._stats.fill_(float("nan"))
        self._stats[: len(stats)].copy_(stats)
        envs_restored = self.env.load_state_dict(state["env"])
        if envs_restored:
            self.obs = state["obs"]
        else:
            # fresh games on seeds no earlier start of this run (nor any other run) used: softq.rl.parts.envs.env_seeds
            self.obs = self.env.reset(seed=self.cfg.seed, start=state["env"].get("start", 0) + 1)
        replay_restored = envs_restored and state["replay"] is not None
        if replay_restored:
            self.replay.load_state_dict(state["replay"])
        else:
            self.replay.start(self.obs)
            self.learn_from = self.env_steps + self.cfg.learning_starts
            self.train_credit = 0
        self.info.update(replay_restored=replay_restored,
                         replay_refill_env_steps=0 if replay_restored else self.cfg.learning_starts)
        return envs_restored
