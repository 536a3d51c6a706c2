"""softq.rl.envs: one interface for Atari (the paper's protocol) and classic control; autoreset never crosses games."""

import numpy as np
import pytest

from softq.rl.envs import atari_game, is_atari, make_env


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
    """Breakout: losing a life ends a learning episode (no reset); a game over is scored and then autoreset."""
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
            # the step after a life loss is a real transition; the step after a game over is an autoreset step
            assert (out.reset == (prev.terminal & ~prev.life_only)).all()
        ended = out.terminal & (env._after_end)  # terminal steps that also ended the game
        out.life_only = out.terminal & ~ended
        life_losses += int(out.life_only.sum())
        games += len(out.scores)
        prev = out
    assert life_losses >= 4 * games  # 5 lives per game: 4 life-only terminals before each game over
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
