"""Figures of the book, written by code: :func:`savefig` saves every figure as PNG (notebooks, README) and SVG.

Learning curves (Figures 1-3) are read from the results layout of :mod:`softq.rl.experiments.loop`,
``<experiment>/<rule>/seed<k>/progress.csv``: :func:`read_runs`, :func:`curve_stats`, :func:`plot_learning_curves`,
:func:`learning_curve_grid`. They are drawn so that they cannot mislead: with fewer than :data:`MIN_SEEDS_FOR_BAND`
seeds every seed is a thin line and the mean over seeds a thick one (a band over three seeds that split into
learners and stalls says nothing and leaves the score's range); with more, the mean and a band, which must lie
inside the game's score range (:data:`SCORE_RANGES`; a band outside it raises); the panels of one game share one
y scale.

In smoke mode (``softq.config.SMOKE``) figures go to ``build/figures-smoke/`` so a smoke run never overwrites the
book's figures in ``figures/``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np

from softq import config
from softq.regularized import Backup
from softq.rl.agents.base import variant_name  # noqa: F401  (chapters use them)
from softq.rl.experiments.folder import has_runs, read_log, read_runs, run_record, run_records

__all__ = ["figure_dir", "savefig", "read_runs", "has_runs", "curve_stats", "plot_learning_curves",
           "MIN_SEEDS_FOR_BAND", "CURVES_KEY", "SCORE_RANGES", "score_range", "draw_band",
           "learning_curve_grid", "game_length_trace", "game_lengths",
           "RULE_STYLE", "run_records", "config_spread", "budget_caption",
           "plot_runs", "plot_pairs", "run_record"]

#: Colours and labels of the update rules in every learning-curve figure.
RULE_STYLE = {"naive": ("C1", "naive (1-step entropy bonus, eq 79)"),
              "proper": ("C0", "proper (entropy in the returns, eq 80)"),
              "soft_q": ("C2", "soft Q-learning, Q = V + tau log pi (Sec 6.3)"),
              # DQN's variants (Section 6.2), named as their run folders are (variant_name): Figure 2's legend
              variant_name(Backup.HARD, 0.1, 1): ("k", "standard (eq 81)"),
              variant_name(Backup.HARD, 0.1, 5): ("0.55", "standard, n=5"),
              **{variant_name(b, tau, 1): (color, f"soft ({'ent' if b == Backup.SOFT_ENT else 'KL'}), tau={tau:g} "
                                                  f"(eq {83 if b == Backup.SOFT_ENT else 82})")
                 for b, tau, color in ((Backup.SOFT_ENT, 0.1, "C3"), (Backup.SOFT_KL, 0.1, "C0"),
                                       (Backup.SOFT_ENT, 0.01, "C1"), (Backup.SOFT_KL, 0.01, "C2"))}}

#: Below this many seeds a learning-curve figure draws every seed and the mean, no band.
MIN_SEEDS_FOR_BAND = 5
#: How to read a learning-curve figure drawn by :func:`plot_learning_curves` (a caption line).
CURVES_KEY = (f"Thick: the mean over seeds; thin: each seed (with {MIN_SEEDS_FOR_BAND} or more seeds, the mean and "
              "one standard deviation shaded instead).")
#: The range of a game's score as the curves show it (the last-100-game mean): Pong's games end at 21 points,
#: CartPole-v1's episodes at 500 steps (one point a step). A game not listed has no range checked.
SCORE_RANGES = {"PongNoFrameskip-v4": (-21.0, 21.0), "CartPole-v1": (0.0, 500.0)}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def figure_dir() -> Path:
    """``figures/`` in full mode, ``build/figures-smoke/`` in smoke mode; ``$SOFTQ_FIGURES`` if set (a chapter run
    with changed parameters, ``python -m softq.book --set``, must not overwrite the book's figures)."""
    if os.environ.get("SOFTQ_FIGURES"):
        return Path(os.environ["SOFTQ_FIGURES"])
    return config.BUILD / "figures-smoke" if config.SMOKE else config.FIGURES


def savefig(fig, name: str, *, dpi: int = 150) -> tuple[Path, Path]:
    """Write ``fig`` (a matplotlib Figure) to ``<figure_dir>/<name>.png`` and ``.svg``; return both paths.

    ``name`` is a plain file stem (letters, digits, ``_``, ``-``), e.g. ``"ch01_mc_convergence"``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be a plain file stem (letters, digits, _ and -), got {name!r}")
    out = figure_dir()
    out.mkdir(parents=True, exist_ok=True)
    png, svg = out / f"{name}.png", out / f"{name}.svg"
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    # No timestamp and a fixed id salt: re-running a chapter rewrites byte-identical SVGs (clean git diffs).
    with matplotlib.rc_context({"svg.hashsalt": name}):
        fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    return png, svg


def game_length_trace(experiment: str | Path, rule: str, *, window_frames: float = 4e5
                      ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{seed: (frames [n], score_mean100 [n], frames per game [n])}`` of each run of ``rule``: at each log row
    ``i``, the mean length of the games finished over the ``window_frames`` frames before it,
    ``(frames[i] - frames[j]) / (episodes[i] - episodes[j])`` with ``j`` the last row at least ``window_frames``
    before ``i`` (the first row where the log is shorter). ``frames`` counts every environment's frames and
    ``episodes`` every finished game, so the ratio is the mean length of the games played then. NaN where no game
    finished in the window (and at the first row). With the score it shows how long games are at a given level of
    play: the entropy bonus's effect on episode lengths (chapter 7)."""
    if not (isinstance(window_frames, int | float) and math.isfinite(window_frames) and window_frames > 0):
        raise ValueError(f"window_frames must be a finite number > 0, got {window_frames!r}")
    scores = read_runs(experiment, rule)
    out = {}
    for seed, (frames, episodes) in read_runs(experiment, rule, y="episodes").items():
        n = min(len(frames), len(scores[seed][1]))  # a run still writing may have grown between the two reads
        frames, episodes = frames[:n], episodes[:n]
        j = np.maximum(np.searchsorted(frames, frames - window_frames, side="right") - 1, 0)
        games = episodes - episodes[j]
        with np.errstate(invalid="ignore", divide="ignore"):
            lengths = np.where(games > 0, (frames - frames[j]) / np.where(games > 0, games, 1), np.nan)
        out[seed] = (frames, scores[seed][1][:n], lengths)
    return out


def game_lengths(experiment: str | Path, rule: str, *, window_frames: float = 1e6) -> dict[int, float]:
    """``{seed: mean frames per finished game}`` of each run of ``rule`` over the last ``window_frames`` frames of
    its log: the last point of :func:`game_length_trace`. NaN where no game finished."""
    return {seed: float(lengths[-1])
            for seed, (_, _, lengths) in game_length_trace(experiment, rule, window_frames=window_frames).items()}


def curve_stats(runs: dict[int, tuple[np.ndarray, np.ndarray]], ddof: int = 1
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(x, mean, std, n_seeds)`` over seeds, at the x values every seed has logged (runs of one config log on
    the same grid; a run still going is cut to the common part). ``std`` is over seeds with ``ddof`` (1: the
    sample standard deviation; 0 with a single seed). Points where a seed has no value yet (NaN: no game finished)
    are NaN in ``mean``."""
    if not runs:
        raise ValueError("curve_stats: no runs")
    common = sorted(set.intersection(*(set(xs.tolist()) for xs, _ in runs.values())))
    x = np.array(common, dtype=float)
    ys = np.stack([yv[np.searchsorted(xs, x)] for xs, yv in runs.values()])  # x: logged by every seed
    n = len(runs)
    mean = ys.mean(0)
    std = ys.std(0, ddof=ddof if n > ddof else 0)
    return x, mean, std, n


def score_range(experiment: str | Path) -> tuple[float, float] | None:
    """The score range (:data:`SCORE_RANGES`) of the game an experiment's runs play (their ``config.json``), or
    None when it is not listed or no run has a config."""
    for cfg in Path(experiment).glob("*/seed*/config.json"):
        return SCORE_RANGES.get(run_record(cfg.parent)["config"].get("env"))
    return None


def draw_band(ax, x, lo, hi, *, color=None, limits: tuple[float, float] | None = None, what: str = "band"):
    """Shade ``lo..hi`` over ``x`` on ``ax``; a band that leaves ``limits`` (a score range) raises ValueError: a
    band that shows scores the game cannot have misleads."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    if limits is not None:
        below, above = np.nanmin(lo, initial=np.inf), np.nanmax(hi, initial=-np.inf)
        if below < limits[0] - 1e-9 or above > limits[1] + 1e-9:
            raise ValueError(f"{what}: spans {below:.3g} to {above:.3g}, outside the score range {limits}: refused "
                             f"(draw each seed instead)")
    ax.fill_between(x, lo, hi, color=color, alpha=0.25, lw=0)


def plot_learning_curves(ax, experiment: str | Path, rules, *, y: str = "score_mean100", ddof: int = 1,
                         labels: dict[str, str] | None = None, band: str = "auto",
                         limits: tuple[float, float] | None = None) -> dict[str, dict]:
    """Draw each rule's runs on ``ax``: every seed as a thin line and the mean over seeds as a thick one; with at
    least :data:`MIN_SEEDS_FOR_BAND` seeds and ``band="auto"``, the mean and one standard deviation shaded
    instead (``band="sd"`` asks for the band with any number of seeds, ``"none"`` for the seeds always). ``limits``
    (default: the game's :func:`score_range`, for ``y = score_mean100``): a seed's curve or a band outside it
    raises ValueError. Return, per rule, ``{"n_seeds", "final_mean", "final_std", "final_seeds" ({seed: value}),
    "frames"}`` at the last point every seed has logged."""
    if band not in ("auto", "sd", "none"):
        raise ValueError(f"band must be 'auto', 'sd' or 'none', got {band!r}")
    if limits is None and y == "score_mean100":
        limits = score_range(experiment)
    summary = {}
    for rule in rules:
        runs = read_runs(experiment, rule, y=y)
        if not runs:
            continue
        x, mean, std, n = curve_stats(runs, ddof)
        color, label = RULE_STYLE.get(rule, (None, rule))
        label = (labels or {}).get(rule, label)
        shade = band == "sd" or (band == "auto" and n >= MIN_SEEDS_FOR_BAND)
        for seed, (xs, ys) in runs.items():
            if limits is not None and not np.all(np.isnan(ys) | ((ys >= limits[0]) & (ys <= limits[1]))):
                raise ValueError(f"{experiment}/{rule}/seed{seed}: {y} outside the score range {limits}")
            if not shade:
                ax.plot(xs, ys, color=color, lw=0.7, alpha=0.45)
        ax.plot(x, mean, color=color, lw=2.0 if not shade else 1.5,
                label=f"{label}: mean of {n} seed{'s' * (n > 1)}" + ("" if shade or n == 1 else " (thin: each)"))
        if shade:
            draw_band(ax, x, mean - std, mean + std, color=color, limits=limits, what=f"{rule}: mean +- 1 sd")
        ends = {seed: float(ys[np.searchsorted(xs, x[-1])]) for seed, (xs, ys) in runs.items()}
        summary[rule] = {"n_seeds": n, "final_mean": float(mean[-1]), "final_std": float(std[-1]),
                         "final_seeds": ends, "frames": float(x[-1])}
    if limits is not None:
        pad = 0.04 * (limits[1] - limits[0])
        ax.set_ylim(limits[0] - pad, limits[1] + pad)
    _label_axes(ax, y)
    return summary


def _label_axes(ax, y: str) -> None:
    """Frames on x (as 150k, 2M, 10M) and the logged quantity ``y`` on the y axis of a learning-curve panel."""
    ax.set_xlabel("frames")
    ax.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    ax.set_ylabel("mean score, last 100 games" if y == "score_mean100" else y)


def learning_curve_grid(experiments: dict[str, str | Path], rules, *, ncols: int = 3, y: str = "score_mean100",
                        ddof: int = 1, suptitle: str | None = None, caption=(), band: str = "auto"):
    """One panel per experiment (e.g. per Atari game: ``{"Pong": results/a2c-PongNoFrameskip-v4, ...}``), the
    paper's layout, each drawn by :func:`plot_learning_curves`, with the legend under the panels (never over a
    curve) and under it the ``caption`` lines (wrapped; e.g. :func:`budget_caption`). Panels of one game share one
    y scale (panels of different games keep their own, as in the paper). Returns ``(fig, {title: summary})``."""
    import textwrap

    import matplotlib.pyplot as plt

    if not experiments:
        raise ValueError("learning_curve_grid: no experiments")
    n = len(experiments)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    panels_h = 3.3 * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, panels_h), squeeze=False)
    out = {}
    games = {}
    for ax, (title, path) in zip(axes.flat, experiments.items(), strict=False):
        out[title] = plot_learning_curves(ax, path, rules, y=y, ddof=ddof, band=band)
        ax.set_title(title)
        env = next((run_record(c.parent)["config"].get("env") for c in Path(path).glob("*/seed*/config.json")), title)
        games.setdefault(env, []).append(ax)
    for same in games.values():  # one y scale for the panels of one game
        lo, hi = min(a.get_ylim()[0] for a in same), max(a.get_ylim()[1] for a in same)
        for a in same:
            a.set_ylim(lo, hi)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    legend_cols = 1 if ncols == 1 else min(len(labels), ncols) or 1
    legend_h = -(-len(labels) // legend_cols) * 7 * 1.5 / 72  # inches: rows of 7-point text
    width = max(40, int(4.6 * ncols * 72 / (0.6 * 6.5)))  # characters per caption line at 6.5 points
    text = "\n".join(textwrap.fill(line, width) for line in caption)
    caption_h = (text.count("\n") + 1) * 6.5 * 1.3 / 72 if text else 0.0
    footer = legend_h + caption_h + 0.12
    fig.set_figheight(panels_h + footer)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout(rect=(0, footer / (panels_h + footer), 1, 1))
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.01, (footer - 0.04) / (panels_h + footer)),
               ncol=legend_cols, fontsize=7, frameon=False)
    if text:
        fig.text(0.01, 0.04 / (panels_h + footer), text, fontsize=6.5, va="bottom", ha="left")
    return fig, out


