"""The book's equation index and errata list, generated from the check records (the appendix, ``99_*``).

Every ``softq.check`` call a chapter makes is one JSON record in ``build/checks/<chapter>.jsonl`` (see
:mod:`softq.book`). This module gathers them and answers, for each numbered equation 1-90 of the paper: where it is
taught, how it is checked (symbolic, exact numeric, sampling, inequality), how many checks and the worst residual,
and whether it holds as typed (no erratum record) or not (the erratum records and what they say).

Where the records come from (:func:`collect_records`), per chapter, first match wins:

1. ``build/checks/<chapter>.jsonl``, written by ``make book`` / ``python -m softq.book`` (full or smoke), if it is
   newer than the chapter and than every ``softq/*.py`` file it may depend on;
2. ``build/nbval/checks/<chapter>.jsonl``, written by ``make test``'s smoke runs of the chapters through nbval
   (:mod:`softq.nbval_records`), which run in sorted order, so before the appendix;
3. ``build/appendix-smoke/checks/<chapter>.jsonl``, an earlier run of (4), under the same freshness rule;
4. otherwise the chapter is executed now, in smoke mode, by :func:`softq.book.run_chapter` into
   ``build/appendix-smoke/`` (e.g. the appendix opened alone in JupyterLab on a fresh clone).

Smoke mode makes every check a chapter makes (it only shrinks sample sizes), so the index is complete either way;
residuals of sampling checks are then those of the smaller samples.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from softq.config import BUILD, ROOT

__all__ = [
    "N_EQUATIONS",
    "PLAN",
    "planned_chapter",
    "check_method",
    "equation_number",
    "ChapterRecords",
    "collect_records",
    "EquationRow",
    "equation_index",
    "Erratum",
    "errata",
    "markdown_index",
    "markdown_errata",
    "escape_cell",
]

N_EQUATIONS = 90

# Where each equation is (or will be) taught: (first, last, chapter prefix, topic). From the book's plan (README).
PLAN: tuple[tuple[int, int, str, str], ...] = (
    (1, 23, "01", "the entropy-regularized bandit (§2)"),
    (24, 43, "02", "entropy-regularized MDPs (§3.1-3.4)"),
    (44, 54, "03", "soft Q-learning and policy gradients (§3.5-3.6)"),
    (55, 65, "04", "the equivalence theorem (§4)"),
    (66, 78, "05", "natural gradients and damped Q-learning (§5)"),
    (79, 80, "06", "A2C on Atari, naive vs proper entropy (§6.1)"),
    (81, 83, "07", "DQN on Atari, standard vs soft (§6.2)"),
    (84, 86, "08", "PG vs Q-learning update on Atari (§6.3)"),
    (87, 90, "09", "the family around the theorem (§7)"),
)

_REQUIRED = ("chapter", "label", "eq", "kind", "passed", "residual", "tolerance", "erratum")
_SAMPLING = re.compile(r"sampl|monte carlo|\bmc\b|s\.e\.|standard error|rollouts", re.IGNORECASE)


def planned_chapter(eq: int) -> tuple[str, str]:
    """``(chapter prefix, topic)`` of the chapter that teaches equation ``eq`` (1 <= eq <= 90)."""
    if isinstance(eq, bool) or not isinstance(eq, int) or not 1 <= eq <= N_EQUATIONS:
        raise ValueError(f"eq must be an int in [1, {N_EQUATIONS}], got {eq!r}")
    for first, last, chapter, topic in PLAN:
        if first <= eq <= last:
            return chapter, topic
    raise AssertionError(f"PLAN does not cover eq {eq}")  # unreachable: PLAN covers 1..90 (tested)


def _validate(records: Iterable[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or any(k not in r for k in _REQUIRED):
            missing = [k for k in _REQUIRED if not isinstance(r, dict) or k not in r]
            raise ValueError(f"records[{i}] must be a check record (dict) with keys {_REQUIRED}; missing {missing}")
        out.append(r)
    return out


def equation_number(record: dict) -> int | None:
    """The paper's equation number of a record: ``None`` for an unnumbered check; ValueError if its ``eq`` is not an
    integer in 1..90 (a typo such as ``eq=900`` or ``eq="46a"`` would otherwise drop out of the index silently)."""
    eq = record.get("eq")
    if eq is None:
        return None
    text = str(eq).strip()
    if not re.fullmatch(r"\d+", text) or not 1 <= int(text) <= N_EQUATIONS:
        raise ValueError(f"record {record.get('label')!r} of chapter {record.get('chapter')!r} has eq={eq!r}: "
                         f"must be an integer in 1..{N_EQUATIONS} or None")
    return int(text)


def check_method(record: dict) -> str:
    """How a record checks its claim: ``"symbolic"``, ``"sampling"`` (a sample mean against an exact value, read from
    the label: "sampled", "Monte Carlo", "s.e.", ...), ``"inequality"`` or ``"exact numeric"``."""
    kind = record["kind"]
    if kind == "symbolic":
        return "symbolic"
    if _SAMPLING.search(record["label"]):
        return "sampling"
    if kind == "inequality":
        return "inequality"
    if kind == "numeric":
        return "exact numeric"
    raise ValueError(f"record {record['label']!r} has unknown kind {kind!r}")


# --- gathering the records --------------------------------------------------------------------------------------


@dataclass
class ChapterRecords:
    """One chapter's records and where they came from: ``"book"`` (build/checks), ``"appendix cache"``
    (build/appendix-smoke, an earlier smoke run) or ``"ran now (smoke)"``; ``seconds`` spent running it here."""

    chapter: str
    source: str
    path: Path
    records: list[dict]
    seconds: float = 0.0
    error: str | None = None


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _fresh(path: Path, md: Path, code_mtime: float) -> bool:
    """A record file is fresh if it exists, is non-empty, and is newer than its chapter and the package code."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    return path.stat().st_mtime >= max(md.stat().st_mtime, code_mtime)


