"""What every algorithm of :mod:`softq.rl` shares: the :class:`Agent` interface that the training loop
(:mod:`softq.rl.experiments.loop`) drives, the :class:`RunConfig` base of the algorithms' configs, the registry of
algorithms (:func:`algorithm`), and the small parts both agents use (precisions, threads, random state, the non-finite
stop).

Adding an algorithm means a module with a ``Config`` (a dataclass deriving from :class:`RunConfig`) and an agent class
that satisfies :class:`Agent`, and one line in :data:`ALGORITHMS`. The loop, the run folder, resume, the grid, the
launchers and the command line then serve it unchanged.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from softq import config as softq_config
from softq.regularized import Backup, as_backup

#: The numeric precisions of a run's network: float32, or bf16 autocast (the losses stay float32).
PRECISIONS = ("fp32", "bf16")


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or infinite: the run stops, keeping its last good checkpoint."""


def auto_torch_threads(env: str, device: torch.device, cores: int | None = None) -> int:
    """Torch's CPU threads when ``torch_threads = 0``: 1 with CUDA (the cores belong to the emulators) and for
    classic control (a 64-unit MLP gains nothing); for an Atari CNN on CPU every one of the ``cores`` (default:
    this process's), shared with the emulators' threads, which step while the network waits and the reverse.

    Measured on a 2-core Intel Xeon (Pong, 16 envs, 2 ALE threads, idle, 12 s each): 1 torch thread 710-748
    (float32) and 943-1065 (bf16) agent steps/s, 2 threads 1015-1031 and 1309-1490. Two threads need OpenMP's
    spinning bounded (:data:`softq.rl.OPENMP_SPIN_BOUNDED`: beside a busy process they ran at 190-206 steps/s
    without it, 572-627 with it): when torch was imported before :mod:`softq.rl` with libgomp's default, half the
    cores are used.
    """
    from softq.rl.parts.envs import CLASSIC_ENVS

    if device.type != "cpu" or env in CLASSIC_ENVS:
        return 1
    if cores is None:
        cores = softq_config.cores()
    from softq.rl import OPENMP_SPIN_BOUNDED

    return cores if OPENMP_SPIN_BOUNDED else max(1, cores // 2)


def restore_generator(gen: torch.Generator | None, state: torch.Tensor | None, device_type: str | None) -> bool:
    """Set ``gen`` to a saved ``state`` if it was saved from a generator of the same device type; return whether it was.

    A CPU and a CUDA generator have states of different sizes, and a run may resume on the other device (``device``
    is a run-control field): then ``gen`` keeps its fresh seed and the caller records that the stream changed.
    """
    if gen is None or state is None or device_type != gen.device.type:
        return False
    gen.set_state(state)
    return True


# --- configs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """What a config field means, declared once beside the field (:func:`option`): the command line's help and the
    field's check are both generated from it.

    ``help``: the meaning; ``unit``: what the number counts (``"frames"``, ``"minutes"``); ``low``/``high``: the
    allowed range (``low_open``: ``> low`` rather than ``>= low``); ``choices``: the allowed values of a string field;
    ``control``: the field changes how a run is executed, not what it computes, so it may differ on ``--resume``
    (devices, threads, checkpoints, time limits, measurements); ``group``: the heading in ``--help``; ``aliases``:
    the option's older spellings on the command line (a run's recorded command replays).
    """

    help: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    control: bool = False
    group: str = "the algorithm"
    aliases: tuple[str, ...] = ()

    def describe(self, kind: type) -> str:
        """The allowed values in words: ``"an int >= 1"``, ``"a number in [0, 1]"``, ``"one of fp32, bf16"``."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        what = "an int" if kind is int else "a number"
        if self.low is not None and self.high is not None:
            return f"{what} in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}]"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {_number(self.low)}"
        return what if kind in (int, float) else "a string"

    def admits(self, kind: type, value: Any) -> bool:
        """Whether ``value`` is of the field's ``kind`` (a float field takes an int; no bools) and in range."""
        if self.choices:
            return value in self.choices
        if kind is str:
            return isinstance(value, str)
        if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def _number(x: float) -> str:
    """``x`` as a reader types it: ``0``, ``4096``, ``2147483647``, ``1e+11`` (a power of ten), ``0.5``."""
    if float(x).is_integer() and abs(x) >= 1e7 and math.log10(abs(x)).is_integer():
        return f"{x:.0e}"
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def option(default: Any, help: str, **spec: Any) -> Any:
    """A config field with its :class:`Option`: ``lr: float = option(7e-4, "the learning rate", low=0,
    low_open=True)``."""
    return dataclasses.field(default=default, metadata={"option": Option(help, **spec)})


def options(cls) -> dict[str, tuple[dataclasses.Field, Option]]:
    """``{name: (field, its Option)}`` for every field of the config class ``cls``, in declaration order."""
    return {f.name: (f, f.metadata["option"]) for f in dataclasses.fields(cls)}


