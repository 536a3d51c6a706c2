"""Environments for the paper's experiments (Section 6) behind one interface: Atari and small CPU problems.

:func:`make_env` returns a :class:`VecEnv`, ``B`` environments stepped together. Every backend is a gymnasium
vector env in ``NEXT_STEP`` autoreset mode, adapted so that the learner sees, per step,

- ``obs``: ``[B, *obs_shape]`` the observation after the step (uint8 ``[B, 4, 84, 84]`` for Atari, oldest frame
  first; float32 ``[B, d]`` for classic control). At a step that ends a game it is the game's *final* observation.
- ``reward``: ``[B]`` float32, the reward to learn from (``sign(r)``, i.e. clipped to {-1, 0, 1}, for Atari).
- ``terminal``: ``[B]`` bool, the *learning* episode ended on this step: a true termination, or (Atari) the loss of a
  life. Nothing is bootstrapped past it.
- ``truncated``: ``[B]`` bool, a time-limit cut (Atari: the frame cap, 400,000 frames; CartPole-v1: 500 steps). Not
  a terminal state: the learner bootstraps from the value of ``obs`` (the final observation).
- ``reset``: ``[B]`` bool, **not a transition**: an autoreset step, or the forced step after a lost life, whose
  action is the env's own. With ``NEXT_STEP`` autoreset the step *after* a finished game ignores its action and only
  resets that environment (``obs`` = the new game's first observation); after a lost life (Atari) the adapter plays
  the next step itself (see "Life loss" below; ``obs`` = the next life's first observation). A reset step has
  reward 0, ``terminal`` and ``truncated`` False, and must carry no weight in any loss: ``reset[t]`` is the mask that
  guarantees that no transition crosses an episode boundary (``tests/test_rl_envs.py`` checks it). Its ``obs``
  starts a new learning episode; the step after a reset step is always a real transition (one exception, under
  "Life loss").
- ``actions``: ``[B]`` int64, the actions actually sent to the environments: the agent's, except at forced steps.
- ``scores`` / ``lengths``: the *unclipped* game scores (and lengths in agent steps, forced steps included) of the
  full games -- all lives -- that finished on this step: what the paper's figures report.

The Atari protocol is the paper's: gym's 2017 "NoFrameskip-v4" envs with the DeepMind preprocessing of OpenAI
baselines' ``wrap_deepmind`` (its A2C uses ``VecFrameStack``), through ale-py's C++ ``AtariVectorEnv``: no sticky
actions (``repeat_action_probability=0``), the minimal action set, 4-frame skip with a max-pool over the last two
frames (``MaxAndSkipEnv``), 84x84 grayscale (``WarpFrame``), a stack of 4, no-op starts, FIRE at a game's start for
games that have it, life loss terminal for learning (``EpisodicLifeEnv``), FIRE after a lost life (``FireResetEnv``),
a frame-stack boundary at every learning-episode start, games cut at gym's 2017 frame cap. :func:`protocol` lists
these facts for a run's ``config.json``. What ale-py 0.12.1 does (read in its sources, ``src/ale/vector/
preprocessed_env.cpp``, and measured in ``tests/test_rl_envs.py``) and what the adapter adds:

- Rewards. ``reward_clipping=True`` clips *before* the reward reaches Python and reports no raw score anywhere
  (space_invaders gives only {0, 1}); so we pass ``reward_clipping=False`` and clip with ``np.sign`` here, keeping
  the raw score.
- Lives. ``episodic_life=True`` **resets the whole game** on each life loss (lives back to 5 in Breakout): wrong for
  scoring and not the baselines ``EpisodicLifeEnv``. ``life_loss_info=True`` signals ``terminated`` on a life loss
  but goes on playing, so terminations no longer tell a game over. We use neither: the adapter reads
  ``info["lives"]`` and marks ``terminal`` when the count drops (baselines' ``EpisodicLifeEnv``), while the game
  itself only ends (and is scored) at a true game over.
- Life loss. ale-py's ``use_fire_reset`` presses FIRE at the start of each *game* only, and in Breakout the ball is
  not served again after a lost life until FIRE is pressed: a near-greedy policy waits there for hundreds of steps.
  Baselines (and CleanRL) reset after every lost life: ``EpisodicLifeEnv.reset`` takes a NOOP step, then
  ``FireResetEnv`` (applied when 'FIRE' is among the game's action meanings) takes FIRE and action 2, three 4-frame
  steps hidden inside the reset. Here, when a life is lost on step ``t`` (lives drop to a count > 0 and the game
  goes on), the adapter replaces env i's action on step ``t+1`` by FIRE if 'FIRE' is in the game's minimal action
  set, else by NOOP, and reports step ``t+1`` as a ``reset`` step: **one** forced step where baselines takes three
  (the difference). Its raw reward still counts into the game's score and the step into its length (the game goes
  on; only autoreset steps start the score and length afresh). Two reset steps never follow each other: nothing is
  forced after a step that ends the game (the autoreset step comes next), after a loss to 0 lives (baselines'
  ``EpisodicLifeEnv`` ignores it too; the game over follows), nor within ``ATARI_NOOP_MAX`` frames of the frame
  cap (the cut would end the game on the forced step). The one exception to "the step after a reset step is a
  transition": a game that ends *during* a forced step (a game over within 4 frames of a lost life with lives left;
  not seen in practice) is scored there, and its autoreset step follows it.
- Frame stack. ale-py keeps stacking across a lost life; baselines' A2C ``VecFrameStack`` zeroes the stack at every
  done, a lost life included. The adapter zeroes, in the ``obs`` of a reset step and the next two, the frames older
  than that reset step's: frames 0..2 of its ``obs``, then 0..1, then 0 (in place, in the fresh array that ale-py
  returns each step). That is exactly what ale-py itself shows at a game start (three zero frames and the first),
  so every learning episode starts like a game. The replay (:class:`softq.rl.parts.replay.FrameReplay`) rebuilds it: the
  row after a reset row is a ``first`` row, and frames before the newest ``first`` row are zeroed. (Baselines' DQN
  ``FrameStack`` repeats the first frame instead of zeros.)
- Starts (ale-py's ``PreprocessedEnv::reset``, ``noop_max=30``): ``reset_game``, then in games with FIRE one FIRE
  frame followed by ``max(0, d - 1)`` no-op frames, else ``d`` no-op frames, ``d`` uniform in 0..29: 0..28 no-ops
  after FIRE (0 with probability 2/30), 0..29 without. Baselines: 1..30 no-op frames (``NoopResetEnv``, ``randint(1,
  31)``), then FIRE and action 2 as two 4-frame steps (``FireResetEnv``). Not matched: the vector env's start frames
  are single frames and its steps are 4-frame steps, so neither the count nor the order can be changed from here.
  (The ``gymnasium`` backend, ``AtariPreprocessing``: 1..30 no-op frames and no FIRE at a game's start.)
- Frame cap. Gym's 2017 registration gave ``NoFrameskip-v4`` a ``TimeLimit`` of ``max_episode_steps = frameskip *
  100000`` raw frames, ``frameskip`` 4, or 3 for space_invaders: 400,000 frames (SpaceInvaders 300,000), against
  108,000 in today's gymnasium/ale-py registrations (:func:`atari_max_frames`). ale-py counts only the frames of
  agent steps since the start (gym's ``TimeLimit`` also counted the start's no-op and FIRE frames, a few dozen), and
  the adapter reports the cut as ``truncated`` (bootstrapped; 2017's gym and baselines made it a plain ``done``).
- Seeds (:func:`env_seeds`). ``reset(seed, start)`` seeds env ``i`` with ``((seed * 128 + start) * 1024 + i) mod
  2**31``: distinct over run seeds 0..16383, starts 0..127 (``start`` counts a run's restarts: a resume that cannot
  restore the emulators starts fresh games with the next start) and env indices 0..1023, so no two runs of a grid
  share an environment seed (ale-py's own int seed gives env i ``seed + i``: runs 0 and 1 would share 15 of 16). A
  seed (a C++ ``int`` >= 0) seeds ALE's ``random_seed`` and the generator of the env's no-op starts; with sticky
  actions off, the no-op starts are the emulator's only randomness. A seeded reset reloads each ROM (about 0.3 s
  per env).
- ``autoreset_mode=NEXT_STEP`` (the default): see ``reset`` above; it keeps the final observation, which the
  learner needs at a time-limit cut.
"""

