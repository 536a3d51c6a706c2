"""Several runs at once: one after another in this process, or as concurrent ``python -m softq.rl train``
subprocesses, each pinned to its own cores with thread counts for them (:func:`launch`, :func:`train_many`)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from softq import config as softq_config
from softq.rl.agents.base import NonFiniteLoss, auto_torch_threads
from softq.rl.experiments.folder import RunBusy, RunFolder
from softq.rl.experiments.loop import cli_args, shown, train

__all__ = ["launch", "train_many", "core_slots", "split_threads"]


def launch(cfgs: list[tuple[Any, Path]], *, resume: bool | list[bool], parallel: int = 1,
           progress: bool = True) -> int:
    """Run several (config, out) pairs: one after another in this process (``parallel=1``), or as up to
    ``parallel`` concurrent ``python -m softq.rl train`` subprocesses, each pinned to its own cores.
    ``resume``: for every run, or one flag per run. Returns the number of failed runs (a failure is reported and
    the other runs go on)."""
    resumes = list(resume) if isinstance(resume, list | tuple) else [bool(resume)] * len(cfgs)
    if len(resumes) != len(cfgs):
        raise ValueError(f"resume: {len(resumes)} flags for {len(cfgs)} runs")
    failed = 0
    if parallel <= 1:
        for (cfg, out), res in zip(cfgs, resumes, strict=True):
            try:
                train(cfg, out, resume=res, progress=progress)
            except (NonFiniteLoss, RunBusy, FileExistsError, ValueError) as e:
                print(f"[{shown(out)}] FAILED: {e}", file=sys.stderr)
                failed += 1
        return failed
    slots = core_slots(parallel)
    pending, running = [(cfg, out, res) for (cfg, out), res in zip(cfgs, resumes, strict=True)], []
    while pending or running:
        while pending and len(running) < parallel:
            cfg, out, res = pending.pop(0)
            free = [k for k in range(parallel) if k not in {slot for _, _, slot in running}][0]
            cores = slots[free]
            cfg = split_threads(cfg, len(cores))
            cmd = [sys.executable, "-m", "softq.rl", "train", *cli_args(cfg), "--out", str(out), "--no-progress"]
            if res:
                cmd.append("--resume")
            print(f"[{shown(out)}] started on cores {cores}", file=sys.stderr)
            pin = (lambda c=cores: os.sched_setaffinity(0, c)) if hasattr(os, "sched_setaffinity") else None
            running.append((subprocess.Popen(cmd, preexec_fn=pin), out, free))
        time.sleep(0.5)
        for proc, out, slot in list(running):
            if proc.poll() is not None:
                running.remove((proc, out, slot))
                failed += proc.returncode != 0
                print(f"[{shown(out)}] finished with exit code {proc.returncode}", file=sys.stderr)
    return failed


def train_many(runs: list[tuple[Any, Path]], *, parallel: int | None = None) -> list[dict[str, Any]]:
    """Train fresh (config, out) runs concurrently, each as its own ``python -m softq.rl train`` pinned to its own
    cores (:func:`launch`), and return each run's final status (its ``status.json``), in the order given.

    ``parallel``: how many at once; by default one per core of this process, at most one per run. A run's result
    does not depend on ``parallel`` when its thread counts are explicit (the chapters' runs set ``torch_threads=1``).
    Raises ``RuntimeError`` naming every run that did not finish, with its error. ``launch``'s start/finish lines are
    kept out of the caller's output (a notebook's)."""
    if not runs:
        raise ValueError("runs: no (config, out) pairs given")
    if parallel is None:
        parallel = min(len(core_slots(1)[0]), len(runs))  # core_slots(1): every core of this process
    messages = io.StringIO()
    with contextlib.redirect_stderr(messages):
        launch(runs, resume=False, parallel=parallel, progress=False)
    statuses, failed = [], []
    for _, out in runs:
        status = RunFolder(out).status() or {"status": "never started"}
        statuses.append(status)
        if status.get("status") != "done":
            failed.append(f"{shown(out)}: {status.get('status')} {status.get('error', '')}".rstrip())
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} runs did not finish:\n  " + "\n  ".join(failed)
                           + "\n" + messages.getvalue())
    return statuses


def core_slots(parallel: int) -> list[list[int]]:
    """The cores of each of ``parallel`` concurrent runs: this process's cores split into disjoint groups.

    With fewer cores than runs, groups share cores round-robin (one core each)."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"parallel must be an int >= 1, got {parallel!r}")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if len(cores) < parallel:
        return [[cores[k % len(cores)]] for k in range(parallel)]
    per = len(cores) // parallel
    return [cores[k * per:(k + 1) * per] for k in range(parallel)]


def split_threads(cfg, cores: int):
    """``cfg`` with its automatic thread counts (0) set for a run that has ``cores`` cores of its own: every core
    for the emulators, and the torch threads :func:`softq.rl.agents.a2c.auto_torch_threads` would pick on such a machine
    (so ``--parallel k`` does not start k times the machine's threads). Explicit counts are kept."""
    changes = {}
    if cfg.env_threads == 0:
        changes["env_threads"] = min(cores, cfg.num_envs)
    if cfg.torch_threads == 0:
        changes["torch_threads"] = auto_torch_threads(cfg.env, softq_config.device(
            None if cfg.device == "auto" else cfg.device), cores=cores)
    return dataclasses.replace(cfg, **changes) if changes else cfg