def plot_runs(ax, runs: dict[str, str | Path], *, y: str = "score_mean100") -> dict[str, dict[str, float]]:
    """Draw single runs given by folder (``{label: results/<experiment>/<rule>/seed<k>}``), for comparisons across
    experiments; return ``{label: {"frames", "final"}}`` (the last logged point)."""
    summary = {}
    for k, (label, d) in enumerate(runs.items()):
        xs, ys = read_log(Path(d) / "progress.csv", "frames", y)
        if not len(xs):
            raise ValueError(f"{d}: progress.csv has no rows")
        ax.plot(xs, ys, color=f"C{k}", lw=1.5, label=label)
        summary[label] = {"frames": float(xs[-1]), "final": float(ys[-1])}
    _label_axes(ax, y)
    return summary


def plot_pairs(pairs: dict[str, dict[str, str | Path]], field: str, *, title: str = "", ncols: int = 0,
               panel_width: float = 4.6, height: float = 4.0):
    """A controlled comparison: one panel per entry of ``pairs`` (``{panel title: {label: run folder}}``), its runs
    drawn with :func:`plot_runs`. Each panel's runs are checked (:func:`softq.book.check.check`, which raises) to differ
    in the Config field ``field`` and in no other (run control aside, :func:`config_spread`); a panel with a run
    that has no ``progress.csv`` yet is left out. Prints each run's end (score, frames, status, wall time, frames/s)
    and puts :func:`budget_caption` of all the runs under the panels. ``ncols``: panels per row (0: all in one row);
    ``height``: of one row, in inches. Every panel has the same y scale (one game: noise must not look like
    learning in one panel and like noise in the next).

    Returns the figure, or None when no panel has all its runs."""
    import textwrap

    import matplotlib.pyplot as plt

    from softq.book.check import check

    present = {t: runs for t, runs in pairs.items() if all((Path(d) / "progress.csv").exists() for d in runs.values())}
    if not present:
        return None
    ncols = min(ncols or len(present), len(present))
    nrows = math.ceil(len(present) / ncols)
    width = max(6.0, panel_width * ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height * nrows + 0.4), squeeze=False, sharey=True)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    every = {}
    for ax, (panel, runs) in zip(axes.flat[:len(present)], present.items(), strict=True):
        records = {(label, 0): run_record(d) for label, d in runs.items()}
        every.update({(f"{panel}: {k}", 0): r for (k, _), r in records.items()})
        spread = config_spread(records)
        print(f"{panel}: fields of Config that differ between the runs:", spread)
        check(f"{panel}: the runs differ in {field} only: other fields of Config that differ",
              len(set(spread) - {field}), 0, atol=0)
        check(f"{panel}: ... and they do differ in {field}", float(field in spread), 1.0)
        ends = plot_runs(ax, runs)
        ax.set_title(f"{title}, {panel}" if title else panel, fontsize=9)
        ax.legend(fontsize=7, loc="best")
        for k, e in ends.items():
            st = records[k, 0]["status"]
            print(f"  {k}: {e['final']:.1f} at {e['frames'] / 1e6:.2f}M frames ({st.get('status', '?')}, "
                  f"{st.get('wall_s', 0) / 60:.0f} min, {st.get('frames_per_s', 0):.0f} frames/s)")
    caption = textwrap.fill(budget_caption(every), int(width * 72 / (0.6 * 6.5)))
    fig.text(0.01, 0.01, caption, fontsize=6.5)
    fig.tight_layout(rect=(0, 0.03 / nrows * (caption.count("\n") + 2), 1, 1))
    return fig