from __future__ import annotations

import functools
import pickle
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from softq import config as softq_config

__all__ = ["ATARI_FRAMESKIP", "ATARI_MAX_FRAMES", "ATARI_PROTOCOL", "CLASSIC_ENVS", "StepOut", "VecEnv", "atari_game",
           "atari_max_frames", "env_seeds", "is_atari", "make_env", "minimal_action_set", "protocol"]

#: Small discrete-action problems from gymnasium's classic control suite (CPU, no images).
CLASSIC_ENVS = ("CartPole-v1", "CartPole-v0", "Acrobot-v1", "MountainCar-v0")
ATARI_FRAMESKIP = 4
ATARI_STACK = 4
#: ale-py's ``noop_max`` (as baselines' ``NoopResetEnv(noop_max=30)``; ale-py's starts differ: module docstring).
ATARI_NOOP_MAX = 30
#: The frame cap of a game, in raw frames: gym's 2017 ``NoFrameskip-v4`` registration (``max_episode_steps =
#: frameskip * 100000`` with frameskip 4) that baselines trained with; :func:`atari_max_frames` has the exception.
ATARI_MAX_FRAMES = 400_000
_MAX_FRAMES_EXCEPTIONS = {"space_invaders": 300_000}  # gym 2017: frameskip = 3 for space_invaders

