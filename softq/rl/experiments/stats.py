"""Statistics over a handful of seeds, with the field's library: `rliable` (Agarwal et al., 2021).

With three seeds a mean says little on its own, so every final score is reported with a 95% confidence interval,
and every comparison of two rules as a probability of improvement with its interval, never as a ranking:

- :func:`final_scores`: ``{rule: {seed: score}}`` at one point of the runs' logs (default: the last point every
  run of the experiment has logged);
- :func:`mean_intervals`: per rule, the mean over seeds and its 95% percentile-bootstrap interval
  (``rliable.library.get_interval_estimates``, ``rliable.metrics.aggregate_mean``);
- :func:`improvement_probability`: ``P(X > Y)`` for a run ``X`` of one rule and ``Y`` of another, ties counted
  one half (``rliable.metrics.probability_of_improvement``), with the same kind of interval;
- :func:`permutation_pvalue`: the exact two-sided permutation test of ``P(X > Y) = 1/2`` over every relabelling of
  the runs (every split enumerated: one run a side works too). A bootstrap interval over three seeds can exclude
  1/2 by chance (three runs of one rule above three of the other happen with probability 1/10 when the rules are
  the same), so :func:`score_comparison` names a ranking only when this test rejects at 5%: with three seeds a side
  it never can (its smallest p-value is 2 / C(6, 3) = 0.1), and the text says so.

The bootstrap resamples the seeds of each rule with replacement (rliable's stratified bootstrap over one task),
with a fixed ``numpy.random.RandomState`` so that a rebuilt book prints the same interval. :data:`METHOD` names
the method for captions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["METHOD", "REPS", "final_scores", "mean_intervals", "improvement_probability", "permutation_pvalue",
           "score_comparison",
           "common_end"]

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
    """``{rule: {seed: y at frames}}`` from the runs of ``experiment`` (:func:`softq.book.plots.read_runs`). ``frames``:
    a point every run has logged; default the last point common to every run of every rule
    (:func:`common_end`). A run without a row at ``frames`` raises ValueError naming it."""
    from softq.rl.experiments.folder import read_runs

    runs = {rule: read_runs(experiment, rule, y=y) for rule in rules}
    empty = [r for r, v in runs.items() if not v]
    if empty:
        raise ValueError(f"final_scores: no runs of {empty} in {experiment}")
    if frames is None:
        frames = common_end(experiment, rules)
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


def common_end(experiment: str | Path, rules) -> float:
    """The last frame count that every run of every rule in ``experiment`` has logged."""
    from softq.rl.experiments.folder import read_runs

    ends = [float(xs[-1]) for r in rules for xs, _ in read_runs(experiment, r).values()]
    if not ends:
        raise ValueError(f"common_end: no runs of {list(rules)} in {experiment}")
    return min(ends)


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


def _poi(x, y):
    """P(X > Y) + P(X = Y) / 2 over all pairs of the last axes of ``x [..., n]`` and ``y [..., m]``."""
    return ((x[..., :, None] > y[..., None, :]) + 0.5 * (x[..., :, None] == y[..., None, :])).mean(axis=(-1, -2))


def permutation_pvalue(x: dict[int, float] | list[float], y: dict[int, float] | list[float]) -> tuple[float, float]:
    """``(p, smallest)``: the exact two-sided permutation p-value of ``P(X > Y) = 1/2`` and the smallest p-value these
    group sizes can give, ``2 / C(n + m, n)`` (1 for one run a side). Under the null every split of the pooled runs
    into groups of the two sizes is equally likely; ``p`` is the fraction of the ``C(n + m, n)`` splits whose
    probability of improvement lies at least as far from 1/2 as the observed one (every split enumerated; a grid of
    seeds is small)."""
    from itertools import combinations
    from math import comb

    a, b = _column(x).ravel(), _column(y).ravel()
    smallest = min(1.0, 2 / comb(len(a) + len(b), len(a)))
    pooled = np.concatenate([a, b])
    splits = np.array(list(combinations(range(len(pooled)), len(a))))  # [C(n + m, n), n]
    first = np.zeros((len(splits), len(pooled)), dtype=bool)
    first[np.arange(len(splits))[:, None], splits] = True
    xs = pooled[None].repeat(len(splits), 0)[first].reshape(len(splits), len(a))
    ys = pooled[None].repeat(len(splits), 0)[~first].reshape(len(splits), len(b))
    far = np.abs(_poi(xs, ys) - 0.5) >= abs(float(_poi(a[None], b[None])[0]) - 0.5) - 1e-12
    return float(min(1.0, far.mean())), smallest


def score_comparison(experiment: str | Path, rules, comparisons, *, frames: float | None = None,
                  reps: int | None = None) -> dict:
    """The final scores of ``experiment`` (:func:`final_scores`), each rule's mean with its interval
    (:func:`mean_intervals`) and, for each ``(x, y)`` of ``comparisons``, ``P(x > y)`` with its interval
    (:func:`improvement_probability`), as ``{"frames", "scores", "means", "improvement": {(x, y): (p, lo, hi)},
    "text": [lines]}``. A comparison whose interval contains 1/2 is reported as one the seeds cannot rank."""
    at = common_end(experiment, rules) if frames is None else frames
    scores = final_scores(experiment, rules, frames=at)
    means = mean_intervals(scores, reps=reps)
    text = [f"final scores at {at / 1e6:g}M frames ({METHOD}):"]
    for rule in rules:
        m, lo, hi = means[rule]
        seeds = ", ".join(f"{v:+.1f}" for _, v in sorted(scores[rule].items()))
        interval = f"95% CI [{lo:+.1f}, {hi:+.1f}]" if len(scores[rule]) > 1 else "no interval from one seed"
        text.append(f"  {rule:>7}: mean {m:+.1f}, {interval}; seeds {sorted(scores[rule])}: {seeds}")
    improvement = {}
    for x, y in comparisons:
        p, lo, hi = improvement[x, y] = improvement_probability(scores[x], scores[y], reps=reps)
        pvalue, smallest = permutation_pvalue(scores[x], scores[y])
        n, m = len(scores[x]), len(scores[y])
        if pvalue < 0.05:
            verdict = f"{x if p > 0.5 else y} scores higher (exact permutation test, p = {pvalue:.3f})"
        elif smallest >= 0.05:
            verdict = (f"these seeds support no ranking: with {n} and {m} seeds no outcome can (exact permutation "
                       f"test: p = {pvalue:.2f}, and at best {smallest:.2f})")
        else:
            verdict = f"these seeds support no ranking (exact permutation test, p = {pvalue:.2f})"
        interval = f"95% CI [{lo:.2f}, {hi:.2f}]" if n > 1 or m > 1 else "no interval from one pair"
        text.append(f"  P({x} > {y}) = {p:.2f}, {interval} over {n} x {m} pairs of runs; {verdict}")
    return {"frames": at, "scores": scores, "means": means, "improvement": improvement, "text": text}
