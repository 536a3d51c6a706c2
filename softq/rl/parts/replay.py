"""A replay memory that stores each Atari frame once, for B parallel environments, on the training device.

Layout. ``L = capacity // B`` rows of a ring, one row per vector step, one column per environment::

    frames  [L, B, *frame]  uint8 (Atari: one 84x84 frame, the newest of the env's 4-frame stack) or float32
    actions [L, B]          uint8      a_k, the action taken at row k's observation x_k
    rewards [L, B]          float32    r_k
    flags   [L, B]          uint8      bit 0 terminal_k, bit 1 truncated_k, bit 2 reset_k (step k was an autoreset
                                       step: not a transition), bit 3 first_k (x_k is the first observation of a game)

Row ``k`` of column ``c`` holds the observation ``x_k`` the env showed before step ``k`` and what step ``k`` did.
A stacked observation is rebuilt at sample time from the rows ``k-3..k``; frames from before the most recent
``first`` row are **zeroed**, exactly what ale-py's ``AtariVectorEnv`` shows at a reset (its stack starts as three
zero frames and the first frame), so the rebuilt stack equals the one the agent acted on (``tests/test_rl_dqn.py``).
The ``first`` rows are those after a ``reset`` row: an autoreset step after a game over and, under the Atari protocol
of :mod:`softq.rl.parts.envs`, the forced step after a lost life (its observation starts a new stack, zero-padded, like
a
game's). The lost life itself is a ``terminal`` for learning, where every n-step sum stops
(:func:`softq.regularized.q_learning_target`).

Memory: ``frame_bytes + 1 + 4 + 1`` bytes per transition (7,062 for Atari: 7.06 GB for 1M transitions; a buffer
of stacked pairs ``(s, s')`` would take 8x that). :meth:`FrameReplay.nbytes` sums the arrays.

Writing (:meth:`FrameReplay.add`): each step's values are staged on the host (pinned memory on CUDA) and copied
straight into their rows of the ring, asynchronously; no device temporaries, no kernels.

Sampling (:meth:`FrameReplay.sample`) is index arithmetic in torch on the buffer's device: no host round trip, so
a whole DQN update can be captured in a CUDA graph. The stacks are one ``index_select`` of rows of the ring (seen
as ``[L*B, *frame]``) and a multiply by the 0/1 mask of frames from before a game's start.

A transition ``k`` is drawn uniformly from the rows whose stack is intact (not overwritten) and whose n-step window
``k..k+n-1`` and last next state ``x_{k+n}`` are written (``lo <= k <= T - n - 1`` for ``T`` steps written),
excluding autoreset rows (they are no transitions): ``2 * batch`` candidates are drawn and the first ``batch`` valid
ones kept (exactly uniform over valid rows). If fewer than ``batch`` of them are valid (probability below 1e-9
unless autoreset rows are a large fraction of the buffer), an invalid pick is replaced by the row after it, the
first step of the next game -- always a valid transition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["TERMINAL", "TRUNCATED", "RESET", "FIRST", "Batch", "FrameReplay"]

TERMINAL, TRUNCATED, RESET, FIRST = 1, 2, 4, 8


@dataclass
class Batch:
    """A sampled batch of n-step windows; ``N = batch``, ``n`` the lookahead.

    ``obs [N, *obs_shape]`` (x_k), ``actions [N]`` long, ``rewards [n, N]`` float32, ``terminal, truncated [n, N]``
    bool (steps k..k+n-1), ``next_obs [n, N, *obs_shape]`` (x_{k+1}..x_{k+n}), ``rows, cols [N]`` (where they came
    from, for tests).
    """

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminal: torch.Tensor
    truncated: torch.Tensor
    next_obs: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor


class FrameReplay:
    """Ring of single frames for ``num_envs`` environments (layout and guarantees in the module docstring).

    Args:
        capacity: transitions kept (rounded down to a multiple of ``num_envs``).
        num_envs: B, the columns.  obs_shape: one env's observation, ``[S, H, W]`` (a stack of S frames, uint8)
            or ``[d]`` (a vector, stored whole, no stacking).  n_step: the lookahead n of the windows sampled.
        device: where the arrays live (the training device: sampling then never leaves it).
    """

    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], n_step: int,
                 device: torch.device | str = "cpu", obs_dtype: torch.dtype = torch.uint8):
        self.num_envs, self.n_step = int(num_envs), int(n_step)
        self.obs_shape = tuple(obs_shape)
        self.image = len(self.obs_shape) == 3
        self.stack = self.obs_shape[0] if self.image else 1
        frame_shape = self.obs_shape[1:] if self.image else self.obs_shape
        self.rows = int(capacity) // self.num_envs
        if self.rows < self.n_step + self.stack + 2:
            raise ValueError(f"capacity must hold at least {(self.n_step + self.stack + 2) * self.num_envs} "
                             f"transitions ({self.num_envs} envs, n_step {self.n_step}), got {capacity!r}")
        self.device = torch.device(device)
        shape = (self.rows, self.num_envs)
        self.frames = torch.zeros((*shape, *frame_shape), dtype=obs_dtype, device=self.device)
        self.actions = torch.zeros(shape, dtype=torch.uint8, device=self.device)
        self.rewards = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self.flags = torch.zeros(shape, dtype=torch.uint8, device=self.device)
        self.steps = 0  # T: steps written; frames x_0..x_T are in rows 0..T (mod L)
        # the sampling range [lo, lo + count) of rows, as device scalars (read inside a captured CUDA graph)
        self._lo = torch.zeros((), dtype=torch.int64, device=self.device)
        self._count = torch.zeros((), dtype=torch.int64, device=self.device)
        self._offsets = torch.arange(-self.stack + 1, self.n_step + 1, device=self.device)  # rows k-S+1..k+n
        # the ring as one row per (slot, column), for index_select (a row gather, much faster than 2-d indexing)
        self._flat = self.frames.view(self.rows * self.num_envs, *frame_shape)
        self._windows: dict[int, torch.Tensor] = {}  # width -> [width, S] offsets of each state's frames
        # host staging for add(): each step's values are written on the host and copied straight into their rows of
        # the ring (no device temporaries); pinned on CUDA, with an event so that a pinned buffer is not rewritten
        # while its copy is still in flight. The FIRST bit of row T is kept on the host too (``_first``), so that
        # row T's flags are complete before they are copied.
        pin = self.device.type == "cuda"
        self._host_frames = torch.empty((self.num_envs, *frame_shape), dtype=obs_dtype, pin_memory=pin)
        self._host_small = torch.empty((3, self.num_envs), dtype=torch.uint8, pin_memory=pin)  # a_T, flags T, T+1
        self._host_rewards = torch.empty((self.num_envs,), dtype=torch.float32, pin_memory=pin)
        self._host_frames_np, self._host_small_np = self._host_frames.numpy(), self._host_small.numpy()
        self._host_rewards_np = self._host_rewards.numpy()
        self._first = np.zeros(self.num_envs, np.uint8)  # flags[T % L] & FIRST
        self._copied = torch.cuda.Event() if pin else None

    # --- accounting ---------------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.rows * self.num_envs

    def nbytes(self) -> int:
        """Bytes of the buffer's arrays (frames, actions, rewards, flags)."""
        return sum(t.numel() * t.element_size() for t in (self.frames, self.actions, self.rewards, self.flags))

    def bytes_per_transition(self) -> float:
        return self.nbytes() / self.capacity

    def _stage_frame(self, obs) -> None:
        """Write the newest frame of ``obs [B, *obs_shape]`` into the host staging buffer (after waiting for the
        copies still reading the staging buffers, on CUDA)."""
        obs = np.asarray(obs)
        if tuple(obs.shape) != (self.num_envs, *self.obs_shape):
            raise ValueError(f"obs must have shape {(self.num_envs, *self.obs_shape)}, got {tuple(obs.shape)}")
        if self._copied is not None:
            self._copied.synchronize()
        self._host_frames_np[...] = obs[:, -1] if self.image else obs

    # --- writing ------------------------------------------------------------------------------------------------

    def start(self, obs) -> None:
        """Begin with the observations returned by ``env.reset()``: ``obs [B, *obs_shape]``, first of their games."""
        self._stage_frame(obs)
        self.steps = 0
        self.flags.zero_()
        self.frames[0].copy_(self._host_frames, non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        self.flags[0] = FIRST
        self._first[:] = FIRST
        self._update_range()

    def add(self, actions, rewards, terminal, truncated, reset, next_obs) -> None:
        """Record one vector step from ``x_T``: ``actions, rewards, terminal, truncated, reset: [B]``, and the
        observation after it, ``next_obs [B, *obs_shape]`` (see :class:`softq.rl.parts.envs.StepOut`).

        Each value goes from the host staging buffers straight into its row of the ring (five copies, asynchronous
        on CUDA; no device temporaries, no kernels)."""
        t, nxt = self.steps % self.rows, (self.steps + 1) % self.rows
        self._stage_frame(next_obs)  # waits for the previous step's copies before reusing the buffers
        reset = np.asarray(reset, bool)
        small = self._host_small_np
        small[0] = actions
        small[1] = self._first | (np.asarray(terminal, bool) * TERMINAL) | (np.asarray(truncated, bool) * TRUNCATED) \
            | (reset * RESET)
        small[2] = reset * FIRST  # after an autoreset step, x_{T+1} starts a game
        self._host_rewards_np[...] = rewards
        self.frames[nxt].copy_(self._host_frames, non_blocking=True)
        self.actions[t].copy_(self._host_small[0], non_blocking=True)
        self.rewards[t].copy_(self._host_rewards, non_blocking=True)
        self.flags[t].copy_(self._host_small[1], non_blocking=True)
        self.flags[nxt].copy_(self._host_small[2], non_blocking=True)
        if self._copied is not None:
            self._copied.record()
        self._first = small[2].copy()
        self.steps += 1
        self._update_range()

    def _bounds(self) -> tuple[int, int]:
        """``(lo, count)``: rows ``lo .. lo + count - 1`` may be drawn (module docstring)."""
        lo = max(0, self.steps - self.rows + self.stack)
        hi = self.steps - self.n_step - 1  # keep one row of slack: an autoreset pick moves to the row after it
        return lo, max(0, hi - lo + 1)

    def _update_range(self) -> None:
        lo, count = self._bounds()
        self._lo.fill_(lo)
        self._count.fill_(count)

    def __len__(self) -> int:
        """Transitions that may be sampled now (autoreset rows included)."""
        return self._bounds()[1] * self.num_envs

    # --- reading ------------------------------------------------------------------------------------------------

    def stacks(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The observations ``x_r`` at ``rows, cols: [N, W]`` (rows absolute, W consecutive) -> ``[N, W-S+1, *obs]``.

        ``rows[:, j] = rows[:, 0] + j``; state ``i`` is built from rows ``i..i+S-1`` of the window, frames before
        the last ``first`` row zeroed. For vector observations (S = 1) it is the stored rows.
        """
        slots = torch.remainder(rows, self.rows)
        if not self.image:
            return self.frames[slots, cols]  # [N, W, d]
        s = self.stack
        n, width = rows.shape[0], rows.shape[1] - s + 1
        first = (self.flags[slots, cols] & FIRST) != 0  # [N, W]
        seen = torch.cumsum(first.to(torch.int32), dim=1)  # seen[w]: first flags in rows 0..w of the window
        newest = seen[:, s - 1: s - 1 + width]  # [N, width]
        keep = torch.stack([newest - seen[:, m: m + width] == 0 for m in range(s)], dim=2)  # [N, width, S]
        win = self._windows.get(width)
        if win is None:  # state i, frame m: row i + m of the window
            win = self._windows[width] = (torch.arange(width, device=self.device)[:, None]
                                          + torch.arange(s, device=self.device))
        flat = (slots * self.num_envs + cols)[:, win]  # [N, width, S]: rows of the flat ring
        stacked = self._flat.index_select(0, flat.reshape(-1)).view(n, width, s, *self.frames.shape[2:])
        return stacked.mul_(keep[..., None, None].to(stacked.dtype))  # zero the frames before the game's first

    def sample(self, batch: int, generator: torch.Generator | None = None, u: torch.Tensor | None = None) -> Batch:
        """``batch`` n-step windows, uniformly over the valid transitions (module docstring); all on the device.

        Needs ``len(self) > 0``; it is not checked here (a check would read the device): the agent only samples
        after ``learning_starts`` steps. ``generator=None`` uses torch's default one (CUDA-graph safe). ``u``, if
        given, replaces the random draws: ``2 * batch`` uniforms in [0, 1), float64, on the device (the same ``u``
        gives the same batch; :mod:`softq.rl.diagnostics.graph_check` uses it to feed two update paths the same
        batches).
        """
        n, s, cand = self.n_step, self.stack, 2 * batch
        if u is None:
            u = torch.rand(cand, dtype=torch.float64, device=self.device, generator=generator)
        flat = torch.minimum((u * (self._count * self.num_envs)).long(), self._count * self.num_envs - 1)
        rows, cols = self._lo + torch.div(flat, self.num_envs, rounding_mode="floor"), flat % self.num_envs
        invalid = (self.flags[torch.remainder(rows, self.rows), cols] & RESET) != 0
        order = torch.argsort(invalid.to(torch.int64) * cand + torch.arange(cand, device=self.device))[:batch]
        rows, cols, invalid = rows[order], cols[order], invalid[order]
        rows = rows + invalid.to(torch.int64)  # the rare fallback: the next row, the first step of the next game
        window = rows[:, None] + self._offsets  # [N, S + n]: rows k-S+1 .. k+n
        states = self.stacks(window, cols[:, None].expand_as(window))  # [N, n+1, *obs]: x_k .. x_{k+n}
        steps = torch.remainder(window[:, s - 1: s - 1 + n], self.rows)  # rows k .. k+n-1
        c = cols[:, None].expand_as(steps)
        flags = self.flags[steps, c].T  # [n, N]
        return Batch(
            obs=states[:, 0], actions=self.actions[steps[:, 0], cols].long(), rewards=self.rewards[steps, c].T,
            terminal=(flags & TERMINAL) != 0, truncated=(flags & TRUNCATED) != 0,
            next_obs=states[:, 1:].transpose(0, 1), rows=rows, cols=cols,
        )

    # --- checkpoints --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"frames": self.frames.cpu(), "actions": self.actions.cpu(), "rewards": self.rewards.cpu(),
                "flags": self.flags.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        for name in ("frames", "actions", "rewards", "flags"):
            getattr(self, name).copy_(state[name])
        self.steps = int(state["steps"])
        self._first = (state["flags"][self.steps % self.rows] & FIRST).cpu().numpy().astype(np.uint8)
        self._update_range()

