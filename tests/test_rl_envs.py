"""softq.rl.parts.envs: one interface for Atari (the paper's protocol) and classic control; autoreset never crosses
games."""

import numpy as np
import pytest

from softq.rl.parts import envs
from softq.rl.parts.envs import atari_game, is_atari, make_env


def test_game_names_and_unknown_game():
    assert atari_game("PongNoFrameskip-v4") == "pong"
    assert atari_game("ALE/Pong-v5") == "pong"
    assert atari_game("MsPacman") == "ms_pacman"
    assert atari_game("BeamRiderNoFrameskip-v4") == "beam_rider"
    assert atari_game("qbert") == "qbert"
    assert not is_atari("CartPole-v1")
    with pytest.raises(ValueError, match="NotAGame"):
        make_env("NotAGameNoFrameskip-v4", 2)
    with pytest.raises(ValueError, match="num_envs"):
        make_env("CartPole-v1", 0)


def test_classic_forced_termination_is_masked():
    """A terminal step ends the episode; the next step is an autoreset step (reset=1, reward 0), not a transition."""
    env = make_env("CartPole-v1", 2)
    obs = env.reset(seed=0)
    assert obs.shape == (2, 4) and env.n_actions == 2
    out = env.step(np.array([0, 0]))
    assert not out.reset.any() and not out.terminal.any()
    env.venv.envs[0].unwrapped.state = np.array([0.0, 0.0, 0.25, 0.0])  # past the 12-degree limit: falls now
    out = env.step(np.array([1, 1]))
    assert out.terminal.tolist() == [True, False] and not out.reset.any()
    assert out.scores == [2.0] and out.lengths == [2]  # two real steps, unclipped score
    assert abs(out.obs[0, 2]) > 0.2  # the final observation of the game that ended
    out = env.step(np.array([1, 1]))
    assert out.reset.tolist() == [True, False]
    assert out.reward[0] == 0 and not out.terminal[0] and not out.truncated[0]
    assert abs(out.obs[0, 2]) < 0.05  # the first observation of the next game
    out = env.step(np.array([1, 1]))
    assert not out.reset.any()
    env.close()


def test_classic_time_limit_is_truncation_not_terminal():
    env = make_env("CartPole-v1", 1)
    env.reset(seed=0)
    inner = env.venv.envs[0]
    for _ in range(499):
        inner.unwrapped.state = np.zeros(4)  # keep the pole up
        out = env.step(np.array([0]))
        assert not out.terminal.any() and not out.truncated.any()
    inner.unwrapped.state = np.zeros(4)
    out = env.step(np.array([0]))
    assert out.truncated.tolist() == [True] and not out.terminal.any() and out.scores == [500.0]
    assert env.step(np.array([0])).reset.tolist() == [True]
    env.close()


def test_atari_life_loss_is_terminal_for_learning_not_for_scoring():
    """Breakout: losing a life ends a learning episode; a game over is scored and then autoreset. Either way the
    next step is a reset step (after a lost life: the forced step; after a game over: the autoreset step)."""
    env = make_env("BreakoutNoFrameskip-v4", 2, threads=1)
    obs = env.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8 and env.frames_per_step == 4
    rng = np.random.default_rng(0)
    life_losses = games = 0
    prev = None
    while games < 2:
        out = env.step(rng.integers(0, env.n_actions, 2))
        assert set(np.unique(out.reward)) <= {-1.0, 0.0, 1.0}
        if prev is not None:
            assert (out.reset == prev.terminal).all()
        ended = out.terminal & env._after_end  # terminal steps that also ended the game
        life_losses += int((out.terminal & ~ended).sum())
        games += len(out.scores)
        prev = out
    assert life_losses >= 4 * games  # 5 lives per game: 4 life-only terminals before each game over
    env.close()


def _record_raw_rewards(env):
    """Wrap ``env.venv.step`` so that the raw (unclipped) rewards of every step are kept in the returned list."""
    raws, step = [], env.venv.step

    def recording_step(actions):
        result = step(actions)
        raws.append(np.array(result[1], np.float64))
        return result

    env.venv.step = recording_step
    return raws


