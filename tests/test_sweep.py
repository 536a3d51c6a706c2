"""Every chapter's checks hold for a reader's parameters: a property-based sweep of chapters 1-5 and 9.

For each chapter, ``chNN(x)`` runs the chapter's key computations on a drawn :class:`Instance` ``x`` (what a reader
gets with ``python -m softq.book NN --set S=... --set TAU=...``, the chapter's seeds offset by ``x.seed``) and makes
the chapter's checks with the chapter's tolerances (``softq.book.check``: a false claim raises). Hypothesis draws the
instances over the ranges a reader would try: ``S`` 2-20, ``A`` 2-6, ``gamma`` 0.5-0.97, ``tau`` 0.05-2, ``n`` 1-5, the
sizes of the networks, the seeds and the Monte Carlo sizes (capped, so that a draw takes seconds).

- ``make test``: ``SOFTQ_SWEEP_DRAWS`` (default 5) draws per chapter, derandomized (a fixed seed: CI is
  reproducible); a failure shrinks to a small instance and names it, as any hypothesis test does.
- ``make sweep``: ``SOFTQ_SWEEP_DRAWS=200`` distinct random draws a chapter (hypothesis's repeats are drawn
  again), besides the explicit examples; every draw runs (a failing one is recorded, not shrunk),
  a failure is printed with its instance at once and again at the end, and ``SOFTQ_SWEEP_OUT``
  (``results/sweep/last.json``) receives each chapter's draws, failures and time, with the commit, machine and date
  of its run, and the README's chapter table its draws and failures. ``make sweep CHAPTERS="03 05"`` runs some
  chapters and replaces only their records.

Float parameters are drawn on a grid of 1e-3 (``gamma=0.702``), so that a printed instance is the instance. An
instance that once failed stays here as an ``@example``, with the reason in a comment.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import re
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch.func import grad, jacrev

import softq.bandit as bd
import softq.equivalence as eq
import softq.family as fam
import softq.natural as nat
import softq.policy_gradient as pg
import softq.tabular as tb
from softq.bandit import loglog_slope
from softq.book.check import check, check_le
from softq.config import DTYPE, generator
from softq.losses import soft_q_loss, value_loss
from softq.montecarlo import sample_deviation_bound
from softq.regularized import (
    backup_value,
    boltzmann_policy,
    discounted_sum,
    entropy,
    kl,
    log_boltzmann_policy,
    n_step_soft_return,
    policy_value,
    q_from_value_and_policy,
    soft_value,
    td_errors,
)
from softq.rl.experiments.provenance import git_commit

DRAWS = int(os.environ.get("SOFTQ_SWEEP_DRAWS", "5"))
OUT = os.environ.get("SOFTQ_SWEEP_OUT")      # set by `make sweep`: record every draw, write the result there
SWEEP = OUT is not None
ULP = torch.finfo(DTYPE).eps

SWEEP_SETTINGS = settings(max_examples=DRAWS, deadline=None, derandomize=not SWEEP, database=None,
                          suppress_health_check=list(HealthCheck), print_blob=False)


@dataclass(frozen=True)
class Instance:
    """One reader's parameters. ``seed`` offsets every seed of the chapter (``random_mdp(S, A, GAMMA, seed=0)`` is
    drawn with ``seed=x.seed``); ``features``/``hidden``: the chapter's network; ``mc``: its Monte Carlo size."""

    S: int = 6
    A: int = 3
    gamma: float = 0.9
    tau: float = 0.5
    n: int = 3
    seed: int = 0
    features: int = 3
    hidden: int = 4
    mc: int = 4000

    def __str__(self) -> str:
        return "Instance(" + ", ".join(f"{k}={v!r}" for k, v in asdict(self).items()) + ")"


def _grid(low: float, high: float) -> st.SearchStrategy[float]:
    return st.integers(round(low * 1000), round(high * 1000)).map(lambda k: k / 1000)


@st.composite
def instances(draw, S=(2, 20), features=(1, 6), hidden=(1, 8), mc=(2000, 20000)):
    return Instance(S=draw(st.integers(*S)), A=draw(st.integers(2, 6)), gamma=draw(_grid(0.5, 0.97)),
                    tau=draw(_grid(0.05, 2.0)), n=draw(st.integers(1, 5)), seed=draw(st.integers(0, 10_000)),
                    features=draw(st.integers(*features)), hidden=draw(st.integers(*hidden)),
                    mc=draw(st.integers(*mc)))


# --- the sweep's bookkeeping: every draw counted, every failure kept with its instance -----------------------------

RESULTS: dict[str, dict] = {}
STARTED = time.time()


def _run(chapter: str, fn, x: Instance) -> None:
    rec = RESULTS.setdefault(chapter, {"draws": 0, "failures": [], "seconds": 0.0, "seen": set()})
    if SWEEP and x in rec["seen"]:                  # hypothesis can draw an instance twice: count and run it once
        return
    rec["seen"].add(x)
    rec["draws"] += 1
    start = time.perf_counter()
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(DTYPE)                  # as every chapter's first cell does
    torch.set_num_threads(1)                        # tiny matrices: threads only add overhead
    try:
        fn(x)
    except Exception as err:
        if not SWEEP:
            raise
        frames = traceback.extract_tb(err.__traceback__)
        here = [f for f in frames if f.filename == __file__] or frames     # the chapter's line that failed
        fail = {"instance": asdict(x), "error": f"{type(err).__name__}: {err}",
                "where": f"{Path(here[-1].filename).name}:{here[-1].lineno}: {here[-1].line}"}
        rec["failures"].append(fail)
        # at once, past pytest's capture: a sweep stopped early still names what failed
        _say(f"sweep: chapter {chapter} failed on {x}\n  {fail['error']} ({fail['where']})")
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        rec["seconds"] += time.perf_counter() - start


_CAPTURE: list = []   # pytest's capture manager, set by the fixture below: _say prints past it


@pytest.fixture(scope="module", autouse=True)
def _capture_manager(pytestconfig):
    _CAPTURE[:] = [pytestconfig.pluginmanager.getplugin("capturemanager")]
    yield


def _say(text: str) -> None:
    """Print ``text`` now, on the terminal, whatever pytest captures (``capsys.disabled`` does the same)."""
    capman = _CAPTURE[0] if _CAPTURE else None
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print("\n" + text, flush=True)


def _failures(chapter: str) -> str:
    fails = RESULTS.get(chapter, {}).get("failures", [])
    return "\n".join(f"  {Instance(**f['instance'])}\n    {f['error']} ({f['where']})" for f in fails)


#: at import: the code this process runs (softq/ and tests/), whatever is committed meanwhile
COMMIT = git_commit(("softq", "tests")) if SWEEP else None


def merge_result(old: dict | None, chapters: dict[str, dict], run: dict) -> dict:
    """The sweep's record after a run of some chapters: ``old``'s chapters, those run now replaced (each keeps the
    run it came from: date, commit, machine, draws per chapter), and the totals over all of them."""
    kept = dict(old.get("chapters", {})) if old else {}
    for name, rec in chapters.items():
        kept[name] = {**{k: v for k, v in rec.items() if k != "seen"}, "seconds": round(rec["seconds"], 1), **run}
    kept = dict(sorted(kept.items()))
    return {"what": "make sweep: tests/test_sweep.py, chapters 1-5 and 9 on random instances of a reader's parameters; "
                    "each chapter's record says when, at which commit and on which machine it ran",
            "draws": sum(r["draws"] for r in kept.values()),          # distinct instances, explicit examples included
            "failures": sum(len(r["failures"]) for r in kept.values()),
            "chapters": kept}


README = Path(__file__).resolve().parents[1] / "README.md"
LAST = Path(__file__).resolve().parents[1] / "results" / "sweep" / "last.json"


def readme_with_sweep(readme: str, doc: dict) -> str:
    """``readme`` with the last cell (``sweep``) of each chapter row of its chapter table set from the sweep's record
    ``doc`` (:func:`merge_result`): ``"204 draws, 0 failed"``, empty for a chapter the sweep does not run."""
    def row(m: re.Match) -> str:
        rec = doc["chapters"].get(m["num"])
        cell = f" {rec['draws']} draws, {len(rec['failures'])} failed " if rec else " "
        return f"{m['head']}|{cell}|"
    return re.sub(r"^(?P<head>\| \[(?P<num>\d\d) [^\n]*?)\|[^|\n]*\|$", row, readme, flags=re.M)


def test_merge_result_replaces_only_the_chapters_run():
    run_a, run_b = {"commit": "a", "draws_per_chapter": 200}, {"commit": "b", "draws_per_chapter": 200}
    first = merge_result(None, {"01": {"draws": 200, "failures": [{"x": 1}], "seconds": 1.04, "seen": {1}},
                                "03": {"draws": 201, "failures": [], "seconds": 2.0}}, run_a)
    assert first["draws"] == 401 and first["failures"] == 1 and "seen" not in first["chapters"]["01"]
    second = merge_result(first, {"01": {"draws": 200, "failures": [], "seconds": 3.0}}, run_b)
    assert second["draws"] == 401 and second["failures"] == 0
    assert second["chapters"]["01"]["commit"] == "b" and second["chapters"]["03"]["commit"] == "a"
    assert list(second["chapters"]) == ["01", "03"]


def test_the_readme_table_shows_the_last_sweep():
    """The README's chapter table carries each chapter's draws and failures from ``results/sweep/last.json``
    (``make sweep`` writes both)."""
    readme = README.read_text(encoding="utf-8")
    assert readme_with_sweep(readme, json.loads(LAST.read_text(encoding="utf-8"))) == readme, \
        "README.md's sweep column differs from results/sweep/last.json"
    doc = {"chapters": {"03": {"draws": 7, "failures": [{}]}}}
    assert "| 7 draws, 1 failed |" in readme_with_sweep(readme, doc)       # the rewrite reaches the table


