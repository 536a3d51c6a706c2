"""``make bench``: how fast the Atari pipeline is, on this machine, against what a user would otherwise write.

In one run, on one game with one number of environments and threads, four agent-steps-per-second figures
(an agent step is 4 emulator frames):

- ``env_ale_random``: ale-py's C++ ``AtariVectorEnv`` with random actions: the ceiling of training.
- ``a2c_ale``: A2C (rule ``proper``, the paper's network and hyperparameters) on that env: rollouts and updates.
- ``env_gymnasium_random``: gymnasium ``AsyncVectorEnv`` of ``AtariPreprocessing`` + ``FrameStackObservation``
  (one process per environment), random actions.
- ``a2c_gymnasium``: the same A2C on that env.

and, for DQN (``--what dqn``; :mod:`softq.rl.agents.dqn`), training env steps per second at the paper's replay ratio
(one batch of 32 per 4 env steps, after learning has started; 1M-transition replay on the training device,
CUDA graphs where CUDA is), ``dqn_<backup>_n<n>_B<num_envs>``, and the replay alone,
``replay_sample_n<n>_batches_per_s`` (batches of 32 n-step windows with their stacked observations). On CUDA
the 1-step ``hard`` and 5-step ``soft_ent`` figures are measured again with eager updates (``..._eager``), and
``--what graph`` checks that the CUDA-graph update computes what the eager one does
(:mod:`softq.rl.diagnostics.graph_check`; skipped on a CPU), recorded as ``graph_check``. ``--what phases``
(:func:`a2c_phases`, not in the default set) times an A2C update's phases alone on the CPU and bounds what
overlapping the emulators with the network could buy, recorded as ``a2c_phases``.

Saved with the machine (CPU model, cores, GPU) and package versions to ``results/bench/<tag>.json`` (tag: the
machine kind, e.g. ``cpu-2core``, unless given). Short measurements (``--seconds``) are noisy on a shared machine:
it is a benchmark, not a test (DESIGN.md: performance claims live here, never in a timed test).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from softq import config as softq_config
from softq.rl.agents import dqn
from softq.rl.agents.a2c import A2C, Config
from softq.rl.agents.base import MAX_FRAMES
from softq.rl.diagnostics.graph_check import compare_update_paths
from softq.rl.experiments.provenance import CHECKOUT, machine, versions
from softq.rl.parts.envs import make_env


def _time_env(env, seconds: float) -> float:
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    for _ in range(10):  # warm up
        env.step(rng.integers(0, env.n_actions, env.num_envs))
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        env.step(rng.integers(0, env.n_actions, env.num_envs))
        steps += env.num_envs
    return steps / (time.perf_counter() - t0)


def _time_a2c(cfg: Config, seconds: float) -> float:
    agent = A2C(cfg)
    for _ in range(3):  # warm up (allocations, CUDA kernels)
        agent.step()
    updates, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        agent.step()
        updates += 1
    sps = updates * cfg.steps_per_update / (time.perf_counter() - t0)
    agent.env.close()
    return sps


def a2c_phases(game: str = "pong", num_envs: int = 16, seconds: float = 5.0, device: str = "cpu",
               precision: str = "fp32") -> dict[str, Any]:
    """Where an A2C update's time goes, and what overlapping the emulators with the network could buy at most.

    For 1 thread and for every core (torch's intra-op threads, ALE's worker threads), the milliseconds per update
    (``num_steps = 5`` agent steps of ``num_envs`` envs) of its three phases, each timed alone over ``seconds``:
    ``env`` (5 vector steps, random actions), ``act`` (6 acting forward passes on ``[B, 4, 84, 84]``, no graph:
    one per step and the bootstrap) and ``update`` (:meth:`A2C.update`: the forward pass on the rollout with its
    graph, the backward pass and the RMSProp step). Measured on the CPU by default, where the question arises.

    Overlap: splitting the envs into two groups that take turns (one group's emulators step while the network acts
    for the other) can hide at most ``env`` and ``act`` behind each other, never the update, whose weights the next
    rollout needs. Even if the cores ran the two with no loss, one thread's work spread over ``c`` cores, a rollout
    costs at least ``(env_1 + act_1) / c``: ``overlap_bound_speedup`` is today's update time (every phase on all
    cores, one after the other) over that bound plus the update's time on all cores. ``loop_ms``: the training
    loop's own time per update (:meth:`A2C.step`, every core); what it takes beyond ``today_ms`` is the cost of
    handing the cores back and forth between the emulator threads and torch's, which no overlap removes.
    """
    import torch

    cores = softq_config.cores()
    cfg = Config(env=game, rule="proper", frames=MAX_FRAMES, num_envs=num_envs, device=device, precision=precision,
                 env_threads=min(num_envs, cores), torch_threads=cores)
    agent = A2C(cfg)
    agent.step()  # a real rollout to act on; allocations
    obs = agent.buf_obs[0]
    ms: dict[str, dict[str, float]] = {}

    def per_call(fn, calls_per_update: int) -> float:
        for _ in range(2):  # warm up
            fn()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        return 1e3 * (time.perf_counter() - t0) / n * calls_per_update

    def act():
        with torch.no_grad(), agent.autocast():
            agent.forward(obs)

    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        env = make_env(game, num_envs, threads=min(num_envs, threads))
        env_ms = 1e3 * cfg.num_steps * num_envs / _time_env(env, seconds)
        env.close()
        agent.step()  # warm up at this thread count
        spent, n, t0 = 0.0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            agent.collect()  # not timed: its env steps and acting passes are the two phases above
            t1 = time.perf_counter()
            agent.update()
            spent += time.perf_counter() - t1
            n += 1
        ms[f"threads_{threads}"] = {"env": env_ms, "act": per_call(act, cfg.num_steps + 1),
                                    "update": 1e3 * spent / n}
    loop_ms = per_call(agent.step, 1)  # the training loop itself, on every core (the last thread count above)
    agent.env.close()
    one, all_ = ms["threads_1"], ms[f"threads_{cores}"]
    today = sum(all_.values())
    bound = (one["env"] + one["act"]) / cores + all_["update"]
    return {"what": "A2C ms per update (5 steps x num_envs), each phase timed alone; overlap bound (docstring)",
            "cores": cores, "num_envs": num_envs, "precision": precision, "device": device, "ms_per_update": ms,
            "today_ms": today, "overlap_bound_ms": bound, "overlap_bound_speedup": today / bound,
            "loop_ms": loop_ms}


def _time_dqn(cfg: dqn.Config, seconds: float) -> float:
    agent = dqn.DQN(cfg)
    while agent.grad_steps < 20:  # fill the replay to learning_starts, then warm up (CUDA graph capture)
        agent.step()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        agent.step()
        steps += cfg.num_envs
    sps = steps / (time.perf_counter() - t0)
    agent.env.close()
    return sps


def _time_replay(cfg: dqn.Config, seconds: float) -> float:
    agent = dqn.DQN(cfg)
    while len(agent.replay) < 10 * cfg.batch_size:
        agent.step()
    sample = agent.replay.sample
    for _ in range(3):
        sample(cfg.batch_size, agent.gen)
    batches, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = sample(cfg.batch_size, agent.gen)
        batches += 1
    float(b.rewards.sum())  # wait for the device
    rate = batches / (time.perf_counter() - t0)
    agent.env.close()
    return rate


def _graph_check(game: str, device: str, threads: int) -> dict[str, Any] | str:
    """:func:`softq.rl.diagnostics.graph_check.compare_update_paths` for a 1-step ``hard`` and a 5-step ``soft_ent``
    DQN."""
    if softq_config.device(None if device == "auto" else device).type != "cuda":
        return "skipped: needs CUDA (on a CPU every update is eager)"
    checks = {}
    for backup, n in (("hard", 1), ("soft_ent", 5)):
        cfg = dqn.Config(env=game, backup=backup, tau=0.1, n_step=n, num_envs=8, buffer_size=100_000,
                         frames=MAX_FRAMES, env_threads=min(threads, 8), device=device)
        res = compare_update_paths(cfg)
        checks[f"{backup}_n{n}"] = res
        for r in res["results"]:
            print(f"graph check {backup}_n{n}: {r['mode']:4s} (graph {r['cuda_graph']}) vs eager: weights "
                  f"{r['rel_param_diff']:.2e} (relative), losses {r['max_rel_loss_diff']:.2e}, greedy actions "
                  f"{r['greedy_action_mismatch']:.1%} differ", flush=True)
    return checks


_MEASURE = """
import json, sys
try:
    from softq.rl.agents import a2c, dqn
    from softq.rl.diagnostics import bench
