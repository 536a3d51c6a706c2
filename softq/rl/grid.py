"""A grid of runs that fills up over many sittings: what is finished is skipped, what has a checkpoint resumes.

A grid is a list of ``(config, run folder)`` pairs (``python -m softq.rl train --rules ... --seeds ... --fill``
builds it, seed-major: seed 0 of every variant first). :func:`plan` reads each folder and decides, without running
anything, what :func:`fill` will do with it:

========== =========================================================================================================
``skip``    ``status.json`` says ``done`` and ``config.json`` holds this config: the run is finished
``resume``  a ``checkpoint.pt`` of this config (a run paused by its time limit or a signal): continue it
``start``   no run in the folder yet
``restart`` a partial run without a checkpoint (its logs were committed, its checkpoint did not outlive the machine
            that trained it): its logs are replaced by a fresh run, since a run is trained start to end on one machine
``failed``  ``status.json`` says ``failed`` (a non-finite loss, a full disk), or its checkpoint cannot be read:
            reported with the reason, not run
``busy``    another process holds the folder's lock (:func:`softq.rl.runs.train` locks it): left alone
========== =========================================================================================================

A folder whose ``config.json`` or checkpoint holds *another* config (other than in the run-control fields
:data:`softq.rl.runs.RUN_CONTROL`) is an error naming the fields: a grid never mixes two configurations under one
name. :func:`fill` runs the ``resume``, ``start`` and ``restart`` entries with :func:`softq.rl.runs.launch` and
returns the number that failed; a failing run does not stop the others.
"""

from __future__ import annotations

import fcntl
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softq.rl.runs import config_diff, launch, load_checkpoint

__all__ = ["ACTIONS", "Planned", "plan_run", "plan", "describe", "fill", "is_locked"]

ACTIONS = ("skip", "resume", "start", "restart", "failed", "busy")
#: What :func:`fill` runs, and whether with ``--resume``.
RUNS = {"resume": True, "start": False, "restart": False}


@dataclass(frozen=True)
class Planned:
    """One run of a grid: its config, folder, what :func:`fill` does with it (:data:`ACTIONS`) and why."""

    cfg: Any
    out: Path
    action: str
    why: str


def is_locked(out: Path) -> bool:
    """True if another process holds ``out/lock`` (a run training there now)."""
    lock = Path(out) / "lock"
    if not lock.exists():
        return False
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def plan_run(cfg, out: str | Path) -> Planned:
    """What :func:`fill` does with the run folder ``out`` for ``cfg`` (module docstring). Raises ValueError if the
    folder holds a run of another config."""
    out = Path(out)
    if is_locked(out):
        return Planned(cfg, out, "busy", "another process is training it (its lock is held)")
    saved = _read_json(out / "config.json")
    status_json = _read_json(out / "status.json") or {}
    status = status_json.get("status")
    ckpt = out / "checkpoint.pt"
    if saved is not None:
        diff = config_diff(saved.get("config", {}), cfg)
        if diff:
            raise ValueError(f"{out} holds a run of another config: {diff} (saved, given); choose another "
                             "--experiment or --results for this one")
    if status == "done":
        return Planned(cfg, out, "skip", "finished")
    if status == "failed":
        error = status_json.get("error", "no error recorded")
        return Planned(cfg, out, "failed", f"failed earlier: {error}")
    if ckpt.exists():
        try:
            state = load_checkpoint(ckpt)
        except ValueError as e:
            return Planned(cfg, out, "failed", str(e))
        diff = config_diff(state["config"], cfg)
        if diff:
            raise ValueError(f"{ckpt} is a checkpoint of another config: {diff} (saved, given)")
        done = state["agent"].get("updates")
        return Planned(cfg, out, "resume", f"checkpoint at update {done}" if done is not None else "checkpoint")
    if saved is not None or (out / "progress.csv").exists():
        return Planned(cfg, out, "restart", f"a partial run ({status or 'no status'}) without a checkpoint: "
                                            "its logs are replaced by a fresh run")
    return Planned(cfg, out, "start", "no run yet")


def plan(runs: list[tuple[Any, Path]]) -> list[Planned]:
    """:func:`plan_run` of every ``(cfg, out)``, in order; two runs with the same folder are an error."""
    outs = [Path(out) for _, out in runs]
    dup = sorted({str(o) for o in outs if outs.count(o) > 1})
    if dup:
        raise ValueError(f"two runs of the grid share a folder: {dup}")
    return [plan_run(cfg, out) for cfg, out in runs]


def describe(planned: list[Planned]) -> str:
    """The plan as text: one line per run, then the count of each action."""
    lines = [f"{p.action:8s} {p.out}  ({p.why})" for p in planned]
    counts = {a: sum(p.action == a for p in planned) for a in ACTIONS}
    lines.append(", ".join(f"{n} {a}" for a, n in counts.items() if n) or "an empty grid")
    return "\n".join(lines)


def _clear(out: Path) -> None:
    """Remove a partial run's logs (``restart``), so that :func:`softq.rl.runs.train` starts it afresh."""
    for name in ("progress.csv", "status.json", "config.json", "agreement.csv"):
        (out / name).unlink(missing_ok=True)


def fill(planned: list[Planned], *, parallel: int = 1, progress: bool = True) -> int:
    """Run what :func:`plan` says is missing (``resume``, ``start``, ``restart``; ``parallel`` at once, cores
    split) and return the number of runs that failed, including those that had failed before."""
    todo = [p for p in planned if p.action in RUNS]
    for p in todo:
        if p.action == "restart":
            _clear(p.out)
    failed = sum(p.action == "failed" for p in planned)
    if todo:
        failed += launch([(p.cfg, p.out) for p in todo], resume=[RUNS[p.action] for p in todo], parallel=parallel,
                         progress=progress)
    return failed
