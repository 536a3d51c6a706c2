"""softq.rl.experiments.loop and the command line: logs, atomic checkpoints, kill + resume equality, NaN stop, layout,
learning."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import softq.rl.agents.a2c
from softq.rl.__main__ import main
from softq.rl.agents.a2c import CARTPOLE as CARTPOLE_A2C  # the book's CartPole settings: Config fields
from softq.rl.agents.a2c import COLUMNS, Config, NonFiniteLoss
from softq.rl.experiments.folder import computed_rows
from softq.rl.experiments.loop import train

ROOT = Path(__file__).resolve().parent.parent
CARTPOLE_ARGV = ["--env", "CartPole-v1", "--num-envs", "4", "--lr", "0.002", "--torch-threads", "1"]




def _weights(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)["agent"]["net"]


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    """SIGKILL a CartPole run after its first checkpoint, resume it: same log (but timings) and same weights."""
    args = ["train", "--rule", "proper", "--frames", "20000", "--log-every", "50", "--checkpoint-every", "150",
            *CARTPOLE_ARGV, "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "softq.rl", *args, "--out", str(cut)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (cut / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.2)  # let it run past the checkpoint, then kill it without warning
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(cut / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert 0 < state["agent"]["updates"] < 1000, "the run must be killed mid-way: make it longer"
    assert json.loads((cut / "status.json").read_text())["status"] == "running"
    assert main([*args, "--out", str(cut), "--resume"]) == 0
    assert computed_rows(cut / "progress.csv") == computed_rows(tmp_path / "whole" / "progress.csv")
    assert len(computed_rows(cut / "progress.csv")) == 20
    whole, resumed = _weights(tmp_path / "whole" / "checkpoint.pt"), _weights(cut / "checkpoint.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    cfg = json.loads((cut / "config.json").read_text())
    assert len(cfg["starts"]) == 2 and cfg["starts"][1]["envs_restored"] is True
    assert {"torch", "gymnasium", "ale_py", "numpy", "python"} <= set(cfg["versions"]) and cfg["device"] == "cpu"


def test_time_limit_pauses_and_resume_finishes(tmp_path):
    cfg = Config(env="CartPole-v1", rule="naive", frames=4000, num_envs=4, log_every=10, time_limit_minutes=1e-6)
    assert train(cfg, tmp_path, progress=False)["status"] == "paused"
    with pytest.raises(FileExistsError):
        train(cfg, tmp_path, progress=False)
    cfg = Config(**{**cfg.as_dict(), "time_limit_minutes": 0.0})
    result = train(cfg, tmp_path, resume=True, progress=False)
    assert result["status"] == "done" and result["update"] == 200
    assert len(computed_rows(tmp_path / "progress.csv")) == 20
    with pytest.raises(ValueError, match="tau"):
        train(Config(**{**cfg.as_dict(), "tau": 0.5}), tmp_path, resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, poison):
    poison(softq.rl.agents.a2c, "a2c_loss", 7)
    cfg = Config(env="CartPole-v1", rule="soft_q", frames=400, num_envs=4, log_every=2, checkpoint_every=5)
    with pytest.raises(NonFiniteLoss, match="update 7"):
        train(cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["agent"]["updates"] == 5
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    assert main(["train", "--rule", "soft_q", "--frames", "400", "--num-envs", "4", "--env", "CartPole-v1",
                 "--log-every", "2", "--out", str(tmp_path), "--resume", "--no-progress"]) == 0  # from update 5
    assert json.loads((tmp_path / "status.json").read_text())["update"] == 20


def test_several_runs_share_one_layout(tmp_path):
    assert main(["train", "--rules", "naive,soft_q", "--seeds", "0,1", "--frames", "200", *CARTPOLE_ARGV,
                 "--log-every", "5", "--results", str(tmp_path), "--experiment", "demo", "--no-progress"]) == 0
    for rule in ("naive", "soft_q"):
        for seed in (0, 1):
            run = tmp_path / "demo" / rule / f"seed{seed}"
            assert json.loads((run / "status.json").read_text())["status"] == "done"
            with open(run / "progress.csv") as f:
                assert tuple(next(csv.reader(f))) == COLUMNS
            assert json.loads((run / "config.json").read_text())["config"]["rule"] == rule


@pytest.mark.parametrize("argv", [["--rule", "hard"], ["--tau", "-1"], ["--env", "Zork"], ["--frames", "1e6"],
                                  ["--seeds", "a,b"], ["--num-envs", "0"], ["--num-envs", "100000000"],
                                  ["--frames", "10000000000000000000000"], ["--seed", "3", "--seeds", "0"],
                                  ["--rule", "naive", "--rules", "proper"], ["--algo", "dqn", "--backups", "hard",
                                                                            "--taus", "0.1,0.01"]])
def test_bad_command_lines_are_rejected(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv, "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    name = {"--env": "Zork", "--algo": "taus"}.get(argv[0], argv[0].lstrip("-").replace("-", "_").rstrip("s"))
    assert name.split("_")[0] in capsys.readouterr().err


@pytest.mark.parametrize("argv,name", [(["--game", "Zork"], "Zork"), (["--num-envs", "0"], "--num-envs"),
                                       (["--what", "foo"], "foo"), (["--seconds", "0"], "--seconds"),
                                       (["--reps", "0"], "--reps"), (["--side-by-side", "/no/such/tree"], "no/such")])
def test_bad_bench_command_lines_are_rejected(argv, name, tmp_path, capsys):
    """bench answers bad input with a usage error naming it (exit code 2), before measuring anything."""
    with pytest.raises(SystemExit) as e:
        main(["bench", *argv, "--out", str(tmp_path)])
    assert e.value.code == 2
    assert name in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing is written"


@pytest.mark.parametrize("algo", ["a2c", "dqn"])
def test_train_help_explains_every_option(algo, capsys):
    """Every Config field is an option whose --help gives its meaning, its unit where it counts something, and its
    allowed values, all from the field's declaration (softq.rl.agents.base.option); the help of one algorithm says where
    the other's options are."""
    import dataclasses

    from softq.rl.__main__ import option_help
    from softq.rl.agents.base import field_type
    from softq.rl.experiments.loop import config_class

    cls = config_class(algo)
    for f in dataclasses.fields(cls):
        text, kind = option_help(f, f.default), field_type(f)
        assert f.metadata["option"].help, f.name
        if kind in (int, float):
            assert " >= " in text or " > " in text or " in [" in text or " in (" in text, (f.name, text)
    with pytest.raises(SystemExit):
        main(["train", "--algo", algo, "--help"])
    out = capsys.readouterr().out
    assert "the run's seed" in out and "[emulator frames" in out and "an int in [1, 4096]" in out
    assert f"--algo {'dqn' if algo == 'a2c' else 'a2c'} --help" in out


