"""SymPy objects for the bandit and Boltzmann algebra of Section 2 (eqs 1-14).

Two settings:

- :class:`SymbolicBandit` (:func:`symbolic_bandit`): a concrete action set of ``K`` actions with symbolic mean rewards
  ``r_1..r_K`` (real), symbolic action values ``q_1..q_K`` (real), a temperature ``tau > 0``, and two points of the
  open simplex written through positive weights, ``pi_bar_k = w_k / sum_j w_j`` (reference) and
  ``pi_k = u_k / sum_j u_j`` (an arbitrary policy). Every interior point of the simplex has this form, and the
  normalisation holds by construction, so an identity proven here holds for *every* interior policy and reference.
- :class:`GeneralBandit` (:func:`general_bandit`): a symbolic number of actions ``K`` with ``IndexedBase`` sequences
  ``q[k]``, ``pi_bar[k] > 0``, ``pi[k] > 0`` and ``Sum`` over ``k = 1..K``, for the identities SymPy can prove for
  every ``K`` (eqs 12, 13 and the stationarity of the Lagrangian at the Boltzmann policy).

The functions mirror :mod:`softq.regularized` (which works on tensors) so that the chapter can prove an identity
here and then evaluate the very same expression numerically (:func:`lambdify_values`) against the tensor code.
:func:`canonical` puts an expression in the form in which ``softq.book.check.check_sym`` compares it: logarithms of
products of positive factors split into sums (valid under the declared positivity), and ``Sum`` dummies unified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sympy as sp

__all__ = [
    "SymbolicBandit",
    "symbolic_bandit",
    "expectation",
    "kl",
    "eta",
    "partition",
    "soft_value",
    "boltzmann",
    "boltzmann_from_value",
    "canonical",
    "lambdify_values",
    "GeneralBandit",
    "general_bandit",
]

Exprs = Sequence[sp.Expr]


# ----------------------------------------------------------------------------------------------------------------
# A concrete action set with symbolic entries
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolicBandit:
    """``K`` actions with symbolic ``r``, ``q``, ``tau`` and simplex points ``pi_bar``, ``pi`` (see module doc).

    Attributes: ``K``; ``tau`` (positive); ``r``, ``q``: ``K`` real symbols; ``w``, ``u``: ``K`` positive weight
    symbols; ``pi_bar``, ``pi``: the ``K`` normalised probabilities ``w_k / sum w`` and ``u_k / sum u``.
    """

    K: int
    tau: sp.Symbol
    r: tuple[sp.Symbol, ...]
    q: tuple[sp.Symbol, ...]
    w: tuple[sp.Symbol, ...]
    u: tuple[sp.Symbol, ...]

    @property
    def pi_bar(self) -> list[sp.Expr]:
        total = sum(self.w)
        return [wk / total for wk in self.w]

    @property
    def pi(self) -> list[sp.Expr]:
        total = sum(self.u)
        return [uk / total for uk in self.u]


def symbolic_bandit(K: int) -> SymbolicBandit:
    """A :class:`SymbolicBandit` with ``K >= 1`` actions."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be a positive int, got {K!r}")
    idx = range(1, K + 1)
    return SymbolicBandit(
        K=K,
        tau=sp.Symbol("tau", positive=True),
        r=tuple(sp.Symbol(f"rbar_{k}", real=True) for k in idx),
        q=tuple(sp.Symbol(f"q_{k}", real=True) for k in idx),
        w=tuple(sp.Symbol(f"w_{k}", positive=True) for k in idx),
        u=tuple(sp.Symbol(f"u_{k}", positive=True) for k in idx),
    )


def _same_length(*seqs: Exprs) -> None:
    lengths = {len(s) for s in seqs}
    if len(lengths) != 1:
        raise ValueError(f"sequences over the actions must have the same length, got lengths {sorted(lengths)}")


def expectation(p: Exprs, f: Exprs) -> sp.Expr:
    """``E_{a~p}[f(a)] = sum_k p_k f_k`` over a finite action set."""
    _same_length(p, f)
    return sp.Add(*[pk * fk for pk, fk in zip(p, f, strict=True)])


def kl(p: Exprs, p_ref: Exprs) -> sp.Expr:
    """``D_KL[p || p_ref] = sum_k p_k log(p_k / p_ref_k)`` (eq 3 with ``p_ref = pi^B``; eq 1 with ``pi_bar``)."""
    return expectation(p, [sp.log(pk / rk) for pk, rk in zip(p, p_ref, strict=True)])