def config_spread(records: dict[tuple[str, int], dict], *, ignore=("rule", "seed")) -> dict[str, list]:
    """The Config fields whose values differ between the runs of ``records`` (:func:`run_records`), other than
    ``ignore`` and the run-control fields (:data:`softq.rl.experiments.loop.RUN_CONTROL`, which do not change what is
    computed): ``{field: [distinct values]}``. Empty when the runs are one configuration up to rule and seed."""
    from softq.rl.experiments.loop import RUN_CONTROL

    values: dict[str, set] = {}
    for meta in records.values():
        for k, v in meta["config"].items():
            if k not in RUN_CONTROL and k not in ignore:
                values.setdefault(k, set()).add(_json_key(v))
    missing = {k for k in values for meta in records.values() if k not in meta["config"]}
    return {k: sorted(vs, key=str) for k, vs in values.items() if len(vs) > 1 or k in missing}


def _json_key(v):
    """A hashable stand-in for a JSON value (lists become tuples)."""
    return tuple(v) if isinstance(v, list) else v


def budget_caption(records: dict[tuple[str, int], dict], paper_frames: float = 320e6) -> str:
    """One line for a figure drawn from ``records``: frames reached per run against the paper's budget, the
    machine, the optimizer and the wall time per run (from each run's ``status.json``)."""
    if not records:
        raise ValueError("budget_caption: no runs")
    frames = [m["status"].get("frames", 0) for m in records.values()]
    walls = [m["status"].get("wall_s") for m in records.values() if m["status"].get("wall_s")]
    machines = sorted({f"{m['machine'].get('gpu') or m['machine']['cpu']} ({m['machine']['cores']} cores)"
                       for m in records.values()})
    # A2C records its optimizer; DQN has one, Adam (softq.rl.agents.dqn.Config: no optimizer field)
    optim = sorted({m["config"].get("optimizer") or ("adam" if m["config"].get("algo") == "dqn" else "?")
                    for m in records.values()})
    done = sum(m["status"].get("status") == "done" for m in records.values())
    reach = (f"{min(frames) / 1e6:.1f}M" if min(frames) == max(frames)
             else f"{min(frames) / 1e6:.1f}-{max(frames) / 1e6:.1f}M")
    lo, hi = (round(min(walls) / 60), round(max(walls) / 60)) if walls else (0, 0)
    wall = "" if not walls else f", {lo} min per run" if lo == hi else f", {lo}-{hi} min per run"
    runs = f"{len(records)} run" + ("s" if len(records) != 1 else "")
    return (f"{runs} ({done} finished), {reach} frames each (paper: {paper_frames / 1e6:.0f}M); "
            f"{', '.join(machines)}; optimizer {', '.join(optim)}{wall}")
