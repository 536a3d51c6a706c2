"""The grid on a cluster: each run a Ray task with its resource request, and the plan's cost before it starts.

``python -m softq.rl train ... --fill --launcher ray --ray-address ADDRESS`` runs what
:func:`softq.rl.experiments.grid.plan` says is missing of a grid on whatever Ray cluster ``ray.init(address=ADDRESS)``
reaches (``local``: a cluster in
this process, for a try). Each run is one Ray task that asks for ``cpus`` CPUs (its environments and torch threads,
:func:`softq.rl.experiments.launch.split_threads`) and ``gpus`` GPUs (a fraction shares one). The task itself plans its
folder again when it starts (:func:`softq.rl.experiments.grid.plan_run`), so a task that Ray retries after its worker
died
resumes from the run's last checkpoint instead of starting over, and a finished run is never trained twice.

Storage: the task writes the usual ``results/<experiment>/<rule>/seed<k>/`` layout at the path the driver gives,
so the cluster's nodes must share the results folder (NFS, a cluster file system; on one machine, trivially).
A run that fails (a non-finite loss, a worker lost more often than ``retries``, any error) is reported with its
error and the others go on; :func:`fill_ray` returns the number of failures, like
:func:`softq.rl.experiments.grid.fill`.

:func:`estimate` sizes the plan before anything runs: the frames left of every run to do, divided by a throughput
measured by ``make bench`` on the kind of machine that will train (``results/bench/<machine>.json``), gives its
wall time, and the GPUs it holds give its GPU-hours.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from softq.rl.agents.base import read_config
from softq.rl.experiments.folder import RunFolder
from softq.rl.experiments.grid import RUNS, Planned, plan_run
from softq.rl.experiments.launch import split_threads
from softq.rl.experiments.loop import shown, train

__all__ = ["resources", "run_planned", "fill_ray", "Throughput", "throughput", "estimate", "describe_estimate"]


def resources(cfg, cpus: int | None = None, gpus: float = 0.0) -> dict[str, float]:
    """The Ray resource request of one run: ``cpus`` (default: one per environment, at most 8) and ``gpus``."""
    if cpus is None:
        cpus = max(1, min(cfg.num_envs, 8))
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise ValueError(f"cpus must be an int >= 1, got {cpus!r}")
    if not 0 <= gpus:
        raise ValueError(f"gpus must be >= 0, got {gpus!r}")
    return {"num_cpus": cpus, "num_gpus": float(gpus)}


def run_planned(cfg_dict: dict[str, Any], out: str, cpus: int) -> dict[str, Any]:
    """One run of a grid, as a cluster task runs it: plan the folder now (skip, resume, restart or start), then
    train with ``cpus`` cores' worth of threads. Returns the final status dict (``status: skipped`` if finished)."""
    cfg = read_config(cfg_dict)
    planned = plan_run(cfg, out)
    if planned.action == "skip":
        return {"status": "skipped", "why": planned.why}
    if planned.action not in RUNS:  # failed earlier, or busy: reported, not run
        raise RuntimeError(f"{shown(out)}: {planned.action}: {planned.why}")
    if planned.action == "restart":
        RunFolder(out).clear()
    torch.set_num_threads(max(1, cpus))
    return train(split_threads(cfg, cpus), out, resume=RUNS[planned.action], progress=False)


def fill_ray(planned: list[Planned], *, address: str | None = "auto", cpus: int | None = None, gpus: float = 0.0,
             retries: int = 2, runtime_env: dict | None = None) -> int:
    """Run the ``resume``/``start``/``restart`` entries of ``planned`` as Ray tasks on the cluster at ``address``
    (``ray.init(address=...)``; ``"local"`` starts one in this process) and wait for all of them. A task whose worker
    dies is retried up to ``retries`` times, resuming from its checkpoint. Returns the number of failed runs,
    including those that had failed before (as :func:`softq.rl.experiments.grid.fill`)."""
    import ray

    todo = [p for p in planned if p.action in RUNS]
    failed = sum(p.action == "failed" for p in planned)
    if not todo:
        return failed
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=None if address == "local" else address, runtime_env=runtime_env,
                     log_to_driver=False, include_dashboard=False)
        except ConnectionError as e:
            raise ValueError(f"--ray-address {address!r}: no Ray cluster there ({str(e).strip().splitlines()[-1]}); "
                             "start one (`ray start --head`), give its address, or use --ray-address local") from None
        except (ImportError, RuntimeError) as e:
            if not str(address).startswith("ray://"):
                raise
            raise ValueError(f"--ray-address {address!r}: a ray:// address needs Ray's client "
                             f"(pip install 'ray[client]'): {e}") from None
    try:
        tasks = {}
        for p in todo:
            req = resources(p.cfg, cpus, gpus)
            remote = ray.remote(max_retries=retries, retry_exceptions=False, **req)(run_planned)
            ref = remote.options(name=f"softq:{shown(p.out)}").remote(p.cfg.as_dict(), str(Path(p.out).resolve()),
                                                                     int(req["num_cpus"]))
            tasks[ref] = p
            print(f"[{shown(p.out)}] submitted ({p.action}; {req['num_cpus']} CPUs, {req['num_gpus']:g} GPUs)",
                  file=sys.stderr)
        pending = list(tasks)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            p = tasks[done[0]]
            try:
                result = ray.get(done[0])
                print(f"[{shown(p.out)}] {result.get('status')}: frames {result.get('frames')}, "
                      f"score {result.get('score_mean100')}", file=sys.stderr)
                failed += result.get("status") not in ("done", "skipped")
            except Exception as e:  # a run's error is reported; the others go on
                print(f"[{shown(p.out)}] FAILED: {type(e).__name__}: {str(e).strip().splitlines()[-1]}",
                      file=sys.stderr)
                failed += 1
    finally:
        if started_here:
            ray.shutdown()
    return failed


