"""The training loop of one run: its logs, atomic checkpoints and resume (several runs at once: :mod:`.launch`).

Layout (what plotting code reads)::

    results/<experiment>/<rule>/seed<k>/
        config.json      the Config, the command, package versions (torch, gymnasium, ale-py, numpy, python),
                         device and machine; rewritten at each (re)start, earlier starts kept under "starts"
        progress.csv     one row every `log_every` updates: frames, updates, episodes, score_mean100 (mean unclipped
                         score of the last <= 100 finished games; empty before the first), score_count, loss,
                         policy_loss, value_loss, q_loss (NaN where the rule has none), entropy, kl, grad_norm, lr,
                         sps (agent steps per second since the previous row), wall_s
        checkpoint.pt    everything needed to continue (written atomically: tmp file + os.replace); not for git
        status.json      "running" | "paused" (time limit / signal: continue with --resume) | "done" | "failed"

``<experiment>`` defaults to ``<algo>-<env>``; ``<rule>`` is A2C's rule or DQN's variant (``hard``,
``soft_ent_tau0.1_n5``, ...: :attr:`softq.rl.agents.dqn.Config.rule`). A DQN run logs the columns of
:data:`softq.rl.agents.dqn.COLUMNS` (its ``updates`` are vector steps) and records in each "starts" entry whether its
replay was restored (``replay_restored``; see :mod:`softq.rl.agents.dqn`: an Atari-sized replay is not saved, resume
refills
it). A run that stops early loses at most its last checkpoint interval (``checkpoint_minutes``, default 5).

Resume. ``--resume`` loads ``checkpoint.pt``, truncates ``progress.csv`` to the rows written before it, and goes on.
On CPU with classic control the checkpoint holds the network, optimizer, the torch / numpy / sampling random states,
the pickled environments and the current observations, so an interrupted and resumed run writes the same log
(except the timing columns ``sps`` and ``wall_s``) and ends with the same weights as an uninterrupted one
(``tests/test_rl_runs.py`` kills a run after a checkpoint and checks this). **Atari**: ale-py's vector env cannot
save its emulators, so resume **starts fresh games**: the games in progress at the checkpoint are lost (their scores
are never logged), the learner continues with its weights, optimizer and random state. This is a deliberate choice
(the loss is a few games per environment out of thousands); the run is then no longer bit-identical to an
uninterrupted one. On CUDA, runs are reproducible only up to GPU non-determinism.

A NaN or infinite loss stops the run with a message naming the update; ``checkpoint.pt`` is the last good one.
"""

from __future__ import annotations

import contextlib
import csv
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from softq import config as softq_config
from softq.rl.agents.base import ALGORITHMS, NonFiniteLoss, algorithm, make_agent
from softq.rl.experiments.folder import RunBusy, RunFolder, load_checkpoint
from softq.rl.experiments.provenance import machine, versions
from softq.rl.parts.envs import protocol

__all__ = ["RUN_CONTROL", "RunBusy", "load_checkpoint", "config_diff", "run_dir", "shown", "outcome",
           "config_class", "make_agent", "train", "cli_args"]

#: Config fields that may change on --resume (they do not change what is computed), of every algorithm: those
#: declared ``control=True`` (:meth:`softq.rl.agents.base.RunConfig.control_fields`).
RUN_CONTROL = tuple(dict.fromkeys(name for a in ALGORITHMS.values() for name in a.config.control_fields()))


def config_class(algo: str):
    """The Config class of ``algo`` (:data:`softq.rl.agents.base.ALGORITHMS`)."""
    return algorithm(algo).config


def config_diff(saved: dict[str, Any], cfg) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved, given)}`` for the fields of ``cfg`` outside :data:`RUN_CONTROL` where a saved config (a
    ``config.json``'s ``"config"``, or a checkpoint's) differs; fields missing from ``saved`` take the Config's
    defaults (an older run)."""
    saved_cfg = type(cfg).from_dict(saved).as_dict()
    control = type(cfg).control_fields()
    return {k: (saved_cfg[k], v) for k, v in cfg.as_dict().items() if k not in control and saved_cfg[k] != v}


def run_dir(results: str | Path, experiment: str, rule: str, seed: int) -> Path:
    """``results/<experiment>/<rule>/seed<k>``: the one layout of runs."""
    return Path(results) / experiment / rule / f"seed{seed}"


def shown(path: str | Path) -> str:
    """``path`` as messages show it: relative to the project's root when inside it (no machine's absolute paths
    in a chapter's output), else as given."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(softq_config.ROOT))
    except ValueError:
        return str(path)


def outcome(result: dict[str, Any]) -> str:
    """A run's final status dict (:func:`train`'s) in one line: status, frames, games and last-100 mean score."""
    score = result.get("score_mean100")
    score = "no game finished" if score is None or not math.isfinite(score) else f"last-100 mean score {score:.1f}"
    return f"{result['status']}: {result['frames']} frames, {result['episodes']} games, {score}"


def _json_float(x: float) -> float | None:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _fmt(x: float) -> str:
    return "" if isinstance(x, float) and math.isnan(x) else f"{x:.6g}" if isinstance(x, float) else str(x)