@pytest.fixture(scope="module", autouse=True)
def _write_result():
    yield
    if not SWEEP or not RESULTS:
        return
    run = {"draws_per_chapter": DRAWS, "commit": COMMIT, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": {"node": platform.node(), "system": platform.platform(), "processor": platform.processor(),
                       "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}}
    path = Path(OUT)
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    doc = merge_result(old, RESULTS, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    if path.resolve() == LAST:                      # the committed record: the README's table shows it
        README.write_text(readme_with_sweep(README.read_text(encoding="utf-8"), doc), encoding="utf-8")
    now = {k: RESULTS[k] for k in sorted(RESULTS)}
    _say(f"sweep: chapters {', '.join(now)}: {sum(r['draws'] for r in now.values())} draws, "
          f"{sum(len(r['failures']) for r in now.values())} failures, {round(time.time() - STARTED, 1)} s -> {path} "
          f"({doc['draws']} draws, {doc['failures']} failures over its {len(doc['chapters'])} chapters)")


def _sweep(chapter: str, fn, strategy, examples=()):
    """The test of one chapter: ``fn`` on every drawn instance (and on each explicit one, ``(instance, why)``)."""

    def run(x: Instance) -> None:
        _run(chapter, fn, x)

    for x, _why in examples:
        run = example(x)(run)

    def draws(n: int) -> None:
        settings(SWEEP_SETTINGS, max_examples=n)(given(strategy)(run))()

    def test() -> None:
        draws(DRAWS)
        # hypothesis counts an instance it draws twice twice (chapter 5's domain filter repeats about one draw in
        # six), and _run runs it once: `make sweep` draws again until DRAWS distinct instances besides the examples
        for _ in range(10):
            short = DRAWS + len(examples) - RESULTS[chapter]["draws"] if SWEEP else 0
            if short <= 0:
                break
            draws(short)
        fails = _failures(chapter)
        assert not fails, f"chapter {chapter}: {len(RESULTS[chapter]['failures'])} of {RESULTS[chapter]['draws']} " \
                          f"draws failed:\n{fails}"

    test.__name__ = f"test_chapter_{chapter}_holds_for_a_readers_parameters"
    return test


def _se_mean(y: torch.Tensor, groups: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of ``y`` within each of ``k`` groups (``groups: [N]`` in ``0..k-1``)."""
    mean = torch.stack([y[groups == i].mean() for i in range(k)])
    se = torch.stack([y[groups == i].std() / math.sqrt(int((groups == i).sum())) for i in range(k)])
    return mean, se


# --- chapter 1: the entropy-regularized bandit -----------------------------------------------------------------------


def ch01(x: Instance) -> None:
    TAU, A, s0 = x.tau, x.A, x.seed
    B = bd.random_bandit(A, seed=s0)
    pi = bd.random_policies(1, A, generator(s0 + 1))[0]
    per_sample = bd.AffineEstimator(c=(-TAU * kl(pi, B.pi_bar)).expand(A, 1), d=torch.ones(A, 1))
    n = x.mc
    eta_mc = per_sample.sample_mean(*bd.sample(B, pi, n, generator(s0 + 2)))
    check_le("eta: |Monte Carlo - exact| <= its deviation bound (delta 1e-9)", (eta_mc - bd.eta(pi, B, TAU)).abs(),
             per_sample.deviation_bound(pi, B, n), eq=1)

    piB = boltzmann_policy(B.r_bar, TAU, B.pi_bar)
    gen = generator(s0 + 3)
    candidates = torch.cat([bd.random_policies(500, A, gen, concentration=1.0),
                            bd.random_policies(500, A, gen, concentration=0.1),
                            boltzmann_policy(torch.log(piB) + 1e-3 * torch.randn(500, A, generator=gen), 1.0)])
    eta_best = bd.eta(piB, B, TAU)
    round_2 = 4 * A * ULP * float(B.r_bar.abs().max() + eta_best.abs() + TAU * (kl(candidates, B.pi_bar).max() + 1))
    check_le("eq 2: eta(pi) <= eta(pi^B) for random policies", bd.eta(candidates, B, TAU), eta_best, atol=round_2,
             eq=2)
    check("eq 6: eta(pi^B) - eta(pi) = tau KL[pi || pi^B]", eta_best - bd.eta(candidates, B, TAU),
          TAU * kl(candidates, piB), eq=6)
    for seed in range(3):
        b = bd.random_bandit(4, seed=s0 + 100 + seed)
        pis = bd.random_policies(100, 4, generator(s0 + seed), concentration=0.5)
        rhs = soft_value(b.r_bar, TAU, b.pi_bar) - TAU * kl(pis, boltzmann_policy(b.r_bar, TAU, b.pi_bar))
        check("eq 6 on random bandits and policies", bd.eta(pis, b, TAU), rhs, eq=6)

    net = bd.ActionValueMLP(A, n_features=x.features, hidden=x.hidden, seed=s0 + 1)
    theta = net.init_params(seed=s0 + 2)
    q = net(theta)
    pi_theta = boltzmann_policy(q, TAU, B.pi_bar)
    pge = bd.policy_gradient_estimator(net, theta, B, TAU)
    check("eq 7: E[score * r] - tau grad KL = autograd grad eta", pge.exact(pi_theta, B),
          bd.grad_eta(net, theta, B, TAU), eq=7)
    pi_sampling = bd.random_policies(1, A, generator(s0 + 4))[0]
    qreg = bd.q_regression_estimator(net, theta)
    check("eq 9: E[grad q (q - r)] = autograd grad of eq 8", qreg.exact(pi_sampling, B),
          grad(lambda th: bd.q_regression_loss(net(th), pi_sampling, B))(theta), eq=9)
    for est, pol, label, e in [(pge, pi_theta, "eq 7: sampled policy gradient", 7),
                               (qreg, pi_sampling, "eq 9: sampled q-regression gradient", 9)]:
        sampled = est.sample_mean(*bd.sample(B, pol, n, generator(s0 + 6 + e)))
        check_le(f"{label}: |MC - exact| <= deviation bound", (sampled - est.exact(pol, B)).abs(),
                 est.deviation_bound(pol, B, n), atol=1e-12, eq=e)

    # eq 11: the typed v is wrong at tau != 1 (at tau = 1 it is right by accident, and checked to hold)
    err11 = None if TAU == 1 else "the /tau is outside exp"
    v_typed = TAU * torch.log((B.pi_bar * torch.exp(q) / TAU).sum())
    v_num = soft_value(q, TAU, B.pi_bar)
    check("eq 11 as typed vs soft_value", v_typed, v_num, eq=11, erratum=err11)
    check("eq 12 with the typed v: sum_a pi_bar exp((q - v)/tau) = 1",
          (B.pi_bar * torch.exp((q - v_typed) / TAU)).sum(), 1.0, eq=11, erratum=err11)
    check("eq 12: pi_bar exp((q - v)/tau) = boltzmann_policy(q)", B.pi_bar * torch.exp((q - v_num) / TAU), pi_theta,
          eq=12)
    s = bd.soft_quantities(q, TAU, B.pi_bar)
    check("eq 13: v = E_piB[q] - tau KL", s.v, (s.pi * s.q).sum() - TAU * s.kl, eq=13)
    check("eq 14: q = v + tau log(piB / pibar)", q_from_value_and_policy(s.v, s.log_pi, TAU, B.pi_bar), q, eq=14)

    J = bd.soft_jacobians(net, theta, TAU, B.pi_bar)
    err = q - B.r_bar
    grad9 = qreg.exact(pi_sampling, B)
    check("eq 15", J.dq.T @ (pi_sampling * err), grad9, eq=15)
    check("eq 17", TAU * J.dlog_pi.T @ (pi_sampling * err) + J.dv * (pi_sampling * err).sum(), grad9, eq=17)
    kl_of = lambda th: kl(boltzmann_policy(net(th), TAU, B.pi_bar), B.pi_bar)  # noqa: E731
    fd = bd.central_difference(kl_of, theta, h=1e-5)
    check_le("eq 18: |autograd grad KL - central differences| <= their error bound", (J.dkl - fd.value).abs(),
             fd.error, eq=18)
    log_ratio = s.log_pi - torch.log(B.pi_bar)
    check("eq 19 -> 20: sum_a grad piB(a) = 0", J.dpi.sum(0), torch.zeros(net.n_params), atol=1e-14, eq=20)
    check("eq 20", J.dlog_pi.T @ (s.pi * log_ratio), J.dkl, eq=20)
    est21 = bd.AffineEstimator(c=J.dlog_pi * log_ratio[:, None], d=torch.zeros_like(J.dlog_pi))
    check_le("eq 21: Monte Carlo within its deviation bound of grad KL",
             (est21.sample_mean(*bd.sample(B, s.pi, n, generator(s0 + 21))) - J.dkl).abs(),
             est21.deviation_bound(s.pi, B, n), atol=1e-12, eq=21)

    grad_L = bd.q_regression_gradient(net, theta, B, TAU)
    check("eqs 15-17 at pi = piB", qreg.exact(s.pi, B), grad_L, eq=22)
    soft = lambda th: bd.soft_quantities(net(th), TAU, B.pi_bar)  # noqa: E731
    first22 = TAU * J.dlog_pi.T @ (s.pi * (s.v - B.r_bar)) + TAU**2 * J.dkl
    semi22 = grad(lambda th: (lambda t: (t.pi.detach() * t.v * (t.v + TAU * t.kl - B.r_bar).detach()).sum())(
        soft(th)))(theta)
    check("eq 22, semi-gradient", first22 + semi22, grad_L, eq=22)
    pg_term = bd.policy_gradient_term(net, theta, B, TAU)
    ve_term = bd.value_error_gradient(net, theta, B, TAU)
    check("eq 23: grad L = -tau grad eta + value-error grad", pg_term + ve_term, grad_L, eq=23)
    check("eq 23: the policy-gradient term is -tau times eq 7", pg_term, -TAU * pge.exact(s.pi, B), eq=23)
    check("eq 22 = eq 23 term by term", torch.stack([first22, semi22]), torch.stack([pg_term, ve_term]), eq=23)
    half_sq_err = 0.5 * ((q - B.r_bar) ** 2 + B.sigma**2)
    value_res = s.v - B.r_bar + TAU * s.kl
    check("left side: differentiating the sampling policy adds E[score (q-r)^2/2]",
          bd.q_regression_gradient(net, theta, B, TAU, hold_sampling=False) - grad_L,
          J.dlog_pi.T @ (s.pi * half_sq_err), eq=23)
    check("value error: differentiating the KL in the target adds tau grad KL E[v - r + tau KL]",
          bd.value_error_gradient(net, theta, B, TAU, hold_target=False) - ve_term,
          TAU * J.dkl * (s.pi * value_res).sum(), eq=23)

    C_SHIFT = 5.0
    B_shift = bd.Bandit(B.r_bar + C_SHIFT, B.sigma, B.pi_bar)
    size = 1 + B.r_bar.abs().max().item() + abs(C_SHIFT)
    check("exercise: pi^B of r_bar + c = pi^B of r_bar", boltzmann_policy(B_shift.r_bar, TAU, B.pi_bar), piB,
          atol=1e-12 * size / TAU)
    check("exercise: eta rises by c", bd.eta(candidates, B_shift, TAU) - bd.eta(candidates, B, TAU), C_SHIFT,
          atol=1e-12 * size)
    check("exercise: grad L changes by -c grad v", bd.q_regression_gradient(net, theta, B_shift, TAU) - grad_L,
          -C_SHIFT * J.dv, atol=1e-12 * size)


test_chapter_01 = _sweep("01", ch01, instances(S=(1, 1)), examples=[
    (Instance(A=5, tau=1.0), "at tau = 1 the typed eq 11 is right: the erratum checks must not expect a failure"),
    (Instance(S=1, A=4, gamma=0.808, tau=0.05, n=2, seed=886, features=4, hidden=1, mc=2000),
     "eq 18's finite differences had a fixed tolerance 1e-8; at tau = 0.05 their O(h^2) error is 1.1e-7"),
    (Instance(S=1, A=2, gamma=0.5, tau=0.05, n=3, seed=5, features=5, hidden=7, mc=18459),
     "eq 18's bound was 0 where pi^B saturates (KL flat in float64, every difference 0); autograd says 2e-17"),
    (Instance(S=1, A=6, gamma=0.5, tau=0.05, n=4, seed=10000, features=4, hidden=4, mc=11264),
     "eq 21's sampled mean, checked within 5 standard errors, missed by 0.005: a peaked pi^B at tau = 0.05 makes "
     "its distribution far from Gaussian (now a Bernstein bound)"),
])


# --- chapter 2: entropy-regularized MDPs ------------------------------------------------------------------------------


def ch02(x: Instance) -> None:
    S, A, GAMMA, TAU, s0 = x.S, x.A, x.gamma, x.tau, x.seed
    mdp = tb.random_mdp(S, A, GAMMA, seed=s0)
    pi_bar = tb.random_policy(S, A, seed=s0 + 1)
    pi = tb.random_policy(S, A, seed=s0 + 2)
    Q = 3 * torch.randn(S, A, generator=torch.Generator().manual_seed(s0 + 3))

    KL = tb.policy_kl(mdp, pi, pi_bar)
    V, Qpi = tb.v_pi(mdp, pi, TAU, pi_bar), tb.q_pi(mdp, pi, TAU, pi_bar)
    r_minus_kl = mdp.R - TAU * KL[:, None]
    N = 400
    tail = float(GAMMA**N * r_minus_kl.abs().max() / (1 - GAMMA))
    check("V^pi by linear solve = truncated sum", V, tb.expected_discounted_sum(mdp, pi, r_minus_kl, N, given="state"),
          atol=1e-10 + tail, eq=24)
    check("Q^pi = truncated sum + tau KL", Qpi, tb.expected_discounted_sum(mdp, pi, r_minus_kl, N) + TAU * KL[:, None],
          atol=1e-10 + tail, eq=25)
    lanes, H = max(50, x.mc // 20), 200
    H_tail = float(GAMMA**H * r_minus_kl.abs().max() / (1 - GAMMA))
    start = torch.arange(S).repeat(lanes)
    roll = tb.sample_rollout(mdp, pi, start, H, seed=s0 + 4)
    G = n_step_soft_return(roll.rewards, KL[roll.states], torch.zeros(len(start)), roll.dones, GAMMA, TAU)[0]
    mean, se = _se_mean(G, start, S)
    check("V^pi = Monte Carlo entropy-augmented return (5 s.e.)", mean, V, atol=5 * se.max().item() + H_tail, eq=24)
    check("V^pi = E_pi[Q^pi] - tau KL", V, policy_value(Qpi, pi, TAU, pi_bar), atol=1e-12, eq=26)

    piB, VQ = boltzmann_policy(Q, TAU, pi_bar), soft_value(Q, TAU, pi_bar)
    others = torch.cat([tb.random_policy(S * 1000, A, seed=s0 + 6, concentration=c).reshape(1000, S, A)
                        for c in (0.1, 1.0, 10.0)])                  # the chapter's 3000 (full mode)
    objective = policy_value(Q, others, TAU, pi_bar)
    check("E_pi[Q] - tau KL[pi||pi_bar] = V_Q - tau KL[pi||pi^B_Q]", objective, VQ - TAU * kl(others, piB),
          atol=1e-12, eq=27)
    round_27 = 4 * A * ULP * float(Q.abs().max() + VQ.abs().max() + TAU * (kl(others, pi_bar).max() + 1))
    check_le("no random policy beats pi^B_Q", objective.max(0).values - VQ, 0.0, atol=round_27, eq=27)
    naive = pi_bar * torch.exp(Q / TAU) / (pi_bar * torch.exp(Q / TAU)).sum(-1, keepdim=True)
    exp_err = ULP * (2 * float(Q.abs().max() + VQ.abs().max()) / TAU + A + 4)
    check("pi^B_Q = pi_bar exp(Q/tau) / E_pi_bar[exp(Q/tau)]", piB, naive, atol=max(1e-14, exp_err), eq=28)
    check("V_Q = tau log E_pi_bar[exp(Q/tau)]", VQ, TAU * torch.log((pi_bar * torch.exp(Q / TAU)).sum(-1)),
          atol=1e-13, eq=29)
    check("pi^B_Q = pi_bar exp((Q - V_Q)/tau)", piB, pi_bar * torch.exp((Q - VQ[:, None]) / TAU),
          atol=max(1e-14, exp_err), eq=30)
    check("pi^B_Q / pi_bar = exp(A_Q / tau)", piB / pi_bar, torch.exp((Q - VQ[:, None]) / TAU),
          atol=max(1e-12, exp_err * float((piB / pi_bar).max())))
    check("V_Q = E_{pi^B_Q}[Q] - tau KL[pi^B_Q||pi_bar]", policy_value(Q, piB, TAU, pi_bar), VQ, atol=1e-12, eq=31)

    check("T_pi V^pi = V^pi", tb.backup_v(mdp, pi, V, TAU, pi_bar), V, atol=1e-12, eq=32)
    check("T_pi Q^pi = Q^pi", tb.backup_q(mdp, pi, Qpi, TAU, pi_bar), Qpi, atol=1e-12, eq=33)
    V0 = 5 * torch.randn(S, generator=torch.Generator().manual_seed(s0 + 8))
    E_at = lambda f, t, given="state_action": tb.trajectory_expectations(mdp, pi, f, t, given)[t]  # noqa: E731
    for n in sorted({1, x.n}):
        rhs_34 = tb.expected_discounted_sum(mdp, pi, r_minus_kl, n, given="state") + GAMMA**n * E_at(V0, n, "state")
        check(f"T_pi^{n} V", tb.backup_v_n(mdp, pi, V0, n, TAU, pi_bar), rhs_34, atol=1e-12, eq=34)
        rhs_35 = tb.expected_discounted_sum(mdp, pi, r_minus_kl, n) + GAMMA**n * E_at(Q - TAU * KL[:, None], n)
        check(f"T_pi^{n} Q - tau KL", tb.backup_q_n(mdp, pi, Q, n, TAU, pi_bar) - TAU * KL[:, None], rhs_35,
              atol=1e-12, eq=35)
    delta_bar = tb.lookahead(mdp, V0) - TAU * KL[:, None] - V0[:, None]
    s_, a_, s2 = torch.cartesian_prod(torch.arange(S), torch.arange(A), torch.arange(S)).T
    d_all = td_errors(mdp.R[s_, a_][None], KL[s_][None], V0[s_][None], V0[s2][None], torch.zeros(1, len(s_)), GAMMA,
                      TAU)
    check("E_{s'}[td_errors] = R + gamma E[V(s')] - tau KL - V",
          (mdp.P.reshape(-1) * d_all[0]).reshape(S, A, S).sum(-1), delta_bar, atol=1e-12, eq=36)
    for n in sorted({1, x.n}):
        sum_delta = tb.expected_discounted_sum(mdp, pi, delta_bar, n, given="state")
        check(f"T_pi^{n} V = V + E[sum gamma^t delta_t] (corrected)", tb.backup_v_n(mdp, pi, V0, n, TAU, pi_bar),
              V0 + sum_delta, atol=1e-12, eq=37)
    roll = tb.sample_rollout(mdp, pi, torch.arange(S).repeat(20), 20, seed=s0 + 9)
    values, last = V0[roll.states], V0[roll.next_states[-1]]
    delta = td_errors(roll.rewards, KL[roll.states], values, last, roll.dones, GAMMA, TAU)
    next_values = torch.cat([values[1:], last[None]])
    check("per sample: V(s_t) + sum gamma^d delta = n-step soft return", values + discounted_sum(
        delta, roll.dones, GAMMA, n=x.n), n_step_soft_return(roll.rewards, KL[roll.states], next_values, roll.dones,
                                                              GAMMA, TAU, n=x.n), atol=1e-11, eq=37)

    TQ = tb.boltzmann_backup(mdp, Q, TAU, pi_bar)
    KL_B = tb.policy_kl(mdp, piB, pi_bar)
    check("(38) corrected", tb.backup_q(mdp, piB, Q, TAU, pi_bar), TQ, atol=1e-12, eq=38)
    check("(39) naive logsumexp", TQ, tb.lookahead(mdp, TAU * torch.log((pi_bar * torch.exp(Q / TAU)).sum(-1))),
          atol=1e-12, eq=39)
    E_B = lambda f, t: tb.trajectory_expectations(mdp, piB, f, t)[t]  # noqa: E731
    r_minus_kl_B = mdp.R - TAU * KL_B[:, None]
    for n in sorted({1, 2, x.n}):
        lhs = tb.boltzmann_backup_n(mdp, Q, n, TAU, pi_bar) - TAU * KL_B[:, None]
        run = tb.expected_discounted_sum(mdp, piB, r_minus_kl_B, n)
        check(f"T_(pi^B_Q,{n}) Q - tau KL (eq 40)", lhs, run + GAMMA**n * E_B(Q - TAU * KL_B[:, None], n), atol=1e-12,
              eq=40)
        check(f"T_(pi^B_Q,{n}) Q - tau KL (eq 41)", lhs, run + GAMMA**n * E_B(VQ, n), atol=1e-12, eq=41)
    LAM = 0.8
    T_lam = tb.boltzmann_backup_lambda(mdp, Q, LAM, TAU, pi_bar)
    N = 200
    powers = tb.backup_q_powers(mdp, piB, Q, N, TAU, pi_bar)
    series = ((1 - LAM) * LAM ** torch.arange(N)[:, None, None] * powers[1:]).sum(0)
    check("T_(pi^B_Q,lambda) Q = (1-lambda) sum lambda^(n-1) T^n Q", T_lam, series, atol=1e-11, eq=42)
    check("lambda = 1: T_(pi^B_Q,1) Q = Q^{pi^B_Q}", tb.boltzmann_backup_lambda(mdp, Q, 1.0, TAU, pi_bar),
          tb.q_pi(mdp, piB, TAU, pi_bar), atol=1e-11, eq=42)
    delta_bar_B = tb.lookahead(mdp, VQ) - TAU * KL_B[:, None] - VQ[:, None]
    sum_td = tb.expected_discounted_sum(mdp, piB, delta_bar_B, N, discount=GAMMA * LAM)
    tail = float((GAMMA * LAM) ** N * delta_bar_B.abs().max() / (1 - GAMMA * LAM))
    check("T_lambda Q = tau KL + V_Q + E[sum (gamma lambda)^t delta_t] (corrected)", T_lam,
          TAU * KL_B[:, None] + VQ[:, None] + sum_td, atol=1e-11 + tail, eq=43)

    vi = tb.soft_value_iteration(mdp, TAU, pi_bar, tol=1e-13)
    spi = tb.soft_policy_iteration(mdp, TAU, pi_bar)
    Q_star, pi_star, V_star = spi.q, spi.pi, spi.v
    check("Q* from value iteration = Q* from policy iteration", vi.q, Q_star, atol=GAMMA / (1 - GAMMA) * 1e-13 + 1e-12)
    check("Q* = T Q*", tb.boltzmann_backup(mdp, Q_star, TAU, pi_bar), Q_star, atol=1e-12, eq=39)
    check("Q* = Q^{pi*}", tb.q_pi(mdp, pi_star, TAU, pi_bar), Q_star, atol=1e-11, eq=25)
    check("V* = V^{pi*}", V_star, tb.v_pi(mdp, pi_star, TAU, pi_bar), atol=1e-11, eq=31)
    rand_pis = tb.random_policy(S * 40, A, seed=s0 + 11, concentration=0.5).reshape(40, S, A)
    v_rand = torch.stack([tb.v_pi(mdp, p, TAU, pi_bar) for p in rand_pis])
    check_le("V^pi <= V* for random policies", v_rand.max(0).values, V_star)
    K = 150
    iterates = itertools.accumulate(range(K), lambda q, _: tb.boltzmann_backup(mdp, q, TAU), initial=Q_star * 0)
    q_opt = tb.soft_policy_iteration(mdp, TAU).q
    err = torch.stack([(q - q_opt).abs().max() for q in iterates])
    check_le(f"gamma={GAMMA}: ||Q_(k+1) - Q*|| <= gamma ||Q_k - Q*||", err[1:], GAMMA * err[:-1], atol=1e-13)

    c = 2.0
    base = tb.soft_policy_iteration(mdp, TAU)
    shifted = tb.soft_policy_iteration(replace(mdp, R=mdp.R + c), TAU)
    check("continuing: pi* unchanged by R -> R + c", shifted.pi, base.pi, atol=1e-11)
    check("continuing: Q* shifts by c / (1 - gamma)", shifted.q - base.q, c / (1 - GAMMA), atol=1e-10)
    shift = TAU * math.log(A)
    H_pi = lambda p: -torch.xlogy(p, p).sum(-1)  # noqa: E731
    bonus_value = lambda m, p: tb.v_pi(replace(m, R=m.R + TAU * H_pi(p)[:, None]), p, TAU, pi_bar=p)  # noqa: E731
    p = tb.random_policy(S, A, seed=s0 + 13)
    check("continuing: V_entropy-bonus - V_KL-uniform = tau log|A| / (1 - gamma)",
          bonus_value(mdp, p) - tb.v_pi(mdp, p, TAU), shift / (1 - GAMMA), atol=1e-11)


test_chapter_02 = _sweep("02", ch02, instances(), examples=[
    (Instance(S=9, A=3, gamma=0.97, tau=0.1, seed=0),
     "eq 27: a random policy came within 4.4e-16 of V_Q, the rounding of the sums (was checked with atol 0)"),
])


# --- chapter 3: soft Q-learning and policy gradients -----------------------------------------------------------------


def ch03(x: Instance) -> None:
    S, A, GAMMA, TAU, s0 = x.S, x.A, x.gamma, x.tau, x.seed
    mdp = tb.random_mdp(S, A, GAMMA, seed=s0)
    pi_bar = tb.random_policy(S, A, seed=s0 + 1)
    Qbar = 3 * torch.randn(S, A, generator=torch.Generator().manual_seed(s0 + 3))
    piB, VQ = boltzmann_policy(Qbar, TAU, pi_bar), soft_value(Qbar, TAU, pi_bar)
    KL_B = tb.policy_kl(mdp, piB, pi_bar)

    TQ = tb.boltzmann_backup(mdp, Qbar, TAU, pi_bar)
    s_, a_, s2 = torch.cartesian_prod(torch.arange(S), torch.arange(A), torch.arange(S)).T
    y1 = n_step_soft_return(mdp.R[s_, a_][None], None, VQ[s2][None], torch.zeros(1, len(s_)), GAMMA, TAU, n=1)[0]
    check("E_{s'}[r + gamma V_Qbar(s')] = T Qbar", (mdp.P.reshape(-1) * y1).reshape(S, A, S).sum(-1), TQ, atol=1e-12,
          eq=45)
    mu = tb.random_policy(S, A, seed=s0 + 4, concentration=0.3)

    N_STEP, T_ROLL = x.n, 12
    roll = tb.sample_rollout(mdp, piB, torch.arange(S).repeat(20), T_ROLL, seed=s0 + 6)
    kls, t_ok = KL_B[roll.states], T_ROLL - N_STEP + 1
    v_boot = VQ[roll.next_states[N_STEP - 1:]]
    y_47 = TAU * kls + VQ[roll.states] + discounted_sum(
        td_errors(roll.rewards, kls, VQ[roll.states], VQ[roll.next_states], roll.dones, GAMMA, TAU), roll.dones, GAMMA,
        n=N_STEP)
    y_46_typed = (TAU * kls + discounted_sum(roll.rewards - TAU * kls, roll.dones, GAMMA, n=N_STEP))[:t_ok] \
        + GAMMA ** (torch.arange(t_ok)[:, None] + N_STEP) * v_boot
    check("(46) as typed = (47), per sample", y_46_typed, y_47[:t_ok], atol=1e-10, eq=46, erratum="gamma^(t+n)")
    y_46 = TAU * kls + n_step_soft_return(roll.rewards, kls, VQ[roll.next_states], roll.dones, GAMMA, TAU, n=N_STEP)
    check("(46) corrected = (47), per sample", y_46, y_47, atol=1e-12, eq=47)
    check("(46) as typed agrees at t = 0", y_46_typed[0], y_47[0], atol=1e-12, eq=46)

    expect_y = lambda behaviour, n: (TAU * KL_B[:, None] + tb.expected_discounted_sum(  # noqa: E731
        mdp, behaviour, mdp.R - TAU * KL_B[:, None], n)
        + GAMMA**n * tb.trajectory_expectations(mdp, behaviour, VQ, n)[n])
    check("1-step target: E_mu[y] = T Qbar", expect_y(mu, 1), TQ, atol=1e-12, eq=45)
    for n in sorted({2, 4, 8, x.n}):
        T_n = tb.boltzmann_backup_n(mdp, Qbar, n, TAU, pi_bar)
        check(f"n={n}: E[y] on-policy = T_(pi^B,n) Qbar", expect_y(piB, n), T_n, atol=1e-12, eq=46)
        if n in (2, 4, 8):
            floor = 1e6 * max((expect_y(piB, n) - T_n).abs().max().item(), ULP * T_n.abs().max().item())
            check_le(f"n={n}: with a_(t+1..) ~ mu the target is biased (1e6 x rounding <= max |bias|)", floor,
                     (expect_y(mu, n) - T_n).abs().max(), eq=46)
    n, lanes = 4, 400 + x.mc // 20
    pairs = torch.cartesian_prod(torch.arange(S), torch.arange(A)).repeat(lanes, 1)
    for name, behaviour in (("pi^B", piB), ("mu", mu)):
        roll = tb.sample_rollout(mdp, behaviour, pairs[:, 0], n, seed=s0 + 7, first_action=pairs[:, 1])
        y = TAU * KL_B[roll.states[0]] + n_step_soft_return(roll.rewards, KL_B[roll.states], VQ[roll.next_states],
                                                            roll.dones, GAMMA, TAU, n=n)[0]
        q_fit = torch.zeros(S, A, requires_grad=True)
        soft_q_loss(q_fit[pairs[:, 0], pairs[:, 1]], y).sum().backward()
        q_min = -q_fit.grad / lanes
        se = y.reshape(lanes, S, A).std(0) / math.sqrt(lanes)
        check(f"n={n}, behaviour {name}: (argmin of sampled soft-Q loss - E[y]) / s.e.",
              (q_min - expect_y(behaviour, n)) / se, 0.0, atol=5.0, eq=44)

    # the finite-horizon problem (the chapter's 3 states, 2 actions, 4 steps)
    T_F = 4
    fin = tb.random_mdp(3, 2, GAMMA, seed=s0 + 30)
    pi_bar_f = tb.random_policy(3, 2, seed=s0 + 31)
    theta_f = torch.randn(3, 2, generator=torch.Generator().manual_seed(s0 + 32))
    mu0_f = torch.full((3,), 1 / 3)
    pi_f, KL_f = pg.policy(theta_f), tb.policy_kl(fin, pg.policy(theta_f), pi_bar_f)
    g1_f = pg.true_gradient(fin, theta_f, TAU, pi_bar_f, mu0_f, horizon=T_F)
    paths, prob = pg.enumerate_rollouts(fin, pi_f, mu0_f, T_F)
    returns = lambda roll, kls: n_step_soft_return(roll.rewards, kls, torch.zeros(roll.states.shape[1]),  # noqa: E731
                                                   roll.dones, 1.0, TAU)
    exact_f = {name: torch.einsum("b,bsa->sa", prob, pg.rollout_estimator(
        theta_f, paths.states, paths.actions, returns(paths, kls), TAU, pi_bar_f))
        for name, kls in (("proper", KL_f[paths.states]), ("naive", None))}
    check("finite horizon: E[proper estimator] = grad E[sum (r - tau KL)]", exact_f["proper"], g1_f, atol=1e-13, eq=51)
    check_le("finite horizon: E[naive (48)] != g_1 (||gap|| >= 1e-10, 1000 x the exact check's tolerance above)",
             1e-10, (exact_f["naive"] - g1_f).norm(), eq=48)

    # the episodic problem (the chapter's has 5 live states and 4 actions; here min(S, 8) and A)
    ep = tb.random_mdp(min(S, 8) + 1, A, 1.0, seed=s0 + 40, n_terminal=1, p_end=(0.05, 0.5))
    S_E, A_E = ep.n_states, ep.n_actions
    pi_bar_e = tb.random_policy(S_E, A_E, seed=s0 + 41)
    mu0 = ep.live / ep.live.sum()
    theta = torch.randn(S_E, A_E, generator=torch.Generator().manual_seed(s0 + 42))
    pi_e, KL_e = pg.policy(theta), tb.policy_kl(ep, pg.policy(theta), pi_bar_e)
    occupancy = lambda m: (lambda p: pg.state_occupancy(m, p, mu0))  # noqa: E731
    rho = pg.state_occupancy(ep, pi_e, mu0)
    live = ep.live.bool()
    g1 = pg.true_gradient(ep, theta, TAU, pi_bar_e, mu0)
    g_50 = pg.exact_gradient(ep, theta, TAU, pi_bar_e, rho, "proper")
    g_48 = pg.exact_gradient(ep, theta, TAU, pi_bar_e, rho, "naive")
    check("g_1 by eq (50) = autograd", g_50, g1, atol=1e-12, eq=51)
    N = 700
    eye = torch.eye(S_E)
    for g_ in (1.0, 0.9):
        m = replace(ep, gamma=g_)
        rho_series = torch.stack([mu0 @ tb.expected_discounted_sum(m, pi_e, eye[j], N, 1.0, given="state")
                                  for j in range(S_E)])
        ret = tb.expected_discounted_sum(m, pi_e, m.R - TAU * KL_e[:, None], N, discount=g_)
        check(f"gamma={g_}: g_gamma by (49) = by (50)", pg.expected_estimator(theta, rho_series, ret, TAU, pi_bar_e),
              pg.exact_gradient(m, theta, TAU, pi_bar_e, occupancy(m), "proper"), atol=1e-11, eq=49)
    ep9 = replace(ep, gamma=0.9)
    rho_9 = pg.state_occupancy(ep9, pi_e, mu0, 0.9)
    grad_J9 = pg.true_gradient(ep9, theta, TAU, pi_bar_e, mu0)
    check("gamma=0.9: grad J_gamma = E[estimator] with discounted occupancy",
          pg.exact_gradient(ep9, theta, TAU, pi_bar_e, rho_9, "proper"), grad_J9, atol=1e-12)
    g_9 = pg.exact_gradient(ep9, theta, TAU, pi_bar_e, occupancy(ep9), "proper")
    check("gamma=0.9: g_gamma = grad J_gamma rescaled by rho_1 / rho_gamma", g_9,
          (rho / rho_9).nan_to_num()[:, None] * grad_J9, atol=1e-12, eq=49)
    theta_leaf = theta.clone().requires_grad_(True)
    (d_rho_kl,) = torch.autograd.grad(pg.state_occupancy(ep, pg.policy(theta_leaf), mu0) @ KL_e, theta_leaf)
    check("g_1 - E[naive] = -tau sum_s KL grad rho", g1 - g_48, -TAU * d_rho_kl, atol=1e-12, eq=48)

    lanes, H = min(x.mc, 4000), tb.survival_horizon(ep, pi_e, mu0, 1e-14)
    alive_at_H = (mu0 @ tb.trajectory_expectations(ep, pi_e, ep.live, H, given="state")[H]).item()
    check_le(f"P(episode still running after {H} steps) <= 1e-14", alive_at_H, 1e-14)
    roll = tb.sample_rollout(ep, pi_e, torch.arange(S_E - 1).repeat(lanes // (S_E - 1)), H, seed=s0 + 43)
    first = pg.first_episode_mask(roll.dones)
    for name, kls, want in (("proper", KL_e[roll.states], g1), ("naive", None, g_48)):
        ret = n_step_soft_return(roll.rewards, kls, torch.zeros(roll.states.shape[1]), roll.dones, 1.0, TAU)
        g = pg.rollout_estimator(theta, roll.states, roll.actions, ret, TAU, pi_bar_e, step_weights=first)
        check_le(f"episodic: |sampled mean of {name} - exact| <= Bernstein radius, live states",
                 (g.mean(0) - want).abs()[live], sample_deviation_bound(g)[live], eq=49 if name == "proper" else 48)

    V_e = tb.v_pi(ep, pi_e, TAU, pi_bar_e)
    delta_bar = lambda V: tb.lookahead(ep, V) - TAU * KL_e[:, None] - V[:, None]  # noqa: E731
    adv_1 = tb.expected_discounted_sum(ep, pi_e, delta_bar(V_e), 1)
    check("eq 52 as typed (no -tau grad KL), V = V^pi: E[estimator] = g_1",
          pg.expected_estimator(theta, rho, adv_1, TAU, pi_bar_e, kl_gradient=False), g1, atol=1e-12, eq=52,
          erratum="omits -tau grad KL")
    for n in (1, 3, 10):
        adv_n = tb.expected_discounted_sum(ep, pi_e, delta_bar(V_e), n)
        check(f"n={n}, V = V^pi: E[sum delta] = Q^pi - tau KL - V^pi", adv_n,
              pg.proper_advantage(ep, pi_e, TAU, pi_bar_e), atol=1e-12, eq=52)
        check(f"n={n}: E[estimator (52), corrected] = g_1", pg.expected_estimator(theta, rho, adv_n, TAU, pi_bar_e), g1,
              atol=1e-12, eq=52)
    V_wrong = torch.zeros(S_E)
    bias = {n: (pg.expected_estimator(theta, rho, tb.expected_discounted_sum(ep, pi_e, delta_bar(V_wrong), n), TAU,
                                      pi_bar_e) - g1).norm().item() for n in (1, 300)}
    check_le("V = 0, n = 1: estimator (52) is biased (0.01 <= ||bias||)", 0.01, bias[1], eq=52)
    check_le("V = 0, n = 300: the bias has vanished", bias[300], 1e-12, eq=52)

    vi = tb.soft_value_iteration(mdp, TAU, pi_bar, tol=1e-13)
    theta_star = pg.logits_of(vi.pi)
    stationary = lambda p: pg.stationary_distribution(mdp, p)  # noqa: E731
    g_star = pg.exact_gradient(mdp, theta_star, TAU, pi_bar, stationary)
    check("g_gamma(pi*) = 0 at pi* (stationary weights)", g_star, 0.0, atol=1e-10, eq=50)
    check("g_gamma(pi*) = 0 state by state", pg.exact_gradient(mdp, theta_star, TAU, pi_bar, torch.ones(S)), 0.0,
          atol=1e-10, eq=50)

    pi = tb.random_policy(S, A, seed=s0 + 60)
    KL_pi, V_pi = tb.policy_kl(mdp, pi, pi_bar), tb.v_pi(mdp, pi, TAU, pi_bar)
    V0 = 3 * torch.randn(S, generator=torch.Generator().manual_seed(s0 + 61))
    n = x.n
    roll = tb.sample_rollout(mdp, pi, torch.arange(S).repeat(20), 12, seed=s0 + 62)
    kls, t_ok = KL_pi[roll.states], 12 - n + 1
    y_right = V0[roll.states] + discounted_sum(td_errors(roll.rewards, kls, V0[roll.states], V0[roll.next_states],
                                                         roll.dones, GAMMA, TAU), roll.dones, GAMMA, n=n)
    y_literal = discounted_sum(roll.rewards + V0[roll.states], roll.dones, GAMMA, n=n)
    check("(54) as typed, literal", y_literal, y_right, atol=1e-10, eq=54, erratum="KL terms missing")
    check("(54) corrected", n_step_soft_return(roll.rewards, kls, V0[roll.next_states], roll.dones, GAMMA, TAU, n=n),
          y_right, atol=1e-12, eq=54)
    lanes = 400 + x.mc // 10
    start = torch.arange(S).repeat(lanes)
    roll = tb.sample_rollout(mdp, pi, start, n, seed=s0 + 63)
    y = n_step_soft_return(roll.rewards, KL_pi[roll.states], V0[roll.next_states], roll.dones, GAMMA, TAU, n=n)[0]
    v_fit = torch.zeros(S, requires_grad=True)
    value_loss(v_fit[start], y).sum().backward()
    se = y.reshape(lanes, S).std(0) / math.sqrt(lanes)
    check("(argmin of sampled value loss - T_pi^n V) / s.e.", (-v_fit.grad / lanes - tb.backup_v_n(
        mdp, pi, V0, n, TAU, pi_bar)) / se, 0.0, atol=5.0, eq=53)
    check("V^pi is the fixed point of T_pi^n", tb.backup_v_n(mdp, pi, V_pi, n, TAU, pi_bar), V_pi, atol=1e-12, eq=54)
    V_r = tb.v_pi(mdp, pi, TAU, pi_bar=pi)
    err_0 = max((V0 - V_pi).abs().max().item(), (V0 - V_r).abs().max().item(), 1e-300)
    K_V = max(1, math.ceil(math.log(1e-8 / err_0) / (n * math.log(GAMMA))))
    iterates = [V0]
    for _ in range(K_V):
        iterates.append(tb.backup_v_n(mdp, pi, iterates[-1], n, TAU, pi_bar))
    err_k = torch.stack([(v - V_pi).abs().max() for v in iterates])
    check_le(f"||V_(k+1) - V^pi|| <= gamma^{n} ||V_k - V^pi|| ({K_V} iterations)", err_k[1:], GAMMA**n * err_k[:-1],
             atol=1e-13, eq=54)
    check("V <- T_pi^n V converges to V^pi", iterates[-1], V_pi, atol=1e-6, eq=54)
    V_typed = V0
    for _ in range(K_V):
        V_typed = tb.backup_v_n(mdp, pi, V_typed, n, TAU, pi_bar=pi)
    check("the typed target converges to the reward-only value", V_typed, tb.v_pi(mdp, pi, TAU, pi_bar=pi), atol=1e-6,
          eq=54)
    check_le("... which differs from V^pi (by >= 1e-4, 100 x the 1e-6 both iterations reach)", 1e-4,
             (V_typed - V_pi).abs().max(), eq=54)

    log_piB = log_boltzmann_policy(Qbar, TAU, pi_bar)
    sarsa = Qbar - TAU * (log_piB - torch.log(pi_bar))
    check("soft SARSA bracket = V_Qbar(s') for every a'", sarsa, VQ[:, None].expand(S, A), atol=1e-12, eq=45)
    check("E[soft SARSA target], a' ~ mu = T Qbar", tb.lookahead(mdp, (mu * sarsa).sum(-1)), TQ, atol=1e-12, eq=45)

    gap_tau = {tau: pg.true_gradient(ep, theta, tau, pi_bar_e, mu0)
               - pg.exact_gradient(ep, theta, tau, pi_bar_e, occupancy(ep), "naive") for tau in (TAU, 10 * TAU)}
    check("exercise: tau x 10 at fixed logits: g_1 - E[naive] grows by exactly 10", gap_tau[10 * TAU],
          10 * gap_tau[TAU], atol=22e-12, eq=48)
    mix = lambda lam: (1 - lam) * piB + lam * mu  # noqa: E731
    lams = (0.01, 0.1, 0.5, 1.0)
    for n in (2, 8):
        T_m = {m: tb.boltzmann_backup_n(mdp, Qbar, m, TAU, pi_bar) for m in range(1, n + 1)}
        gain = {k: ((mu - piB) * T_m[n - k]).sum(-1) for k in range(1, n)}
        bias = torch.stack([expect_y(mix(lam), n) - T_m[n] for lam in lams])
        pdl = torch.stack([sum(GAMMA**k * tb.trajectory_expectations(mdp, mix(lam), lam * gain[k], k)[k]
                               for k in range(1, n)) for lam in lams])
        check(f"exercise: n={n}: bias = sum_k gamma^k E_mu_lambda[f_k(s_k)]", bias, pdl, atol=n * 1e-12, eq=46)
        bound = torch.tensor([lam * sum(GAMMA**k * gain[k].abs().max().item() for k in range(1, n)) for lam in lams])
        check_le(f"exercise: n={n}: max |bias| <= bound", bias.abs().amax((1, 2)), bound, atol=1e-12, eq=46)


test_chapter_03 = _sweep("03", ch03, instances(), examples=[
    (Instance(S=3, A=4, gamma=0.5, tau=0.054, n=3, seed=459, features=2, hidden=3, mc=4384),
     "eq 54's typed fixed point was required to differ by 0.1; at tau = 0.054 it differs by 0.076 (an O(tau) gap)"),
    (Instance(S=10, A=3, gamma=0.66, tau=0.05, n=2, seed=5999, features=1, hidden=1, mc=2000),
     "eq 48's naive gap was required to exceed 1e-4; at tau = 0.05 it is 9.8e-5, exact, so any size above rounding"),
    (Instance(S=7, A=6, gamma=0.5, tau=0.5, n=2, seed=6, features=6, hidden=2, mc=12012),
     "eq 49's episodic sample mean, checked within 5 standard errors, missed by 7.75: pi = 0.0069 on one action makes "
     "that logit's lanes skewed (-22), a few of them 31 s.d. out (now Bernstein's radius, read off the lanes)"),
])


# --- chapter 4: the theorem ------------------------------------------------------------------------------------------


def ch04(x: Instance) -> None:
    S, A, GAMMA, TAU, N_STEP, s0 = x.S, x.A, x.gamma, x.tau, x.n, x.seed
    mdp = tb.random_mdp(S, A, GAMMA, seed=s0)
    net = eq.StateActionValueMLP(S, A, n_features=x.features, hidden=x.hidden, seed=s0 + 1)
    theta = net.init_params(seed=s0 + 2)
    pi_bar = tb.random_policy(S, A, seed=s0 + 3)
    d = tb.random_policy(1, S, seed=s0 + 4)[0]
    setting = eq.Setting(mdp, net, TAU, N_STEP, pi_bar)
    P = net.n_params

    sp = eq.soft_parts(setting, theta)
    J = eq.jacobians(setting, theta)
    Q, V, pi, KL = sp.q, sp.v, sp.pi, sp.kl
    check("eq 55 (naive)", V, TAU * torch.log((pi_bar * torch.exp(Q / TAU)).sum(-1)), eq=55)
    check("eq 56 (naive)", pi, pi_bar * torch.exp((Q - V[:, None]) / TAU), eq=56)
    check("eq 57: Q = V + tau log(pi/pibar)", q_from_value_and_policy(V, sp.log_pi, TAU, pi_bar), Q, eq=57)
    check("eq 57 differentiated", J.dq, TAU * J.dlog_pi + J.dv[:, None, :], eq=57)

    target = eq.soft_q_target(setting, theta)
    y_mean, y_second = eq.target_moments(setting, target)
    check("E[y_t | s_t, a_t] = n-step Boltzmann backup", y_mean, tb.boltzmann_backup_n(mdp, Q, N_STEP, TAU, pi_bar),
          eq=46)
    delta_bar = tb.lookahead(mdp, V) - TAU * KL[:, None] - V[:, None]
    Delta_bar = tb.expected_discounted_sum(mdp, pi, delta_bar, N_STEP)
    check("E[y_t | s_t, a_t] = tau KL + V + E[sum gamma^d delta] (eq 47)", y_mean,
          TAU * KL[:, None] + V[:, None] + Delta_bar, eq=47)
    n_mc = x.mc
    s_mc, a_mc, y_mc = eq.sample_targets(setting, theta, d, n_mc, seed=s0 + 5)
    mean_y = eq.expectation(d, pi, y_mean)
    var_y = eq.expectation(d, pi, y_second) - mean_y**2
    check_le("sampled targets: |mean - exact| <= 5 s.e.", (y_mc.mean() - mean_y).abs(),
             5 * var_y.sqrt() / math.sqrt(n_mc), eq=46)

    col = lambda t: t[..., None]  # noqa: E731
    E = lambda f: eq.expectation(d, pi, f)  # noqa: E731
    G59 = eq.soft_q_gradient(setting, theta, d)
    check("eq 59: Jacobians = autograd of the expected soft_q_loss", E(J.dq * col(Q - y_mean)), G59, eq=59)
    parts = eq.partial_gradients(setting, theta, d)
    full58 = grad(lambda th: eq.expected_squared_error(setting, th, d, eq.policy(setting, th),
                                                       eq.soft_q_target(setting, th)))(theta)
    check("chain rule: full derivative of (58) = sum of its partials", parts.total, full58, eq=58)
    check("eq 58 -> 59 with a_t, later actions and target held fixed", parts.q, G59, eq=58)

    log_ratio = sp.log_pi - torch.log(pi_bar)
    KLs = KL[:, None]
    gL, gV = J.dlog_pi, J.dv[:, None, :]
    check("eq 60 corrected", E(J.dq * col(TAU * log_ratio + V[:, None] - (V[:, None] + TAU * KLs + Delta_bar))), G59,
          eq=60)
    check("eq 61", E(J.dq * col(TAU * log_ratio - TAU * KLs - Delta_bar)), G59, eq=61)
    integrand62 = (TAU * gL + gV) * col(TAU * log_ratio - TAU * KLs - Delta_bar)
    check("eq 62", E(integrand62), G59, eq=62)
    t1, star, t3 = TAU**2 * gL * col(log_ratio), TAU**2 * gL * col(KLs), -TAU * gL * col(Delta_bar)
    t4, sstar, t6 = TAU * gV * col(log_ratio), TAU * gV * col(KLs), -gV * col(Delta_bar)
    check("eq 63 corrected, integrand", t1 - star + t3 + t4 - sstar + t6, integrand62, eq=63)
    check("eq 63 corrected, in expectation", E(t1 - star + t3 + t4 - sstar + t6), G59, eq=63)
    check("(*) vanishes", eq.expectation(None, pi, star), torch.zeros(S, P), eq=63)
    check("(**) vanishes", eq.expectation(None, pi, t4 - sstar), torch.zeros(S, P), eq=63)
    check("eq 21 at every state", eq.expectation(None, pi, gL * col(log_ratio)), J.dkl, eq=64)
    check("eq 64 corrected", TAU**2 * d @ J.dkl + E(t3 + t6), G59, eq=64)

    T = eq.equivalence_terms(setting, theta, d)
    check("eq 65: E[grad Q (Q - y)] = -tau PG + value gradient", -TAU * T.policy_gradient + T.value_gradient, G59,
          eq=65)
    Tg = eq.equivalence_terms(setting, theta)
    ac = TAU * eq.actor_critic_gradient(setting, theta, None, 1 / TAU)
    check("eq 65 at every state, and tau A2C with c = 1/tau",
          torch.stack([Tg.soft_q, eq.soft_q_gradient(setting, theta, None)]),
          torch.stack([-TAU * Tg.policy_gradient + Tg.value_gradient, ac]), eq=65)
    a2c = TAU * eq.actor_critic_gradient(setting, theta, d, 0.5)
    check("with A2C's c = 0.5 the update misses (1 - tau/2) grad L_value", G59 - a2c, (1 - TAU / 2) * T.value_gradient,
          eq=65)

    mu = tb.random_policy(S, A, seed=s0 + 6)
    Tm = eq.equivalence_terms(setting, theta, d, action=mu)
    check("(a) a_t ~ mu: the gap", Tm.soft_q - (-TAU * Tm.policy_gradient + Tm.value_gradient),
          TAU * eq.expectation(d, mu, J.dq * col(log_ratio - KLs)) - TAU**2 * d @ J.dkl, eq=65)
    Tl = eq.equivalence_terms(setting, theta, d, target=eq.soft_q_target(setting, theta, later=mu))
    check("(a) later actions ~ mu: eq 65 holds", Tl.soft_q, -TAU * Tl.policy_gradient + Tl.value_gradient, eq=65)
    ell = 0.5 * (Q - y_mean) ** 2 + 0.5 * (y_second - y_mean**2)
    check("(b) through a_t's distribution", parts.action, E(gL * col(ell)), eq=58)
    theta_bar = theta + 0.3 * torch.randn(P, generator=generator(s0 + 7))
    Tb = eq.equivalence_terms(setting, theta, d, target=eq.soft_q_target(setting, theta_bar))
    check("(d) target network: eq 65 holds", Tb.soft_q, -TAU * Tb.policy_gradient + Tb.value_gradient, eq=65)
    T0 = eq.equivalence_terms(setting, theta, d, target=replace(target, lead=torch.zeros(S)))
    check("(d) no leading tau KL_t: the value gradient changes by tau E_d[grad V KL]",
          T0.value_gradient - T.value_gradient, TAU * d @ (J.dv * KLs), eq=65)

    n_samples = min(x.mc, 4000)
    est_sq, est_ac = eq.soft_q_estimator(setting, theta), eq.actor_critic_estimator(setting, theta, 1 / TAU)
    s_, a_, y_ = eq.sample_targets(setting, theta, d, n_samples, seed=s0 + 100)
    g_sq = eq.per_sample_gradients(setting, theta, s_, a_, y_)
    g_ac = TAU * eq.per_sample_gradients(setting, theta, s_, a_, y_, value_coef=1 / TAU)
    check("per-sample autograd of soft_q_loss = u + w y", g_sq, est_sq(s_, a_, y_), atol=1e-12)
    check("per-sample autograd of the A2C loss = u + w y", g_ac, TAU * est_ac(s_, a_, y_), atol=1e-12)
    exact = est_sq.mean(d, pi, y_mean)
    for name, g, sd in (("soft-Q", g_sq, est_sq.std(d, pi, y_mean, y_second)),
                        ("A2C", g_ac, TAU * est_ac.std(d, pi, y_mean, y_second))):
        check_le(f"{name} sample mean within 5 s.e. of the exact eq-65 gradient", (g.mean(0) - exact).abs(),
                 5 * sd / math.sqrt(n_samples), atol=1e-12, eq=65)
    D_sa = est_sq.u - TAU * est_ac.u
    check("E_a[D(s, a) | s] = 0 at every s", eq.expectation(None, pi, D_sa), torch.zeros(S, P), eq=65)
    diff_exact = (est_sq.total_variance(d, pi, y_mean, y_second)
                  - TAU**2 * est_ac.total_variance(d, pi, y_mean, y_second))
    cross = eq.expectation(d, pi, (TAU * (est_ac.u + est_ac.w * y_mean[..., None]) * D_sa).sum(-1))
    check("Var difference = E||D||^2 + 2 E<g_A2C, D>", diff_exact,
          eq.expectation(d, pi, D_sa.pow(2).sum(-1)) + 2 * cross, atol=1e-10)

    vnet, lnet = eq.StateActionValueMLP(S, 1, seed=s0 + 11), eq.StateActionValueMLP(S, A, seed=s0 + 12)
    k = vnet.n_params
    duel = lambda th: q_from_value_and_policy(vnet(th[:k])[:, 0], torch.log_softmax(lnet(th[k:]), -1), TAU,  # noqa: E731
                                              pi_bar)
    phi_psi = torch.cat([vnet.init_params(seed=s0 + 13), lnet.init_params(seed=s0 + 14)])
    Td = eq.equivalence_terms(eq.Setting(mdp, duel, TAU, N_STEP, pi_bar), phi_psi, d)
    check("exercise: the phi block is the value gradient, the psi block -tau x the policy gradient",
          torch.cat([Td.soft_q[:k], Td.soft_q[k:]]), torch.cat([Td.value_gradient[:k], -TAU * Td.policy_gradient[k:]]))
    C_SHIFT = 1.0
    kappa = sum(GAMMA**j for j in range(N_STEP))
    shifted = replace(setting, mdp=replace(mdp, R=mdp.R + C_SHIFT))
    Tc = eq.equivalence_terms(shifted, theta, d)
    tol = 1e-12 * (1 + kappa * abs(C_SHIFT))
    check("exercise: rewards + c: the policy-gradient part does not change", Tc.policy_gradient, T.policy_gradient,
          atol=tol, eq=65)
    check("exercise: rewards + c: the soft-Q gradient changes by -c kappa E_d[grad V]",
          eq.soft_q_gradient(shifted, theta, d) - G59, -kappa * C_SHIFT * d @ J.dv, atol=tol, eq=59)


test_chapter_04 = _sweep("04", ch04, instances(features=(1, 6), hidden=(1, 10)))


# --- chapter 5: the natural gradient ---------------------------------------------------------------------------------


def ch05(x: Instance) -> None:
    S, A, GAMMA, TAU, N_STEP, s0 = x.S, x.A, x.gamma, x.tau, x.n, x.seed
    mdp = tb.random_mdp(S, A, GAMMA, seed=s0)
    pol = nat.mlp_policy(S, A, n_features=x.features, hidden=x.hidden, seed=s0 + 1)
    theta_old = pol.init_params(seed=s0 + 3)
    pi_bar = tb.random_policy(S, A, seed=s0 + 3)
    pi_old, logp_old = pol(theta_old), pol.log_prob(theta_old)
    V_old = tb.v_pi(mdp, pi_old, TAU, pi_bar)
    mu0 = torch.full((S,), 1.0 / S)
    occupancy = pg.state_occupancy(mdp, pi_old, mu0, discount=GAMMA)
    d = occupancy / occupancy.sum()
    P = pol.n_params

    q_fn = lambda th: q_from_value_and_policy(V_old, pol.log_prob(th), TAU, pi_bar)  # noqa: E731
    setting = eq.Setting(mdp, q_fn, TAU, N_STEP, pi_bar)
    theta_1 = theta_old + 0.3 * torch.randn(P, generator=torch.Generator().manual_seed(s0 + 4))
    parts = eq.soft_parts(setting, theta_1)
    check("dueling Q: V_theta = V_old, Boltzmann policy = pi_theta", torch.cat([parts.v, parts.pi.reshape(-1)]),
          torch.cat([V_old, pol(theta_1).reshape(-1)]), eq=55)
    KL_old = kl(pi_old, pi_bar)
    Q_old = q_fn(theta_old)
    Q_hat, y_second = eq.target_moments(setting, eq.soft_q_target(setting, theta_old))
    Delta = Q_hat - TAU * KL_old[:, None] - V_old[:, None]
    check("E[Delta_t | s, a] = proper advantage", Delta, pg.proper_advantage(mdp, pi_old, TAU, pi_bar), atol=1e-12,
          eq=50)

    Psi = jacrev(pol.log_prob)(theta_old)
    rho = d[:, None] * pi_old
    F = nat.fisher_matrix(Psi, rho)
    g = nat.score_gradient(Psi, Delta, rho)
    w_star = nat.natural_gradient(F, g)
    check("Fisher = -E[Hessian of log pi]", F, -torch.einsum("sa,sapq->pq", rho, torch.func.hessian(pol.log_prob)(
        theta_old)), atol=1e-13, eq=66)
    cond = torch.linalg.cond(F).item()
    solve_tol = lambda *xs: cond * 1e-14 * max(1.0, *(t.abs().max().item() for t in xs))  # noqa: E731
    for eps in (0.1, 1.0):
        check(f"eq 66, eps={eps}: argmin |Psi w - eps Delta|^2 = eps F^-1 g",
              nat.least_squares_step(Psi, Delta, eps, rho), eps * w_star, atol=solve_tol(eps * w_star), eq=66)
    c_sa = TAU * KL_old[:, None] + V_old[:, None]
    e2 = (y_second - 2 * c_sa * Q_hat + c_sa**2) - 2 * Delta * (Psi @ w_star) + (Psi @ w_star) ** 2
    sd_one = nat.least_squares_covariance(Psi, e2, rho).diagonal().sqrt()
    T_mc = x.mc
    s_t, a_t, y_t = eq.sample_targets(setting, theta_old, d, T_mc, seed=s0 + 10)
    w_T = nat.least_squares_step(Psi[s_t, a_t], y_t - TAU * KL_old[s_t] - V_old[s_t], 1.0)
    check_le(f"eq 66 sampled, T={T_mc}: |w_T - F^-1 g| <= 5 sandwich s.e.", (w_T - w_star).abs(),
             5 * sd_one / math.sqrt(T_mc), eq=66)

    D = nat.directional_derivatives(pol.log_prob, theta_old, w_star, order=4)
    check("eq 67: D log pi[w] = psi . w", D[1], Psi @ w_star, atol=1e-12, eq=67)
    eps_67 = torch.logspace(-4, -2, 9).tolist()
    R = [pol.log_prob(theta_old + e * w_star) - logp_old - e * (Psi @ w_star) for e in eps_67]
    for k, rem in ((2, [r.norm() for r in R]),
                   (3, [(r - e**2 / 2 * D[2]).norm() for r, e in zip(R, eps_67, strict=True)])):
        slope, _ = loglog_slope(eps_67, torch.stack(rem))
        tol = 2 * max(eps_67) * (D[k + 1].norm() / ((k + 1) * D[k].norm())).item()
        check(f"eq 67: remainder ~ eps^{k}: fitted slope", slope, k, atol=tol, eq=67)
    for eps in (0.01, 1.0):
        gn = nat.gauss_newton_step(lambda th, eps=eps: nat.natural_regression_residual(pol.log_prob(th), logp_old,
                                                                                         Delta, eps), theta_old, rho)
        check(f"eq 68, eps={eps}: Gauss-Newton step = eq 66", gn, nat.least_squares_step(Psi, Delta, eps, rho),
              atol=solve_tol(eps * w_star), eq=68)

    dKL = jacrev(lambda th: kl(pol(th), pi_bar))(theta_old)
    g69 = nat.score_gradient(Psi, Delta, rho) - TAU * d @ dKL
    grad_J = torch.einsum("sa,sap->p", pg.true_gradient(mdp, pol.logits(theta_old), TAU, pi_bar, mu0),
                          jacrev(pol.logits)(theta_old))
    check("eq 69: g = grad J / sum_s rho(s)", g69, grad_J / occupancy.sum(), atol=1e-14, eq=69)
    log_ratio_old = logp_old - torch.log(pi_bar)
    check("eq 21 per state", dKL, eq.expectation(None, pi_old, Psi * log_ratio_old[..., None]), atol=1e-14, eq=21)
    check("E_a[grad log pi(a|s)] = 0", eq.expectation(None, pi_old, Psi), torch.zeros(S, P), atol=1e-14, eq=70)
    A_reg = nat.regularized_advantage(Delta, log_ratio_old, KL_old[:, None], TAU)
    check("eq 70 = eq 69", nat.score_gradient(Psi, A_reg, rho), g69, atol=1e-14, eq=70)
    w_reg = nat.natural_gradient(F, g69)
    check("eq 71 linearized", nat.least_squares_step(Psi, A_reg, 0.1, rho), 0.1 * w_reg, atol=solve_tol(0.1 * w_reg),
          eq=71)
    eps = 0.1
    fixed_71 = lambda th: nat.natural_regression_residual(pol.log_prob(th), logp_old, A_reg, eps)  # noqa: E731
    check("eq 71 corrected: Gauss-Newton step = eps F^-1 g", nat.gauss_newton_step(fixed_71, theta_old, rho),
          eps * w_reg, atol=solve_tol(eps * w_reg), eq=71)

    log_ratio_1 = pol.log_prob(theta_1) - torch.log(pi_bar)
    loss_72 = soft_q_loss(q_fn(theta_1), Q_hat)
    V_1 = eq.soft_parts(setting, theta_1).v
    q_1, r_1 = q_fn(theta_1), q_fn(theta_1) - Q_hat
    atol_72 = max(1e-14, 16 * ULP * float((r_1.abs() * (q_1.abs() + Q_hat.abs())).max()))
    check("eq 72", loss_72, 0.5 * ((V_1[:, None] + TAU * log_ratio_1) - (V_old[:, None] + TAU * KL_old[:, None]
                                                                          + Delta)) ** 2, atol=atol_72, eq=72)
    residual_73 = lambda th: TAU * (pol.log_prob(th) - torch.log(pi_bar)) - (Delta + TAU * KL_old[:, None])  # noqa: E731
    check("eq 73 (V_theta = V_old)", loss_72, 0.5 * residual_73(theta_1) ** 2, atol=atol_72, eq=73)
    check("eq 73 = tau^2 x eq 71 with step 1/tau", residual_73(theta_1),
          TAU * nat.natural_regression_residual(pol.log_prob(theta_1), logp_old, A_reg, 1 / TAU), atol=1e-13, eq=73)

    soft = tb.soft_value_iteration(mdp, TAU, pi_bar)
    logits0 = torch.randn(S * A, generator=torch.Generator().manual_seed(s0 + 9))
    q_tab = lambda th: q_from_value_and_policy(soft.v, pg.log_policy(th.reshape(S, A)), TAU, pi_bar)  # noqa: E731
    one_step = eq.Setting(mdp, q_tab, TAU, 1, pi_bar)
    tab_old = eq.soft_parts(one_step, logits0)
    Q_hat_1 = eq.target_moments(one_step, eq.soft_q_target(one_step, logits0))[0]
    Delta_1 = Q_hat_1 - TAU * tab_old.kl[:, None] - soft.v[:, None]
    check("n = 1, V = V*: E[y | s, a] = Q*", Q_hat_1, soft.q, atol=1e-10, eq=73)
    theta_73 = nat.minimize_least_squares(lambda th: q_tab(th) - Q_hat_1, logits0, d[:, None] * tab_old.pi)
    logp_73 = pg.log_policy(theta_73.reshape(S, A))
    check("minimizer of eq 73 over a table of logits = pi*", logp_73.exp(), soft.pi, atol=1e-10, eq=73)
    check("eq 73's target, derived: log pibar + Delta/tau + KL_old", logp_73,
          torch.log(pi_bar) + Delta_1 / TAU + tab_old.kl[:, None], atol=1e-8, eq=73)

    check("eq 76: Q_hat - Q_old = regularized advantage", Q_hat - Q_old, A_reg, atol=1e-13, eq=76)
    lhs_77 = q_fn(theta_1) - nat.damped_target(Q_old, Q_hat, eps)
    logp_1 = pol.log_prob(theta_1)
    check("eq 78 corrected", lhs_77, TAU * nat.natural_regression_residual(logp_1, logp_old, A_reg, eps / TAU),
          atol=1e-13, eq=78)
    if TAU != 1:
        check("eq 78 last line as typed", nat.natural_regression_residual(logp_1, logp_old, A_reg, eps), lhs_77,
              atol=1e-12, eq=78, erratum="the missing tau")
    for e in (1e-3, 1.0):
        damped = lambda th, e=e: q_fn(th) - nat.damped_target(Q_old, Q_hat, e)  # noqa: E731
        check(f"damped regression, eps={e}: Gauss-Newton step = (eps/tau) F^-1 g",
              nat.gauss_newton_step(damped, theta_old, rho), e / TAU * w_reg, atol=solve_tol(e / TAU * w_reg),
              eq=78)
        grad_damped = grad(lambda th, e=e: (rho * soft_q_loss(q_fn(th), nat.damped_target(Q_old, Q_hat, e))).sum())
        check(f"damped regression, eps={e}: E[grad soft_q_loss] = -eps tau g", grad_damped(theta_old), -e * TAU * g69,
              atol=1e-14, eq=78)

    w1, w2 = nat.second_order_step(pol.log_prob, theta_old, A_reg, rho)
    check("second-order expansion: w1 = F^-1 g", w1, w_reg, atol=solve_tol(w_reg), eq=71)
    eps_top = min(1e-2, 0.35 * TAU * float(w1.norm() / w2.norm()))
    damped_at = lambda e: (lambda th: q_fn(th) - nat.damped_target(Q_old, Q_hat, e))  # noqa: E731
    for _ in range(10):                   # ... and a minimizer at the top that the solver reaches
        try:
            nat.minimize_least_squares(damped_at(eps_top), theta_old, rho)
            break
        except nat.NoMinimizerError:
            eps_top /= 2
    # three decades below eps_top, or fewer where the gap at the low end, (eps/tau)^2 |w2|, would not stand 1000x
    # above a float64 minimizer's error (cond(F) ulps of |theta|: nat.expansion_error)
    eps_low = max(eps_top / 1e3, TAU * math.sqrt(1e3 * nat.expansion_error(0.0, cond, theta_old.norm().item())
                                                  / w2.norm().item()))
    eps_grid = torch.logspace(math.log10(eps_low), math.log10(eps_top), 5).tolist()
    gaps, rests, rest_vecs, minimizers = [], [], [], []
    for e in eps_grid:
        eta = e / TAU
        minimizers.append(nat.minimize_least_squares(damped_at(e), theta_old, rho))
        gap = minimizers[-1] - theta_old - eta * w_reg
        gaps.append(gap.norm())
        rest_vecs.append(gap - eta**2 * w2)
        rests.append(rest_vecs[-1].norm())
    e0 = eps_grid[-1]
    loss_71 = lambda th: 0.5 * (rho * nat.natural_regression_residual(  # noqa: E731
        pol.log_prob(th), logp_old, A_reg, e0 / TAU) ** 2).sum()
    theta_71 = nat.minimize_least_squares(
        lambda th: nat.natural_regression_residual(pol.log_prob(th), logp_old, A_reg, e0 / TAU), theta_old, rho)
    grad_71 = lambda th: jacrev(loss_71)(th).norm()  # noqa: E731
    lam_max = torch.linalg.eigvalsh(torch.func.hessian(loss_71)(theta_71))[-1].item()
    stat_tol = max(1e-12, 8 * ULP * (1 + minimizers[-1].norm().item()) * lam_max / grad_71(theta_old).item())
    check("argmin of the damped regression is stationary for (71) at step eps/tau",
          grad_71(minimizers[-1]) / grad_71(theta_old), 0.0, atol=stat_tol, eq=78)
    r_71 = nat.natural_regression_residual(pol.log_prob(theta_71), logp_old, A_reg, e0 / TAU)
    dr_71 = ULP * (pol.log_prob(theta_71).abs() + logp_old.abs() + e0 / TAU * A_reg.abs())
    loss_tol = max(1e-12, 4 * float((rho * r_71.abs() * dr_71).sum()) / loss_71(theta_71).item())
    check("argmin of the damped regression attains min (71)", loss_71(minimizers[-1]) / loss_71(theta_71), 1.0,
          atol=loss_tol, eq=78)
    fits = nat.expansion_slopes([e / TAU for e in eps_grid], gaps, rest_vecs, w1_norm=w_reg.norm().item(),
                                w2_norm=w2.norm().item(), theta_norm=theta_old.norm().item(), cond=cond,
                                measure_below=1e-3 / TAU)
    slope2, tol2, slope3, tol3 = fits.slope2, fits.tol2, fits.slope3, fits.tol3
    check("damped regression: |argmin - natural step| ~ eps^2: fitted slope", slope2, 2.0, atol=tol2, eq=78)
    check("damped regression: |argmin - natural step - eta^2 w2| ~ eps^3: fitted slope", slope3, 3.0, atol=tol3, eq=78)

    lin = nat.log_linear_policy(S, A, 8, seed=s0 + 5)
    th_lin = lin.init_params(seed=s0 + 6)
    pi_lin, logp_lin = lin(th_lin), lin.log_prob(th_lin)
    adv_lin = pg.proper_advantage(mdp, pi_lin, TAU, pi_bar)
    occ_lin = pg.state_occupancy(mdp, pi_lin, mu0, discount=GAMMA)
    rho_lin = (occ_lin / occ_lin.sum())[:, None] * pi_lin
    A_lin = nat.regularized_advantage(adv_lin, logp_lin - torch.log(pi_bar), kl(pi_lin, pi_bar)[:, None], TAU)
    w1_lin, w2_lin = nat.second_order_step(lin.log_prob, th_lin, A_lin, rho_lin)
    check("exercise: log-linear policy, exact critic: w2 = 0", w2_lin, torch.zeros(8),
          atol=1e-11 * w1_lin.norm().item())

    ulp = ULP
    solve_err = lambda *xs: S * ulp * (1 + GAMMA) / (1 - GAMMA) * (1 + sum(t.abs().max().item() for t in xs))  # noqa
    logits_tab = logits0.reshape(S, A)
    pi_tab, logp_tab = pg.policy(logits_tab), pg.log_policy(logits_tab)
    V_tab = tb.v_pi(mdp, pi_tab, TAU, pi_bar)
    q_own = lambda th: q_from_value_and_policy(V_tab, pg.log_policy(th.reshape(S, A)), TAU, pi_bar)  # noqa: E731
    own = eq.Setting(mdp, q_own, TAU, N_STEP, pi_bar)
    Q_old_tab, Q_hat_tab = q_own(logits0), eq.target_moments(own, eq.soft_q_target(own, logits0))[0]
    Q_pi_tab = tb.q_pi(mdp, pi_tab, TAU, pi_bar)
    check("exercise: exact critic: E[y | s, a] = Q^pi_old", Q_hat_tab, Q_pi_tab, atol=2 * solve_err(Q_pi_tab))
    KL_tab = kl(pi_tab, pi_bar)[:, None]
    A_tab = nat.regularized_advantage(Q_hat_tab - TAU * KL_tab - V_tab[:, None], logp_tab - torch.log(pi_bar), KL_tab,
                                      TAU)
    occ_tab = pg.state_occupancy(mdp, pi_tab, mu0, discount=GAMMA)
    rho_tab = (occ_tab / occ_tab.sum())[:, None] * pi_tab
    eig = torch.linalg.eigvalsh(nat.fisher_matrix(jacrev(lambda th: pg.log_policy(th.reshape(S, A)))(logits0), rho_tab))
    cond_tab = (eig[-1] / eig[S]).item()
    pi_next = boltzmann_policy(Q_hat_tab, TAU, pi_bar)
    steps, predicted = [], []
    for e in (0.1, 1.0):
        damped_tab = lambda th, e=e: q_own(th) - nat.damped_target(Q_old_tab, Q_hat_tab, e)  # noqa: E731
        steps.append(nat.gauss_newton_step(damped_tab, logits0, rho_tab).reshape(S, A))
        predicted.append(e / TAU * (A_tab - A_tab.mean(-1, keepdim=True)))
    tol_tab = cond_tab * 1e-14 * max(1.0, torch.stack(predicted).abs().max().item())
    check("exercise: table: Gauss-Newton step of (78) = (eps/tau)(A_reg - mean_a A_reg)", torch.stack(steps),
          torch.stack(predicted), atol=tol_tab, eq=78)
    check("exercise: table, eps = 1: the new policy is the soft policy iteration step",
          pg.policy(logits_tab + steps[-1]), boltzmann_policy(Q_pi_tab, TAU, pi_bar),
          atol=tol_tab + 2 * solve_err(Q_pi_tab) / TAU)
    gains = []
    for e in (0.25, 0.5, 1.0):
        pe = pg.policy((1 - e) * logp_tab + e * torch.log(pi_next))
        gains.append(tb.v_pi(mdp, pe, TAU, pi_bar) - V_tab)
    check_le("exercise: table: every damped step with 0 < eps <= 1 improves the value", -torch.stack(gains), 0.0,
             atol=2 * solve_err(V_tab, *gains))


def ch05_domain(x: Instance) -> bool:
    """The chapter's natural steps need an invertible Fisher matrix F: at most S(A-1) parameters, for the network
    (P = hidden (features + A)) and for the log-linear exercise (8), and cond(F) <= 1e8 at the network's theta_old
    (the chapter's tolerances are cond(F) x 1e-14; a singular F has no natural gradient F^-1 g to check)."""
    if max(x.hidden * (x.features + x.A), 8) > x.S * (x.A - 1):
        return False
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        mdp = tb.random_mdp(x.S, x.A, x.gamma, seed=x.seed)
        pol = nat.mlp_policy(x.S, x.A, n_features=x.features, hidden=x.hidden, seed=x.seed + 1)
        theta_old = pol.init_params(seed=x.seed + 3)
        occupancy = pg.state_occupancy(mdp, pol(theta_old), torch.full((x.S,), 1.0 / x.S), discount=x.gamma)
        F = nat.fisher_matrix(jacrev(pol.log_prob)(theta_old), (occupancy / occupancy.sum())[:, None] * pol(theta_old))
        return torch.linalg.cond(F).item() <= 1e8
    finally:
        torch.set_default_dtype(dtype)


test_chapter_05 = _sweep("05", ch05, instances(features=(1, 8), hidden=(1, 4)).filter(ch05_domain), examples=[
    (Instance(S=14, A=4, gamma=0.702, tau=0.135, n=4, seed=527, features=4, hidden=4),
     "the damped regression's grid of eps drifted to large weights (before eps_top)"),
    (Instance(S=18, A=5, gamma=0.961, tau=0.766, n=4, seed=313, features=7, hidden=4),
     "minimize_least_squares did not converge on the damped regression (before eps_top)"),
    (Instance(S=14, A=2, gamma=0.5, tau=0.05, n=1, seed=0, features=1, hidden=1, mc=2000),
     "3 parameters: at the grid's top (eta |w2| = 0.35 |w1|) the damped regression's infimum lies at infinity, |theta| "
     "8 -> 18 in 200 -> 1600 iterations (the top now comes down while the solver finds no minimizer)"),
    (Instance(S=17, A=6, gamma=0.617, tau=0.099, n=1, seed=3600, features=1, hidden=4),
     "cond(F) = 5.5e7: the rests at the grid's low end sat at a rounding floor of 6e-9, which the fit took for the "
     "expansion (slope of |gap| 1.978, tolerance 0.0172)"),
])


# --- chapter 9: the family -------------------------------------------------------------------------------------------


def ch09(x: Instance) -> None:
    S, A, GAMMA, TAU, s0 = x.S, x.A, x.gamma, x.tau, x.seed
    SVI_ATOL = 1e-9
    mdp = tb.random_mdp(S, A, GAMMA, seed=s0)
    opt = tb.soft_value_iteration(mdp, TAU)

    log_pi = log_boltzmann_policy(opt.q, TAU)
    V_pgq = (opt.pi * opt.q).sum(-1)
    H = entropy(opt.pi)
    check("eq 87 as typed at the optimum", V_pgq[:, None] + TAU * (log_pi + TAU * H[:, None]), opt.q, eq=87,
          erratum=None if TAU == 1 else "tau S inside the parentheses must be S")
    check("eq 87 corrected at the optimum", fam.pgq_q(V_pgq, log_pi, TAU), opt.q, eq=87)
    check("eq 57 at the optimum", q_from_value_and_policy(opt.v, log_pi, TAU), opt.q, atol=SVI_ATOL)
    check("V_PGQ - V* = tau KL", V_pgq - opt.v, TAU * (math.log(A) - H), atol=SVI_ATOL, eq=87)
    pi_any = tb.random_policy(S, A, seed=s0 + 1)
    v_any = torch.randn(S, generator=generator(s0 + 2))
    check("E_pi[pgq_q(V, log pi)] = V", (pi_any * fam.pgq_q(v_any, torch.log(pi_any), TAU)).sum(-1), v_any, eq=87)

    det = tb.random_deterministic_mdp(S, A, GAMMA, seed=s0 + 3)
    pi_bar = tb.random_policy(S, A, seed=s0 + 4)
    star = tb.soft_value_iteration(det, TAU, pi_bar)
    Q_star, V_star = tb.q_pi(det, star.pi, TAU, pi_bar), tb.v_pi(det, star.pi, TAU, pi_bar)
    LANES, T = 32, 30
    g = generator(s0 + 5)
    start = torch.randint(S, (LANES,), generator=g)
    actions = torch.randint(A, (T, LANES), generator=g)
    roll = fam.follow_actions(det, start, actions)
    check("deterministic: Q^pi*(s_t, a_t) = r_t + gamma V^pi*(s_t+1)", Q_star[roll.states, roll.actions],
          roll.rewards + GAMMA * V_star[roll.next_states], atol=1e-12)
    pi_rand = tb.random_policy(S, A, seed=s0 + 6)
    Q_rand, V_rand = tb.q_pi(det, pi_rand, TAU, pi_bar), tb.v_pi(det, pi_rand, TAU, pi_bar)
    for n in (1, x.n, None):
        for q, v, p in ((Q_star, V_star, star.pi), (Q_rand, V_rand, pi_rand)):
            ps = fam.path_sums(det, roll, q, v, torch.log(p), TAU, pi_bar, n)
            check(f"eq 88, n={n}", torch.stack([ps.advantage, ps.advantage]), torch.stack([ps.td, ps.ret]), atol=1e-12,
                  eq=88)
    lp_star = log_boltzmann_policy(star.q, TAU, pi_bar)
    adv_star = Q_star - V_star[:, None]
    check("eq 89 at pi*", fam.policy_advantage(lp_star, TAU, pi_bar), adv_star, atol=SVI_ATOL, eq=89)
    check_le("eq 89, reversed reading: fails", 1e-3, (TAU * (torch.log(pi_bar) - lp_star) - adv_star).abs().max(),
             eq=89)
    for n in (1, x.n, None):
        ps = fam.path_sums(det, roll, Q_star, V_star, lp_star, TAU, pi_bar, n)
        check(f"eq 90 at pi*, off-policy actions, n={n}", ps.log_ratio, ps.ret, atol=SVI_ATOL, eq=90)
    ps = fam.path_sums(det, roll, Q_rand, V_rand, torch.log(pi_rand), TAU, pi_bar, 5)
    check_le("a non-optimal pi violates eq 89", 1e-3, (fam.policy_advantage(torch.log(pi_rand), TAU, pi_bar)
                                                      - (Q_rand - V_rand[:, None])).abs().max(), eq=89)
    check_le("a non-optimal pi violates eq 90", 1e-3, ps.consistency.abs().max(), eq=90)
    star_s = tb.soft_value_iteration(mdp, TAU, pi_bar)
    lanes_s = min(x.mc, 4000)
    roll_s = fam.follow_actions(mdp, torch.zeros(lanes_s, dtype=torch.long), actions[:5, :1].expand(5, lanes_s),
                                seed=s0 + 7)
    err = fam.path_sums(mdp, roll_s, star_s.q, star_s.v, log_boltzmann_policy(star_s.q, TAU, pi_bar), TAU, pi_bar,
                        5).consistency[0]
    check_le("stochastic dynamics at pi*: eq 90 holds in mean (|mean| <= 5 s.e.)", err.mean().abs(),
             5 * err.std() / math.sqrt(lanes_s), eq=90)

    Q_any = 2 * torch.randn(S, A, generator=generator(s0 + 8))
    pis = tb.random_policy(S, A, seed=s0 + 9)
    check("SAC objective vs eq 27", TAU * fam.sac_policy_objective(pis, Q_any, TAU),
          soft_value(Q_any, TAU) - policy_value(Q_any, pis, TAU), atol=1e-12)
    pi_sac = fam.sac_policy_improvement(Q_any, TAU)
    check("SAC policy step, tabular class: argmin KL = pi^B_Q", pi_sac, boltzmann_policy(Q_any, TAU), atol=1e-9)
    shift = fam.entropy_bonus_offset(mdp, TAU)
    check("SAC target = T_pi Q + gamma tau log|A|", fam.sac_backup(mdp, pis, Q_any, TAU),
          tb.backup_q(mdp, pis, Q_any, TAU) + GAMMA * TAU * math.log(A))
    Q_pis = tb.q_pi(mdp, pis, TAU)
    check("SAC's fixed point", fam.sac_backup(mdp, pis, Q_pis + shift, TAU), Q_pis + shift, atol=1e-12)
    check("soft policy iteration and soft value iteration reach the same pi*", tb.soft_policy_iteration(mdp, TAU).pi,
          opt.pi, atol=SVI_ATOL)

    q_prev = 2 * torch.randn(S, A, generator=generator(s0 + 11))
    pi_prev = boltzmann_policy(q_prev, TAU)
    q_k = fam.munchausen_backup(mdp, q_prev, TAU, 0.7)
    pi_next = boltzmann_policy(q_k, TAU)
    for alpha in (0.0, 0.5, 1.0):
        q_next = fam.munchausen_backup(mdp, q_k, TAU, alpha)
        qp_next, pi_md = fam.mirror_descent_backup(mdp, q_k - alpha * TAU * torch.log(pi_prev), pi_prev, TAU, alpha)
        check(f"Munchausen alpha={alpha}: KL-regularized backup", qp_next, q_next - alpha * TAU * torch.log(pi_next),
              atol=1e-12)
        check(f"Munchausen alpha={alpha}: its policy", pi_md, pi_next, atol=1e-12)
    ALPHA = 0.9
    q = torch.zeros(S, A)
    for _ in range(1, 5001):
        q, q_old = fam.munchausen_backup(mdp, q, TAU, ALPHA), q
        if (q - q_old).abs().max() <= 1e-13:
            break
    pi_m = boltzmann_policy(q, TAU)
    low = tb.soft_value_iteration(mdp, (1 - ALPHA) * TAU)
    check("Munchausen fixed point: pi = pi* at (1 - alpha) tau", pi_m, low.pi, atol=SVI_ATOL)
    check("Munchausen fixed point: Q - alpha tau log pi = entropy-bonus Q*",
          q - ALPHA * TAU * log_boltzmann_policy(q, TAU),
          low.q + fam.entropy_bonus_offset(mdp, (1 - ALPHA) * TAU), atol=SVI_ATOL)

    def soft_bellman(v, tau=TAU):
        return soft_value(tb.lookahead(mdp, v), tau, pi_bar)

    def soft_pi_step(p, tau=TAU):
        return tb.v_pi(mdp, p, tau, pi_bar), boltzmann_policy(tb.q_pi(mdp, p, tau, pi_bar), tau, pi_bar)

    V_opt = star_s.v
    tol_v = 1e-12 * (1 + V_opt.abs().max().item()) / (1 - GAMMA)
    v_k, pi_next = soft_pi_step(tb.random_policy(S, A, seed=s0 + 12))
    errors = [(V_opt - v_k).abs().max().item()]
    K_PI = max(1, math.ceil(math.log(tol_v / errors[0]) / math.log(GAMMA)))
    newton, gains, bounds, v_vi = [], [], [], v_k
    for k in range(K_PI):
        v_next, pi_after = soft_pi_step(pi_next)
        g_k = soft_bellman(v_k) - v_k
        step = torch.linalg.solve(torch.eye(S) - GAMMA * tb.state_transition(mdp, pi_next), g_k)
        newton.append(v_next - v_k - step)
        gains.append(torch.stack([-g_k, g_k - (v_next - v_k)]))
        v_vi = soft_bellman(v_vi)
        bounds.append(torch.stack([v_vi - v_next, v_next - V_opt, V_opt - v_next - GAMMA ** (k + 1) * errors[0]]))
        v_k, pi_next = v_next, pi_after
    bounds = torch.stack(bounds)
    check("exercise: soft policy iteration is Newton's method", torch.stack(newton), 0.0, atol=tol_v)
    check_le("exercise: 0 <= B V - V <= V^pi_k+1 - V^pi_k", torch.stack(gains), 0.0, atol=tol_v)
    check_le("exercise: B^k V^pi_0 <= V^pi_k", bounds[:, 0], 0.0, atol=tol_v)
    check_le("exercise: V^pi_k <= V*", bounds[:, 1], 0.0, atol=SVI_ATOL)
    check_le("exercise: V* - V^pi_k <= gamma^k ||V* - V^pi_0||", bounds[:, 2], 0.0, atol=SVI_ATOL)

    n_hard = math.ceil(math.log(1e-12 * (1 - GAMMA) / mdp.R.abs().max().item()) / math.log(GAMMA))
    Q_hard = torch.zeros(S, A)
    for _ in range(n_hard):
        Q_hard = tb.lookahead(mdp, backup_value(Q_hard, TAU, "hard"))
    pi_greedy = torch.nn.functional.one_hot(Q_hard.argmax(-1), A).to(DTYPE)
    taus = [TAU * 10 ** (-k / 2) for k in range(-2, 5)]
    tau_ = torch.tensor(taus)[:, None, None]
    for name, ref in {"uniform": None, "pi_bar": pi_bar}.items():
        log_ref = torch.full((S, A), -math.log(A)) if ref is None else torch.log(ref)
        L = -log_ref.min().item()
        one_step = torch.stack([tb.lookahead(mdp, backup_value(Q_any, t, "hard"))
                                - tb.boltzmann_backup(mdp, Q_any, t, ref) for t in taus])
        q_tol = 1e-12 * (1 + Q_any.abs().max().item())
        check_le(f"exercise ({name}): T_tau Q <= T_0 Q", -one_step, 0.0, atol=q_tol)
        check_le(f"exercise ({name}): T_0 Q - T_tau Q <= gamma tau L", one_step, GAMMA * tau_ * L, atol=q_tol)
        Q_soft = torch.stack([tb.soft_value_iteration(mdp, t, ref).q for t in taus])
        Q_low = torch.stack([tb.q_pi(mdp, pi_greedy, t, ref) for t in taus])
        check_le(f"exercise ({name}): Q^pi_g_tau <= Q*_tau", Q_low - Q_soft, 0.0, atol=2 * SVI_ATOL)
        check_le(f"exercise ({name}): Q*_tau <= Q*_0", Q_soft - Q_hard, 0.0, atol=2 * SVI_ATOL)

    def plain_q(p):
        return 2 * tb.q_pi(mdp, p, TAU) - tb.q_pi(mdp, p, 2 * TAU)

    K_MD = math.ceil(10 / (1 - GAMMA))
    md_pis, md_qs = [torch.full((S, A), 1.0 / A)], []
    for _ in range(K_MD):
        md_qs.append(plain_q(md_pis[-1]))
        md_pis.append(boltzmann_policy(md_qs[-1], TAU, md_pis[-1]))
    md_qs.append(plain_q(md_pis[-1]))
    Pis, Qs = torch.stack(md_pis), torch.stack(md_qs)
    Vs = (Pis * Qs).sum(-1)
    md_tol = 1e-12 * (1 + Qs.abs().max().item()) / (1 - GAMMA)
    check("exercise: pi_K = Boltzmann policy of sum_(k<K) Q^pi_k_0", Pis[1:], boltzmann_policy(Qs[:-1].cumsum(0), TAU,
          Pis[0]), atol=1e-12 * (1 + K_MD * Qs.abs().max().item() / TAU))
    check_le("exercise: V^pi_k_0 <= V^pi_k+1_0", Vs[:-1] - Vs[1:], 0.0, atol=md_tol)
    V_hard = Q_hard.max(-1).values
    Ks = torch.arange(1, K_MD + 1, dtype=DTYPE)[:, None]
    check_le("exercise: 0 <= V*_0 - V^pi_K_0", Vs - V_hard, 0.0, atol=SVI_ATOL + md_tol)
    check_le("exercise: V*_0 - V^pi_K_0 <= (tau log|A| + max (V*_0 - V^pi_0_0)) / ((1 - gamma) K)", V_hard - Vs[1:],
             (TAU * math.log(A) + (V_hard - Vs[0]).max()) / ((1 - GAMMA) * Ks), atol=SVI_ATOL + md_tol)


test_chapter_09 = _sweep("09", ch09, instances(), examples=[
    (Instance(S=4, A=5, gamma=0.904, tau=0.16, seed=411),
     "SAC's policy step: a full Newton step from uniform logits landed in a saturated softmax (seed 419 = 411 + 8)"),
])