@dataclass(frozen=True)
class Throughput:
    """Frames per second of one run, from a bench file: ``frames_per_s`` for ``algo`` on ``machine`` (``source``:
    which file and which of its figures)."""

    frames_per_s: float
    source: str


def throughput(bench: str | Path, algo: str) -> Throughput:
    """One run's frames/s for ``algo`` from a ``make bench`` file: A2C's ``a2c_ale`` and DQN's ``dqn_hard_n1_B8``
    agent steps/s (4 frames each; the newest side-by-side median if the file has one)."""
    path = Path(bench)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"bench: no file {path} (make bench writes results/bench/<machine>.json)") from None
    sps = doc.get("steps_per_second", {})
    last_side = (doc.get("side_by_side") or [{}])[-1]
    side = last_side.get("median_steps_per_second", {})
    if algo not in ("a2c", "dqn"):
        raise ValueError(f"algo must be 'a2c' or 'dqn', got {algo!r}")
    side_key, own_key = {"a2c": ("a2c_fp32", "a2c_ale"), "dqn": ("dqn_hard_fp32", "dqn_hard_n1_B8")}[algo]
    if side_key in side:  # a side-by-side figure names its own machine (it may differ from the file's)
        key, value, machine = f"side_by_side {side_key}", side[side_key], last_side.get("machine", {})
    else:
        key, value, machine = own_key, sps.get(own_key), doc.get("machine", {})
    if not value:
        raise ValueError(f"bench: {path} has no {algo} throughput")
    what = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, GPU {machine.get('gpu') or 'none'}"
    return Throughput(4 * float(value), f"{path.name} ({what}): {key} = {value:.0f} agent steps/s")


def _frames_done(p: Planned) -> int:
    if p.action != "resume":
        return 0
    return int(RunFolder(p.out).status().get("frames") or 0)


def estimate(planned: list[Planned], bench: str | Path, *, concurrent: int = 1, gpus: float = 0.0) -> dict[str, Any]:
    """The cost of running ``planned``: for each run to do, its frames left / the bench's frames/s of its algorithm
    (:func:`throughput`); the total in run-hours, the wall time with ``concurrent`` runs at once, and GPU-hours at
    ``gpus`` GPUs per run. Assumes each run trains at the bench's speed (the bench measures one run alone)."""
    if isinstance(concurrent, bool) or not isinstance(concurrent, int) or concurrent < 1:
        raise ValueError(f"concurrent must be an int >= 1, got {concurrent!r}")
    rows, sources = [], {}
    for p in planned:
        if p.action not in RUNS:
            continue
        algo = p.cfg.algo
        if algo not in sources:
            sources[algo] = throughput(bench, algo)
        left = max(0, p.cfg.frames - _frames_done(p))
        rows.append({"out": str(p.out), "action": p.action, "frames_left": left,
                     "hours": left / sources[algo].frames_per_s / 3600})
    run_hours = sum(r["hours"] for r in rows)
    return {"runs": rows, "run_hours": run_hours, "wall_hours": run_hours / concurrent if rows else 0.0,
            "gpu_hours": run_hours * gpus, "concurrent": concurrent, "gpus_per_run": gpus,
            "throughput": {a: {"frames_per_s": s.frames_per_s, "source": s.source} for a, s in sources.items()}}


def describe_estimate(est: dict[str, Any]) -> str:
    """The estimate as a few lines of text."""
    lines = [f"estimate: {len(est['runs'])} runs to do, {est['run_hours']:.1f} run-hours; "
             f"{est['wall_hours']:.1f} h of wall time with {est['concurrent']} at once; "
             f"{est['gpu_hours']:.1f} GPU-hours at {est['gpus_per_run']:g} GPU per run"]
    lines += [f"  throughput of {a}: {t['frames_per_s']:.0f} frames/s per run, from {t['source']}"
              for a, t in est["throughput"].items()]
    return "\n".join(lines)
