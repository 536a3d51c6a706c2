"""softq.rl.experiments.grid: a grid that fills up over sittings (skip finished, resume paused, restart partial), and
locks."""

import json
import shutil
from pathlib import Path

import pytest

from softq.rl.__main__ import main
from softq.rl.agents.a2c import Config
from softq.rl.experiments.folder import RunBusy, RunFolder, computed_rows
from softq.rl.experiments.grid import fill, plan, plan_run
from softq.rl.experiments.loop import train

TINY = ["--env", "CartPole-v1", "--num-envs", "4", "--lr", "0.002", "--torch-threads", "1", "--frames", "2000",
        "--log-every", "50", "--no-progress"]
GRID = ["train", "--rules", "naive,proper", "--seeds", "0,1", *TINY, "--fill"]




def _status(out: Path) -> str:
    return json.loads((out / "status.json").read_text())["status"]


def _cfg(**kw) -> Config:
    return Config(**{"env": "CartPole-v1", "num_envs": 4, "lr": 0.002, "torch_threads": 1, "frames": 2000,
                     "log_every": 50, **kw})


def test_fill_skips_finished_resumes_paused_restarts_partial(tmp_path, capsys):
    """Of a 2 x 2 grid, one run is finished, one paused with its checkpoint, one partial without checkpoint (a
    committed log whose checkpoint is gone), one absent: --fill plans skip / resume / restart / start, and ends with
    four runs whose logs equal those of the same grid filled in one go."""
    whole = tmp_path / "whole"
    assert main([*GRID, "--results", str(whole)]) == 0
    runs = {(r, s): Path(whole, "a2c-CartPole-v1", r, f"seed{s}") for r in ("naive", "proper") for s in (0, 1)}
    assert all(_status(out) == "done" for out in runs.values())

    part = tmp_path / "part"
    exp = part / "a2c-CartPole-v1"
    shutil.copytree(runs["naive", 0].parent.parent / "naive" / "seed0", exp / "naive" / "seed0")  # finished
    paused = exp / "proper" / "seed0"
    train(_cfg(rule="proper", seed=0, checkpoint_every=20, time_limit_minutes=1e-9), paused, progress=False)
    assert _status(paused) == "paused"
    partial = exp / "naive" / "seed1"
    train(_cfg(rule="naive", seed=1, checkpoint_every=20, time_limit_minutes=1e-9), partial, progress=False)
    (partial / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert main([*GRID, "--results", str(part), "--dry-run"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("protocol: ")]
    assert [ln.split()[0] for ln in lines[:4]] == ["skip", "resume", "restart", "start"], lines
    assert lines[-1] == "1 skip, 1 resume, 1 start, 1 restart"
    assert not (exp / "proper" / "seed1").exists(), "--dry-run must run nothing"

    assert main([*GRID, "--results", str(part)]) == 0
    for (rule, seed), out in runs.items():
        mine = exp / rule / f"seed{seed}"
        assert _status(mine) == "done"
        assert computed_rows(mine / "progress.csv") == computed_rows(out / "progress.csv"), (rule, seed)
    starts = json.loads((paused / "config.json").read_text())["starts"]
    assert len(starts) == 2, "the paused run resumed (two starts)"
    assert len(json.loads((partial / "config.json").read_text())["starts"]) == 1, "the partial run started afresh"
    capsys.readouterr()
    assert main([*GRID, "--results", str(part), "--dry-run"]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == "4 skip"


def test_grid_is_seed_major(tmp_path, capsys):
    """Seed 0 of every rule comes before seed 1 of any."""
    assert main(["train", "--rules", "naive,proper,soft_q", "--seeds", "0,1", *TINY, "--fill", "--dry-run",
                 "--results", str(tmp_path)]) == 0
    outs = [ln.split()[1] for ln in capsys.readouterr().err.splitlines()[1:-1]]  # after the protocol line
    assert [Path(o).parent.name + "/" + Path(o).name for o in outs] == [
        "naive/seed0", "proper/seed0", "soft_q/seed0", "naive/seed1", "proper/seed1", "soft_q/seed1"]


def test_fill_refuses_a_folder_of_another_config(tmp_path, capsys):
    """A finished run of lr 0.002 is not the run of lr 0.001: the grid names the field and stops."""
    out = tmp_path / "a2c-CartPole-v1" / "proper" / "seed0"
    train(_cfg(rule="proper", seed=0), out, progress=False)
    with pytest.raises(ValueError, match="lr"):
        plan_run(_cfg(rule="proper", seed=0, lr=0.001), out)
    assert plan_run(_cfg(rule="proper", seed=0, torch_threads=2), out).action == "skip", "run control may differ"
    with pytest.raises(SystemExit):
        main(["train", "--rule", "proper", *TINY, "--lr", "0.001", "--fill", "--results", str(tmp_path)])
    assert "lr" in capsys.readouterr().err
    with pytest.raises(ValueError, match="share a folder"):
        plan([(_cfg(rule="proper"), out), (_cfg(rule="proper"), out)])


def test_failed_run_is_reported_not_rerun(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"status": "failed", "error": "non-finite loss at update 7"}))
    (planned,) = plan([(_cfg(rule="naive"), out)])
    assert planned.action == "failed" and "update 7" in planned.why
    assert fill([planned], progress=False) == 1
    assert not (out / "progress.csv").exists()


def test_a_locked_run_is_busy(tmp_path):
    """While one process trains a folder, another train() there raises and the grid leaves it alone."""
    out = tmp_path / "run"
    with RunFolder(out).locked():
        assert plan_run(_cfg(rule="naive"), out).action == "busy"
        with pytest.raises(RunBusy, match="another process"):
            train(_cfg(rule="naive"), out, progress=False)
    assert plan_run(_cfg(rule="naive"), out).action == "start"


def test_several_envs_are_several_experiments(tmp_path, capsys):
    """--envs: one experiment per environment (<algo>-<env>), the same grid in each; --experiment then refused."""
    assert main(["train", "--envs", "CartPole-v1,Acrobot-v1", "--rules", "naive,proper", "--seeds", "0", *TINY[2:],
                 "--fill", "--dry-run", "--results", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    outs = [Path(ln.split()[1]) for ln in err if ln.startswith("start")]
    assert [str(o.relative_to(tmp_path)) for o in outs] == [
        "a2c-CartPole-v1/naive/seed0", "a2c-CartPole-v1/proper/seed0",
        "a2c-Acrobot-v1/naive/seed0", "a2c-Acrobot-v1/proper/seed0"]
    assert err[0].startswith("protocol: the paper's A2C, except ")  # TINY's budget and settings, named
    with pytest.raises(SystemExit):
        main(["train", "--envs", "CartPole-v1,Acrobot-v1", "--experiment", "x", *TINY[2:], "--fill", "--dry-run"])
    assert "--experiment" in capsys.readouterr().err
    assert main(["train", "--envs", "CartPole-v1,Acrobot-v1", "--experiment", "study-{env}", "--seeds", "0", *TINY[2:],
                 "--fill", "--dry-run", "--results", str(tmp_path)]) == 0
    outs = [Path(ln.split()[1]) for ln in capsys.readouterr().err.splitlines() if ln.startswith("start")]
    assert [str(o.relative_to(tmp_path)) for o in outs] == ["study-CartPole-v1/proper/seed0",
                                                           "study-Acrobot-v1/proper/seed0"]


def test_the_dry_run_names_how_a_grid_departs_from_the_papers_protocol(tmp_path, capsys):
    """The paper's A2C at its 320M frames: no difference; a CPU budget and torch's RMSprop: both named."""
    from softq.rl.agents.a2c import PAPER_FRAMES, Config, paper_protocol_differences

    assert paper_protocol_differences(Config(frames=PAPER_FRAMES, rule="naive", seed=4)) == []
    assert paper_protocol_differences(Config(frames=20_000_000, optimizer="rmsprop_torch", torch_threads=1)) == [
        "20M of the paper's 320M frames", "optimizer rmsprop_torch (the paper: rmsprop_tf)"]
    assert main(["train", "--env", "PongNoFrameskip-v4", "--rules", "naive,proper", "--frames", "20000000",
                 "--precision", "bf16", "--fill", "--dry-run", "--results", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("protocol: the paper's A2C, except 20M of the paper's 320M frames; "
                      "precision bf16 (the paper: fp32)")
