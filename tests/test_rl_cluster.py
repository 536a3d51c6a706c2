"""softq.rl.experiments.cluster: the grid on a real local Ray cluster (one run killed mid-way and resumed) equals the
grid run
locally; the dry run's estimate from a bench file."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from softq.rl.agents.a2c import Config
from softq.rl.experiments import cluster
from softq.rl.experiments.folder import computed_rows
from softq.rl.experiments.grid import fill, plan
from softq.rl.experiments.loop import run_dir

RULES, SEEDS = ("naive", "proper"), (0, 1)


def _grid(root: Path) -> list:
    base = dict(env="CartPole-v1", num_envs=4, lr=0.002, frames=24_000, log_every=50, checkpoint_every=100,
                torch_threads=1, env_threads=1)
    return [(Config(**base, rule=r, seed=s), run_dir(root, "a2c-CartPole-v1", r, s)) for s in SEEDS for r in RULES]




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task_pids(tag: str) -> list[int]:
    """PIDs of Ray workers now running a task named for a run folder containing ``tag``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("ray::softq:") and tag in cmd:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def ray_cluster():
    """A Ray head node on 127.0.0.1 only, started by `ray start` and stopped at the end (needs `pip install ray`)."""
    pytest.importorskip("ray")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONHASHSEED": "0",
           "RAY_raylet_start_wait_time_s": "180"}  # a loaded 2-core machine registers the node slowly
    started = subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                              "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                              f"--temp-dir={temp}"], env=env, capture_output=True, text=True, timeout=300)
    if started.returncode != 0:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        pytest.fail(f"ray start failed:\n{(started.stdout + started.stderr)[-3000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_grid_on_ray_with_a_killed_run_equals_the_local_grid(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    local = _grid(tmp_path / "local")
    assert fill(plan(local), progress=False) == 0

    remote = _grid(tmp_path / "ray")
    victim = remote[1][1]  # proper, seed 0: killed once its first checkpoint exists
    killed = []

    def kill_after_checkpoint():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            if (victim / "checkpoint.pt").exists():
                pids = _task_pids(str(victim.relative_to(tmp_path)))
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(pids)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_checkpoint, daemon=True)
    killer.start()
    failed = cluster.fill_ray(plan(remote), address=ray_cluster, cpus=1)
    killer.join(timeout=1)
    assert failed == 0
    assert killed, "the run was not killed mid-way: make the runs longer"
    starts = json.loads((victim / "config.json").read_text())["starts"]
    assert len(starts) == 2, "the killed run should have been resumed once, by Ray's retry"
    for (_, a), (_, b) in zip(local, remote, strict=True):
        assert json.loads((b / "status.json").read_text())["status"] == "done"
        assert computed_rows(a / "progress.csv") == computed_rows(b / "progress.csv"), b
        wa = torch.load(a / "checkpoint.pt", weights_only=False)["agent"]["net"]
        wb = torch.load(b / "checkpoint.pt", weights_only=False)["agent"]["net"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), b
    # a second fill skips everything: nothing is submitted
    assert all(p.action == "skip" for p in plan(remote))
    assert cluster.fill_ray(plan(remote), address=ray_cluster) == 0


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, ray_cluster):
    grid = _grid(tmp_path)[:2]
    grid[0][1].mkdir(parents=True)
    (grid[0][1] / "status.json").write_text(json.dumps({"status": "failed", "error": "non-finite loss"}))
    planned = plan(grid)
    assert [p.action for p in planned] == ["failed", "start"]
    assert cluster.fill_ray(planned, address=ray_cluster, cpus=1) == 1
    assert json.loads((grid[1][1] / "status.json").read_text())["status"] == "done"


def test_estimate_from_a_bench_file(tmp_path):
    bench = tmp_path / "gpu.json"
    bench.write_text(json.dumps({"machine": {"cpu": "x", "cores": 16, "gpu": "G"},
                                 "steps_per_second": {"a2c_ale": 2500.0, "dqn_hard_n1_B8": 500.0}}))
    grid = [(Config(env="PongNoFrameskip-v4", rule=r, seed=s, frames=36_000_000), tmp_path / r / str(s))
            for r in RULES for s in SEEDS]
    est = cluster.estimate(plan(grid), bench, concurrent=2, gpus=0.5)
    assert len(est["runs"]) == 4 and est["throughput"]["a2c"]["frames_per_s"] == 10_000
    assert est["run_hours"] == pytest.approx(4.0) and est["wall_hours"] == pytest.approx(2.0)
    assert est["gpu_hours"] == pytest.approx(2.0)
    assert "a2c_ale = 2500 agent steps/s" in cluster.describe_estimate(est)
    with pytest.raises(ValueError, match="no file"):
        cluster.estimate(plan(grid), tmp_path / "missing.json")
    with pytest.raises(ValueError, match="concurrent"):
        cluster.estimate(plan(grid), bench, concurrent=0)
    assert cluster.resources(grid[0][0]) == {"num_cpus": 8, "num_gpus": 0.0}
    with pytest.raises(ValueError, match="cpus"):
        cluster.resources(grid[0][0], cpus=0)


def test_a_side_by_side_figure_names_its_own_machine(tmp_path):
    """A bench file's newest side-by-side figure may come from another machine than the file's top level: the
    estimate names the figure's machine."""
    bench = tmp_path / "cpu.json"
    bench.write_text(json.dumps({
        "machine": {"cpu": "AMD EPYC", "cores": 2, "gpu": None}, "steps_per_second": {"a2c_ale": 700.0},
        "side_by_side": [{"median_steps_per_second": {"a2c_fp32": 1300.0},
                          "machine": {"cpu": "Intel Xeon", "cores": 2, "gpu": None}}]}))
    t = cluster.throughput(bench, "a2c")
    assert t.frames_per_s == 5200 and "Intel Xeon" in t.source and "AMD EPYC" not in t.source
    with pytest.raises(ValueError, match="no dqn throughput"):
        cluster.throughput(bench, "dqn")


def test_ray_without_a_cluster_is_a_clear_error(tmp_path, monkeypatch):
    """--launcher ray with no cluster at the address: a ValueError naming the address, not a ConnectionError."""
    ray = pytest.importorskip("ray")

    def refuse(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    grid = [(Config(env="CartPole-v1", frames=400), tmp_path / "run")]
    with pytest.raises(ValueError, match="--ray-address 'auto': no Ray cluster there"):
        cluster.fill_ray(plan(grid), address="auto")