def eta(pi: Exprs, r: Exprs, pi_bar: Exprs, tau: sp.Expr) -> sp.Expr:
    """The KL-regularized objective, eq (1): ``E_{a~pi}[r_bar(a)] - tau KL[pi || pi_bar]``."""
    return expectation(pi, r) - tau * kl(pi, pi_bar)


def partition(q: Exprs, pi_bar: Exprs, tau: sp.Expr) -> sp.Expr:
    """The normalizing constant of eqs (2)/(10): ``E_{a~pi_bar}[exp(q(a) / tau)]``."""
    return expectation(pi_bar, [sp.exp(qk / tau) for qk in q])


def soft_value(q: Exprs, pi_bar: Exprs, tau: sp.Expr) -> sp.Expr:
    """The log-normaliser of eq (11), corrected: ``v = tau log E_{a~pi_bar}[exp(q(a) / tau)]``."""
    return tau * sp.log(partition(q, pi_bar, tau))


def boltzmann(q: Exprs, pi_bar: Exprs, tau: sp.Expr) -> list[sp.Expr]:
    """The Boltzmann policy, eqs (2)/(10): ``pi_bar(a) exp(q(a)/tau) / E_{a'~pi_bar}[exp(q(a')/tau)]``."""
    z = partition(q, pi_bar, tau)
    return [bk * sp.exp(qk / tau) / z for qk, bk in zip(q, pi_bar, strict=True)]


def boltzmann_from_value(q: Exprs, v: sp.Expr, pi_bar: Exprs, tau: sp.Expr) -> list[sp.Expr]:
    """Eq (12): ``pi_bar(a) exp((q(a) - v) / tau)`` for a given scalar ``v``."""
    return [bk * sp.exp((qk - v) / tau) for qk, bk in zip(q, pi_bar, strict=True)]


def _unify_sum_dummies(expr: sp.Expr, index: sp.Symbol) -> sp.Expr:
    """Rename the dummy of every one-index ``Sum`` to ``index``, so ``Sum(f(j), j)`` and ``Sum(f(k), k)`` match."""

    def rename(s: sp.Sum) -> sp.Sum:
        (dummy, lo, hi) = s.limits[0]
        return sp.Sum(s.function.xreplace({dummy: index}), (index, lo, hi))

    return expr.replace(lambda e: isinstance(e, sp.Sum) and len(e.limits) == 1, rename)


def canonical(expr: sp.Expr, index: sp.Symbol | None = None) -> sp.Expr:
    """``expr`` with logs of positive products expanded (``log(x y / z) = log x + log y - log z``, ``log exp(x) = x``)
    and, when ``index`` is given, every ``Sum`` written with that dummy. Equal expressions stay equal: this only
    rewrites, it proves nothing by itself."""
    out = sp.expand_log(sp.sympify(expr), force=False)
    if index is not None:
        out = _unify_sum_dummies(out, index)
    return out


def lambdify_values(expr: sp.Expr | Sequence[sp.Expr], bandit: SymbolicBandit, tau: float, q=None, r=None,
                    pi_bar=None, pi=None):
    """Evaluate a symbolic expression (or list) at numbers: ``q``, ``r``, ``pi_bar``, ``pi`` are length-``K``
    sequences of floats (probabilities are fed in as the weights ``w``, ``u``, which the expressions normalise).

    Returns a float or a list of floats. Symbols not given must not occur in ``expr``.
    """
    subs: dict[sp.Symbol, float] = {bandit.tau: float(tau)}
    for syms, vals, name in ((bandit.q, q, "q"), (bandit.r, r, "r"), (bandit.w, pi_bar, "pi_bar"),
                             (bandit.u, pi, "pi")):
        if vals is None:
            continue
        vals = [float(x) for x in vals]
        if len(vals) != bandit.K:
            raise ValueError(f"{name} must have K={bandit.K} entries, got {len(vals)}")
        subs.update(zip(syms, vals, strict=True))
    exprs = list(expr) if isinstance(expr, Sequence) else [expr]
    values = []
    for e in exprs:
        val = sp.sympify(e).xreplace(subs).evalf(30)
        if val.free_symbols:
            raise ValueError(f"lambdify_values: symbols {sorted(map(str, val.free_symbols))} were given no value")
        values.append(float(val))
    return values if isinstance(expr, Sequence) else values[0]


