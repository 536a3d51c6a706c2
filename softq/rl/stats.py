"""Statistics over a handful of seeds, with the field's library: `rliable` (Agarwal et al., 2021).

With three seeds a mean says little on its own, so every final score is reported with a 95% confidence interval,
and every comparison of two rules as a probability of improvement with its interval, never as a ranking:

- :func:`final_scores`: ``{rule: {seed: score}}`` at one point of the runs' logs (default: the last point every
  run of the experiment has logged);
- :func:`mean_intervals`: per rule, the mean over seeds and its 95% percentile-bootstrap interval
  (``rliable.library.get_interval_estimates``, ``rliable.metrics.aggregate_mean``);
- :func:`improvement_probability`: ``P(X > Y)`` for a run ``X`` of one rule and ``Y`` of another, ties counted
  one half (``rliable.metrics.probability_of_improvement``), with the same kind of interval.

The bootstrap resamples the seeds of each rule with replacement (rliable's stratified bootstrap over one task),
with a fixed ``numpy.random.RandomState`` so that a rebuilt book prints the same interval. :data:`METHOD` names
the method for captions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["METHOD", "REPS", "final_scores", "mean_intervals", "improvement_probability"]

#: Bootstrap resamples: 10,000 (rliable's default is 50,000; its probability of improvement loops in Python over
#: every pair of runs of every resample, about 1.5 s per 1,000 on one core); 1,000 in smoke mode.
REPS = 10_000


def _reps(reps: int | None) -> int:
    from softq.config import smoke

    reps = smoke(REPS, 1_000) if reps is None else reps
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 100:
        raise ValueError(f"reps must be an int >= 100, got {reps!r}")
    return reps


def _estimates(data, func, reps: int | None, seed: int):
    """``rliable.library.get_interval_estimates`` with a fixed RandomState; arch's FutureWarning about that
    argument (rliable 1.2 still passes it) silenced."""
    import warnings

    from rliable import library  # imported on use: it brings arch, scipy and statsmodels (~3 s)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arch")
        return library.get_interval_estimates(data, func, reps=_reps(reps),
                                              random_state=np.random.RandomState(seed))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rliable")
    except PackageNotFoundError:
        return "not installed"


#: How the intervals are computed, for a figure's caption.
METHOD = (f"95% percentile-bootstrap intervals over seeds (rliable {_version()}, stratified bootstrap, "
          f"{REPS:,} resamples); probability of improvement P(X > Y), ties counted 1/2")


def final_scores(experiment: str | Path, rules, *, frames: float | None = None, y: str = "score_mean100"
                 ) -> dict[str, dict[int, float]]:
    """``{rule: {seed: y at frames}}`` from the runs of ``experiment`` (:func:`softq.plots.read_runs`). ``frames``:
    a point every run has logged; default the last point common to every run of every rule. A run without a row
    at ``frames`` raises ValueError naming it."""
    from softq.plots import read_runs

    runs = {rule: read_runs(experiment, rule, y=y) for rule in rules}
    empty = [r for r, v in runs.items() if not v]
    if empty:
        raise ValueError(f"final_scores: no runs of {empty} in {experiment}")
    if frames is None:
        frames = min(float(xs[-1]) for v in runs.values() for xs, _ in v.values())
    out = {}
    for rule, v in runs.items():
        out[rule] = {}
        for seed, (xs, ys) in v.items():
            hit = np.flatnonzero(xs == frames)
            if not len(hit):
                raise ValueError(f"final_scores: {experiment}/{rule}/seed{seed} has no row at {frames:g} frames "
                                 f"(its last is at {xs[-1]:g})")
            out[rule][seed] = float(ys[hit[0]])
    return out


def _column(scores) -> np.ndarray:
    x = np.asarray(list(scores.values()) if isinstance(scores, dict) else scores, dtype=float).reshape(-1, 1)
    if len(x) == 0 or not np.isfinite(x).all():
        raise ValueError(f"scores: need at least one finite score, got {x.ravel().tolist()}")
    return x


def mean_intervals(scores: dict[str, dict[int, float] | list[float]], *, reps: int | None = None, seed: int = 0
                   ) -> dict[str, tuple[float, float, float]]:
    """``{rule: (mean, low, high)}``: the mean over seeds and its 95% bootstrap interval. ``scores``: as
    :func:`final_scores` returns, or ``{rule: [score, ...]}``. One seed gives the interval ``(x, x)``."""
    from rliable import metrics

    data = {k: _column(v) for k, v in scores.items()}
    point, interval = _estimates(data, lambda x: np.array([metrics.aggregate_mean(x)]), reps, seed)
    return {k: (float(point[k][0]), float(interval[k][0, 0]), float(interval[k][1, 0])) for k in data}


def improvement_probability(x: dict[int, float] | list[float], y: dict[int, float] | list[float], *,
                            reps: int | None = None, seed: int = 0) -> tuple[float, float, float]:
    """``(P(X > Y), low, high)``: the probability that a run of ``x`` scores above a run of ``y`` (ties 1/2) over
    every pair of their seeds, and its 95% bootstrap interval (each side's seeds resampled)."""
    from rliable import metrics

    point, interval = _estimates({"p": (_column(x), _column(y))}, metrics.probability_of_improvement, reps, seed)
    return float(point["p"]), float(interval["p"][0, 0]), float(interval["p"][1, 0])