@pytest.mark.parametrize("rule", ["proper", "soft_q"])
def test_cartpole_learns(rule, tmp_path):
    """A short CartPole run clearly learns (random play scores ~22): tuned for CartPole, not the Atari defaults
    (softq.rl.agents.a2c.CARTPOLE says why)."""
    cfg = Config(**CARTPOLE_A2C, rule=rule, frames=80_000, num_envs=8, lr=2e-3, lr_schedule="constant", log_every=100)
    t0 = time.time()
    result = train(cfg, tmp_path, progress=False)
    print(f"{rule}: mean score of the last 100 games {result['score_mean100']:.1f} in {time.time() - t0:.1f}s")
    assert result["score_mean100"] > 150


def test_atari_resume_starts_fresh_games(tmp_path):
    """Atari emulators are not saved: resume keeps weights/optimizer/RNG and says that the games restarted."""
    cfg = Config(env="PongNoFrameskip-v4", rule="proper", frames=4 * 2 * 5 * 20, num_envs=2, env_threads=1,
                 torch_threads=1, device="cpu", log_every=5, time_limit_minutes=1e-6)
    assert train(cfg, tmp_path, progress=False)["status"] == "paused"
    cfg = Config(**{**cfg.as_dict(), "time_limit_minutes": 0.0})
    assert train(cfg, tmp_path, resume=True, progress=False)["update"] == 20
    starts = json.loads((tmp_path / "config.json").read_text())["starts"]
    assert [s["envs_restored"] for s in starts] == [None, False]