class _Stop:
    """SIGINT/SIGTERM set a flag; the loop then checkpoints at the end of the current update and stops."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(cfg, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train one run into ``out`` (layout in the module docstring); returns the final status dict.

    ``resume=True`` continues from ``out/checkpoint.pt`` (the config saved there must equal ``cfg`` except for the
    fields in :data:`RUN_CONTROL`); in an empty folder it starts afresh, and a folder with a log but no checkpoint
    is refused (FileExistsError: resuming would overwrite the log). The logs are cut back to the checkpoint's rows
    (a log shorter than that is refused, ValueError); a checkpoint that cannot be read raises ValueError naming it.
    Without ``resume``, ``out`` must not hold a run yet. The folder is locked while the run trains
    (:class:`RunBusy` if another process holds it).
    Raises :class:`NonFiniteLoss`.
    """
    out = Path(out)
    with RunFolder(out).locked():
        return _train(cfg, out, resume=resume, progress=progress)


def _train(cfg, out: Path, *, resume: bool, progress: bool) -> dict[str, Any]:
    folder = RunFolder(out)
    ckpt_path, log_path, cfg_path = folder.checkpoint_path, folder.progress_path, folder.config_path
    state = None
    if resume and ckpt_path.exists():
        state = folder.load_checkpoint()
        diff = config_diff(state["config"], cfg)
        if diff:
            raise ValueError(f"--resume: config differs from the checkpoint's in {diff} (saved, given)")
    elif resume and (log_path.exists() or cfg_path.exists()):
        raise FileExistsError(f"--resume: {out} holds a run's log but no checkpoint.pt to continue it from; resuming "
                              "would retrain from update 0 over its log. Keep the log and train the run in another "
                              "folder, or move the folder away to start afresh here")
    elif not resume and (ckpt_path.exists() or log_path.exists() or cfg_path.exists()):
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)

    agent = make_agent(cfg)
    columns = agent.columns
    hooks = agent.hooks()
    envs_restored = None  # a fresh start restores nothing
    starts = []
    if state is not None:
        cuts = [folder.cut_log(folder.PROGRESS, state["log_bytes"], "progress log")]
        # every hook's log, and any the checkpoint recorded (a hook's CSV of the run, cut to the checkpoint too)
        saved = {f"{k.removesuffix('_bytes')}.csv" for k in state if k.endswith("_bytes") and k != "log_bytes"}
        for name in sorted({h.file for h in hooks} | saved):
            stem = Path(name).stem
            if (out / name).exists() or state.get(f"{stem}_bytes", 0):
                cuts.append(folder.cut_log(name, state.get(f"{stem}_bytes", 0), f"{stem} log"))
        for cut in filter(None, cuts):
            print(f"[{shown(out)}] resumed from the checkpoint: {cut}", file=sys.stderr)
        envs_restored = agent.load_state_dict(state["agent"])
        starts = (folder.config() or {}).get("starts", [])
    starts.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "update": agent.updates,
                   "envs_restored": envs_restored, "command": _command(cfg, out, state is not None),
                   **agent.info})
    folder.write_json(folder.CONFIG, {"config": cfg.as_dict(), "versions": versions(), "device": str(agent.device),
                           "machine": machine(), "protocol": protocol(agent.env),
                           "frames_per_step": agent.env.frames_per_step,
                           "total_updates": agent.total_updates, "starts": starts})
    if envs_restored is False:
        print(f"[{shown(out)}] resumed at update {agent.updates}: Atari emulator states are not saved, the games in "
              "progress were lost and new games started", file=sys.stderr)
    if state is not None and agent.info.get("replay_restored") is False:
        print(f"[{shown(out)}] resumed at update {agent.updates}: the replay was not saved (too large); it refills "
              f"with {agent.info['replay_refill_env_steps']} fresh env steps before training goes on", file=sys.stderr)
    new_log = state is None
    wall0 = state["wall_s"] if state is not None else 0.0
    t_start = time.perf_counter()
    last_ckpt = time.perf_counter()
    last_row_t, last_row_updates = time.perf_counter(), agent.updates

    hook_files: dict[str, Any] = {}  # hook file name -> open file

    def save_checkpoint(log_file) -> None:
        log_file.flush()
        for f in hook_files.values():
            f.flush()
        agent.assert_finite()  # NonFiniteLoss: a spoiled state never replaces the last good checkpoint
        payload = {"config": cfg.as_dict(), "agent": agent.state_dict(), "log_bytes": log_file.tell(),
                   **{f"{Path(name).stem}_bytes": f.tell() for name, f in hook_files.items()},
                   "wall_s": wall0 + time.perf_counter() - t_start}
        folder.save_checkpoint(payload)

    folder.write_status("running", update=agent.updates)
    if progress:  # tqdm.auto picks the notebook bar in Jupyter (which warns without ipywidgets): only when shown
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    bar = tqdm(total=agent.total_updates * agent.frames_per_update, initial=agent.frames, unit="frame",
               unit_scale=True, disable=not progress, desc=f"{cfg.rule} s{cfg.seed} {cfg.env}", dynamic_ncols=True)
    status = "done"
    try:
        with contextlib.ExitStack() as files:
            log_file = files.enter_context(open(log_path, "w" if new_log else "a", newline=""))
            stop = files.enter_context(_Stop())
            writer = csv.writer(log_file)
            if new_log:
                writer.writerow(columns)
            hook_writers = {}
            for h in hooks:
                path = out / h.file
                fresh = new_log or not path.exists() or path.stat().st_size == 0
                hook_files[h.file] = files.enter_context(open(path, "w" if fresh else "a", newline=""))
                hook_writers[h.file] = csv.writer(hook_files[h.file])
                if fresh:
                    hook_writers[h.file].writerow(h.columns)
            while agent.updates < agent.total_updates:
                try:
                    measuring = [h for h in hooks if h.due(agent)]
                    if measuring:
                        agent.collect()  # measure on the batch the update is about to use, then update
                        for h in measuring:
                            hook_writers[h.file].writerow(h.row(agent))
                            hook_files[h.file].flush()
                        stats = agent.update()
                    else:
                        stats = agent.step()
                except NonFiniteLoss as e:
                    log_file.flush()
                    folder.write_status("failed", error=str(e))
                    raise
                bar.update(agent.frames_per_update)
                now = time.perf_counter()
                last = agent.updates == agent.total_updates
                if agent.updates % cfg.log_every == 0 or last:
                    sps = (agent.updates - last_row_updates) * cfg.steps_per_update / max(now - last_row_t, 1e-9)
                    last_row_t, last_row_updates = now, agent.updates
                    row = {**stats, "frames": agent.frames, "updates": agent.updates, "episodes": agent.episodes,
                           "score_mean100": agent.score_mean(), "score_count": len(agent.scores), "sps": sps,
                           "wall_s": wall0 + now - t_start}
                    writer.writerow([_fmt(row[c]) for c in columns])
                    log_file.flush()  # a long run can be watched: every row is on disk when it is written
                    bar.set_postfix(score=f"{agent.score_mean():.1f}", sps=f"{sps:.0f}")
                    left = (agent.total_updates - agent.updates) * cfg.steps_per_update / max(sps, 1e-9)
                    folder.write_status("running", update=agent.updates, frames=agent.frames,
                            total_frames=agent.total_updates * agent.frames_per_update,
                            score_mean100=_json_float(agent.score_mean()), score_count=len(agent.scores),
                            steps_per_s=round(sps, 1), frames_per_s=round(sps * agent.env.frames_per_step, 1),
                            wall_s=round(row["wall_s"], 1), eta_s=round(left, 1))
                timed_out = cfg.time_limit_minutes > 0 and now - t_start >= 60 * cfg.time_limit_minutes
                due = ((cfg.checkpoint_every and agent.updates % cfg.checkpoint_every == 0)
                       or (cfg.checkpoint_minutes > 0 and now - last_ckpt >= 60 * cfg.checkpoint_minutes))
                if due or last or timed_out or stop.requested:
                    try:
                        save_checkpoint(log_file)
                    except NonFiniteLoss as e:
                        folder.write_status("failed", error=str(e))
                        raise
                    last_ckpt = time.perf_counter()
                if (timed_out or stop.requested) and not last:
                    status = "paused"
                    break
    except (NonFiniteLoss, KeyboardInterrupt):
        raise
    except Exception as e:  # e.g. a full disk: the status must not stay "running"
        with contextlib.suppress(Exception):
            folder.write_status("failed", error=f"{type(e).__name__}: {e}", update=agent.updates)
        raise
    finally:
        bar.close()
        agent.env.close()
    wall = wall0 + time.perf_counter() - t_start
    result = {"status": status, "update": agent.updates, "frames": agent.frames, "episodes": agent.episodes,
              "score_mean100": agent.score_mean()}
    folder.write_status(status, **{k: v for k, v in result.items() if k != "status"},
            score_count=len(agent.scores), wall_s=round(wall, 1),
            frames_per_s=round(agent.frames / wall, 1) if wall > 0 else None)
    return result


def _command(cfg, out: Path, resume: bool) -> str:
    """The command that (re)started a run, as a reader would type it: ``python -m softq.rl ...`` from the command
    line as given; for a run started from Python (a chapter, a test), the equivalent command built from ``cfg``.
    Never the absolute path of ``softq/rl/__main__.py`` on the machine that ran it."""
    import shlex

    if sys.argv and Path(sys.argv[0]).name == "__main__.py" and Path(sys.argv[0]).parent.name == "rl":
        return "python -m softq.rl " + shlex.join(sys.argv[1:])
    args = ["train", *cli_args(cfg), "--out", shown(out)] + (["--resume"] if resume else [])
    return "python -m softq.rl " + shlex.join(args)


def cli_args(cfg) -> list[str]:
    """``cfg`` as ``python -m softq.rl train`` options: ``--field value`` for every field."""
    args = []
    for k, v in cfg.as_dict().items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args