#: Environment seeds (:func:`env_seeds`): distinct for run seeds ``0 .. ENV_SEED_RUNS - 1``, starts
#: ``0 .. ENV_SEED_STARTS - 1`` and ``num_envs <= ENV_SEED_ENVS``; 2**31 seeds in all (ale-py takes C++ ints >= 0).
ENV_SEED_ENVS = 1024
ENV_SEED_STARTS = 128
ENV_SEED_RUNS = 2**31 // (ENV_SEED_STARTS * ENV_SEED_ENVS)

#: The Atari protocol's facts, for a run's ``config.json`` (:func:`protocol` adds the game's own; details and what
#: baselines does differently in the module docstring).
ATARI_PROTOCOL: dict[str, Any] = {
    "reference": "gym 2017 NoFrameskip-v4 + OpenAI baselines wrap_deepmind (A2C: VecFrameStack)",
    "frame_skip": ATARI_FRAMESKIP,
    "max_pool": "max over the last two frames of each step",
    "observation": "84x84 grayscale (cv2 INTER_AREA), a stack of 4, oldest first",
    "sticky_actions": 0.0,
    "action_set": "minimal",
    "learning_reward": "sign(raw reward)",
    "score": "sum of raw rewards over the whole game (all lives)",
    "life_loss": "terminal for learning, not the end of the game",
    "start": "ale-py: FIRE frame (games with FIRE), then 0..28 no-op frames (0..29 without FIRE); "
             "baselines: 1..30 no-op frames, then FIRE and action 2 (4-frame steps)",
    "after_life_loss": "one forced step (reported as reset): FIRE if in the action set, else NOOP; "
                       "baselines: NOOP, FIRE, action 2",
    "stack_boundary_at_life_loss": True,
    "stack_padding": "zeros",
    "frame_cap": ATARI_MAX_FRAMES,
    "frame_cap_is": "truncation (bootstrapped); gym 2017 / baselines: done",
    "env_seeds": "((seed * 128 + start) * 1024 + i) mod 2**31",
}


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


def atari_max_frames(name: str) -> int:
    """The frame cap of game ``name`` in raw frames: gym's 2017 ``NoFrameskip-v4`` ``TimeLimit``, ``frameskip *
    100000`` with gym's deterministic frameskip (4; 3 for space_invaders): 400,000, SpaceInvaders 300,000."""
    return _MAX_FRAMES_EXCEPTIONS.get(atari_game(name), ATARI_MAX_FRAMES)


@functools.cache
def minimal_action_set(name: str) -> tuple[str, ...]:
    """The names of game ``name``'s minimal action set, in index order (``ALEInterface.getMinimalActionSet()``: the
    order of ``AtariVectorEnv(full_action_space=False)`` and gym's ``get_action_meanings()``), e.g. Breakout's
    ``("NOOP", "FIRE", "RIGHT", "LEFT")``."""
    import ale_py
    from ale_py import roms

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.loadROM(roms.get_rom_path(atari_game(name)))
    return tuple(a.name for a in ale.getMinimalActionSet())


