"""tools/lease.sh end to end on this CPU with a tiny budget: what comes back fits a lease's limits.

The device machine returns at most 8 files of < 16 MiB each from $OUT; the script must also end within its budget
(LEASE_SECONDS). Here: a 60 s budget, a bench that only records the machine (``--what graph``: skipped on a CPU),
and the three A2C rules on Pong with 2 envs, one after another in one process (``LEASE_PARALLEL=1``: three
subprocesses importing torch at once on a 2-core machine would spend the budget starting; the GPU lease runs them
with ``--parallel 3``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "lease.sh"
RULES = ("naive", "proper", "soft_q")
BUDGET = 60


@pytest.fixture(scope="module")
def lease(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lease")
    out, work = tmp / "out", tmp / "work"
    env = {**os.environ, "OUT": str(out), "LEASE_WORK": str(work), "LEASE_PYTHON": sys.executable,
           "LEASE_SECONDS": str(BUDGET), "LEASE_BENCH": "--what graph", "LEASE_BENCH_SECONDS_EACH": "0.2",
           "LEASE_BENCH_BUDGET": "30", "LEASE_STARTUP_SECONDS": "30", "LEASE_PACK_SECONDS": "4",
           "LEASE_PARALLEL": "1", "LEASE_WHEELS": str(tmp / "no-wheels"),
           "LEASE_TRAIN_ARGS": "--num-envs 2 --log-every 2 --torch-threads 1 --env-threads 1"}
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=BUDGET + 60)
    return proc, out, time.perf_counter() - t0


def test_lease_runs_and_fits_the_limits(lease):
    proc, out, wall = lease
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # how long the lease took is a measurement, not a test (the script's own summary records its times)
    files = sorted(p for p in out.iterdir())
    assert all(p.is_file() for p in files)
    assert 1 <= len(files) <= 8, files
    assert all(p.stat().st_size < 16 * 2**20 for p in files)
    names = {p.name for p in files}
    assert {"lease-results.tar.gz", "lease-summary.json", "lease.log"} <= names, names
    for phase in ("phase check", "phase bench-1", "phase train", "phase pack"):
        assert phase in (out / "lease.log").read_text()
    assert "lease done: " in proc.stdout


def test_lease_results_hold_every_run_and_no_checkpoint(lease):
    _, out, _ = lease
    with tarfile.open(out / "lease-results.tar.gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        for rule in RULES:
            run = f"results/a2c-PongNoFrameskip-v4/{rule}/seed0"
            for name in ("config.json", "progress.csv", "status.json"):
                assert f"{run}/{name}" in members, sorted(members)
            status = json.loads(tar.extractfile(f"{run}/status.json").read())
            assert status["status"] in ("paused", "done"), status
            config = json.loads(tar.extractfile(f"{run}/config.json").read())["config"]
            assert config["rule"] == rule and config["num_envs"] == 2
            assert tar.extractfile(f"{run}/progress.csv").read().decode().startswith("frames,")
        assert not any("checkpoint" in name for name in members)
        bench_in_tar = [n for n in members if n.startswith("results/bench/") and n.endswith(".json")]
        assert len(bench_in_tar) == 1


def test_lease_bench_and_summary_parse(lease):
    _, out, _ = lease
    (bench,) = out.glob("bench-*.json")
    record = json.loads(bench.read_text())
    assert record["graph_check"].startswith("skipped")  # a CPU
    assert record["machine"]["cores"] >= 1
    summary = json.loads((out / "lease-summary.json").read_text())
    assert summary["budget_s"] == BUDGET
    phases = {p["phase"]: p for p in summary["phases"]}
    assert {"check", "bench-1", "train"} <= set(phases), phases
    assert phases["check"]["exit"] == 0 and phases["bench-1"]["exit"] == 0
    assert phases["train"]["exit"] == 0, phases["train"]  # stopped by --time-limit-minutes, not by the timeout
    assert "--rules naive,proper,soft_q" in phases["train"]["command"]
    assert 0 < summary["train_time_limit_minutes"] < BUDGET / 60
    assert "versions" in summary and summary["cuda"] is False
