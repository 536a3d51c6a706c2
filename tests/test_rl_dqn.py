"""softq.rl.agents.dqn and softq.rl.parts.replay: the targets of eqs (81)-(83) are softq's functions; the frame replay
rebuilds
exactly the stacks the agent saw, never crosses an episode and never samples an incomplete window; resume; learning."""

import csv
import json
import math
import time

import numpy as np
import pytest
import torch

import softq.regularized as reg
import softq.rl.agents.dqn
from softq.rl.__main__ import main
from softq.rl.agents.dqn import BACKUPS, DQN, Config, bootstrap_index
from softq.rl.experiments.folder import computed_rows
from softq.rl.experiments.loop import train
from softq.rl.parts.envs import make_env
from softq.rl.parts.replay import FIRST, RESET, FrameReplay

ATARI = {"num_envs": 2, "buffer_size": 600, "batch_size": 8, "learning_starts": 100, "target_update": 100,
         "device": "cpu", "torch_threads": 1, "env_threads": 1}
CARTPOLE_DQN = {"env": "CartPole-v1", "num_envs": 4, "buffer_size": 20_000, "learning_starts": 1000, "batch_size": 64,
            "lr": 1e-3, "train_frequency": 2, "target_update": 500, "exploration_fraction": 0.2, "eps_end": 0.02,
            "device": "cpu", "torch_threads": 1}


# --- the targets ------------------------------------------------------------------------------------------------


def _q(seed, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.1, 0.01, 1e-3])
def test_one_step_targets_are_eqs_81_to_83_corrected(tau):
    q, r = _q(0, 5, 6), _q(1, 5)
    done = torch.tensor([0, 1, 0, 0, 1], dtype=torch.bool)
    gamma = 0.99
    want = {
        "hard": q.max(-1).values,  # eq (81)
        "soft_kl": tau * torch.logsumexp(q / tau, -1) - tau * math.log(6),  # eq (82), corrected
        "soft_ent": tau * torch.logsumexp(q / tau, -1),  # eq (83), corrected
    }
    for backup in BACKUPS:
        v = reg.backup_value(q, tau, backup)
        torch.testing.assert_close(v, want[backup])
        y = reg.q_learning_target(r[None], q[None], done[None], None, gamma, tau, backup)
        torch.testing.assert_close(y, r + gamma * (~done) * want[backup])
    torch.testing.assert_close(reg.backup_value(q, tau, "soft_kl"), reg.soft_value(q, tau))
    typed_82 = r + gamma * torch.logsumexp(q / tau, -1) - math.log(6)  # as printed: no tau, -log|A| undiscounted
    assert not torch.allclose(typed_82, r + gamma * want["soft_kl"])


def test_backup_value_is_the_policy_value_of_the_boltzmann_policy():
    """V = E_pi[Q] - tau k(s) at pi = pi^B_Q (eq 31); hard is the tau -> 0 limit."""
    q, tau = _q(2, 4, 5), 0.3
    pi = reg.boltzmann_policy(q, tau)
    for backup in ("soft_kl", "soft_ent"):
        want = (pi * q).sum(-1) - tau * reg.backup_penalty(q, tau, backup)
        torch.testing.assert_close(reg.backup_value(q, tau, backup), want)
    torch.testing.assert_close(reg.backup_value(q, tau, "soft_kl"), reg.policy_value(q, pi, tau))
    torch.testing.assert_close(reg.backup_value(q, 1e-4, "soft_kl"), q.max(-1).values, atol=1e-3, rtol=0)
    assert torch.equal(reg.backup_penalty(q, tau, "hard"), torch.zeros(4, dtype=q.dtype))


def test_targets_are_finite_at_tiny_tau_and_huge_q():
    q = _q(3, 3, 4, 18, scale=1e4)
    r, done = _q(4, 3, 4), torch.zeros(3, 4, dtype=torch.bool)
    for backup in BACKUPS:
        y = reg.q_learning_target(r, q, done, done, 0.99, 1e-3, backup)
        assert torch.isfinite(y).all() and y.shape == (4,)
        assert torch.isfinite(reg.backup_penalty(q, 1e-3, backup)).all()
        assert torch.isfinite(reg.q_learning_target(r.float(), q.float(), done, None, 0.99, 1e-3, backup)).all()


def _slow_target(r, q, term, trunc, gamma, tau, backup):
    """The docstring's formula, one sample, one step at a time."""
    y, disc = 0.0, 1.0
    for d in range(len(r)):
        y += disc * r[d]
        if d > 0:
            y -= disc * tau * float(reg.backup_penalty(q[d - 1], tau, backup))
        disc *= gamma
        if term[d]:
            return y
        if trunc[d] or d == len(r) - 1:
            return y + disc * float(reg.backup_value(q[d], tau, backup))
    raise AssertionError