def test_breakout_fires_after_each_lost_life_and_starts_a_new_stack():
    """Random play in Breakout: every lost life (with lives left) is followed by exactly one reset step whose action
    is FIRE (baselines' FireResetEnv), with reward 0 and no terminal/truncated; that step's obs shows three zero
    frames and the newest (baselines' VecFrameStack zeroes at every done), and the zeros age out over the next steps
    (each non-reset obs is the previous one shifted by one frame). Scores are still the raw rewards of the whole game
    (forced steps included), lengths its steps; no two reset steps are adjacent; each obs is a fresh array."""
    env = make_env("BreakoutNoFrameskip-v4", 2, threads=1)
    fire = envs.minimal_action_set("breakout").index("FIRE")
    assert env.forced_action == fire == 1
    raws = _record_raw_rewards(env)
    prev_obs = env.reset(seed=3)
    assert not prev_obs[:, :3].any() and prev_obs[:, 3].reshape(2, -1).any(1).all()  # a game start, as ale-py shows
    rng = np.random.default_rng(3)
    prev_terminal = np.zeros(2, bool)
    prev_reset = np.zeros(2, bool)
    game_over = np.zeros(2, bool)  # the previous step ended the game
    game_raw, game_len = np.zeros(2), np.zeros(2, int)
    scores, lengths, want_scores, want_lengths = [], [], [], []
    forced = life_losses = 0
    while len(scores) < 3:
        out = env.step(rng.integers(0, env.n_actions, 2))
        raw = raws[-1]
        assert not (out.reset & prev_reset).any()  # never two non-transition steps in a row
        assert not np.shares_memory(out.obs, prev_obs)  # zeroing in place touches this step's array only
        lost = prev_terminal & ~game_over  # the previous step lost a life, the game went on
        assert (out.reset == (lost | game_over)).all()
        for i in np.flatnonzero(lost):
            forced += 1
            assert out.actions[i] == fire and out.reward[i] == 0 and not out.terminal[i] and not out.truncated[i]
        for i in range(2):
            assert out.obs[i, 3].any()  # the newest frame is the screen
            if out.reset[i]:
                assert not out.obs[i, :3].any()  # frames older than the new learning episode: zero
            else:
                assert (out.obs[i, :3] == prev_obs[i, 1:]).all()  # a stack: the zeros age out, one frame a step
        # the game's score and length: every step since its autoreset step, forced steps included
        game_raw = np.where(game_over, 0.0, game_raw + raw)
        game_len = np.where(game_over, 0, game_len + 1)
        ended = np.asarray(env._after_end)
        want_scores += game_raw[ended].tolist()
        want_lengths += game_len[ended].tolist()
        scores += out.scores
        lengths += out.lengths
        life_losses += int((out.terminal & ~ended).sum())
        prev_terminal, prev_reset, game_over, prev_obs = out.terminal, out.reset, ended, out.obs
    assert scores == want_scores and lengths == want_lengths
    assert forced == life_losses >= 4 * len(scores)
    env.close()


def test_a_noop_policy_does_not_stall_breakout_after_a_lost_life():
    """Breakout only serves the ball again after FIRE: with a NOOP-only policy the game used to stall after the first
    lost life (ale-py fires at the start of a game only). The forced FIRE serves it: all 5 lives go, the game ends."""
    env = make_env("Breakout", 1, threads=1)
    env.reset(seed=0)
    forced, scores = 0, []
    for _ in range(600):  # a stalled game would run 100,000 steps to the frame cap
        out = env.step(np.zeros(1, np.int64))
        forced += int(out.reset[0] and out.actions[0] == 1)
        scores += out.scores
        if scores:
            break
    assert len(scores) == 1 and forced == 4  # 4 lost lives with lives left, each followed by a forced FIRE
    env.close()