def _forced_action(actions: tuple[str, ...]) -> int:
    """The action index played after a lost life: FIRE if the game has it (baselines' ``FireResetEnv`` rule), else
    NOOP (``EpisodicLifeEnv.reset``'s no-op step)."""
    return actions.index("FIRE") if "FIRE" in actions else actions.index("NOOP")


def env_seeds(seed: int, num_envs: int, start: int = 0) -> list[int]:
    """The seeds of ``num_envs`` environments for run seed ``seed`` at start ``start``: env ``i`` gets
    ``((seed * ENV_SEED_STARTS + start) * ENV_SEED_ENVS + i) mod 2**31`` (``ENV_SEED_STARTS = 128``,
    ``ENV_SEED_ENVS = 1024``), an int in ``[0, 2**31)`` (ale-py's seeds are C++ ints >= 0).

    Deterministic, and injective in ``(seed, start, i)`` over ``0 <= seed < ENV_SEED_RUNS`` (16,384), ``0 <= start <
    128``, ``0 <= i < 1024``: no two runs of a grid, nor two starts of one run, share an environment seed. A larger
    ``seed`` is accepted and taken modulo 16,384 (it may then share seeds with another run). Raises ValueError
    naming ``seed``, ``num_envs`` or ``start`` when it is not an int in its range.
    """
    for arg, value, lo, hi in (("seed", seed, 0, None), ("num_envs", num_envs, 1, ENV_SEED_ENVS),
                               ("start", start, 0, ENV_SEED_STARTS - 1)):
        if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo
                or (hi is not None and value > hi)):
            bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ValueError(f"env_seeds: {arg} must be an int {bounds}, got {value!r}")
    base = (int(seed) % ENV_SEED_RUNS * ENV_SEED_STARTS + int(start)) * ENV_SEED_ENVS
    return [base + i for i in range(int(num_envs))]


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
    actions: np.ndarray | None = None