@pytest.mark.parametrize("backup", BACKUPS)
def test_n_step_targets_stop_at_episode_ends(backup):
    n, batch, tau, gamma = 5, 6, 0.1, 0.9
    r, q = _q(5, n, batch), _q(6, n, batch, 3)
    term = torch.zeros(n, batch, dtype=torch.bool)
    trunc = torch.zeros(n, batch, dtype=torch.bool)
    term[0, 1] = term[1, 2] = term[4, 3] = True  # a life lost / game over on step t, t+1, t+4
    trunc[1, 4] = trunc[0, 5] = True  # time-limit cuts: bootstrap from the state after the cut
    y = reg.q_learning_target(r, q, term, trunc, gamma, tau, backup)
    for b in range(batch):
        want = _slow_target(r[:, b].tolist(), q[:, b], term[:, b], trunc[:, b], gamma, tau, backup)
        assert abs(float(y[b]) - want) < 1e-9, (b, float(y[b]), want)
    assert abs(float(y[1]) - float(r[0, 1])) < 1e-12  # terminal on the first step: y = r_t
    if backup == "hard":  # standard n-step DQN: rewards only, then max Q
        want = sum(gamma**d * r[d, 0] for d in range(n)) + gamma**n * q[-1, 0].max()
        assert abs(float(y[0]) - float(want)) < 1e-9


