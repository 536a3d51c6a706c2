"""Environments for the paper's experiments (Section 6) behind one interface: Atari and small CPU problems.

:func:`make_env` returns a :class:`VecEnv`, ``B`` environments stepped together. Every backend is a gymnasium
vector env in ``NEXT_STEP`` autoreset mode, adapted so that the learner sees, per step,

- ``obs``: ``[B, *obs_shape]`` the observation after the step (uint8 ``[B, 4, 84, 84]`` for Atari, float32
  ``[B, d]`` for classic control). At a step that ends a game it is the game's *final* observation.
- ``reward``: ``[B]`` float32, the reward to learn from (``sign(r)``, i.e. clipped to {-1, 0, 1}, for Atari).
- ``terminal``: ``[B]`` bool, the *learning* episode ended on this step: a true termination, or (Atari) the loss of a
  life. Nothing is bootstrapped past it.
- ``truncated``: ``[B]`` bool, a time-limit cut (Atari: 108,000 frames; CartPole-v1: 500 steps). Not a terminal
  state: the learner bootstraps from the value of ``obs`` (the final observation).
- ``reset``: ``[B]`` bool, this step was an autoreset step. With ``NEXT_STEP`` autoreset the step *after* a finished
  game ignores its action and only resets that environment (reward 0, ``obs`` = the new game's first observation).
  It is **not a transition** and must carry no weight in any loss: ``reset[t]`` is the mask that guarantees that no
  transition crosses an episode boundary (``tests/test_rl_envs.py`` checks it).
- ``scores`` / ``lengths``: the *unclipped* game scores (and lengths in agent steps) of the full games -- all lives --
  that finished on this step: what the paper's figures report.

The Atari protocol is the paper's ("NoFrameskip-v4" with the DeepMind/baselines preprocessing of the time), through
ale-py's C++ ``AtariVectorEnv``: no sticky actions (``repeat_action_probability=0``), the minimal action set, 4-frame
skip with a max-pool over the last two frames, 84x84 grayscale, a stack of 4, up to 30 no-op starts, FIRE at reset for
games that need it, games cut at 108,000 frames. Options of ``AtariVectorEnv`` measured with ale-py 0.12.1 (see
the report in ``results/bench`` and ``tests/test_rl_envs.py``):

- ``reward_clipping=True`` clips *before* the reward reaches Python and reports no raw score anywhere (space_invaders
  gives only {0, 1}); so we pass ``reward_clipping=False`` and clip with ``np.sign`` here, keeping the raw score.
- ``episodic_life=True`` **resets the whole game** on each life loss (lives back to 5 in Breakout): wrong for scoring
  and not the baselines ``EpisodicLifeEnv``. ``life_loss_info=True`` signals ``terminated`` on a life loss but goes on
  playing, so terminations no longer tell a game over. We use neither: the adapter reads ``info["lives"]`` and marks
  ``terminal`` when the count drops (exactly baselines' ``EpisodicLifeEnv``), while the game itself only ends (and
  is scored) at a true game over. Difference from baselines: after a lost life the agent presses FIRE itself (ALE's
  ``use_fire_reset`` fires at the start of each game only).
- ``autoreset_mode=NEXT_STEP`` (the default): see ``reset`` above; it keeps the final observation, which the
  learner needs at a time-limit cut.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CLASSIC_ENVS", "StepOut", "VecEnv", "atari_game", "is_atari", "make_env"]

#: Small discrete-action problems from gymnasium's classic control suite (CPU, no images).
CLASSIC_ENVS = ("CartPole-v1", "CartPole-v0", "Acrobot-v1", "MountainCar-v0")
ATARI_FRAMESKIP = 4
ATARI_MAX_FRAMES = 108_000


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def atari_game(name: str) -> str:
    """The ale-py ROM id of ``name``: "PongNoFrameskip-v4", "ALE/Pong-v5", "Pong", "MsPacman" or "ms_pacman".

    Raises ValueError naming ``name`` if it is not an Atari game ale-py has a ROM for.
    """
    from ale_py import roms

    base = str(name).split("/")[-1]
    base = re.sub(r"(NoFrameskip|Deterministic)?-v\d+$", "", base)
    game = _snake(base) if not base.islower() else base
    if game not in roms.get_all_rom_ids():
        raise ValueError(
            f"env: unknown game {name!r} (neither a classic-control env {CLASSIC_ENVS} nor one of ale-py's "
            f"{len(roms.get_all_rom_ids())} Atari ROMs; e.g. 'PongNoFrameskip-v4', 'Breakout', 'ms_pacman')"
        )
    return game


def is_atari(name: str) -> bool:
    """True for an Atari game name, False for a classic-control env; ValueError (naming it) for anything else."""
    if name in CLASSIC_ENVS:
        return False
    atari_game(name)
    return True


@dataclass
class StepOut:
    """One vector step, as the learner sees it (shapes in the module docstring)."""

    obs: np.ndarray
    reward: np.ndarray
    terminal: np.ndarray
    truncated: np.ndarray
    reset: np.ndarray
    scores: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


class VecEnv:
    """Adapter around a gymnasium vector env in NEXT_STEP autoreset mode (the module docstring gives the contract).

    Args:
        venv: the vector env (ale-py ``AtariVectorEnv``, gymnasium ``SyncVectorEnv``/``AsyncVectorEnv``).
        name: the env's name as the user gave it.  atari: Atari protocol (sign-clipped rewards, life loss terminal).
        frames_per_step: emulator frames per agent step (4 for Atari, 1 otherwise): the paper counts frames.
        restorable: whether :meth:`state_dict` captures the env itself (classic control: yes; Atari: no).
    """

    def __init__(self, venv, *, name: str, atari: bool, frames_per_step: int, restorable: bool):
        self.venv = venv
        self.name = name
        self.atari = atari
        self.frames_per_step = frames_per_step
        self.restorable = restorable
        self.num_envs = int(venv.num_envs)
        self.obs_shape = tuple(venv.single_observation_space.shape)
        self.obs_dtype = venv.single_observation_space.dtype
        self.n_actions = int(venv.single_action_space.n)
        b = self.num_envs
        self._after_end = np.zeros(b, bool)  # the previous step ended a game: this step is an autoreset step
        self._lives = np.zeros(b, np.int64)
        self._score = np.zeros(b, np.float64)
        self._length = np.zeros(b, np.int64)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every environment (env i gets seed ``seed + i``); returns ``obs: [B, *obs_shape]``."""
        obs, info = self.venv.reset(seed=seed)
        self._after_end[:] = False
        self._lives[:] = self._info_lives(info)
        self._score[:] = 0
        self._length[:] = 0
        return obs

    def _info_lives(self, info: dict[str, Any]) -> np.ndarray:
        lives = info.get("lives")
        return np.zeros(self.num_envs, np.int64) if lives is None else np.asarray(lives, np.int64)

    def step(self, actions: np.ndarray) -> StepOut:
        """Step every environment with ``actions: [B]`` (ints in [0, n_actions)); see :class:`StepOut`."""
        obs, raw, term, trunc, info = self.venv.step(np.asarray(actions, dtype=np.int64))
        raw = np.asarray(raw, np.float64)
        term, trunc = np.asarray(term, bool), np.asarray(trunc, bool)
        reset = self._after_end.copy()
        live = ~reset
        lives = self._info_lives(info)
        life_lost = self.atari & live & (lives < self._lives)
        self._lives = lives
        self._score = np.where(reset, 0.0, self._score + raw)
        self._length = np.where(reset, 0, self._length + 1)
        ended = (term | trunc) & live  # a full game (all lives) ended: score it, autoreset on the next step
        terminal = (term | life_lost) & live
        truncated = trunc & live & ~terminal
        reward = np.sign(raw) if self.atari else raw
        reward = np.where(reset, 0.0, reward).astype(np.float32)
        out = StepOut(obs, reward, terminal, truncated, reset,
                      self._score[ended].tolist(), self._length[ended].tolist())
        self._after_end = ended
        return out

    def state_dict(self) -> dict[str, Any]:
        """The adapter's bookkeeping, plus the pickled environments when ``restorable`` (classic control).

        For Atari the emulators' states are *not* saved: :meth:`load_state_dict` then cannot restore the games in
        progress, and the caller resets the env (the partial games are lost; see :mod:`softq.rl.runs`).
        """
        state = {"after_end": self._after_end.copy(), "lives": self._lives.copy(), "score": self._score.copy(),
                 "length": self._length.copy(), "venv": None}
        if self.restorable:
            state["venv"] = pickle.dumps(self.venv)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`state_dict`; returns False (and changes nothing) when the env itself was not saved."""
        if state.get("venv") is None:
            return False
        self.venv.close()
        self.venv = pickle.loads(state["venv"])
        self._after_end, self._lives = state["after_end"].copy(), state["lives"].copy()
        self._score, self._length = state["score"].copy(), state["length"].copy()
        return True

    def close(self) -> None:
        self.venv.close()


def _gym_atari(game: str):
    """What a user would otherwise write: gymnasium's NoFrameskip-v4 env with the standard Atari wrappers."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env_id = "".join(w.capitalize() for w in game.split("_")) + "NoFrameskip-v4"
    env = gym.make(env_id, max_num_frames_per_episode=ATARI_MAX_FRAMES)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=ATARI_FRAMESKIP, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    return gym.wrappers.FrameStackObservation(env, 4)