class VecEnv:
    """Adapter around a gymnasium vector env in NEXT_STEP autoreset mode (the module docstring gives the contract).

    Args:
        venv: the vector env (ale-py ``AtariVectorEnv``, gymnasium ``SyncVectorEnv``/``AsyncVectorEnv``).
        name: the env's name as the user gave it.  atari: Atari protocol (sign-clipped rewards, life loss terminal).
        frames_per_step: emulator frames per agent step (4 for Atari, 1 otherwise): the paper counts frames.
        restorable: whether :meth:`state_dict` captures the env itself (classic control: yes; Atari: no).
        forced_action: Atari: the action index played on the step after a lost life (FIRE, or NOOP for games
            without FIRE); None: never force (classic control).
        max_frames: Atari: the game's frame cap in raw frames (no step is forced within ``ATARI_NOOP_MAX`` frames of
            it; 0: none is).
        backend: "ale" or "gymnasium" (what :func:`protocol` reports).
    """

    def __init__(self, venv, *, name: str, atari: bool, frames_per_step: int, restorable: bool,
                 forced_action: int | None = None, max_frames: int = 0, backend: str = "gymnasium"):
        self.venv = venv
        self.name = name
        self.atari = atari
        self.frames_per_step = frames_per_step
        self.restorable = restorable
        self.forced_action = forced_action
        self.max_frames = max_frames
        self.backend = backend
        self.num_envs = int(venv.num_envs)
        self.obs_shape = tuple(venv.single_observation_space.shape)
        self.obs_dtype = venv.single_observation_space.dtype
        self.n_actions = int(venv.single_action_space.n)
        self._stack = self.obs_shape[0] if atari and len(self.obs_shape) == 3 else 0  # frames to zero: 0 = none
        self.start = 0  # the start index of the last reset (see env_seeds); saved by state_dict
        b = self.num_envs
        self._after_end = np.zeros(b, bool)  # the previous step ended a game: this step is an autoreset step
        self._force = np.zeros(b, bool)  # the previous step lost a life: this step is forced (forced_action)
        self._since = np.zeros(b, np.int64)  # frames of obs since the last learning-episode start (capped: stack)
        self._lives = np.zeros(b, np.int64)
        self._score = np.zeros(b, np.float64)
        self._length = np.zeros(b, np.int64)

    def reset(self, seed: int | None = None, start: int = 0) -> np.ndarray:
        """Reset every environment; returns ``obs: [B, *obs_shape]``, the first observations of new games.

        Env ``i`` gets seed ``env_seeds(seed, B, start)[i]`` (distinct across run seeds and starts; see
        :func:`env_seeds`); ``seed=None`` leaves them unseeded. ``start`` numbers a run's (re)starts: 0 for its first
        reset, one more for each resume that starts fresh games.
        """
        seeds = env_seeds(0 if seed is None else seed, self.num_envs, start)  # checks the arguments
        if seed is None:
            seeds = None
        elif self.backend == "ale":
            seeds = np.asarray(seeds, dtype=np.int64)  # AtariVectorEnv: an int means seed + i; an array, one per env
        obs, info = self.venv.reset(seed=seeds)
        self.start = int(start)
        self._after_end[:] = False
        self._force[:] = False
        self._since[:] = 1
        self._lives[:] = self._info_lives(info)
        self._score[:] = 0
        self._length[:] = 0
        self._zero_old_frames(obs)
        return obs

    def _info_lives(self, info: dict[str, Any]) -> np.ndarray:
        lives = info.get("lives")
        return np.zeros(self.num_envs, np.int64) if lives is None else np.asarray(lives, np.int64)

    def _zero_old_frames(self, obs: np.ndarray) -> None:
        """Zero, in place, the frames of ``obs [B, S, H, W]`` older than each env's learning-episode start (the
        newest ``_since[i]`` frames are kept): a stack boundary, like ale-py's at a game start."""
        if not self._stack:
            return
        old = self._stack - self._since  # [B] frames to zero at the front of each stack
        if (old > 0).any():
            obs[np.arange(self._stack)[None, :] < old[:, None]] = 0

    def step(self, actions: np.ndarray) -> StepOut:
        """Step every environment with ``actions: [B]`` (ints in [0, n_actions)); see :class:`StepOut`.

        After a lost life, env i's action is replaced by :attr:`forced_action` (module docstring, "Life loss");
        ``StepOut.actions`` are the actions sent.
        """
        actions = np.array(actions, dtype=np.int64)  # a copy: StepOut.actions is ours
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        forced = self._force
        if forced.any():
            actions = np.where(forced, self.forced_action, actions)
        obs, raw, term, trunc, info = self.venv.step(actions)
        raw = np.asarray(raw, np.float64)
        term, trunc = np.asarray(term, bool), np.asarray(trunc, bool)
        autoreset = self._after_end
        reset = autoreset | forced
        live = ~reset
        lives = self._info_lives(info)
        life_lost = self.atari & live & (lives < self._lives)
        self._lives = lives
        self._score = np.where(autoreset, 0.0, self._score + raw)  # a forced step's raw reward counts (game goes on)
        self._length = np.where(autoreset, 0, self._length + 1)
        ended = (term | trunc) & ~autoreset  # a full game (all lives) ended: score it, autoreset on the next step
        terminal = (term | life_lost) & live
        truncated = trunc & live & ~terminal
        reward = np.sign(raw) if self.atari else raw
        reward = np.where(reset, 0.0, reward).astype(np.float32)
        if self._stack:
            self._since = np.where(reset, 1, np.minimum(self._since + 1, self._stack))
            self._zero_old_frames(obs)
        out = StepOut(obs, reward, terminal, truncated, reset,
                      self._score[ended].tolist(), self._length[ended].tolist(), actions)
        self._after_end = ended
        if self.forced_action is not None:
            room = self.max_frames - self.frames_per_step * (self._length + 1)  # frames left after a forced step
            self._force = life_lost & ~ended & (lives > 0) & (room > ATARI_NOOP_MAX)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The adapter's bookkeeping, plus the pickled environments when ``restorable`` (classic control).

        For Atari the emulators' states are *not* saved: :meth:`load_state_dict` then cannot restore the games in
        progress, and the caller resets the env (the partial games are lost; see :mod:`softq.rl.experiments.loop`) with
        the
        next start: ``env.reset(seed, start=state["start"] + 1)``.
        """
        state = {"after_end": self._after_end.copy(), "force": self._force.copy(), "since": self._since.copy(),
                 "lives": self._lives.copy(), "score": self._score.copy(), "length": self._length.copy(),
                 "start": self.start, "venv": None}
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
        b = self.num_envs
        self._force = np.asarray(state.get("force", np.zeros(b, bool))).copy()
        self._since = np.asarray(state.get("since", np.ones(b, np.int64))).copy()
        self.start = int(state.get("start", 0))
        return True

    def close(self) -> None:
        self.venv.close()


def protocol(env: VecEnv) -> dict[str, Any]:
    """The protocol facts of ``env`` (JSON-ready), for a run's ``config.json``: :data:`ATARI_PROTOCOL` plus the
    game's forced action, frame cap and backend for Atari; the time limit and raw rewards for classic control."""
    if not env.atari:
        return {"env": env.name, "reward": "raw", "time_limit": "gymnasium's registration (truncation, bootstrapped)",
                "env_seeds": ATARI_PROTOCOL["env_seeds"]}
    facts = {**ATARI_PROTOCOL, "game": atari_game(env.name), "backend": env.backend, "frame_cap": env.max_frames,
             "forced_action_after_life_loss": minimal_action_set(env.name)[env.forced_action]}
    if env.backend == "gymnasium":
        facts["start"] = "gymnasium AtariPreprocessing: 1..30 no-op frames, no FIRE at a game's start"
    return facts


