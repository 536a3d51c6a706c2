"""softq.rl.experiments.folder.RunFolder (the one owner of a run folder) and softq.rl.agents.base (the agent interface,
the registry,
the config base), with softq.rl.experiments.grid.expand (a grid's configs as a library call)."""

import json

import pytest

from softq.rl.agents.base import ALGORITHMS, Agent, algorithm, make_agent, read_config
from softq.rl.experiments.folder import RunBusy, RunFolder
from softq.rl.experiments.grid import expand


def test_json_is_written_atomically_and_a_bad_file_is_named(tmp_path):
    f = RunFolder(tmp_path / "run")
    f.path.mkdir()
    assert f.config() is None and f.status() == {} and not f.holds_run()
    f.write_status("running", update=3)
    assert f.status()["status"] == "running" and f.status()["update"] == 3
    assert not list(f.path.glob("*.tmp"))
    f.config_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        f.config()
    assert f.holds_run()


def test_clear_removes_a_partial_runs_logs_and_keeps_the_checkpoint(tmp_path):
    f = RunFolder(tmp_path)
    for name in ("config.json", "status.json", "progress.csv", "agreement.csv", "checkpoint.pt", "lock"):
        (tmp_path / name).write_text("x")
    f.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "lock"]


def test_cut_log_drops_rows_after_the_checkpoint_and_refuses_a_short_log(tmp_path):
    f = RunFolder(tmp_path)
    (tmp_path / "progress.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    assert f.cut_log("progress.csv", len("a,b\n1,2\n"), "progress log") == "progress.csv: 2 row(s) written after " \
                                                                           "the checkpoint dropped"
    assert (tmp_path / "progress.csv").read_text() == "a,b\n1,2\n"
    assert f.cut_log("progress.csv", len("a,b\n1,2\n"), "progress log") is None
    with pytest.raises(ValueError, match="fewer than the 100"):
        f.cut_log("progress.csv", 100, "progress log")


def test_the_lock_is_exclusive(tmp_path):
    f = RunFolder(tmp_path / "run")
    assert not f.is_locked()
    with f.locked():
        # flock is per open file: a second open of the lock in this process conflicts like another process's
        assert f.is_locked()
        with pytest.raises(RunBusy, match="another process"), RunFolder(tmp_path / "run").locked():
            pass
    assert not f.is_locked()


def test_a_bad_checkpoint_is_named(tmp_path):
    f = RunFolder(tmp_path)
    f.checkpoint_path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: not a readable checkpoint"):
        f.load_checkpoint()


def test_every_registered_agent_satisfies_the_protocol():
    for name, alg in ALGORITHMS.items():
        cfg = alg.config(env="CartPole-v1", frames=100, num_envs=2, torch_threads=1, env_threads=1)
        assert cfg.algo == name and read_config(cfg.as_dict()) == cfg
        agent = make_agent(cfg)
        try:
            assert isinstance(agent, Agent), name
            assert agent.columns[:2] == ("frames", "updates") and isinstance(agent.hooks(), list)
        finally:
            agent.env.close()
    with pytest.raises(ValueError, match=r"algo must be one of \('a2c', 'dqn'\), got 'ppo'"):
        algorithm("ppo")
    with pytest.raises(ValueError, match=r"run/config\.json: config: unknown fields \['bogus'\]"):
        read_config({"algo": "a2c", "bogus": 1}, "run/config.json")
    with pytest.raises(ValueError, match="algo must be 'dqn'"):
        algorithm("dqn").config(algo="a2c")


def test_expand_builds_a_grid_seed_major_and_hard_has_no_tau():
    a2c = algorithm("a2c").config(env="CartPole-v1")
    grid = expand(a2c, seeds=[0, 1], rules=["naive", "proper"])
    assert [(c.seed, c.rule) for c in grid] == [(0, "naive"), (0, "proper"), (1, "naive"), (1, "proper")]
    dqn = algorithm("dqn").config(env="CartPole-v1", tau=0.5)
    grid = expand(dqn, backups=["hard", "soft_ent"], taus=[0.1, 0.01], n_steps=[1, 5])
    assert [c.rule for c in grid] == ["hard", "hard_n5", "soft_ent_tau0.1", "soft_ent_tau0.1_n5",
                                      "soft_ent_tau0.01", "soft_ent_tau0.01_n5"]
    assert {c.tau for c in grid if c.backup == "hard"} == {0.5}
    with pytest.raises(ValueError, match="DQN options"):
        expand(a2c, backups=["hard"])
    with pytest.raises(ValueError, match="rules is an A2C option"):
        expand(dqn, rules=["naive"])
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2147483647\]"):
        expand(a2c, seeds=[-1])
    assert json.loads(json.dumps(grid[0].as_dict()))["backup"] == "hard"