def make_env(name: str, num_envs: int, *, threads: int = 0, backend: str = "ale") -> VecEnv:
    """``num_envs`` copies of ``name`` behind :class:`VecEnv`; call ``.reset(seed)`` before stepping.

    Args:
        name: a classic-control id (:data:`CLASSIC_ENVS`) or an Atari game ("PongNoFrameskip-v4", "Pong", "pong").
        num_envs: B >= 1.
        threads: ALE worker threads (0: min(B, CPU count)); ignored for classic control.
        backend: "ale" (ale-py's C++ vector env, the default and the fast one) or "gymnasium" (Atari only:
            ``AsyncVectorEnv`` of ``AtariPreprocessing`` + ``FrameStackObservation``, the benchmark's baseline).
    Raises ValueError naming a bad argument (an unknown game included).
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    if backend not in ("ale", "gymnasium"):
        raise ValueError(f"backend must be 'ale' or 'gymnasium', got {backend!r}")
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    if not is_atari(name):
        venv = gym.vector.SyncVectorEnv([functools.partial(gym.make, name) for _ in range(num_envs)],
                                        autoreset_mode=AutoresetMode.NEXT_STEP)
        return VecEnv(venv, name=name, atari=False, frames_per_step=1, restorable=True)
    game = atari_game(name)
    if backend == "gymnasium":
        venv = gym.vector.AsyncVectorEnv([functools.partial(_gym_atari, game) for _ in range(num_envs)],
                                         autoreset_mode=AutoresetMode.NEXT_STEP)
    else:
        from ale_py.vector_env import AtariVectorEnv

        threads = threads or min(num_envs, os.cpu_count() or 1)
        venv = AtariVectorEnv(
            game, num_envs, num_threads=threads, repeat_action_probability=0.0, full_action_space=False,
            max_num_frames_per_episode=ATARI_MAX_FRAMES, autoreset_mode=AutoresetMode.NEXT_STEP,
            img_height=84, img_width=84, grayscale=True, stack_num=4, frameskip=ATARI_FRAMESKIP, maxpool=True,
            noop_max=30, episodic_life=False, life_loss_info=False, reward_clipping=False, use_fire_reset=True,
        )
    return VecEnv(venv, name=name, atari=True, frames_per_step=ATARI_FRAMESKIP, restorable=False)