def _gym_atari(game: str, max_frames: int):
    """What a user would otherwise write: gymnasium's NoFrameskip-v4 env with the standard Atari wrappers."""
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env_id = "".join(w.capitalize() for w in game.split("_")) + "NoFrameskip-v4"
    env = gym.make(env_id, max_num_frames_per_episode=max_frames)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=ATARI_NOOP_MAX, frame_skip=ATARI_FRAMESKIP, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)
    return gym.wrappers.FrameStackObservation(env, ATARI_STACK, padding_type="zero")  # zeros, as ale-py


def make_env(name: str, num_envs: int, *, threads: int = 0, backend: str = "ale",
             max_frames: int | None = None) -> VecEnv:
    """``num_envs`` copies of ``name`` behind :class:`VecEnv`; call ``.reset(seed)`` before stepping.

    Args:
        name: a classic-control id (:data:`CLASSIC_ENVS`) or an Atari game ("PongNoFrameskip-v4", "Pong", "pong").
        num_envs: B >= 1.
        threads: ALE worker threads (0: min(B, the cores this process may use, softq.config.cores)); ignored for
            classic control.
        backend: "ale" (ale-py's C++ vector env, the default and the fast one) or "gymnasium" (Atari only:
            ``AsyncVectorEnv`` of ``AtariPreprocessing`` + ``FrameStackObservation``, the benchmark's baseline).
        max_frames: Atari: the frame cap in raw frames (None: :func:`atari_max_frames`, gym 2017's); ignored for
            classic control.
    Raises ValueError naming a bad argument (an unknown game included).
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    if backend not in ("ale", "gymnasium"):
        raise ValueError(f"backend must be 'ale' or 'gymnasium', got {backend!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be None or an int >= 1, got {max_frames!r}")
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    if not is_atari(name):
        venv = gym.vector.SyncVectorEnv([functools.partial(gym.make, name) for _ in range(num_envs)],
                                        autoreset_mode=AutoresetMode.NEXT_STEP)
        return VecEnv(venv, name=name, atari=False, frames_per_step=1, restorable=True)
    game = atari_game(name)
    max_frames = max_frames or atari_max_frames(game)
    if backend == "gymnasium":
        venv = gym.vector.AsyncVectorEnv([functools.partial(_gym_atari, game, max_frames) for _ in range(num_envs)],
                                         autoreset_mode=AutoresetMode.NEXT_STEP)
        actions = minimal_action_set(game)
    else:
        from ale_py.vector_env import AtariVectorEnv

        threads = threads or min(num_envs, softq_config.cores())
        venv = AtariVectorEnv(
            game, num_envs, num_threads=threads, repeat_action_probability=0.0, full_action_space=False,
            max_num_frames_per_episode=max_frames, autoreset_mode=AutoresetMode.NEXT_STEP,
            img_height=84, img_width=84, grayscale=True, stack_num=ATARI_STACK, frameskip=ATARI_FRAMESKIP,
            maxpool=True, noop_max=ATARI_NOOP_MAX, episodic_life=False, life_loss_info=False, reward_clipping=False,
            use_fire_reset=True,
        )
        actions = tuple(a.name for a in venv.ale.get_action_set())
    return VecEnv(venv, name=name, atari=True, frames_per_step=ATARI_FRAMESKIP, restorable=False,
                  forced_action=_forced_action(actions), max_frames=max_frames, backend=backend)