def field_type(f: dataclasses.Field) -> type:
    """The Python type of a config field (``int``, ``float`` or ``str``), from its declared annotation."""
    kind = {"int": int, "float": float, "str": str}.get(f.type) if isinstance(f.type, str) else f.type
    if kind not in (int, float, str):
        raise TypeError(f"config field {f.name}: type {f.type!r} is not int, float or str")
    return kind


#: The most frames a run may ask for (the paper's A2C: 320M; a billion-frame DQN study fits 100 times over).
MAX_FRAMES = 10**11
#: The most environments a run may step side by side (each holds an emulator and a frame stack).
MAX_ENVS = 4096
RUN, CONTROL = "what to run", "where and how"


@dataclass
class RunConfig:
    """The base of every algorithm's ``Config``: the fields every algorithm has, declared with :func:`option` as
    every field is, the checks generated from those declarations, and the conversion to and from ``config.json``.

    A subclass is a dataclass that sets :attr:`ALGO` (its name in :data:`ALGORITHMS`) and redeclares ``algo`` with
    that default, declares its own fields with :func:`option`, puts the checks that involve several fields in
    :meth:`validate`, and names a run's variant in ``rule`` (the folder ``results/<experiment>/<rule>/seed<k>``).
    A field redeclared with another default keeps its place. Bad values raise ``ValueError`` naming the field.
    """

    ALGO: ClassVar[str]
    #: Fields renamed since runs were recorded: ``{old name in config.json: field}`` (:meth:`upgrade`).
    RENAMED: ClassVar[dict[str, str]] = {}

    algo: str = option("", "the algorithm: a2c (softq.rl.agents.a2c.Config) | dqn (softq.rl.agents.dqn.Config)",
    group=RUN)
    env: str = option("PongNoFrameskip-v4", "an Atari game (any ale-py ROM) or a classic-control id, e.g. "
                      "CartPole-v1", group=RUN)
    seed: int = option(0, "the run's seed: torch, numpy and the environments' seeds (softq.rl.parts.envs.env_seeds)",
                       low=0, high=2**31 - 1, group=RUN)
    frames: int = option(10_000_000, "where the run stops", unit="emulator frames (4 per agent step on Atari)",
                         low=1, high=MAX_FRAMES, group=RUN)
    gamma: float = option(0.99, "the discount", low=0, high=1)
    hidden: int = option(64, "the MLP's width (classic control only)", unit="units", low=1, high=65536)
    precision: str = option("fp32", "the network's arithmetic: fp32, or bf16 autocast (the losses stay float32)",
                            choices=PRECISIONS)
    device: str = option("auto", "auto (CUDA if present) | cpu | cuda | cuda:1", control=True, group=CONTROL)
    env_threads: int = option(0, "the emulators' threads; 0: min(num_envs, cores)", low=0, high=MAX_ENVS,
                              control=True, group=CONTROL)
    torch_threads: int = option(0, "torch's intra-op threads; 0: softq.rl.agents.base.auto_torch_threads", low=0,
                                high=1024, control=True, group=CONTROL)
    log_every: int = option(100, "how often progress.csv gets a row", unit="updates", low=1, group=CONTROL)
    checkpoint_minutes: float = option(5.0, "time between checkpoints (0: only by count and at the end)",
                                       unit="wall-clock minutes", low=0, control=True, group=CONTROL)
    checkpoint_every: int = option(0, "updates between checkpoints (0: off); for tests", unit="updates", low=0,
                                   control=True, group=CONTROL)
    time_limit_minutes: float = option(0.0, "stop (after a checkpoint) when this much time has passed; 0: no limit",
                                       unit="wall-clock minutes", low=0, control=True, group=CONTROL)

    def __post_init__(self) -> None:
        if self.algo != self.ALGO:
            raise self.bad("algo", f"must be {self.ALGO!r} for {type(self).__module__}.{type(self).__name__}")
        for name, (f, opt) in options(type(self)).items():
            if not opt.admits(field_type(f), getattr(self, name)):
                raise self.bad(name, f"must be {opt.describe(field_type(f))}")
        from softq.rl.parts.envs import CLASSIC_ENVS, is_atari

        if self.env not in CLASSIC_ENVS:
            is_atari(self.env)  # ValueError naming an unknown game
        if self.device != "auto":
            softq_config.device(self.device)  # ValueError naming the device if it is unknown or absent
        self.validate()

    def validate(self) -> None:
        """The algorithm's checks that involve more than one field (each field's own range is already checked)."""

    def bad(self, name: str, why: str) -> ValueError:
        """The error for field ``name``: ``"<name> <why>, got <value>"``."""
        return ValueError(f"{name} {why}, got {getattr(self, name)!r}")

    @classmethod
    def control_fields(cls) -> tuple[str, ...]:
        """The fields that may differ on ``--resume``: they change how a run executes, not what it computes."""
        return tuple(name for name, (_, opt) in options(cls).items() if opt.control)

    @property
    def rule(self) -> str:  # pragma: no cover - every algorithm defines it
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain data (``config.json``'s ``"config"``)."""
        return dataclasses.asdict(self)

    @classmethod
    def upgrade(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """A recorded config's fields under today's names (:attr:`RENAMED`), in their order; nothing else changes."""
        return {cls.RENAMED.get(k, k): v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """The config of :meth:`as_dict`; renamed fields are read under their new names (:meth:`upgrade`), unknown
        fields are refused by name, missing ones take their defaults (a run from an older version)."""
        d = cls.upgrade(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return cls(**d)


# --- agents ----------------------------------------------------------------------------------------------------


@runtime_checkable
class Agent(Protocol):
    """What the training loop (:func:`softq.rl.experiments.loop.train`) needs of an agent.

    ``step`` does one update's worth of acting and learning (``frames_per_update`` emulator frames) and returns the
    statistics named in ``columns``; the loop adds ``frames``, ``updates``, ``episodes``, the scores and the timing.
    ``state_dict``/``load_state_dict`` capture everything a run needs to continue; ``load_state_dict`` returns
    whether the environments were restored. ``info`` holds what a start could or could not restore (recorded in
    ``config.json``'s ``starts``). ``hooks`` are measurements taken on the batch an update is about to use, each
    into a CSV of its own (:class:`Hook`).
    """

    cfg: Any
    device: torch.device
    env: Any
    columns: tuple[str, ...]
    info: dict[str, Any]
    updates: int
    total_updates: int
    frames_per_update: int
    episodes: int
    scores: deque

    @property
    def frames(self) -> int: ...

    def step(self) -> Mapping[str, float]: ...

    def score_mean(self) -> float: ...

    def assert_finite(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> bool: ...

    def hooks(self) -> list[Hook]: ...


class Hook(Protocol):
    """A measurement the loop takes before some updates, on the batch the update then uses.

    ``file`` is its CSV in the run folder (its bytes are recorded in checkpoints as ``<stem>_bytes``), ``columns``
    its header. When ``due(agent)`` is true the loop calls ``agent.collect()``, writes ``row(agent)`` and then
    ``agent.update()``; otherwise it calls ``agent.step()``. The run itself is unchanged by the measurement.
    """

    file: str
    columns: tuple[str, ...]

    def due(self, agent: Any) -> bool: ...

    def row(self, agent: Any) -> list[str]: ...


# --- the registry ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Algorithm:
    """One algorithm: its name, its module, and the names of its config and agent classes there."""

    name: str
    module: str
    config_name: str = "Config"
    agent_name: str = ""

    @property
    def config(self) -> type[RunConfig]:
        return getattr(importlib.import_module(self.module), self.config_name)

    @property
    def agent(self) -> type:
        return getattr(importlib.import_module(self.module), self.agent_name)


#: Every algorithm the package trains, by the name ``--algo`` takes.
ALGORITHMS: dict[str, Algorithm] = {
    "a2c": Algorithm("a2c", "softq.rl.agents.a2c", agent_name="A2C"),
    "dqn": Algorithm("dqn", "softq.rl.agents.dqn", agent_name="DQN"),
}


def algorithm(name: str) -> Algorithm:
    """The algorithm called ``name`` (``ValueError`` naming ``algo`` for an unknown one)."""
    if name not in ALGORITHMS:
        raise ValueError(f"algo must be one of {tuple(ALGORITHMS)}, got {name!r}")
    return ALGORITHMS[name]


def make_agent(cfg: RunConfig) -> Agent:
    """The agent of ``cfg``'s algorithm, built from ``cfg``."""
    return algorithm(cfg.algo).agent(cfg)


def read_config(d: Mapping[str, Any], source: str | Path = "config") -> RunConfig:
    """The config of a ``config.json``'s ``"config"`` (or a checkpoint's), of the algorithm it names (``a2c`` for
    runs that name none); ``ValueError`` naming ``source`` when it is not one."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{source}: not a config (a JSON object of fields)")
    try:
        return algorithm(d.get("algo", "a2c")).config.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from None


def variant_name(backup: str, tau: float, n_step: int) -> str:
    """A DQN variant's name in the results layout and in every figure (``softq.rl.agents.dqn.Config.rule``): the backup,
    its temperature unless it is ``hard``, and the lookahead unless it is 1: ``hard``, ``soft_ent_tau0.1``,
    ``soft_kl_tau0.01_n5``, ``hard_n5``."""
    backup = as_backup(backup)
    name = backup.value if backup == Backup.HARD else f"{backup.value}_tau{tau:g}"
    return name if n_step == 1 else f"{name}_n{n_step}"
