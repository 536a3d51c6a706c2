"""softq.symbolic: the SymPy objects prove the Section 2 identities and agree with the tensor code."""

import math

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import softq.symbolic as sy
from softq.config import DTYPE
from softq.regularized import boltzmann_policy, kl, soft_value


def _zero(expr):
    return sp.simplify(expr) == 0


@pytest.fixture(scope="module")
def s3():
    return sy.symbolic_bandit(3)


def test_boltzmann_is_normalised_and_eq6_holds(s3):
    tau, r, pb, pi = s3.tau, s3.r, s3.pi_bar, s3.pi
    pib = sy.boltzmann(r, pb, tau)
    assert _zero(sp.Add(*pib) - 1)
    lhs = sy.eta(pi, r, pb, tau)
    rhs = tau * sp.log(sy.partition(r, pb, tau)) - tau * sy.kl(pi, pib)
    assert _zero(sy.canonical(lhs) - sy.canonical(rhs))
    # a wrong rhs (missing the tau on the log-partition) is not proven
    assert not _zero(sy.canonical(lhs) - sy.canonical(sp.log(sy.partition(r, pb, tau)) - tau * sy.kl(pi, pib)))


def test_eq13_and_eq14(s3):
    tau, q, pb = s3.tau, s3.q, s3.pi_bar
    v = sy.soft_value(q, pb, tau)
    pib = sy.boltzmann(q, pb, tau)
    assert _zero(sy.canonical(sy.expectation(pib, q) - tau * sy.kl(pib, pb)) - sy.canonical(v))
    for k in range(3):
        assert _zero(sy.canonical(v + tau * sp.log(pib[k] / pb[k])) - q[k])
    for a, b in zip(sy.boltzmann_from_value(q, v, pb, tau), pib, strict=True):
        assert _zero(a - b)


def test_eq11_as_typed_differs_except_at_tau_one(s3):
    tau, q, pb = s3.tau, s3.q, s3.pi_bar
    typed = tau * sp.log(sy.expectation(pb, [sp.exp(qk) / tau for qk in q]))
    v = sy.soft_value(q, pb, tau)
    assert _zero(typed.subs(tau, 1) - v.subs(tau, 1))
    vals = dict(q=[0.3, -1.0, 2.0], pi_bar=[0.2, 0.3, 0.5])
    assert abs(sy.lambdify_values(typed, s3, 0.5, **vals) - sy.lambdify_values(v, s3, 0.5, **vals)) > 1e-2


def test_general_k_identities():
    g = sy.general_bandit()
    assert str(g.stationarity()) == str(sp.expand(g.q[g.k] - g.tau * sp.log(g.pi[g.k]) + g.tau * sp.log(g.pi_bar[g.k])
                                                  - g.tau + g.lam))
    at = g.stationarity().subs(g.pi[g.k], g.boltzmann(g.k)).subs(g.lam, g.tau - g.soft_value())
    assert _zero(sy.canonical(at, g.k))
    # a wrong multiplier does not make it stationary
    off = g.stationarity().subs(g.pi[g.k], g.boltzmann(g.k)).subs(g.lam, -g.soft_value())
    assert not _zero(sy.canonical(off, g.k))
    assert _zero(g.curvature() + g.tau / g.pi[g.k])
    pib = g.boltzmann(g.k)
    rhs13 = g.sum(pib * g.q[g.k]) - g.tau * g.sum(pib * sp.log(pib / g.pi_bar[g.k]))
    assert _zero(sy.canonical(rhs13, g.k) - sy.canonical(g.soft_value(), g.k))


@settings(max_examples=20, deadline=None)
@given(
    q=st.lists(st.floats(-3, 3), min_size=4, max_size=4),
    w=st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4),
    u=st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4),
    tau=st.floats(0.1, 3.0),
)
def test_symbolic_expressions_agree_with_tensor_code(q, w, u, tau):
    s4 = sy.symbolic_bandit(4)
    pb = torch.tensor(w, dtype=DTYPE) / sum(w)
    pi = torch.tensor(u, dtype=DTYPE) / sum(u)
    qt = torch.tensor(q, dtype=DTYPE)
    got_pi = sy.lambdify_values(sy.boltzmann(s4.q, s4.pi_bar, s4.tau), s4, tau, q=q, pi_bar=pb)
    assert torch.allclose(torch.tensor(got_pi, dtype=DTYPE), boltzmann_policy(qt, tau, pb), atol=1e-13, rtol=0)
    got_v = sy.lambdify_values(sy.soft_value(s4.q, s4.pi_bar, s4.tau), s4, tau, q=q, pi_bar=pb)
    assert math.isclose(got_v, soft_value(qt, tau, pb).item(), abs_tol=1e-12)
    got_kl = sy.lambdify_values(sy.kl(s4.pi, s4.pi_bar), s4, tau, pi=pi, pi_bar=pb)
    assert math.isclose(got_kl, kl(pi, pb).item(), abs_tol=1e-13)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: sy.symbolic_bandit(0), "K"),
        (lambda: sy.expectation([1, 2], [1]), "same length"),
        (lambda: sy.lambdify_values(sy.symbolic_bandit(2).q[0], sy.symbolic_bandit(2), 1.0, q=[1.0]), "q"),
        (lambda: sy.lambdify_values(sy.symbolic_bandit(2).q[0], sy.symbolic_bandit(2), 1.0), "no value"),
    ],
)
def test_bad_arguments_raise_value_error(call, name):
    with pytest.raises(ValueError, match=name):
        call()
