"""One run's folder, ``results/<experiment>/<rule>/seed<k>/``: the one owner of its file names, of atomic reads and
writes, of its lock and of clearing a partial run.

=================  =================================================================================================
``config.json``    the config, versions, machine, protocol, and every start with its command
``status.json``    running | paused | done | failed, with frames, score, wall time, frames per second
``progress.csv``   one row every ``log_every`` updates (the agent's ``columns``)
``<hook>.csv``     a measurement hook's rows (A2C's ``agreement.csv``)
``checkpoint.pt``  the state to resume from (written atomically; never committed)
``lock``           held (``flock``) by the process training the run
=================  =================================================================================================

Everything that reads or writes a run folder (:mod:`softq.rl.experiments.loop`, :mod:`softq.rl.experiments.grid`,
:mod:`softq.rl.experiments.cluster`, the command line, :mod:`softq.book.plots`) goes through :class:`RunFolder`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["RunFolder", "RunBusy", "TIMING_COLUMNS", "atomic_write_bytes", "load_checkpoint",
           "read_log", "computed_rows", "read_runs", "has_runs", "run_record", "run_records"]


class RunBusy(RuntimeError):
    """Another process is training the same run folder (it holds ``<folder>/lock``)."""


def atomic_write_bytes(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``path.tmp`` and ``os.replace``: the old file stays whole until the new one is; a
    failed write (a full disk) removes the ``.tmp`` and raises."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A run's checkpoint file. A file that cannot be read (cut short, overwritten, not a checkpoint) raises
    ValueError naming it, never a raw unpickling traceback."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # EOFError, pickle.UnpicklingError, RuntimeError (a broken zip), OSError
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}). Move it away to restart "
                         "the run from its beginning, or restore a good copy to resume it") from None
    if not isinstance(state, dict) or not {"config", "agent", "log_bytes"} <= set(state):
        raise ValueError(f"{path}: not a checkpoint of softq.rl.experiments.loop (no config, agent or log_bytes in it)")
    return state


class RunFolder:
    """The folder of one run (it need not exist yet)."""

    CONFIG = "config.json"
    STATUS = "status.json"
    PROGRESS = "progress.csv"
    CHECKPOINT = "checkpoint.pt"
    LOCK = "lock"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    @property
    def status_path(self) -> Path:
        return self.path / self.STATUS

    @property
    def progress_path(self) -> Path:
        return self.path / self.PROGRESS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    # --- reading -------------------------------------------------------------------------------------------------

    def read_json(self, name: str) -> dict[str, Any] | None:
        """The JSON file ``name`` of the folder; None if it does not exist; ValueError naming it if it is not JSON."""
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None

    def config(self) -> dict[str, Any] | None:
        """``config.json`` (None if absent)."""
        return self.read_json(self.CONFIG)

    def status(self) -> dict[str, Any]:
        """``status.json`` (``{}`` if absent)."""
        return self.read_json(self.STATUS) or {}

    def record(self) -> dict[str, Any]:
        """``config.json`` with ``status.json`` under ``"status"``: what a caption says about the run. The config's
        fields carry today's names (:meth:`softq.rl.agents.base.RunConfig.upgrade`: a run recorded before a rename)."""
        saved = self.config()
        if saved is None:
            raise ValueError(f"{self.path}: no {self.CONFIG}")
        cfg = saved.get("config")
        if isinstance(cfg, dict):
            from softq.rl.agents.base import algorithm

            with contextlib.suppress(ValueError):
                saved = {**saved, "config": algorithm(cfg.get("algo", "a2c")).config.upgrade(cfg)}
        return {**saved, "status": self.status()}

    def holds_run(self) -> bool:
        """Whether a run has written here (a config or a progress log)."""
        return self.config_path.exists() or self.progress_path.exists()

    def load_checkpoint(self) -> dict[str, Any]:
        """``checkpoint.pt`` (:func:`load_checkpoint`)."""
        return load_checkpoint(self.checkpoint_path)

    # --- writing -------------------------------------------------------------------------------------------------

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``name`` atomically as indented JSON."""
        atomic_write_bytes(self.path / name,
                           lambda f: f.write((json.dumps(obj, indent=2, default=str) + "\n").encode()))

    def write_status(self, status: str, **extra: Any) -> None:
        """``status.json``: the status, the time, and ``extra``."""
        self.write_json(self.STATUS, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        """Write ``checkpoint.pt`` atomically."""
        import torch

        atomic_write_bytes(self.checkpoint_path, lambda f: torch.save(payload, f))

    def cut_log(self, name: str, size: int, what: str) -> str | None:
        """Cut the log ``name`` back to the ``size`` bytes it had at the checkpoint; say how many rows went. A log
        shorter than that (cut by hand or by a full disk) raises ValueError: extending it would pad it with NUL
        bytes."""
        path = self.path / name
        have = path.stat().st_size if path.exists() else 0
        if have < size:
            raise ValueError(f"--resume: {path} has {have} bytes, fewer than the {size} it had at the checkpoint: "
                             f"the {what} lost rows after the checkpoint was taken; restore it, or start the run "
                             "afresh in another folder")
        if have == size:
            return None
        with open(path, "r+b") as f:
            f.seek(size)
            dropped = f.read().count(b"\n")
            f.truncate(size)
        return f"{path.name}: {dropped} row(s) written after the checkpoint dropped"

    def clear(self) -> None:
        """Remove a partial run's logs (config, status, progress and every hook's CSV), so that a fresh run starts
        here; the checkpoint and the lock are left alone."""
        for path in [self.config_path, self.status_path, self.progress_path, *self.path.glob("*.csv")]:
            path.unlink(missing_ok=True)

    # --- the lock ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``lock`` (released when the process ends, however it ends); :class:`RunBusy`
        if another process holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / self.LOCK, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusy(f"{self.path} is being trained by another process (it holds "
                              f"{self.path / self.LOCK})") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def is_locked(self) -> bool:
        """True if another process holds the lock (a run training here now)."""
        lock = self.path / self.LOCK
        if not lock.exists():
            return False
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False


# --- reading an experiment: every run folder of <experiment>/<rule>/seed<k> ---------------------------------


#: The columns of ``progress.csv`` that measure time: two runs that compute the same thing differ only there.
TIMING_COLUMNS = ("sps", "wall_s")


def computed_rows(path: str | Path, drop: tuple[str, ...] = TIMING_COLUMNS) -> list[dict[str, str]]:
    """The rows of a CSV log as text, without the columns in ``drop`` (by default the timing): what two runs that
    compute the same thing share byte for byte."""
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def read_log(path: str | Path, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """Columns ``x`` and ``y`` of a CSV log as float arrays (an empty cell is NaN); ValueError naming the file if it
    lacks one."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and (x not in rows[0] or y not in rows[0]):
        raise ValueError(f"{path}: needs columns {x!r} and {y!r}, has {list(rows[0])}")

    def num(v: str) -> float:
        return float(v) if v not in ("", None) else math.nan

    return np.array([num(r[x]) for r in rows]), np.array([num(r[y]) for r in rows])