def _random_windows(seed, n, batch, n_actions=6):
    """Rewards, Q of the next states and episode ends inside n-step windows: terminals, cuts, both, several."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(n, batch, generator=gen)
    q = torch.randn(n, batch, n_actions, generator=gen)
    term = torch.rand(n, batch, generator=gen) < 0.15
    trunc = torch.rand(n, batch, generator=gen) < 0.15
    return r, q, term, trunc


@pytest.mark.parametrize("n", [1, 2, 5])
def test_hard_target_from_its_bootstrap_state_alone_is_the_full_target(n):
    """Task: the hard n-step target reads Qbar at one next state per window (bootstrap_index); with only those
    entries of q_next kept (the others 0) q_learning_target gives exactly the target of every state evaluated."""
    r, q, term, trunc = _random_windows(n, n, 512)
    term[:, :4], trunc[:, :4] = False, False  # windows without an end ...
    if n > 1:
        term[0, 4] = trunc[1, 4] = True  # ... a terminal then a cut, a cut then a terminal, a cut at the last step
        trunc[0, 5] = term[1, 5] = True
        trunc[:, 6], term[:, 6] = False, False
        trunc[n - 1, 6] = True
    m = bootstrap_index(term, trunc)
    for b in range(r.shape[1]):
        ends = [d for d in range(n) if term[d, b] or trunc[d, b]]
        assert int(m[b]) == (ends[0] if ends else n - 1)
    cols = torch.arange(r.shape[1])
    sparse = torch.zeros_like(q)
    sparse[m, cols] = q[m, cols]
    for gamma in (0.99, 0.9):
        full = reg.q_learning_target(r, q, term, trunc, gamma, 0.1, "hard")
        assert torch.equal(reg.q_learning_target(r, sparse, term, trunc, gamma, 0.1, "hard"), full)
    assert (term.any(0) & trunc.any(0)).any() and not (term | trunc).any(0).all()  # the cases were exercised


def _old_target(agent, batch):
    """DQN.target before bootstrap_index: the target network on all n*N next states (the code this replaced)."""
    n, size = batch.rewards.shape
    with torch.no_grad():
        q_next = agent.q_values(agent.target_net, batch.next_obs.reshape(n * size, *batch.next_obs.shape[2:]))
    return reg.q_learning_target(batch.rewards, q_next.view(n, size, -1), batch.terminal, batch.truncated,
                                 agent.cfg.gamma, agent.cfg.tau, "hard")


@pytest.mark.parametrize("env", ["BreakoutNoFrameskip-v4", "CartPole-v1"])
def test_hard_n_step_target_of_a_replay_batch_is_unchanged(env):
    """On real replay batches (Breakout: lost lives inside the windows; CartPole: game ends), the hard 5-step
    target from the bootstrap states alone equals the one from all next states."""
    where = {**ATARI, "buffer_size": 4000} if env != "CartPole-v1" else {"num_envs": 4, "device": "cpu"}
    cfg = Config(env=env, backup="hard", n_step=5, frames=10**6, **{**where, "learning_starts": 10**9})
    agent = DQN(cfg)
    while agent.env_steps < 1200:
        agent.step()
    agent.env.close()
    for seed in range(3):
        batch = agent.replay.sample(128, torch.Generator().manual_seed(seed))
        assert batch.terminal.any()
        with torch.no_grad():
            new = agent.target(batch)
        old = _old_target(agent, batch)
        # the same target up to the network's float rounding on a batch of N states instead of n*N
        torch.testing.assert_close(new, old, rtol=1e-6, atol=1e-6)
        m = bootstrap_index(batch.terminal, batch.truncated)
        sparse = torch.zeros((5, 128, agent.env.n_actions))
        with torch.no_grad():
            q_all = agent.q_values(agent.target_net, batch.next_obs.reshape(5 * 128, *batch.next_obs.shape[2:]))
        cols = torch.arange(128)
        sparse[m, cols] = q_all.view(5, 128, -1)[m, cols]
        want = reg.q_learning_target(batch.rewards, sparse, batch.terminal, batch.truncated, cfg.gamma, cfg.tau,
                                     "hard")
        assert torch.equal(want, old)  # exactly: only the bootstrap entries matter


@pytest.mark.parametrize("backup, n_step", [("hard", 1), ("soft_ent", 1), ("soft_kl", 5), ("hard", 5)])
def test_logged_target_entropy_and_action_gap_are_those_of_the_update_batch(backup, n_step):
    """The columns target_entropy and action_gap of a gradient step: the entropy of softmax(Qbar(s', .) / tau) at
    each target's bootstrap state, and the online network's best minus second-best Q(s_t, .) before the step, each
    averaged over the step's batch, recomputed here from the same batch and the same weights."""
    cfg = Config(backup=backup, n_step=n_step, tau=0.3, frames=10**6, **{**CARTPOLE_DQN, "learning_starts": 200})
    agent = DQN(cfg)
    while agent.grad_steps < 3:
        agent.step()
    agent.env.close()
    gen_state, net_before = agent.gen.get_state(), {k: v.clone() for k, v in agent.net.state_dict().items()}
    agent.update()
    stats = dict(zip(agent.STAT_NAMES, agent._stats.tolist(), strict=True))
    assert set(softq.rl.agents.dqn.COLUMNS) >= set(agent.STAT_NAMES)
    batch = agent.replay.sample(cfg.batch_size, torch.Generator().set_state(gen_state))
    online = softq.rl.agents.dqn.make_q_net(agent.env.obs_shape, agent.env.n_actions, cfg.hidden)
    online.load_state_dict(net_before)
    with torch.no_grad():
        q_next = agent.target_net(batch.next_obs.reshape(-1, *batch.next_obs.shape[2:])).view(n_step, 64, -1)
        m = bootstrap_index(batch.terminal, batch.truncated)
        pi = torch.softmax(q_next[m, torch.arange(64)] / 0.3, dim=-1)
        want_entropy = float(-(pi * pi.log()).sum(-1).mean())
        q = online(batch.obs).sort(dim=-1, descending=True).values
        want_gap = float((q[:, 0] - q[:, 1]).mean())
    assert stats["target_entropy"] == pytest.approx(want_entropy, rel=1e-5)
    assert 0 <= stats["target_entropy"] <= math.log(agent.env.n_actions)
    assert stats["action_gap"] == pytest.approx(want_gap, rel=1e-5) and stats["action_gap"] >= 0


def test_value_checks_can_be_turned_off_and_compute_the_same():
    bad = torch.tensor([0.7, 0.7])
    with pytest.raises(ValueError, match="sum to 1"):
        reg.kl(bad)
    with reg.value_checks(False):
        reg.kl(bad)
        with pytest.raises(ValueError, match="tau"):
            reg.soft_value(bad, 0.0)  # argument checks stay on
    with pytest.raises(ValueError, match="sum to 1"):
        reg.kl(bad)
    with pytest.raises(ValueError, match="backup"):
        reg.backup_value(bad, 0.1, "soft")


# --- the replay -------------------------------------------------------------------------------------------------


def test_replay_accounting_one_million_atari_transitions_fit_in_8_gb():
    rb = FrameReplay(1_000_000, 8, (4, 84, 84), 5, device="meta")
    per = rb.bytes_per_transition()
    arrays = rb.frames.numel() + rb.actions.numel() + 4 * rb.rewards.numel() + rb.flags.numel()
    assert rb.capacity == 1_000_000 and rb.nbytes() == arrays
    assert per == 84 * 84 + 1 + 4 + 1 == 7062  # one frame, not a stack of 4 (nor a pair of stacks)
    assert rb.nbytes() <= 8e9


def _fake_steps(rb, script, num_envs=1):
    """Write a scripted sequence; frame of x_k has every pixel = k + 1 (x_0 = 1), so stacks are readable."""
    obs = np.ones((num_envs, *rb.obs_shape), np.uint8)
    rb.start(obs)
    for k, (term, trunc, reset) in enumerate(script):
        nxt = np.full((num_envs, *rb.obs_shape), k + 2, np.uint8)
        one = np.ones(num_envs)
        rb.add(np.zeros(num_envs, int), (k + 1) * one, term * one, trunc * one, reset * one, nxt)


def test_sampling_respects_episode_boundaries_and_incomplete_windows():
    rb = FrameReplay(64, 1, (4, 1, 1), 3)
    # step 4 ends a game (terminal), step 5 is its autoreset step; step 9 is a time-limit cut, 10 its autoreset
    script = [(0, 0, 0)] * 20
    script[4], script[5], script[9], script[10] = (1, 0, 0), (0, 0, 1), (0, 1, 0), (0, 0, 1)
    _fake_steps(rb, script)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        b = rb.sample(16, gen)
        for i, k in enumerate(b.rows.tolist()):
            seen.add(k)
            assert k not in (5, 10) and 0 <= k <= rb.steps - rb.n_step - 1  # no reset row, window complete
            stack = b.obs[i, :, 0, 0].tolist()  # frames of x_{k-3..k}, values k-2..k+1, zeros before a game start
            first = max([0] + [j for j in (6, 11) if j <= k])
            assert stack == [v + 1 if v >= first else 0 for v in range(k - 3, k + 1)], (k, stack)
            for d in range(3):  # next states, same rule
                s = k + d + 1
                first = max([0] + [j for j in (6, 11) if j <= s])
                assert b.next_obs[d, i, :, 0, 0].tolist() == [v + 1 if v >= first else 0 for v in range(s - 3, s + 1)]
            assert b.rewards[:, i].tolist() == [k + 1, k + 2, k + 3]
            assert b.terminal[:, i].tolist() == [k + d == 4 for d in range(3)]
            assert b.truncated[:, i].tolist() == [k + d == 9 for d in range(3)]
    assert seen == set(range(0, 17)) - {5, 10}


def test_sampling_after_wrap_around_never_reads_overwritten_frames():
    rb = FrameReplay(12, 1, (4, 1, 1), 2)
    _fake_steps(rb, [(0, 0, 0)] * 30)  # T = 30 steps in a ring of 12 rows: rows 19..30 are kept
    b = rb.sample(64, torch.Generator().manual_seed(1))
    rows = b.rows.tolist()
    assert min(rows) >= 30 - 12 + 4 and max(rows) <= 30 - 2 - 1
    for i, k in enumerate(rows):
        assert b.obs[i, :, 0, 0].tolist() == [k - 2, k - 1, k, k + 1]


def test_fallback_moves_an_autoreset_pick_to_the_next_game():
    rb = FrameReplay(64, 1, (4, 1, 1), 1)
    _fake_steps(rb, [(1, 0, 0), (0, 0, 1)] * 10)  # every other row is an autoreset row
    b = rb.sample(40, torch.Generator().manual_seed(2))  # 80 candidates, ~40 valid: some fall back
    flags = rb.flags[b.rows % rb.rows, b.cols]
    assert not ((flags & RESET) != 0).any()


def test_rebuilt_stacks_equal_what_the_agent_saw_across_lives_and_games():
    """Breakout, random play: every stack rebuilt from the frame ring equals the env's own 4-frame stack, after
    lost lives (the env's forced step after each, a reset step, starts a new stack) and after game overs (zeros
    before the first frame, as ale-py does)."""
    env = make_env("BreakoutNoFrameskip-v4", 2, threads=1)
    rb = FrameReplay(4000, 2, env.obs_shape, 5)
    obs = env.reset(seed=0)
    rb.start(obs)
    seen = [obs]
    rng = np.random.default_rng(0)
    terminals = resets = games = 0
    while games < 2:
        out = env.step(rng.integers(0, env.n_actions, 2))
        rb.add(rng.integers(0, 4, 2), out.reward, out.terminal, out.truncated, out.reset, out.obs)
        seen.append(out.obs)
        terminals += int(out.terminal.sum())
        resets += int(out.reset.sum())
        games += len(out.scores)
    env.close()
    assert terminals >= 6 and resets >= 6  # lives lost, not only games
    assert rb.steps < rb.rows - 4  # nothing overwritten
    t = rb.steps
    rows = torch.arange(-3, t + 1)[None, :].expand(2, -1)
    got = rb.stacks(rows, torch.tensor([[0], [1]]).expand_as(rows))  # [2, t+1, 4, 84, 84]
    want = torch.from_numpy(np.stack(seen, axis=1))
    assert torch.equal(got, want)
    b = rb.sample(32, torch.Generator().manual_seed(0))
    for i in range(32):
        k, c = int(b.rows[i]), int(b.cols[i])
        assert torch.equal(b.obs[i], want[c, k]) and torch.equal(b.next_obs[-1, i], want[c, k + 5])


def test_a_restored_replay_continues_exactly_like_the_original():
    """add() keeps the FIRST bit of the newest row on the host: after load_state_dict it must come from the saved
    flags, so that both replays write the same rows from then on (a reset as the last step before the save)."""
    a, b = FrameReplay(64, 2, (4, 1, 1), 3), FrameReplay(64, 2, (4, 1, 1), 3)
    _fake_steps(a, [(0, 0, 0)] * 5 + [(1, 0, 0), (0, 0, 1)], num_envs=2)
    assert (a.flags[a.steps % a.rows] & FIRST).all()
    _fake_steps(b, [(0, 0, 0)] * 3, num_envs=2)
    b.load_state_dict(a.state_dict())
    for rb in (a, b):
        rb.add(np.array([1, 2]), np.array([0.5, -1.0]), np.zeros(2), np.array([0, 1]), np.zeros(2),
               np.full((2, 4, 1, 1), 99, np.uint8))
    for name in ("frames", "actions", "rewards", "flags"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    row = (a.steps - 1) % a.rows
    assert a.flags[row].tolist() == [FIRST, FIRST | 2] and a.actions[row].tolist() == [1, 2]
    assert a.rewards[row].tolist() == [0.5, -1.0] and a.frames[a.steps % a.rows].eq(99).all()


# --- the agent --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backup", "n_step"), [("hard", 1), ("soft_kl", 5), ("soft_ent", 1), ("soft_ent", 5)])
def test_each_backup_trains_on_atari_with_softq_targets(backup, n_step, monkeypatch):
    calls = {}
    for name in ("q_learning_target", "soft_value", "n_step_soft_return"):
        fn = getattr(reg, name)

        def wrapped(*a, _fn=fn, _name=name, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(*a, **k)

        monkeypatch.setattr(reg, name, wrapped)
    cfg = Config(backup=backup, n_step=n_step, tau=0.1, frames=4 * 2 * 150, **ATARI)
    agent = DQN(cfg)
    before = [p.detach().clone() for p in agent.net.parameters()]
    while agent.updates < agent.total_updates:
        stats = agent.step()
    agent.env.close()
    assert agent.grad_steps == (2 * 150 - 100) // 4  # one batch per 4 env steps after learning_starts
    assert calls["q_learning_target"] == agent.grad_steps == calls["n_step_soft_return"]
    assert calls.get("soft_value", 0) == (0 if backup == "hard" else agent.grad_steps)
    assert all(math.isfinite(stats[k]) for k in ("loss", "q_mean", "target_mean", "grad_norm"))
    assert any(not torch.equal(p, q) for p, q in zip(before, agent.net.parameters(), strict=True))
    assert agent.info["replay_bytes_per_transition"] == 7062


def test_bad_dqn_configs_are_rejected_by_name():
    for field, value in [("backup", "soft"), ("tau", 0.0), ("n_step", 0), ("gamma", 2.0), ("loss", "l1"),
                         ("cuda_graph", "yes"), ("eps_end", -0.1), ("buffer_size", 10), ("algo", "a2c"),
                         ("schedule_frames", -2), ("schedule_frames", 1.5), ("precision", "fp16")]:
        with pytest.raises(ValueError, match=field):
            Config(env="CartPole-v1", **{field: value})
    assert Config(backup="soft_kl", tau=0.01, n_step=5).rule == "soft_kl_tau0.01_n5"
    assert Config(backup="hard", tau=0.01).rule == "hard"


def test_a_run_recorded_under_the_old_name_target_reads_as_backup(tmp_path):
    """config.json of runs recorded before the rename says "target": read (from_dict, a folder's record, a resume's
    comparison) under today's name, and the old option --target still parses (a recorded command replays)."""
    from softq.rl.agents.base import variant_name
    from softq.rl.experiments.folder import RunFolder
    from softq.rl.experiments.loop import config_diff

    cfg = Config(env="CartPole-v1", backup="soft_kl", tau=0.01)
    old = {("target" if k == "backup" else k): v for k, v in cfg.as_dict().items()}
    assert list(old).index("target") == list(cfg.as_dict()).index("backup")
    assert Config.from_dict(old) == cfg and config_diff(old, cfg) == {}
    (tmp_path / "config.json").write_text(json.dumps({"config": old}))
    assert RunFolder(tmp_path).record()["config"] == cfg.as_dict()
    assert variant_name("soft_kl", 0.01, 5) == cfg.rule + "_n5"
    with pytest.raises(ValueError, match="backup"):
        variant_name("soft", 0.1, 1)




def test_cartpole_pause_and_resume_equals_uninterrupted(tmp_path):
    """The replay is small: it is saved, and a paused + resumed CPU run is bit-identical to an uninterrupted one."""
    cfg = Config(backup="soft_ent", tau=0.1, n_step=3, frames=3000, log_every=50,
                 **{**CARTPOLE_DQN, "learning_starts": 500})
    assert train(cfg, tmp_path / "whole", progress=False)["status"] == "done"
    paused = Config(**{**cfg.as_dict(), "checkpoint_every": 300, "time_limit_minutes": 1e-6})
    assert train(paused, tmp_path / "cut", progress=False)["status"] == "paused"
    assert train(cfg, tmp_path / "cut", resume=True, progress=False)["status"] == "done"
    assert computed_rows(tmp_path / "cut" / "progress.csv") == computed_rows(tmp_path / "whole" / "progress.csv")
    w1 = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["agent"]
    w2 = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["agent"]
    assert all(torch.equal(w1["net"][k], w2["net"][k]) for k in w1["net"])
    assert w1["replay"] is not None and w1["counters"]["grad_steps"] > 0
    starts = json.loads((tmp_path / "cut" / "config.json").read_text())["starts"]
    assert [s.get("replay_restored") for s in starts] == [None, True]


def test_atari_resume_refills_the_replay_and_says_so(tmp_path):
    cfg = Config(backup="hard", frames=4 * 2 * 120, log_every=10, checkpoint_replay_mb=0.0,
                 time_limit_minutes=1e-6, **ATARI)
    assert train(cfg, tmp_path, progress=False)["status"] == "paused"
    cfg = Config(**{**cfg.as_dict(), "time_limit_minutes": 0.0})
    agent_steps = []
    real_update = DQN.update

    def spy(self):
        agent_steps.append(self.env_steps)
        real_update(self)

    DQN.update = spy
    try:
        assert train(cfg, tmp_path, resume=True, progress=False)["status"] == "done"
    finally:
        DQN.update = real_update
    starts = json.loads((tmp_path / "config.json").read_text())["starts"]
    assert starts[1]["envs_restored"] is False and starts[1]["replay_restored"] is False
    assert starts[1]["replay_refill_env_steps"] == 100
    assert min(agent_steps) > 2 + 100  # resumed after one vector step: training waits for 100 fresh env steps


def test_nan_loss_stops_the_run(tmp_path, poison):
    poison(softq.rl.agents.dqn, "dqn_loss", 30)
    cfg = Config(backup="soft_kl", frames=2000, log_every=10, checkpoint_every=20,
                 **{**CARTPOLE_DQN, "learning_starts": 100, "batch_size": 8})
    with pytest.raises(softq.rl.agents.a2c.NonFiniteLoss, match="gradient step <= 30"):
        train(cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "failed"
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["agent"]
    assert state["counters"]["grad_steps"] < 30 and all(torch.isfinite(v).all() for v in state["net"].values())


def test_cli_runs_dqn_variants_in_one_layout(tmp_path, capsys):
    args = ["train", "--algo", "dqn", "--env", "CartPole-v1", "--frames", "400", "--num-envs", "2",
            "--learning-starts", "100", "--batch-size", "8", "--buffer-size", "1000", "--log-every", "20",
            "--torch-threads", "1", "--no-progress", "--results", str(tmp_path), "--experiment", "demo"]
    assert main([*args, "--backups", "hard,soft_ent", "--taus", "0.1,0.01", "--n-steps", "1,5"]) == 0
    runs = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.glob("demo/*/seed0/status.json"))
    assert runs == ["demo/hard/seed0", "demo/hard_n5/seed0", "demo/soft_ent_tau0.01/seed0",
                    "demo/soft_ent_tau0.01_n5/seed0", "demo/soft_ent_tau0.1/seed0", "demo/soft_ent_tau0.1_n5/seed0"]
    with open(tmp_path / "demo" / "soft_ent_tau0.1_n5" / "seed0" / "progress.csv") as f:
        assert tuple(next(csv.reader(f))) == softq.rl.agents.dqn.COLUMNS
    for bad, name in [(["--backup", "soft"], "backup"), (["--target", "soft"], "backup"),
                      (["--rules", "naive"], "rules"), (["--algo", "ppo"], "algo"),
                      (["--backup", "hard", "--targets", "hard"], "--targets")]:
        with pytest.raises(SystemExit):
            main([*args, *bad])
        assert name in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--targets", "hard"])  # a DQN option without --algo dqn
    assert "DQN" in capsys.readouterr().err


def test_cartpole_soft_ent_learns(tmp_path):
    """A short CartPole run of soft_ent (tau 0.1) clearly learns (random play scores ~22)."""
    cfg = Config(backup="soft_ent", tau=0.1, frames=25_000, log_every=500, **CARTPOLE_DQN)
    t0 = time.time()
    result = train(cfg, tmp_path, progress=False)
    print(f"soft_ent: mean score of the last 100 games {result['score_mean100']:.1f} in {time.time() - t0:.1f}s")
    assert result["score_mean100"] > 100


def test_a_checkpoint_from_a_cuda_graph_run_resumes_on_the_cpu():
    """A resume may change device and graphs: Adam's `capturable` and the replay's generator follow the new run."""
    cfg = Config(**{**CARTPOLE_DQN, "learning_starts": 40, "buffer_size": 2000})
    agent = DQN(cfg)
    for _ in range(20):
        agent.step()
    state = agent.state_dict()
    opt = state["opt"]  # as a CUDA-graph run saves them: capturable Adam, a CUDA generator's 16-byte state
    state["opt"] = {**opt, "param_groups": [{**g, "capturable": True} for g in opt["param_groups"]]}
    state["gen"], state["gen_device"] = torch.zeros(16, dtype=torch.uint8), "cuda"
    resumed = DQN(cfg)
    resumed.load_state_dict(state)
    assert all(g["capturable"] is False for g in resumed.opt.param_groups)
    assert resumed.info["replay_rng_restored"] is False
    for _ in range(5):
        resumed.step()
    assert resumed.grad_steps > agent.grad_steps and math.isfinite(resumed.step()["loss"])
    same = DQN(cfg)  # a CPU checkpoint on the CPU restores the generator
    same.load_state_dict(agent.state_dict())
    assert same.info["replay_rng_restored"] is True


# --- the exploration schedule -------------------------------------------------------------------------------------


def test_epsilon_follows_one_schedule_whatever_the_run_length():
    """A 1M-frame Atari run explores exactly as the first 1M frames of a 40M-frame one (the paper's Figure 2 budget):
    epsilon decays over 10% of 40M frames = 1M agent steps, CleanRL's dqn_atari schedule (10M steps, fraction 0.1)."""
    short, long = (DQN(Config(frames=f, **ATARI)) for f in (1_000_000, 40_000_000))
    for k in range(short.total_env_steps + 1):
        short.env_steps = long.env_steps = k
        assert short.epsilon() == long.epsilon(), k
    for agent in (short, long):
        agent.env.close()
        assert agent.cfg.horizon_frames == 40_000_000 and agent.info["epsilon_decay_env_steps"] == 1_000_000
    for k in (0, 250_000, 999_999, 1_000_000, 5_000_000):  # CleanRL's linear_schedule(1, 0.01, 1M steps, k)
        long.env_steps = k
        assert long.epsilon() == pytest.approx(max(0.01, 1 + (0.01 - 1) * k / 1_000_000), abs=1e-12)


def test_epsilon_horizon_choices():
    """-1 (default): 40M frames on Atari, the run's length on classic control; 0: the run's length; > 0: as given."""
    cartpole = DQN(Config(frames=25_000, **CARTPOLE_DQN))  # the chapter's CartPole settings: 20% of the run
    assert cartpole.cfg.horizon_frames == 25_000 and cartpole.epsilon_decay_env_steps == 5000
    cartpole.env_steps = 5000
    assert cartpole.epsilon() == pytest.approx(0.02, abs=1e-12)
    cartpole.env_steps = 2500
    assert cartpole.epsilon() == pytest.approx(1 - 0.98 / 2)
    assert Config(frames=25_000, schedule_frames=100_000, **CARTPOLE_DQN).horizon_frames == 100_000
    assert Config(frames=4000, schedule_frames=0, **ATARI).horizon_frames == 4000
    assert Config(frames=4000, schedule_frames=8000, **ATARI).horizon_frames == 8000
    own = DQN(Config(frames=4000, schedule_frames=0, **ATARI))  # Atari: 4 frames per step
    own.env.close()
    assert own.epsilon_decay_env_steps == 0.1 * 1000


# --- non-finite values ------------------------------------------------------------------------------------------


def test_a_non_finite_gradient_stops_the_run():
    """A finite loss with an infinite gradient (norm) is caught too, at the gradient step it happens."""
    agent = DQN(Config(**{**CARTPOLE_DQN, "learning_starts": 40, "train_frequency": 4}))  # one gradient step per step
    while agent.grad_steps < 4:
        agent.step()
    agent.net.head.bias.register_hook(lambda g: g * float("inf"))
    with pytest.raises(softq.rl.agents.a2c.NonFiniteLoss, match="gradient step <= 5"):
        agent.step()
    assert math.isfinite(agent._stats[0]) and not math.isfinite(agent._stats[3])  # the loss was finite


def test_without_per_step_checks_a_nan_is_caught_at_the_next_log_row(poison):
    """CUDA's mode (check_every_step False: no host-device sync per update): a NaN is found at the next log row,
    or by assert_finite (runs.train: before each checkpoint), which also checks the weights."""
    poison(softq.rl.agents.dqn, "dqn_loss", 4)
    agent = DQN(Config(**{**CARTPOLE_DQN, "learning_starts": 40, "log_every": 50}))
    agent.check_every_step = False
    while agent.grad_steps < 8:
        agent.step()  # the NaN of gradient step 4 is not read yet
    assert agent.updates < 50
    with pytest.raises(softq.rl.agents.a2c.NonFiniteLoss, match="loss or gradient at gradient step"):
        agent.assert_finite()
    with pytest.raises(softq.rl.agents.a2c.NonFiniteLoss, match="loss or gradient"):
        while True:
            agent.step()
    assert agent.updates == 50
    fresh = DQN(Config(**CARTPOLE_DQN))
    fresh.assert_finite()
    with torch.no_grad():
        fresh.target_net.head.weight[0, 0] = float("inf")
    with pytest.raises(softq.rl.agents.a2c.NonFiniteLoss, match="non-finite weights"):
        fresh.assert_finite()


# --- precision ----------------------------------------------------------------------------------------------------


def test_bf16_trains_with_float32_values_and_loss():
    """precision=bf16: the convolutions under bf16 autocast; Q values, targets and the loss are float32."""
    agent = DQN(Config(precision="bf16", n_step=3, backup="soft_ent", frames=4 * 2 * 150, **ATARI))
    obs = torch.as_tensor(agent.obs)
    with torch.no_grad():
        q = agent.q_values(agent.net, obs)
        q32 = agent.net(obs)
    assert q.dtype == torch.float32 and q.shape == (2, agent.env.n_actions)
    assert 0 < (q - q32).abs().max() < 0.05 * q32.abs().max()  # bf16 rounding, nothing more
    before = [p.detach().clone() for p in agent.net.parameters()]
    while agent.updates < agent.total_updates:
        stats = agent.step()
    agent.env.close()
    assert all(p.dtype == torch.float32 for p in agent.net.parameters())
    assert all(math.isfinite(stats[k]) for k in ("loss", "q_mean", "target_mean", "grad_norm"))
    assert any(not torch.equal(p, b) for p, b in zip(agent.net.parameters(), before, strict=True))
    agent.assert_finite()


def test_pong_cpu_preset_is_tianshous_schedule():
    """PONG_CPU (Tianshou's atari_dqn.py): epsilon 1 -> 0.05 over the first 1M env steps, then constant; one gradient
    step per 10 env steps; the target copied every 5000 env steps (500 gradient steps)."""
    from softq.rl.agents.dqn import PONG_CPU

    agent = DQN(Config(**{**ATARI, **PONG_CPU, "buffer_size": 600, "frames": 8_000_000}))  # a small replay here
    agent.env.close()
    assert agent.epsilon_decay_env_steps == 1_000_000
    for k, eps in ((0, 1.0), (500_000, 0.525), (1_000_000, 0.05), (1_500_000, 0.05)):
        agent.env_steps = k
        assert agent.epsilon() == pytest.approx(eps, abs=1e-12), k
    assert agent.replay.rows * agent.replay.num_envs == 600  # the replay has the size asked for


def test_cli_preset_sets_defaults_that_explicit_options_override(tmp_path, capsys):
    """``--preset pong-cpu`` makes PONG_CPU the defaults of the DQN options; an explicit option still wins; an
    unknown preset, or a preset for A2C, is a usage error naming --preset."""
    from softq.rl.__main__ import _parser
    from softq.rl.agents.dqn import PONG_CPU

    args = _parser("dqn", "pong-cpu").parse_args(["train", "--algo", "dqn", "--preset", "pong-cpu", "--num-envs", "4"])
    assert args.num_envs == 4
    assert {k: getattr(args, k) for k in PONG_CPU if k != "num_envs"} == {k: v for k, v in PONG_CPU.items()
                                                                         if k != "num_envs"}
    plain = _parser("dqn").parse_args(["train", "--algo", "dqn"])
    assert plain.preset == "cleanrl"
    assert (plain.buffer_size, plain.train_frequency) == (Config.buffer_size, Config.train_frequency)
    cmd = ["train", "--algo", "dqn", "--preset", "pong-cpu", "--env", "CartPole-v1", "--fill", "--dry-run",
           "--results", str(tmp_path), "--experiment", "demo"]
    assert main(cmd) == 0
    for bad in (["train", "--algo", "dqn", "--preset", "pong"], ["train", "--preset", "pong-cpu"]):
        with pytest.raises(SystemExit):
            main(bad)
        assert "--preset" in capsys.readouterr().err