# ----------------------------------------------------------------------------------------------------------------
# A symbolic number of actions
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneralBandit:
    """``K`` actions, ``K`` symbolic: ``q[k]`` real, ``pi_bar[k] > 0``, ``pi[k] > 0``, sums over ``k = 1..K``.

    Attributes: ``K`` (positive integer symbol), ``k``, ``j`` (integer index symbols), ``tau`` (positive),
    ``q``, ``pi_bar``, ``pi`` (``IndexedBase``), ``lam`` (the Lagrange multiplier of ``sum_k pi[k] = 1``).
    """

    K: sp.Symbol
    k: sp.Symbol
    j: sp.Symbol
    tau: sp.Symbol
    q: sp.IndexedBase
    pi_bar: sp.IndexedBase
    pi: sp.IndexedBase
    lam: sp.Symbol

    def sum(self, term: sp.Expr, index: sp.Symbol | None = None) -> sp.Sum:
        """``sum_{index=1}^K term`` (default index ``k``)."""
        index = self.k if index is None else index
        return sp.Sum(term, (index, 1, self.K))

    def partition(self) -> sp.Sum:
        """``E_{pi_bar}[exp(q/tau)] = sum_j pi_bar[j] exp(q[j]/tau)`` (dummy ``j``)."""
        return self.sum(self.pi_bar[self.j] * sp.exp(self.q[self.j] / self.tau), self.j)

    def soft_value(self) -> sp.Expr:
        """Eq (11), corrected: ``v = tau log sum_j pi_bar[j] exp(q[j]/tau)``."""
        return self.tau * sp.log(self.partition())

    def boltzmann(self, i: sp.Expr) -> sp.Expr:
        """Eq (10): ``pi^B(i) = pi_bar[i] exp(q[i]/tau) / sum_j pi_bar[j] exp(q[j]/tau)``."""
        return self.pi_bar[i] * sp.exp(self.q[i] / self.tau) / self.partition()

    def lagrangian(self) -> sp.Expr:
        """``sum_j pi[j] q[j] - tau sum_j pi[j] log(pi[j]/pi_bar[j]) + lam (sum_j pi[j] - 1)``: eq (1) with ``q``
        for ``r_bar`` plus the simplex constraint."""
        j, pi = self.j, self.pi
        return (self.sum(pi[j] * self.q[j], j) - self.tau * self.sum(pi[j] * sp.log(pi[j] / self.pi_bar[j]), j)
                + self.lam * (self.sum(pi[j], j) - 1))

    def _first_branch(self, expr: sp.Expr) -> sp.Expr:
        """Resolve SymPy's ``Piecewise((x, k <= K), (0, True))`` (from differentiating a ``Sum`` by ``pi[k]``) to
        ``x``: the index ``k`` is an action, ``1 <= k <= K``."""
        return expr.replace(lambda e: isinstance(e, sp.Piecewise), lambda e: e.args[0][0])

    def stationarity(self) -> sp.Expr:
        """``d Lagrangian / d pi[k]`` for ``1 <= k <= K``: ``q[k] - tau (log(pi[k]/pi_bar[k]) + 1) + lam``."""
        return sp.expand(self._first_branch(sp.diff(self.lagrangian(), self.pi[self.k]).doit()))

    def curvature(self) -> sp.Expr:
        """``d^2 Lagrangian / d pi[k]^2 = -tau / pi[k]``; mixed second derivatives vanish (the Hessian is diagonal)."""
        return sp.expand(self._first_branch(sp.diff(self.lagrangian(), self.pi[self.k], 2).doit()))

    def mixed_curvature(self, other: sp.Symbol) -> sp.Expr:
        """``d^2 Lagrangian / d pi[k] d pi[other]`` for an index ``other``: ``KroneckerDelta(k, other)`` times the
        curvature, i.e. zero off the diagonal."""
        d = sp.diff(self.lagrangian(), self.pi[self.k], self.pi[other]).doit()
        return sp.simplify(self._first_branch(d))


def general_bandit() -> GeneralBandit:
    """A :class:`GeneralBandit` with fresh symbols."""
    return GeneralBandit(
        K=sp.Symbol("K", integer=True, positive=True),
        k=sp.Symbol("k", integer=True, positive=True),
        j=sp.Symbol("j", integer=True, positive=True),
        tau=sp.Symbol("tau", positive=True),
        q=sp.IndexedBase("q", real=True),
        pi_bar=sp.IndexedBase("pibar", positive=True),
        pi=sp.IndexedBase("pi", positive=True),
        lam=sp.Symbol("lambda", real=True),
    )
