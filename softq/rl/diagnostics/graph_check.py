"""Does DQN's CUDA-graph update compute what its eager update computes? One measurement, for ``make bench``.

On CUDA, :class:`softq.rl.agents.dqn.DQN` captures its whole gradient step (replay sampling, stacks, target, loss,
backward, Adam) in a CUDA graph and replays it. A captured graph freezes everything Python decided at capture time,
so a mistake there (a Python number baked in where a device value should be read, a buffer reallocated instead of
written in place) goes unnoticed by a loss that still falls. :func:`compare_update_paths` rules that out directly:

1. one agent fills a replay with ``fill_env_steps`` env steps (no training), then records ``updates`` more vector
   steps of the environments (random actions) without storing them;
2. for each ``cuda_graph`` mode in ``modes``, an agent starts from *that* state (same weights, same replay, fresh
   optimizer) and, ``updates`` times: adds the next recorded step to its replay (so the sampling range moves between
   updates, as in training), makes one gradient step, and picks greedy actions for that step's observations (the
   acting path, itself a graph on CUDA); every ``target_every`` steps it copies its online network into its target
   network. All paths use the **same replay draws**: the uniforms behind each batch are fixed in advance and fed
   through :attr:`DQN.sample_u` (:meth:`softq.rl.parts.replay.FrameReplay.sample`'s ``u``), so they train on the same
   batches;
3. each mode's loss trace, greedy actions and final weights are compared with the first mode's.

Not covered: the graph's own random draws (the default CUDA generator's philox stream, which the graph replays
through offsets); those only choose which valid rows are sampled.

Two eager runs measure how far the GPU's own nondeterminism (cuDNN's atomics) moves the result; a correct graph path
lies within a small multiple of that, and a broken one is off by order one. On a CPU every mode runs eagerly
(``cuda_graph`` is ignored there) and the runs agree bit for bit, which the unit tests check.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from softq.rl.agents import dqn

__all__ = ["compare_update_paths"]


def _run(cfg: dqn.Config, source: dqn.DQN, draws: torch.Tensor, steps: list[tuple], target_every: int
         ) -> tuple[list[float], np.ndarray, list[torch.Tensor]]:
    """A fresh agent in ``cfg``'s mode, from ``source``'s weights and replay: per draw, add the next recorded env
    step, update, act greedily on that step's observations. Returns the losses, actions ``[updates, B]``, weights."""
    agent = dqn.DQN(cfg, env=source.env)
    agent.net.load_state_dict(source.net.state_dict())
    agent.target_net.load_state_dict(source.target_net.state_dict())
    agent.replay.load_state_dict(source.replay.state_dict())
    agent.sample_u = torch.empty_like(draws[0])
    losses, actions = [], []
    for k, (u, step) in enumerate(zip(draws, steps, strict=True)):
        if k and k % target_every == 0:
            agent.sync_target()
        agent.replay.add(*step)
        agent.sample_u.copy_(u)
        agent.update()
        losses.append(agent._stats[0].clone())
        actions.append(agent._greedy(step[-1]))
    return torch.stack(losses).tolist(), np.stack(actions), [p.detach().clone() for p in agent.net.parameters()]


def compare_update_paths(cfg: dqn.Config, updates: int = 200, fill_env_steps: int = 4000, target_every: int = 50,
                         modes: tuple[str, ...] = ("off", "off", "on"), seed: int = 0) -> dict[str, Any]:
    """Train from one state along each ``cuda_graph`` mode in ``modes`` on the same batches; compare with the first.

    Returns ``{"device", "updates", "modes", "loss_first", "loss_last", "results": [{"mode", "cuda_graph",
    "max_abs_param_diff", "rel_param_diff", "max_rel_loss_diff", "greedy_action_mismatch"}, ...]}``: per mode after
    the first, against ``modes[0]``: the largest weight difference (absolute, and relative to the largest weight),
    the largest relative difference of the per-update losses and the fraction of greedy actions that differ;
    ``cuda_graph`` says whether that agent really used a graph.
    """
    if updates < 1:
        raise ValueError(f"updates must be >= 1, got {updates!r}")
    if target_every < 1:
        raise ValueError(f"target_every must be >= 1, got {target_every!r}")
    if len(modes) < 2 or any(m not in ("auto", "on", "off") for m in modes):
        raise ValueError(f"modes must name at least two of 'auto', 'on', 'off', got {modes!r}")
    filler = dqn.DQN(dataclasses.replace(cfg, cuda_graph="off", learning_starts=10**15))
    while filler.env_steps < fill_env_steps or len(filler.replay) < 2 * cfg.batch_size:
        filler.step()
    steps = []  # (actions, rewards, terminal, truncated, reset, next_obs) of each vector step to come
    for _ in range(updates):
        a = filler.rng.integers(0, filler.env.n_actions, cfg.num_envs)
        out = filler.env.step(a)
        steps.append((a, *(np.array(x) for x in (out.reward, out.terminal, out.truncated, out.reset, out.obs))))
    gen = torch.Generator(device=filler.device).manual_seed(seed)
    draws = torch.rand((updates, 2 * cfg.batch_size), dtype=torch.float64, device=filler.device, generator=gen)
    runs = []
    for mode in modes:
        mode_cfg = dataclasses.replace(cfg, cuda_graph=mode)
        losses, actions, params = _run(mode_cfg, filler, draws, steps, target_every)
        used_graph = filler.device.type == "cuda" and mode != "off"
        runs.append((mode, used_graph, losses, actions, params))
    _, _, ref_losses, ref_actions, ref_params = runs[0]
    scale = max(float(p.abs().max()) for p in ref_params)
    results = []
    for mode, used_graph, losses, actions, params in runs[1:]:
        diff = max(float((p - q).abs().max()) for p, q in zip(params, ref_params, strict=True))
        loss_diff = max((abs(a - b) / max(abs(b), 1e-12) if math.isfinite(a) else math.inf)
                        for a, b in zip(losses, ref_losses, strict=True))
        results.append({"mode": mode, "cuda_graph": used_graph, "max_abs_param_diff": diff,
                        "rel_param_diff": diff / scale, "max_rel_loss_diff": loss_diff,
                        "greedy_action_mismatch": float(np.mean(actions != ref_actions))})
    filler.env.close()
    return {"device": str(filler.device), "env": cfg.env, "backup": cfg.backup, "n_step": cfg.n_step,
            "updates": updates, "modes": list(modes), "loss_first": ref_losses[0], "loss_last": ref_losses[-1],
            "results": results}
