"""Every verification the book makes: assert it, record it, print one line.

A chapter states a claim, derives it, then calls one of

- ``check(label, got, want, atol=, rtol=)`` for numbers, arrays and tensors
  (passes when ``|got - want| <= atol + rtol * |want|`` elementwise, as ``numpy.isclose``);
- ``check_sym(label, got, want)`` for SymPy expressions (passes when ``simplify(got - want) == 0``);
- ``check_le(label, lhs, rhs, atol=)`` for inequalities (passes when ``lhs <= rhs + atol`` elementwise).

Each call raises ``AssertionError`` naming the label, the residual and the tolerance when the claim is false,
so a chapter that makes a false claim stops (and nbval fails). Otherwise it prints one line such as::

    ok    eq 12   Boltzmann policy as pi_bar exp((q - v)/tau)     residual 2.2e-16 <= 1e-12

**Errata.** When the paper's typed equation is wrong, the chapter checks it *as typed* with
``erratum="what is wrong and what is right"``. That check expects the failure: it passes (and is recorded as an
erratum) only when the typed form is off by more than the tolerance, and raises if the typed form unexpectedly
holds. The corrected form is then checked normally, under the same equation number.

Every call is appended to ``RECORDS`` and, when the environment variable ``SOFTQ_CHECKS_FILE`` is set (the book
build sets it per chapter), to that file as one JSON line, with the chapter name from ``SOFTQ_CHAPTER``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["CheckRecord", "RECORDS", "check", "check_le", "check_sym", "summary", "records_for"]


@dataclass
class CheckRecord:
    """One verification: what was claimed, how far off it was, and whether it held."""

    chapter: str
    label: str
    eq: str | None
    kind: str  # "numeric" | "symbolic" | "inequality"
    passed: bool  # the check as a whole succeeded (for an erratum: the typed form failed, as expected)
    residual: float  # max |got - want| (numeric), 0/inf (symbolic), max(lhs - rhs) (inequality)
    tolerance: str
    erratum: str | None = None  # description of the typed equation's mistake, when this check documents one
    extra: dict[str, Any] = field(default_factory=dict)

    def _ipython_display_(self) -> None:
        """Show nothing when a check is a cell's last expression: its line was printed already."""

    def line(self) -> str:
        status = "ok" if self.passed else "FAIL"
        if self.erratum is not None:
            status = "errat" if self.passed else "FAIL"
        eq = f"eq {self.eq}" if self.eq else ""
        rel = "<=" if (self.erratum is None) == self.passed else ">"
        if self.kind == "symbolic":
            body = "simplify(got - want) == 0" if rel == "<=" else "simplify(got - want) != 0"
        else:
            body = f"residual {self.residual:.3g} {rel} {self.tolerance}"
        text = f"{status:<5} {eq:<8} {self.label:<58} {body}"
        if self.erratum is not None and self.passed:
            text += f"\n      erratum: {self.erratum}"
        return text


RECORDS: list[CheckRecord] = []


def _chapter() -> str:
    return os.environ.get("SOFTQ_CHAPTER", "interactive")


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Convert a float, array, torch tensor or SymPy number to a float64 numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"check: argument {name!r} is not numeric (got {type(x).__name__}): {err}") from err
    return arr