def _code_mtime(package: Path) -> float:
    return max((p.stat().st_mtime for p in package.rglob("*.py")), default=0.0)


class _KeepEnv:
    """``softq.book.run_chapter`` sets SOFTQ_CHAPTER / SOFTQ_CHECKS_FILE / SOFTQ_SMOKE for the child kernel; inside
    the appendix's own kernel they must be restored afterwards, or the appendix's checks would go to the wrong file."""

    names = ("SOFTQ_CHAPTER", "SOFTQ_CHECKS_FILE", "SOFTQ_SMOKE")

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.names}

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def collect_records(
    chapters: Sequence[Path],
    *,
    build: Path = BUILD,
    cache: Path | None = None,
    run_missing: bool = True,
    timeout: int = 600,
    package: Path = ROOT / "softq",
    log=print,
) -> list[ChapterRecords]:
    """The records of each chapter file in ``chapters`` (``notebooks/NN_*.md``), from the freshest source (see the
    module docstring). ``cache`` defaults to ``build / "appendix-smoke"``. With ``run_missing=False`` a chapter
    without fresh records raises ValueError instead of being run. A chapter that fails when run here is returned
    with its ``error`` and whatever records it made before failing."""
    from softq.book import run_chapter

    cache = build / "appendix-smoke" if cache is None else cache
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise ValueError(f"timeout must be a positive int (seconds per cell), got {timeout!r}")
    code_mtime = _code_mtime(package)
    out = []
    for md in chapters:
        md = Path(md)
        if not md.exists():
            raise ValueError(f"chapters: no such chapter file {md}")
        name = md.stem
        for source, folder in (("book", build), ("nbval smoke run", build / "nbval"), ("appendix cache", cache)):
            path = folder / "checks" / f"{name}.jsonl"
            if _fresh(path, md, code_mtime):
                out.append(ChapterRecords(name, source, path, _read(path)))
                break
        else:
            if not run_missing:
                raise ValueError(f"chapters: no fresh records for {name} in {build / 'checks'} or {cache / 'checks'}"
                                 " (run_missing=False)")
            log(f"running {md.name} in smoke mode (no fresh records) ...")
            start = time.perf_counter()
            with _KeepEnv():
                res = run_chapter(md, cache, smoke=True, timeout=timeout)
            path = cache / "checks" / f"{name}.jsonl"
            recs = _read(path) if path.exists() else []
            out.append(ChapterRecords(name, "ran now (smoke)", path, recs, time.perf_counter() - start, res.error))
    return out


# --- the index ----------------------------------------------------------------------------------------------------


@dataclass
class EquationRow:
    """One numbered equation: where it is taught and how it is checked, from its records.

    ``methods`` counts the checks by :func:`check_method`; ``worst_residual`` is the largest residual among its
    passing non-erratum numeric checks (``None`` if it has none); ``errata`` the distinct erratum descriptions;
    ``failed`` the number of records that did not pass."""

    eq: int
    planned: str
    topic: str
    chapters: tuple[str, ...] = ()
    n_checks: int = 0
    n_passed: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    worst_residual: float | None = None
    worst_tolerance: str | None = None
    errata: tuple[str, ...] = ()
    failed: int = 0

    @property
    def checked(self) -> bool:
        """At least one passing check (erratum checks count: the typed form was shown wrong)."""
        return self.n_passed > 0

    @property
    def status(self) -> str:
        if self.failed:
            return f"FAILED ({self.failed} checks)"
        if not self.checked:
            return "not yet checked"
        return "erratum" if self.errata else "holds as typed"