def test_parallel_runs_split_the_cores(monkeypatch):
    """--parallel k gives each run its own cores and thread counts for them (not k times the machine's)."""
    from softq.rl.experiments.launch import core_slots, split_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    slots = core_slots(3)
    assert slots == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    assert not set(slots[0]) & set(slots[1])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert core_slots(2) == [[0], [1]] and core_slots(3) == [[0], [1], [0]]
    cfg = split_threads(Config(env="PongNoFrameskip-v4", device="cpu"), 1)
    assert (cfg.env_threads, cfg.torch_threads) == (1, 1)
    monkeypatch.setattr(softq.rl, "OPENMP_SPIN_BOUNDED", True)  # softq.rl bounded OpenMP's spinning
    cfg = split_threads(Config(env="PongNoFrameskip-v4", device="cpu"), 8)
    assert (cfg.env_threads, cfg.torch_threads) == (8, 8)
    monkeypatch.setattr(softq.rl, "OPENMP_SPIN_BOUNDED", False)  # torch loaded first, with libgomp's default
    cfg = split_threads(Config(env="PongNoFrameskip-v4", device="cpu"), 8)
    assert (cfg.env_threads, cfg.torch_threads) == (8, 4)
    kept = split_threads(Config(env="PongNoFrameskip-v4", device="cpu", env_threads=3, torch_threads=2), 1)
    assert (kept.env_threads, kept.torch_threads) == (3, 2)
    with pytest.raises(ValueError, match="parallel"):
        core_slots(0)


def test_train_many_equals_training_in_process_and_names_failures(tmp_path):
    """train_many's concurrent subprocess runs end as the same runs trained in this process (log and weights), and
    a run that cannot start is named in the error, the others finishing all the same."""
    from softq.rl.experiments.launch import train_many

    cfgs = [Config(**CARTPOLE_A2C, rule=rule, seed=3, frames=4 * 5 * 40, num_envs=4, lr=2e-3,
                   log_every=10, device="cpu", torch_threads=1, env_threads=1, checkpoint_minutes=0)
            for rule in ("naive", "soft_q")]
    outs = [tmp_path / "many" / cfg.rule for cfg in cfgs]
    statuses = train_many(list(zip(cfgs, outs, strict=True)), parallel=2)
    for cfg, out, status in zip(cfgs, outs, statuses, strict=True):
        here = train(cfg, tmp_path / "here" / cfg.rule, progress=False)
        assert status["status"] == "done" and status["score_mean100"] == here["score_mean100"]
        assert computed_rows(out / "progress.csv") == computed_rows(tmp_path / "here" / cfg.rule / "progress.csv")
        a, b = _weights(out / "checkpoint.pt"), _weights(tmp_path / "here" / cfg.rule / "checkpoint.pt")
        assert all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "progress.csv").write_text("frames\n")  # a folder that already holds a run
    with pytest.raises(RuntimeError, match=r"1 of 2 runs did not finish:\n  .*taken"):
        train_many([(cfgs[0], tmp_path / "taken"), (cfgs[1], tmp_path / "fresh")])
    assert json.loads((tmp_path / "fresh" / "status.json").read_text())["status"] == "done"
    with pytest.raises(ValueError, match="runs"):
        train_many([])


# --- resume that never loses a run ------------------------------------------------------------------------------


def _small(**kw):
    return Config(env="CartPole-v1", rule="naive", frames=4000, num_envs=4, log_every=10, torch_threads=1,
                  env_threads=1, checkpoint_minutes=0, **kw)


def test_resume_without_a_checkpoint_refuses_and_keeps_the_log(tmp_path):
    """A finished run whose checkpoint is gone (committed logs, a new machine): --resume refused, log untouched."""
    train(_small(), tmp_path, progress=False)
    (tmp_path / "checkpoint.pt").unlink()
    before = (tmp_path / "progress.csv").read_bytes()
    with pytest.raises(FileExistsError, match="no checkpoint.pt"):
        train(_small(), tmp_path, resume=True, progress=False)
    assert (tmp_path / "progress.csv").read_bytes() == before
    fresh = tmp_path / "fresh"  # an empty folder: --resume starts the run
    assert train(_small(), fresh, resume=True, progress=False)["status"] == "done"