def test_forced_action_is_fire_if_the_game_has_it_else_noop():
    """The forced action's index is found in the minimal action set, whose order is AtariVectorEnv's
    (full_action_space=False) and gym's get_action_meanings()."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    for name, forced in (("Breakout", "FIRE"), ("MsPacman", "NOOP"), ("Pong", "FIRE")):
        env = make_env(name, 1, threads=1)
        names = envs.minimal_action_set(name)
        assert tuple(a.name for a in env.venv.ale.get_action_set()) == names and env.n_actions == len(names)
        assert names[env.forced_action] == forced and envs.protocol(env)["forced_action_after_life_loss"] == forced
        env.close()
        g = gym.make(f"{name}NoFrameskip-v4")
        assert tuple(g.unwrapped.get_action_meanings()) == names
        g.close()
    assert envs.minimal_action_set("breakout") == ("NOOP", "FIRE", "RIGHT", "LEFT")


def test_env_seeds_are_distinct_across_runs_and_starts():
    """No two (run seed, start, env) of a grid share an environment seed; all fit ale-py's C++ int seeds."""
    grid = [envs.env_seeds(seed, 16, start) for seed in range(10) for start in range(4)]
    flat = [s for seeds in grid for s in seeds]
    assert len(set(flat)) == len(flat) == 10 * 4 * 16
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in flat)
    assert envs.env_seeds(3, 16, 2) == grid[3 * 4 + 2]  # deterministic; a prefix for fewer envs
    assert envs.env_seeds(3, 4, 2) == grid[3 * 4 + 2][:4]
    top = envs.env_seeds(envs.ENV_SEED_RUNS - 1, envs.ENV_SEED_ENVS, envs.ENV_SEED_STARTS - 1)
    assert top[-1] == 2**31 - 1  # the documented bounds fill ALE's range exactly
    assert envs.env_seeds(2**31 - 2**16, 2, 0) == envs.env_seeds((2**31 - 2**16) % envs.ENV_SEED_RUNS, 2, 0)
    for kwargs, bad in (({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"num_envs": 0}, "num_envs"),
                        ({"num_envs": 1025}, "num_envs"), ({"start": 128}, "start"), ({"start": -1}, "start")):
        with pytest.raises(ValueError, match=bad):
            envs.env_seeds(**{"seed": 0, "num_envs": 2, "start": 0, **kwargs})


def test_reset_seeds_each_env_with_env_seeds():
    """reset(seed, start) hands env_seeds to the vector env: one seed per env (ale-py: an array, since an int would
    mean seed + i), and the start is kept for the next resume (state_dict)."""
    import gymnasium as gym

    env = make_env("CartPole-v1", 3)
    obs = env.reset(seed=5, start=2)
    want = np.stack([gym.make("CartPole-v1").reset(seed=s)[0] for s in envs.env_seeds(5, 3, 2)])
    assert np.array_equal(obs, want) and env.state_dict()["start"] == 2
    assert np.array_equal(env.reset(seed=5), np.stack([gym.make("CartPole-v1").reset(seed=s)[0]
                                                       for s in envs.env_seeds(5, 3)]))
    env.close()
    env = make_env("Breakout", 2, threads=1)
    calls, reset = [], env.venv.reset
    env.venv.reset = lambda **kw: calls.append(kw) or reset(**kw)
    env.reset(seed=1, start=3)
    assert isinstance(calls[0]["seed"], np.ndarray) and calls[0]["seed"].tolist() == envs.env_seeds(1, 2, 3)
    assert env.state_dict()["start"] == 3
    env.close()