def equation_index(records: Iterable[dict], n_equations: int = N_EQUATIONS) -> list[EquationRow]:
    """One :class:`EquationRow` per equation ``1..n_equations``, in order, from the check records."""
    if isinstance(n_equations, bool) or not isinstance(n_equations, int) or not 1 <= n_equations <= N_EQUATIONS:
        raise ValueError(f"n_equations must be an int in [1, {N_EQUATIONS}], got {n_equations!r}")
    records = _validate(records)
    rows = {e: EquationRow(e, *planned_chapter(e)) for e in range(1, n_equations + 1)}
    for r in records:
        e = equation_number(r)
        if e is None or e not in rows:
            continue
        row = rows[e]
        if r["chapter"] not in row.chapters:
            row.chapters += (r["chapter"],)
        row.n_checks += 1
        row.n_passed += bool(r["passed"])
        row.failed += not r["passed"]
        method = check_method(r)
        row.methods[method] = row.methods.get(method, 0) + 1
        if r["erratum"]:
            if r["erratum"] not in row.errata:
                row.errata += (r["erratum"],)
        elif r["kind"] == "numeric" and r["passed"]:
            res = float(r["residual"])
            if row.worst_residual is None or res > row.worst_residual:
                row.worst_residual, row.worst_tolerance = res, str(r["tolerance"])
    return list(rows.values())


@dataclass
class Erratum:
    """A typed equation found wrong: the erratum record (``typed_residual`` is how far the typed form is off), and
    the check of the corrected form recorded after it (see :func:`_corrected_form`), or None if there is none."""

    eq: int | None
    chapter: str
    description: str
    typed_label: str
    typed_residual: float
    corrected_label: str | None
    corrected_residual: float | None


def _corrected_form(erratum: dict, later: list[dict]) -> dict | None:
    """The check that verifies the corrected form: among the passing non-erratum checks of the same chapter and
    equation recorded after the erratum, the first whose label says "correct..." (and not "typed"), else the first
    whose label does not mention the typed form, else None."""
    same = [x for x in later if x["chapter"] == erratum["chapter"] and x["eq"] == erratum["eq"]
            and not x["erratum"] and x["passed"]]
    untyped = [x for x in same if "typed" not in x["label"].lower()]
    named = [x for x in untyped if "correct" in x["label"].lower()]
    return (named or untyped or [None])[0]


def errata(records: Iterable[dict]) -> list[Erratum]:
    """Every distinct (chapter, equation, description) erratum in the records, in record order."""
    records = _validate(records)
    out, seen = [], set()
    for i, r in enumerate(records):
        if not r["erratum"] or not r["passed"]:
            continue
        key = (r["chapter"], r["eq"], r["erratum"])
        if key in seen:
            continue
        seen.add(key)
        fix = _corrected_form(r, records[i + 1:])
        out.append(Erratum(equation_number(r), r["chapter"], r["erratum"], r["label"], float(r["residual"]),
                           None if fix is None else fix["label"], None if fix is None else float(fix["residual"])))
    return out


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~])")


def escape_cell(text: str) -> str:
    """``text`` as literal text in one Markdown table cell: newlines joined, and every character Markdown would read
    (emphasis ``* _``, links ``[ ]``, code, HTML, pipes) backslash-escaped, so ``[T_pi^n V](s)`` stays text."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text).replace("\n", " "))


def _methods(methods: dict[str, int]) -> str:
    order = ("exact numeric", "symbolic", "sampling", "inequality")
    return ", ".join(f"{methods[m]} {m}" for m in order if m in methods)


def markdown_index(rows: Sequence[EquationRow]) -> str:
    """The equation index as a Markdown table, one row per equation."""
    lines = ["| eq | taught in | checks | how | worst residual (tolerance) | as typed |",
             "|---:|---|---:|---|---|---|"]
    for row in rows:
        if not row.n_checks:
            lines.append(f"| {row.eq} | planned: {row.planned} ({escape_cell(row.topic)}) | 0 | — | — | "
                         f"not yet checked |")
            continue
        worst = "—" if row.worst_residual is None else f"{row.worst_residual:.1e} ({escape_cell(row.worst_tolerance)})"
        typed = row.status if row.status != "erratum" else "erratum: " + "; ".join(escape_cell(e) for e in row.errata)
        lines.append(f"| {row.eq} | {', '.join(row.chapters)} | {row.n_checks} | {_methods(row.methods)} | {worst} | "
                     f"{typed} |")
    return "\n".join(lines)


def markdown_errata(items: Sequence[Erratum]) -> str:
    """The errata list as a Markdown table: equation, chapter, what is wrong, typed residual, corrected form."""
    lines = ["| eq | chapter | what is wrong in the typed form | typed off by | corrected form, verified as |",
             "|---:|---|---|---:|---|"]
    for e in items:
        fix = "—" if e.corrected_label is None else \
            f"{escape_cell(e.corrected_label)} (residual {e.corrected_residual:.1e})"
        typed = "symbolic" if e.typed_residual == float("inf") else f"{e.typed_residual:.2g}"
        lines.append(f"| {e.eq if e.eq is not None else '—'} | {e.chapter} | {escape_cell(e.description)} | {typed} | "
                     f"{fix} |")
    return "\n".join(lines)