except ImportError:  # a checkout from before softq.rl's layers
    from softq.rl import a2c, bench, dqn
algo, kwargs, seconds = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
if algo == "a2c":
    print(json.dumps(bench._time_a2c(a2c.Config(**kwargs), seconds)))
else:
    print(json.dumps(bench._time_dqn(dqn.Config(**kwargs), seconds)))
"""

#: What :func:`side_by_side` measures: (label, tree, algo, Config fields beyond the common ones).
SIDE_BY_SIDE = (
    ("a2c_old", "old", "a2c", {}),
    ("a2c_fp32", "new", "a2c", {"precision": "fp32"}),
    ("a2c_bf16", "new", "a2c", {"precision": "bf16"}),
    ("dqn_hard_old", "old", "dqn", {}),
    ("dqn_hard_fp32", "new", "dqn", {"precision": "fp32"}),
    ("dqn_hard_bf16", "new", "dqn", {"precision": "bf16"}),
)


def side_by_side(old_root: str | Path, reps: int = 3, seconds: float = 15.0, game: str = "pong",
                 num_envs: int = 16, dqn_num_envs: int = 8, what: tuple[str, ...] = ("a2c", "dqn"),
                 variants=SIDE_BY_SIDE) -> dict[str, Any]:
    """Agent steps per second of another checkout of softq (``old_root``, e.g. ``git worktree add /tmp/old
    <commit>``) and of this one, measured alternately in fresh processes, ``reps`` times each: medians and
    every repetition. A2C: rule ``proper``, ``num_envs`` envs; DQN: ``hard``, 1-step, ``dqn_num_envs`` envs, after
    learning starts (as in :func:`run_bench`). This machine's speed drifts by 20% from minute to minute, so only
    figures measured side by side in one run are compared."""
    roots = {"old": Path(old_root).resolve(), "new": CHECKOUT}
    if not (roots["old"] / "softq" / "rl" / "__main__.py").exists():
        raise ValueError(f"old_root must be a checkout of softq (no softq/rl/__main__.py under {old_root!r})")
    threads = min(num_envs, softq_config.cores())
    common = {
        "a2c": {"env": game, "rule": "proper", "frames": MAX_FRAMES, "num_envs": num_envs, "env_threads": threads,
                "device": "cpu"},
        "dqn": {"algo": "dqn", "env": game, "backup": "hard", "num_envs": dqn_num_envs, "learning_starts": 2000,
                "frames": MAX_FRAMES, "env_threads": min(threads, dqn_num_envs), "device": "cpu"},
    }
    chosen = [v for v in variants if v[2] in what]
    runs: dict[str, list[float]] = {label: [] for label, *_ in chosen}
    for rep in range(reps):
        for label, tree, algo, extra in chosen:
            env = {**os.environ, "PYTHONPATH": str(roots[tree])}
            out = subprocess.run([sys.executable, "-c", _MEASURE, algo, json.dumps({**common[algo], **extra}),
                                  str(seconds)], env=env, cwd=roots[tree], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"side_by_side {label} ({roots[tree]}) failed:\n{out.stderr[-2000:]}")
            runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"rep {rep + 1}/{reps} {label:16s} {runs[label][-1]:8.1f} steps/s", flush=True)
    old_commit = subprocess.run(["git", "-C", str(roots["old"]), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "old": str(old_commit or roots["old"]), "reps": reps,
            "seconds_each": seconds, "game": game, "a2c_num_envs": num_envs, "dqn_num_envs": dqn_num_envs,
            "median_steps_per_second": {k: statistics.median(v) for k, v in runs.items()}, "runs": runs}


def save_side_by_side(record: dict[str, Any], out_dir: str | Path = "results/bench", tag: str | None = None) -> Path:
    """Add a :func:`side_by_side` record to the machine's bench file (``side_by_side``, newest last)."""
    m = machine()
    out = Path(out_dir) / f"{tag or machine_tag(m)}.json"
    data = json.loads(out.read_text()) if out.exists() else {"machine": m, "versions": versions()}
    data.setdefault("side_by_side", []).append({**record, "machine": m, "versions": versions()})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"saved {out}")
    return out