def test_frame_cap_is_gym_2017s_and_a_cut_is_a_truncation():
    """The cap is NoFrameskip-v4's of 2017 (400,000 frames; 300,000 for SpaceInvaders), counted in frames of agent
    steps: with a cap of 200 frames a NOOP game is cut at step 50, as ``truncated``, scored, then autoreset. A life
    lost within ATARI_NOOP_MAX frames of the cap forces no step (the cut would land on the forced step)."""
    assert envs.ATARI_MAX_FRAMES == 400_000 and envs.atari_max_frames("PongNoFrameskip-v4") == 400_000
    assert envs.atari_max_frames("SpaceInvaders") == 300_000
    with pytest.raises(ValueError, match="max_frames"):
        make_env("Pong", 1, max_frames=0)
    env = make_env("Breakout", 1, threads=1)
    assert env.max_frames == 400_000 and env.venv is not None
    env.reset(seed=0)
    t_loss = next(t for t in range(1, 200) if env.step(np.zeros(1, np.int64)).terminal[0])
    env.close()
    for cap, forced in ((200, True), (4 * (t_loss + 1) + 28, False)):  # 28 <= ATARI_NOOP_MAX frames left: not forced
        env = make_env("Breakout", 1, threads=1, max_frames=cap)
        env.reset(seed=0)
        outs = [env.step(np.zeros(1, np.int64)) for _ in range(cap // 4 + 1)]
        assert outs[t_loss - 1].terminal[0] and outs[t_loss].reset[0] == forced  # step t_loss lost the first life
        assert [t + 1 for t, o in enumerate(outs) if o.truncated[0]] == [cap // 4]
        cut = outs[cap // 4 - 1]
        assert not cut.terminal[0] and cut.lengths == [cap // 4] and len(cut.scores) == 1
        assert outs[cap // 4].reset[0]  # the autoreset step
        env.close()


def test_ale_starts_are_as_documented():
    """ale-py 0.12.1's start (PreprocessedEnv::reset, noop_max=30): in games with FIRE one FIRE frame and 0..28
    no-op frames, else 0..29 no-op frames; the episode frame number after a reset counts them."""
    for name, lo, hi in (("breakout", 1, 29), ("ms_pacman", 0, 29)):
        env = make_env(name, 2, threads=1)
        env.reset(seed=0)
        frames = np.concatenate([env.venv.reset()[1]["episode_frame_number"] for _ in range(20)])
        assert lo <= frames.min() and frames.max() <= hi and len(np.unique(frames)) > 15
        env.close()


def test_protocol_is_json_ready():
    import json

    env = make_env("Breakout", 1, threads=1)
    facts = json.loads(json.dumps(envs.protocol(env)))
    assert facts["frame_skip"] == 4 and facts["sticky_actions"] == 0 and facts["frame_cap"] == 400_000
    assert facts["forced_action_after_life_loss"] == "FIRE" and facts["stack_boundary_at_life_loss"] is True
    assert facts["game"] == "breakout" and facts["backend"] == "ale"
    env.close()
    env = make_env("CartPole-v1", 1)
    assert json.loads(json.dumps(envs.protocol(env)))["env"] == "CartPole-v1"
    env.close()


def test_atari_scores_are_unclipped_rewards_are_clipped():
    env = make_env("SpaceInvaders", 2, threads=1)
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    clipped = np.zeros(2)
    scores = []
    while not scores:
        out = env.step(rng.integers(0, env.n_actions, 2))
        clipped += out.reward
        assert set(np.unique(out.reward)) <= {0.0, 1.0}
        scores += out.scores
    assert scores[0] > clipped.max()  # space invaders pays 5-30 points per alien; learning sees 1
    assert scores[0] % 5 == 0
    env.close()


def test_ale_threads_default_to_the_cores_this_process_may_use(monkeypatch):
    """``threads=0`` gives ale-py min(num_envs, softq.config.cores()) workers: the affinity mask, not the machine."""
    import ale_py.vector_env

    from softq import config

    seen = {}
    real = ale_py.vector_env.AtariVectorEnv

    def spy(*args, **kwargs):
        seen["threads"] = kwargs["num_threads"]
        return real(*args, **kwargs)

    monkeypatch.setattr(ale_py.vector_env, "AtariVectorEnv", spy)
    monkeypatch.setattr(config, "cores", lambda: 1)
    env = make_env("PongNoFrameskip-v4", 3)
    env.close()
    assert seen["threads"] == 1
