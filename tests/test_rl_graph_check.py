"""The CUDA-graph check of DQN's update (softq.rl.diagnostics.graph_check) and the bench's handling of it, on the
CPU."""

import json

import pytest
import torch

import softq.rl.diagnostics.graph_check as graph_check
from softq.rl.agents.dqn import DQN, Config
from softq.rl.diagnostics.bench import run_bench
from softq.rl.diagnostics.graph_check import compare_update_paths

CARTPOLE_DQN_SMALL = dict(env="CartPole-v1", num_envs=4, buffer_size=2000, frames=10**6, hidden=32)


def test_fixed_draws_give_the_batch_the_generator_would_give():
    agent = DQN(Config(**CARTPOLE_DQN_SMALL, n_step=3, learning_starts=10**9))
    for _ in range(60):
        agent.step()
    state = agent.gen.get_state()
    a = agent.replay.sample(32, agent.gen)
    u = torch.rand(64, dtype=torch.float64, generator=torch.Generator().set_state(state))
    b = agent.replay.sample(32, None, u=u)
    for name in ("obs", "actions", "rewards", "terminal", "truncated", "next_obs", "rows", "cols"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("target,n_step", [("hard", 1), ("hard", 3), ("soft_ent", 3)])
def test_eager_paths_agree_bit_for_bit_on_cpu(target, n_step):
    cfg = Config(**CARTPOLE_DQN_SMALL, backup=target, n_step=n_step)
    res = compare_update_paths(cfg, updates=25, fill_env_steps=300, target_every=10, modes=("off", "off", "on"))
    assert res["device"] == "cpu" and res["updates"] == 25
    assert res["loss_first"] > 0
    for r in res["results"]:
        assert r["cuda_graph"] is False  # on a CPU cuda_graph=on runs eagerly
        assert r["max_abs_param_diff"] == 0.0 and r["max_rel_loss_diff"] == 0.0
        assert r["greedy_action_mismatch"] == 0.0


def test_the_check_sees_a_path_that_froze_its_batch(monkeypatch):
    """A graph that baked in its first draws (trains on one batch forever) is caught, by orders of magnitude."""
    real, calls = graph_check._run, {"n": 0}

    def frozen_second_run(cfg, source, draws, steps, target_every):
        calls["n"] += 1
        return real(cfg, source, draws[:1].expand_as(draws) if calls["n"] == 2 else draws, steps, target_every)

    monkeypatch.setattr(graph_check, "_run", frozen_second_run)
    res = compare_update_paths(Config(**CARTPOLE_DQN_SMALL), updates=25, fill_env_steps=300, modes=("off", "off"))
    (r,) = res["results"]
    assert r["max_rel_loss_diff"] > 1e-2 and r["rel_param_diff"] > 1e-4


@pytest.mark.parametrize("target,precision", [("soft_ent", "fp32"), ("hard", "bf16")])
def test_atari_paths_agree_on_cpu(target, precision):
    cfg = Config(env="PongNoFrameskip-v4", num_envs=2, buffer_size=2000, frames=10**6, n_step=2, backup=target,
                 precision=precision)
    res = compare_update_paths(cfg, updates=3, fill_env_steps=100, modes=("off", "on"))
    assert res["results"][0]["max_abs_param_diff"] == 0.0


def test_bad_arguments_are_named():
    cfg = Config(**CARTPOLE_DQN_SMALL)
    with pytest.raises(ValueError, match="updates"):
        compare_update_paths(cfg, updates=0)
    with pytest.raises(ValueError, match="target_every"):
        compare_update_paths(cfg, target_every=0)
    with pytest.raises(ValueError, match="modes"):
        compare_update_paths(cfg, modes=("off",))
    with pytest.raises(ValueError, match="modes"):
        compare_update_paths(cfg, modes=("off", "graph"))


def test_bench_skips_the_graph_check_on_cpu_and_names_bad_figures(tmp_path):
    rec = run_bench(what=("graph",), out_dir=tmp_path, tag="t", device="cpu")
    assert rec["graph_check"].startswith("skipped: needs CUDA")
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["graph_check"] == rec["graph_check"] and saved["machine"]["cores"] >= 1
    older = {"cpu": "an older CPU", "cores": 2}
    saved.update(time_dqn="earlier", dqn="how", steps_per_second={"dqn_hard_n1_B8": 1.0}, machine_dqn=older,
                 seconds_each=9, time="then", machine=older, side_by_side=[{"old": "abc1234"}])
    (tmp_path / "t.json").write_text(json.dumps(saved))
    again = run_bench(what=("graph",), out_dir=tmp_path, tag="t", device="cpu")  # figures not measured are kept
    assert (again["time_dqn"], again["dqn"], again["steps_per_second"]) == ("earlier", "how", {"dqn_hard_n1_B8": 1.0})
    assert again["machine"] == again["machine_dqn"] == older and (again["time"], again["seconds_each"]) == ("then", 9)
    assert json.loads((tmp_path / "t.json").read_text())["side_by_side"] == [{"old": "abc1234"}]
    with pytest.raises(ValueError, match="what"):
        run_bench(what=("a2c", "speed"), out_dir=tmp_path, tag="t")


def test_bench_phases_time_each_phase_and_bound_the_overlap(tmp_path):
    rec = run_bench(what=("phases",), out_dir=tmp_path, tag="t", device="cpu", seconds=0.05, num_envs=2)
    p = rec["a2c_phases"]
    cores = p["cores"]
    assert set(p["ms_per_update"]) == {"threads_1", f"threads_{cores}"}
    for phases in p["ms_per_update"].values():
        assert set(phases) == {"env", "act", "update"} and all(v > 0 for v in phases.values())
    one, every = p["ms_per_update"]["threads_1"], p["ms_per_update"][f"threads_{cores}"]
    assert p["today_ms"] == pytest.approx(sum(every.values()))
    assert p["overlap_bound_ms"] == pytest.approx((one["env"] + one["act"]) / cores + every["update"])
    assert p["overlap_bound_speedup"] == pytest.approx(p["today_ms"] / p["overlap_bound_ms"])
    assert p["loop_ms"] > 0
    again = run_bench(what=("graph",), out_dir=tmp_path, tag="t", device="cpu")  # kept when not measured
    assert again["a2c_phases"] == p and p["machine"]["cores"] == cores
