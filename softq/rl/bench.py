"""``make bench``: how fast the Atari pipeline is, on this machine, against what a user would otherwise write.

In one run, on one game with one number of environments and threads, four agent-steps-per-second figures
(an agent step is 4 emulator frames):

- ``env_ale_random``: ale-py's C++ ``AtariVectorEnv`` with random actions: the ceiling of training.
- ``a2c_ale``: A2C (rule ``proper``, the paper's network and hyperparameters) on that env: rollouts and updates.
- ``env_gymnasium_random``: gymnasium ``AsyncVectorEnv`` of ``AtariPreprocessing`` + ``FrameStackObservation``
  (one process per environment), random actions.
- ``a2c_gymnasium``: the same A2C on that env.

Saved with the machine (CPU model, cores, GPU) and package versions to ``results/bench/<tag>.json`` (tag: the
machine kind, e.g. ``cpu-2core``, unless given). Short measurements (``--seconds``) are noisy on a shared machine:
it is a benchmark, not a test (DESIGN.md: performance claims live here, never in a timed test).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from softq import config as softq_config
from softq.rl.a2c import A2C, Config
from softq.rl.envs import make_env
from softq.rl.runs import machine, versions


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


def machine_tag(m: dict[str, Any]) -> str:
    """A file name for a kind of machine, e.g. ``cpu-2core`` or ``NVIDIA-H100-80GB-HBM3-16core``."""
    kind = re.sub(r"[^A-Za-z0-9]+", "-", m["gpu"]).strip("-") if m.get("gpu") else "cpu"
    return f"{kind}-{m['cores']}core"


def run_bench(game: str = "pong", num_envs: int = 16, threads: int = 0, seconds: float = 10.0,
              device: str = "auto", tag: str | None = None, out_dir: str | Path = "results/bench") -> dict[str, Any]:
    """Measure the four figures (module docstring), print them, save and return the JSON record."""
    threads = threads or min(num_envs, os.cpu_count() or 1)
    cfg = Config(env=game, rule="proper", frames=10**12, num_envs=num_envs, env_threads=threads, device=device)
    record: dict[str, Any] = {
        "what": "agent steps per second (1 step = 4 frames); A2C = rollouts + updates, rule proper",
        "game": game, "num_envs": num_envs, "env_threads": threads, "seconds_each": seconds,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), "versions": versions(),
    }
    figures: dict[str, float | str] = {}
    for backend in ("ale", "gymnasium"):
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
    record["steps_per_second"] = figures
    record["device"] = str(softq_config.device(None if device == "auto" else device))
    out = Path(out_dir) / f"{tag or machine_tag(record['machine'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {out}")
    return record
