"""What every algorithm of :mod:`softq.rl` shares: the :class:`Agent` interface that the training loop
(:mod:`softq.rl.runs`) drives, the :class:`RunConfig` base of the algorithms' configs, the registry of algorithms
(:func:`algorithm`), and the small parts both agents use (precisions, threads, random state, the non-finite stop).

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
    from softq.rl.envs import CLASSIC_ENVS

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


class RunConfig:
    """The base of every algorithm's ``Config`` (each a dataclass with a default for every field): the checks of the
    fields every algorithm has, typed checks by name for the rest, and the conversion to and from ``config.json``.

    A subclass sets :attr:`ALGO` (its name in :data:`ALGORITHMS`), calls :meth:`check_common` and its own checks in
    ``__post_init__``, and names a run's variant in ``rule`` (the folder ``results/<experiment>/<rule>/seed<k>``).
    Bad values raise ``ValueError`` naming the field.
    """

    ALGO: ClassVar[str]

    def bad(self, name: str, why: str) -> ValueError:
        """The error for field ``name``: ``"<name> <why>, got <value>"``."""
        return ValueError(f"{name} {why}, got {getattr(self, name)!r}")

    def require(self, kind: str, *names: str) -> None:
        """Check that each field in ``names`` is of ``kind``: ``"int>=0"``, ``"int>=1"``, ``"number>0"`` (finite),
        ``"number>=0"`` (finite) or ``"unit"`` (a number in [0, 1])."""
        for name in names:
            v = getattr(self, name)
            is_int = isinstance(v, int) and not isinstance(v, bool)
            is_num = isinstance(v, int | float) and not isinstance(v, bool)
            if kind == "int>=0" and not (is_int and v >= 0):
                raise self.bad(name, "must be an int >= 0")
            if kind == "int>=1" and not (is_int and v >= 1):
                raise self.bad(name, "must be an int >= 1")
            if kind == "number>0" and not (is_num and math.isfinite(v) and v > 0):
                raise self.bad(name, "must be a finite number > 0")
            if kind == "number>=0" and not (is_num and math.isfinite(v) and v >= 0):
                raise self.bad(name, "must be a finite number >= 0")
            if kind == "unit" and not (is_num and 0 <= v <= 1):
                raise self.bad(name, "must lie in [0, 1]")

    def check_common(self) -> None:
        """The fields every algorithm has: ``algo``, ``env``, ``seed``, ``frames``, ``gamma``, ``precision``,
        ``device`` and the run-control fields (threads, logging, checkpoints, time limit)."""
        from softq.rl.envs import CLASSIC_ENVS, is_atari

        if self.algo != self.ALGO:
            raise self.bad("algo", f"must be {self.ALGO!r} for {type(self).__module__}.{type(self).__name__}")
        if self.env not in CLASSIC_ENVS:
            is_atari(self.env)  # ValueError naming an unknown game
        self.require("int>=0", "seed", "env_threads", "torch_threads", "checkpoint_every")
        self.require("int>=1", "frames", "hidden", "log_every")
        self.require("number>=0", "checkpoint_minutes", "time_limit_minutes")
        self.require("unit", "gamma")
        if self.precision not in PRECISIONS:
            raise self.bad("precision", f"must be one of {PRECISIONS}")
        if self.device != "auto":
            softq_config.device(self.device)  # ValueError naming the device if it is unknown or absent

    @property
    def rule(self) -> str:  # pragma: no cover - every algorithm defines it
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain data (``config.json``'s ``"config"``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """The config of :meth:`as_dict`; unknown fields are refused by name, missing ones take their defaults (a
        run from an older version)."""
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"config: unknown fields {sorted(unknown)}")
        return cls(**d)


# --- agents ----------------------------------------------------------------------------------------------------


@runtime_checkable
class Agent(Protocol):
    """What the training loop (:func:`softq.rl.runs.train`) needs of an agent.

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
    "a2c": Algorithm("a2c", "softq.rl.a2c", agent_name="A2C"),
    "dqn": Algorithm("dqn", "softq.rl.dqn", agent_name="DQN"),
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