def _record(rec: CheckRecord) -> CheckRecord:
    RECORDS.append(rec)
    path = os.environ.get("SOFTQ_CHECKS_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(rec), default=str) + "\n")
    print(rec.line(), flush=True)
    return rec


def _finish(rec: CheckRecord, holds: bool, detail: str) -> CheckRecord:
    """Decide pass/fail (inverted for errata), record, and raise on failure."""
    if rec.erratum is None:
        rec.passed = holds
        if not holds:
            _record(rec)
            raise AssertionError(f"check failed: {rec.label!r} (eq {rec.eq}): {detail}")
    else:
        rec.passed = not holds
        if holds:
            _record(rec)
            raise AssertionError(
                f"erratum check {rec.label!r} (eq {rec.eq}) expected the typed form to fail, but it holds: "
                f"{detail}. Either the erratum is wrong or the check does not test the typed form."
            )
    return _record(rec)


def check(
    label: str,
    got: Any,
    want: Any,
    *,
    atol: float = 1e-12,
    rtol: float = 0.0,
    eq: str | int | None = None,
    erratum: str | None = None,
    **extra: Any,
) -> CheckRecord:
    """Assert ``got`` equals ``want`` elementwise within ``atol + rtol * |want|``; record and print it.

    Args:
        label: what is being verified, in words a reader can follow.
        got, want: floats, numpy arrays or torch tensors of broadcastable shapes.
        atol, rtol: absolute and relative tolerance, both >= 0.
        eq: the paper's equation number this check verifies (e.g. ``12`` or ``"46"``).
        erratum: set when checking a typed equation known to be wrong; the check then expects a failure.
        extra: any further JSON-serialisable facts worth keeping with the record (n, tau, gamma, ...).
    """
    if atol < 0 or rtol < 0 or not (math.isfinite(atol) and math.isfinite(rtol)):
        raise ValueError(f"check: atol and rtol must be finite and >= 0, got atol={atol}, rtol={rtol}")
    g = _to_numpy(got, "got")
    w = _to_numpy(want, "want")
    try:
        diff = np.abs(g - w)
    except ValueError as err:
        raise ValueError(f"check {label!r}: shapes of got {g.shape} and want {w.shape} do not broadcast") from err
    bound = atol + rtol * np.abs(w)
    finite = bool(np.all(np.isfinite(g)) and np.all(np.isfinite(w)))
    residual = float(np.max(diff)) if diff.size and finite else (0.0 if finite else math.inf)
    holds = finite and bool(np.all(diff <= bound))
    tol = f"{atol:.3g}" if rtol == 0 else f"{atol:.3g} + {rtol:.3g}|want|"
    rec = CheckRecord(_chapter(), label, None if eq is None else str(eq), "numeric", False, residual, tol,
                      erratum, dict(extra))
    return _finish(rec, holds, f"residual {residual:.3g} vs tolerance {tol} (shape {diff.shape})")


def check_le(
    label: str,
    lhs: Any,
    rhs: Any,
    *,
    atol: float = 0.0,
    eq: str | int | None = None,
    erratum: str | None = None,
    **extra: Any,
) -> CheckRecord:
    """Assert ``lhs <= rhs + atol`` elementwise; the residual is ``max(lhs - rhs)`` (negative is a margin)."""
    if atol < 0 or not math.isfinite(atol):
        raise ValueError(f"check_le: atol must be finite and >= 0, got {atol}")
    a = _to_numpy(lhs, "lhs")
    b = _to_numpy(rhs, "rhs")
    gap = a - b
    finite = bool(np.all(np.isfinite(gap)))
    residual = float(np.max(gap)) if finite else math.inf
    holds = finite and bool(np.all(gap <= atol))
    rec = CheckRecord(_chapter(), label, None if eq is None else str(eq), "inequality", False, residual,
                      f"{atol:.3g}", erratum, dict(extra))
    return _finish(rec, holds, f"max(lhs - rhs) = {residual:.3g} vs tolerance {atol:.3g}")


def check_sym(
    label: str,
    got: Any,
    want: Any,
    *,
    eq: str | int | None = None,
    erratum: str | None = None,
    **extra: Any,
) -> CheckRecord:
    """Assert two SymPy expressions are identical: ``sympy.simplify(got - want) == 0``.

    ``simplify`` is a heuristic: it may fail to reduce a true identity to 0 (a failing check then means "not
    shown", not "false"), and a 0 it returns is as sound as the rewriting rules SymPy applied, under the symbols'
    declared assumptions (e.g. ``positive=True``): strong evidence, not a formal proof.
    """
    import sympy as sp

    try:
        diff = sp.simplify(sp.sympify(got) - sp.sympify(want))
    except (sp.SympifyError, TypeError) as err:
        raise ValueError(f"check_sym {label!r}: got/want are not SymPy expressions: {err}") from err
    holds = diff == 0
    rec = CheckRecord(_chapter(), label, None if eq is None else str(eq), "symbolic", False,
                      0.0 if holds else math.inf, "exact", erratum, dict(extra))
    return _finish(rec, holds, f"simplify(got - want) = {diff}")


def records_for(chapter: str | None = None) -> list[CheckRecord]:
    """The records of one chapter (default: the current one)."""
    chapter = _chapter() if chapter is None else chapter
    return [r for r in RECORDS if r.chapter == chapter]


def summary() -> dict[str, int]:
    """Print and return this chapter's checks: how many ran, passed, and which typed equations they found wrong."""
    recs = records_for()
    errata = [r for r in recs if r.erratum is not None]
    out = {
        "checks": len(recs),
        "passed": sum(r.passed for r in recs),
        "errata": len({r.eq or r.label for r in errata}),  # typed equations found wrong (as `make book` counts)
        "erratum_checks": len(errata),
    }
    print(f"{out['checks']} checks, {out['passed']} passed; {out['errata']} typed equations found wrong "
          f"({out['erratum_checks']} erratum checks)")
    return out