def machine_tag(m: dict[str, Any]) -> str:
    """A file name for a kind of machine, e.g. ``cpu-2core`` or ``NVIDIA-H100-80GB-HBM3-16core``."""
    kind = re.sub(r"[^A-Za-z0-9]+", "-", m["gpu"]).strip("-") if m.get("gpu") else "cpu"
    return f"{kind}-{m['cores']}core"


def run_bench(game: str = "pong", num_envs: int = 16, threads: int = 0, seconds: float = 10.0,
              device: str = "auto", tag: str | None = None, out_dir: str | Path = "results/bench",
              what: tuple[str, ...] | list[str] = ("a2c", "dqn", "graph"),
              dqn_num_envs: tuple[int, ...] | list[int] = (8,)) -> dict[str, Any]:
    """Measure the figures named in ``what`` (module docstring), print them, save and return the JSON record.

    Figures already in the machine's file and not measured now are kept."""
    unknown = sorted(set(what) - {"a2c", "dqn", "graph", "phases"})
    if unknown:
        raise ValueError(f"what must name some of 'a2c', 'dqn', 'graph', 'phases', got {unknown}")
    threads = threads or min(num_envs, softq_config.cores())
    cfg = Config(env=game, rule="proper", frames=MAX_FRAMES, num_envs=num_envs, env_threads=threads, device=device)
    record: dict[str, Any] = {
        "what": "agent steps per second (1 step = 4 frames); A2C = rollouts + updates, rule proper",
        "game": game, "num_envs": num_envs, "env_threads": threads, "seconds_each": seconds,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), "versions": versions(),
    }
    out = Path(out_dir) / f"{tag or machine_tag(record['machine'])}.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    figures: dict[str, float | str] = dict(old.get("steps_per_second", {}))
    for backend in ("ale", "gymnasium") if "a2c" in what else ():
        try:
            env = make_env(game, num_envs, threads=threads, backend=backend)
        except Exception as e:  # e.g. opencv missing for gymnasium's AtariPreprocessing
            figures[f"env_{backend}_random"] = figures[f"a2c_{backend}"] = f"skipped: {type(e).__name__}: {e}"
            continue
        figures[f"env_{backend}_random"] = _time_env(env, seconds)
        env.close()
        figures[f"a2c_{backend}"] = _time_a2c(Config(**{**cfg.as_dict(), "env_backend": backend}), seconds)
        print(f"{backend:10s} env random {figures[f'env_{backend}_random']:9.0f} steps/s   "
              f"A2C {figures[f'a2c_{backend}']:9.0f} steps/s", flush=True)
    if "a2c" not in what and "time" in old:  # the A2C figures kept from the file keep their date and machine
        record.update({k: old[k] for k in ("time", "machine", "versions", "seconds_each", "num_envs", "env_threads")
                       if k in old})
    if "dqn" not in what:  # the DQN figures kept from the file keep their date, machine and description
        record.update({k: old[k] for k in ("time_dqn", "machine_dqn", "dqn") if k in old})
    if "dqn" in what:
        record["time_dqn"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        record["machine_dqn"] = machine()
        record["dqn"] = ("DQN training env steps/s after learning starts: replay 1M on the device, batch 32 every 4 "
                         "env steps, Pong; replay_sample: batches of 32 windows/s")
        cuda = softq_config.device(None if device == "auto" else device).type == "cuda"
        for b in dqn_num_envs:
            variants = [("hard", 1, "auto"), ("soft_ent", 1, "auto"), ("soft_ent", 5, "auto")]
            if cuda:  # CUDA graphs (auto) against the eager update: what the graphs buy
                variants += [("hard", 1, "off"), ("soft_ent", 5, "off")]
            for backup, n, graph in variants:
                cfg = dqn.Config(env=game, backup=backup, tau=0.1, n_step=n, num_envs=b, learning_starts=2000,
                                 frames=MAX_FRAMES, env_threads=min(threads, b), device=device, cuda_graph=graph)
                key = f"dqn_{backup}_n{n}_B{b}" + ("_eager" if graph == "off" else "")
                figures[key] = _time_dqn(cfg, seconds)
                print(f"{key:24s} {figures[key]:9.0f} env steps/s", flush=True)
        for n in (1, 5):
            cfg = dqn.Config(env=game, n_step=n, num_envs=dqn_num_envs[0], frames=MAX_FRAMES, device=device,
                             env_threads=min(threads, dqn_num_envs[0]))
            key = f"replay_sample_n{n}_batches_per_s"
            figures[key] = _time_replay(cfg, seconds)
            print(f"{key:24s} {figures[key]:9.0f} batches/s", flush=True)
    if "phases" in what:
        p = record["a2c_phases"] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
                                    **a2c_phases(game, num_envs, seconds, device="cpu")}
        print(f"A2C phases (ms per update): {json.dumps(p['ms_per_update'])}; overlap could buy at most "
              f"{p['overlap_bound_speedup']:.2f}x", flush=True)
    elif "a2c_phases" in old:
        record["a2c_phases"] = old["a2c_phases"]
    if "graph" in what:
        record["graph_check"] = _graph_check(game, device, threads)
    elif "graph_check" in old:
        record["graph_check"] = old["graph_check"]
    record["steps_per_second"] = figures
    record["device"] = str(softq_config.device(None if device == "auto" else device))
    if "side_by_side" in old:  # save_side_by_side's records: never measured here, always kept
        record["side_by_side"] = old["side_by_side"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out}")
    return record