def test_a_log_cut_below_the_checkpoint_is_refused_and_a_longer_one_cut_back(tmp_path, capsys):
    """progress.csv shorter than the checkpoint's row: refused, the file unchanged (no NUL padding); rows written
    after the checkpoint are dropped, and the resume says how many."""
    assert train(_small(time_limit_minutes=1e-6), tmp_path, progress=False)["status"] == "paused"
    log = tmp_path / "progress.csv"
    whole = log.read_bytes()
    log.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="fewer than the"):
        train(_small(), tmp_path, resume=True, progress=False)
    assert log.read_bytes() == whole[: len(whole) // 2] and b"\0" not in log.read_bytes()
    log.write_bytes(whole + b"4000,123456789,0,,0,0,0,0,,0,0,0,0,0,0\n")  # a row from after the checkpoint
    assert train(_small(), tmp_path, resume=True, progress=False)["status"] == "done"
    assert "1 row(s) written after the checkpoint dropped" in capsys.readouterr().err
    assert b"123456789" not in log.read_bytes() and len(computed_rows(log)) == 20


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_checkpoint_is_named_by_resume_fill_and_inspect(tmp_path, damage, capsys):
    from softq.rl.diagnostics.inspect import checkpoint_gradient_report
    from softq.rl.experiments.grid import plan_run

    train(_small(time_limit_minutes=1e-6), tmp_path, progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": data[: len(data) // 3], "garbage": b"not a checkpoint", "empty": b""}[damage])
    with pytest.raises(ValueError, match=f"{ckpt}: not a readable checkpoint"):
        train(_small(), tmp_path, resume=True, progress=False)
    planned = plan_run(_small(), tmp_path)
    assert planned.action == "failed" and str(ckpt) in planned.why
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        checkpoint_gradient_report(ckpt)


def test_runs_stay_inside_results_and_never_overwrite_another_run(tmp_path, capsys):
    base = ["train", *CARTPOLE_ARGV, "--frames", "400", "--no-progress", "--results", str(tmp_path / "r")]
    for bad in (str(tmp_path / "abs"), "../x", "a/../../x", " "):
        with pytest.raises(SystemExit):
            main([*base, "--experiment", bad])
        assert "--experiment" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--out", ""])
    assert "--out is empty" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"config": {"rule": "soft_q"}}\n')  # a run that has not logged a row yet
    with pytest.raises(SystemExit):
        main([*base, "--out", str(other)])
    assert "already holds a run" in capsys.readouterr().err
    assert (other / "config.json").read_text() == '{"config": {"rule": "soft_q"}}\n'
    assert not (tmp_path / "x").exists() and not (tmp_path / "abs").exists()


def test_taken_or_repeated_seeds_are_refused_before_any_run_starts(tmp_path, capsys):
    base = ["train", *CARTPOLE_ARGV, "--frames", "400", "--no-progress", "--results", str(tmp_path)]
    assert main([*base, "--seeds", "0"]) == 0
    with pytest.raises(SystemExit):
        main([*base, "--seeds", "0,1"])
    assert "already hold runs" in capsys.readouterr().err and "seed0" in capsys.readouterr().err + "seed0"
    assert not (tmp_path / "a2c-CartPole-v1" / "proper" / "seed1").exists()
    with pytest.raises(SystemExit):
        main([*base, "--seeds", "2,2"])
    assert "share a folder" in capsys.readouterr().err


def test_a_full_disk_fails_the_run_and_leaves_no_tmp_file(tmp_path, monkeypatch):
    real = torch.save

    def full(obj, f, *a, **k):
        real(obj, f, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match="No space left"):
        train(_small(checkpoint_every=50), tmp_path, progress=False)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "No space left" in status["error"]
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "checkpoint.pt").exists()


def test_config_records_the_command_a_reader_would_type(tmp_path):
    """The command in config.json is `python -m softq.rl ...`, never the machine's path to __main__.py; a run
    started from Python records the equivalent command, which starts the same run."""
    args = ["train", *CARTPOLE_ARGV, "--frames", "400", "--no-progress", "--out", str(tmp_path / "cli")]
    subprocess.run([sys.executable, "-m", "softq.rl", *args], cwd=ROOT, check=True, capture_output=True)
    cli = json.loads((tmp_path / "cli" / "config.json").read_text())["starts"][0]["command"]
    assert cli.startswith("python -m softq.rl train ") and "__main__" not in cli
    train(_small(), tmp_path / "py", progress=False)
    py = json.loads((tmp_path / "py" / "config.json").read_text())["starts"][0]["command"]
    assert py.startswith("python -m softq.rl train ") and "--rule naive" in py and "--frames 4000" in py
    again = tmp_path / "again"
    subprocess.run([*py.replace("python", sys.executable, 1).split()[:-2], "--out", str(again)], cwd=ROOT, check=True,
                   capture_output=True)
    assert computed_rows(again / "progress.csv") == computed_rows(tmp_path / "py" / "progress.csv")
