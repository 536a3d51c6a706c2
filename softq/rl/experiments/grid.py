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
``busy``    another process holds the folder's lock (:func:`softq.rl.experiments.loop.train` locks it): left alone
========== =========================================================================================================

A folder whose ``config.json`` or checkpoint holds *another* config (other than in the run-control fields
:data:`softq.rl.experiments.loop.RUN_CONTROL`) is an error naming the fields: a grid never mixes two configurations
under one name. :func:`fill` runs the ``resume``, ``start`` and ``restart`` entries with
:func:`softq.rl.experiments.launch.launch` and returns the number that failed; a failing run does not stop the others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softq.rl.experiments.folder import RunFolder
from softq.rl.experiments.launch import launch
from softq.rl.experiments.loop import config_diff

__all__ = ["ACTIONS", "Planned", "expand", "plan_run", "plan", "describe", "fill"]

ACTIONS = ("skip", "resume", "start", "restart", "failed", "busy")
#: What :func:`fill` runs, and whether with ``--resume``.
RUNS = {"resume": True, "start": False, "restart": False}


def expand(base: Any, *, envs: list[str] | None = None, seeds: list[int] | None = None,
           rules: list[str] | None = None, backups: list[str] | None = None, taus: list[float] | None = None,
           n_steps: list[int] | None = None) -> list[Any]:
    """The configs of a grid: ``base`` (an algorithm's config) with every env x seed x variant, seed-major within each
    env (seed 0 of every variant first, so that a comparison exists early). Each list left out keeps ``base``'s
    value. A2C's variants are its ``rules``; DQN's are ``backups`` x ``taus`` x ``n_steps``, where the standard
    backup ``hard`` has no temperature and takes ``base.tau`` once (``taus`` with no soft backup is an error). Options
    of the other algorithm raise ``ValueError`` naming them; so does a bad value (each config is validated)."""
    if base.algo == "a2c":
        if backups or taus or n_steps:
            raise ValueError("backups, taus and n_steps are DQN options (algo dqn)")
        variants = [{"rule": rule} for rule in rules or [base.rule]]
    else:
        if rules:
            raise ValueError("rules is an A2C option; DQN takes backups, taus, n_steps")
        if taus and all(b == "hard" for b in backups or [base.backup]):
            raise ValueError("taus: the standard backup hard has no temperature (name a soft backup in backups)")
        variants = [{"backup": backup, "tau": tau, "n_step": n}
                    for backup in backups or [base.backup]
                    for tau in ([base.tau] if backup == "hard" else taus or [base.tau])
                    for n in n_steps or [base.n_step]]
    return [dataclasses.replace(base, **variant, env=env, seed=seed)
            for env in envs or [base.env] for seed in (seeds or [base.seed]) for variant in variants]


@dataclass(frozen=True)
class Planned:
    """One run of a grid: its config, folder, what :func:`fill` does with it (:data:`ACTIONS`) and why."""

    cfg: Any
    out: Path
    action: str
    why: str


def plan_run(cfg, out: str | Path) -> Planned:
    """What :func:`fill` does with the run folder ``out`` for ``cfg`` (module docstring). Raises ValueError if the
    folder holds a run of another config."""
    out = Path(out)
    folder = RunFolder(out)
    if folder.is_locked():
        return Planned(cfg, out, "busy", "another process is training it (its lock is held)")
    saved = folder.config()
    status_json = folder.status()
    status = status_json.get("status")
    ckpt = folder.checkpoint_path
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
            state = folder.load_checkpoint()
        except ValueError as e:
            return Planned(cfg, out, "failed", str(e))
        diff = config_diff(state["config"], cfg)
        if diff:
            raise ValueError(f"{ckpt} is a checkpoint of another config: {diff} (saved, given)")
        done = state["agent"].get("updates")
        return Planned(cfg, out, "resume", f"checkpoint at update {done}" if done is not None else "checkpoint")
    if folder.holds_run():
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


def fill(planned: list[Planned], *, parallel: int = 1, progress: bool = True) -> int:
    """Run what :func:`plan` says is missing (``resume``, ``start``, ``restart``; ``parallel`` at once, cores
    split) and return the number of runs that failed, including those that had failed before."""
    todo = [p for p in planned if p.action in RUNS]
    for p in todo:
        if p.action == "restart":
            RunFolder(p.out).clear()
    failed = sum(p.action == "failed" for p in planned)
    if todo:
        failed += launch([(p.cfg, p.out) for p in todo], resume=[RUNS[p.action] for p in todo], parallel=parallel,
                         progress=progress)
    return failed
