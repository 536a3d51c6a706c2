"""What a run's checkpoint says about its training: ``python -m softq.rl inspect RUN`` (the RMSProp state's gradient
statistics per layer, :func:`softq.rl.parts.optim.gradient_report`)."""

from __future__ import annotations

from typing import Any

from softq.rl.experiments.folder import load_checkpoint
from softq.rl.parts.optim import gradient_report

__all__ = ["checkpoint_gradient_report"]


def checkpoint_gradient_report(path, eps: float | None = None) -> dict[str, Any]:
    """:func:`gradient_report` of a :mod:`softq.rl.experiments.loop` A2C checkpoint (its network's parameter names, its
    optimizer's ``square_avg``); ``eps`` defaults to the run's ``rms_eps``. Adds the run's update count."""
    state = load_checkpoint(path)
    agent, cfg = state["agent"], state["config"]
    if cfg.get("algo", "a2c") != "a2c":
        raise ValueError(f"{path}: an {cfg.get('algo')} checkpoint; the gradient report reads A2C's RMSProp state")
    opt = agent["opt"]
    ids = [i for group in opt["param_groups"] for i in group["params"]]
    names = [k for k, t in agent["net"].items() if t.is_floating_point()][: len(ids)]
    missing = [i for i in ids if "square_avg" not in opt["state"].get(i, {})]
    if missing or len(names) != len(ids):
        raise ValueError(f"{path}: the optimizer state has no square_avg for every parameter (or the names do not "
                         "match); was the run updated at least once?")
    return {"updates": agent["updates"], "optimizer": cfg.get("optimizer"), "rms_eps": cfg.get("rms_eps"),
            "layers": gradient_report(names, [opt["state"][i]["square_avg"] for i in ids],
                                      cfg.get("rms_eps", 1e-5) if eps is None else eps)}