def read_runs(experiment: str | Path, rule: str, *, x: str = "frames", y: str = "score_mean100"
              ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{seed: (x [n], y [n])}`` from ``<experiment>/<rule>/seed<k>/progress.csv``, every seed that has rows.

    Runs still in progress (``status.json`` "running" or "paused") are read as far as they got.
    """
    out = {}
    for d in sorted(Path(experiment, rule).glob("seed*")):
        m = re.fullmatch(r"seed(\d+)", d.name)
        if m and (d / "progress.csv").exists():
            xs, ys = read_log(d / "progress.csv", x, y)
            if len(xs):
                out[int(m.group(1))] = (xs, ys)
    return out


def has_runs(experiment: str | Path, rules) -> bool:
    """Whether ``experiment`` holds at least one logged run of every rule in ``rules``."""
    return Path(experiment).is_dir() and all(read_runs(experiment, r) for r in rules)


def run_record(run: str | Path) -> dict:
    """``{"config", "versions", "machine", ..., "status"}`` of one run folder: its ``config.json`` and, as
    ``status``, its ``status.json`` (empty if absent)."""
    return RunFolder(run).record()


def run_records(experiment: str | Path, rules) -> dict[tuple[str, int], dict]:
    """``{(rule, seed): run_record}`` (:func:`run_record`) of every run folder of ``experiment`` with a
    ``config.json`` (:mod:`softq.rl.experiments.loop`' layout)."""
    out = {}
    for rule in rules:
        for d in sorted(Path(experiment, rule).glob("seed*")):
            m = re.fullmatch(r"seed(\d+)", d.name)
            if m and (d / "config.json").exists():
                out[rule, int(m.group(1))] = run_record(d)
    return out
