"""The book's equation index and errata list, generated from the check records (the appendix, ``99_*``).

Every ``softq.book.check`` call a chapter makes is one JSON record in ``build/checks/<chapter>.jsonl`` (see
:mod:`softq.book`). This module gathers them and answers, for each numbered equation 1-90 of the paper: where it is
taught, how it is checked (symbolic, exact numeric, sampling, inequality), how many checks and the worst residual,
and whether it holds as typed (no erratum record) or not (the erratum records and what they say).

Where the records come from (:func:`collect_records`), per chapter, first match wins:

1. ``build/checks/<chapter>.jsonl``, written by ``make book`` / ``python -m softq.book`` (full or smoke), if it is
   newer than the chapter and than every ``softq/*.py`` file it may depend on; in a build into another folder,
   ``python -m softq.book --out DIR``, first ``DIR/checks/<chapter>.jsonl``, under the same rule;
2. ``build/nbval/checks/<chapter>.jsonl``, written by ``make test``'s smoke runs of the chapters through nbval
   (:mod:`softq.book.nbval_records`), which run in sorted order, so before the appendix;
3. ``build/appendix-smoke/checks/<chapter>.jsonl``, an earlier run of (4), under the same freshness rule;
4. otherwise the chapter is executed now, in smoke mode, by :func:`softq.book.build.run_chapter` into
   ``build/appendix-smoke/`` (e.g. the appendix opened alone in JupyterLab on a fresh clone).

Smoke mode makes every check a chapter makes (it only shrinks sample sizes), so the index is complete either way;
residuals of sampling checks are then those of the smaller samples.

Every erratum is classified (:data:`ERRATUM_CLASSES`, looked up by :func:`classify`): a *typo* (the typeset
equation is wrong), a *convention* the paper leaves implicit (the equation holds under a reading its notation does not
state, such as which factors a gradient holds fixed), or a *sentence* (the claim that fails is in the prose around an
equation, not in the equation). Where the discrepancy could be an artifact of the text extraction the book reads the
paper from, rather than of the typeset paper, the class says why. An erratum without a class makes :func:`errata`
raise. :func:`counts_sentence` is the one sentence of counts that the appendix and the preface print.
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
    "TYPO",
    "CONVENTION",
    "SENTENCE",
    "KINDS",
    "ErratumClass",
    "ERRATUM_CLASSES",
    "classify",
    "Erratum",
    "errata",
    "errata_counts",
    "read_checks_json",
    "counts_sentence",
    "markdown_index",
    "markdown_errata",
    "markdown_errata_counts",
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
    """``softq.book.build.run_chapter`` sets SOFTQ_CHAPTER / SOFTQ_CHECKS_FILE / SOFTQ_SMOKE for the child kernel;
    inside the appendix's own kernel they must be restored afterwards, or the appendix's checks would go to the wrong
    file."""

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
    this_build: Path | None = None,
    log=print,
) -> list[ChapterRecords]:
    """The records of each chapter file in ``chapters`` (``notebooks/NN_*.md``), from the freshest source (see the
    module docstring). ``cache`` defaults to ``build / "appendix-smoke"``. ``this_build`` is the output folder of the
    build that runs the caller, looked at first; by default the folder above ``$SOFTQ_CHECKS_FILE``'s, when that is
    set (``python -m softq.book --out DIR`` writes the chapters' records to ``DIR/checks/``). With
    ``run_missing=False`` a chapter without fresh records raises ValueError instead of being run. A chapter that fails
    when run here is returned with its ``error`` and whatever records it made before failing."""
    from softq.book.build import run_chapter

    cache = build / "appendix-smoke" if cache is None else cache
    if this_build is None and os.environ.get("SOFTQ_CHECKS_FILE"):
        this_build = Path(os.environ["SOFTQ_CHECKS_FILE"]).resolve().parent.parent
    sources = [("book", build), ("nbval smoke run", build / "nbval"), ("appendix cache", cache)]
    if this_build is not None and Path(this_build).resolve() not in {Path(f).resolve() for _, f in sources}:
        sources.insert(0, ("this build", Path(this_build)))
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise ValueError(f"timeout must be a positive int (seconds per cell), got {timeout!r}")
    code_mtime = _code_mtime(package)
    out = []
    for md in chapters:
        md = Path(md)
        if not md.exists():
            raise ValueError(f"chapters: no such chapter file {md}")
        name = md.stem
        for source, folder in sources:
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


# --- what kind of erratum ---------------------------------------------------------------------------------------

TYPO, CONVENTION, SENTENCE = "typo", "convention", "sentence"
KINDS = (TYPO, CONVENTION, SENTENCE)
_PLURAL = {TYPO: "typos", CONVENTION: "conventions", SENTENCE: "sentences"}


@dataclass(frozen=True)
class ErratumClass:
    """What kind of mistake an erratum documents, decided by reading the paper's text around the equation and the
    chapter's check.

    ``kind``: :data:`TYPO` (the typeset equation is wrong), :data:`CONVENTION` (the equation holds under a reading its
    notation leaves implicit, e.g. which factors a gradient holds fixed) or :data:`SENTENCE` (the claim that fails is
    in the prose around the equation, not in the equation). ``note``: why, in one line. ``extraction``: None, or one
    line on how the discrepancy could be an artifact of the text extraction (a dropped glyph) rather than of the
    typeset paper, which only the typeset PDF can settle."""

    kind: str
    note: str
    extraction: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ErratumClass: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.note.strip():
            raise ValueError("ErratumClass: a class needs its reason (note)")


_FIG2 = "the extraction does drop tau (Figure 2's legend reads 'soft (ent), = 0.1')"

# Every erratum the chapters record, keyed by (equation number, a prefix of its description): the description starts
# with the prefix (the whole text works too). A new erratum, or a reworded one, must be added here: errata() raises.
ERRATUM_CLASSES: dict[tuple[int | None, str], ErratumClass] = {
    (11, "the /tau is outside exp"): ErratumClass(
        TYPO, "typed exp(q_theta(a))/tau: the /tau stands outside exp, where eq (10) just above has exp(q/tau); a "
              "moved bracket, not a dropped glyph"),
    (11, "with the typed v, eq (12) is not normalised"): ErratumClass(
        TYPO, "consequence of eq (11)'s misplaced /tau: eq (12) itself is typed right"),
    (22, "the last nabla must act on the leading v_theta"): ErratumClass(
        CONVENTION, "the nabla before E over the theta-dependent pi^B does not say that only the leading v_theta is "
                    "differentiated; with that semi-gradient reading (22) holds"),
    (23, "the value-error nabla must be a semi-gradient"): ErratumClass(
        CONVENTION, "the notation does not say that the value-error nabla holds the sampling policy and the target "
                    "r - tau KL fixed (the policy-gradient nabla is the full derivative); so read, (23) holds"),
    (31, "expectation is under pi^B_{q_theta}"): ErratumClass(
        TYPO, "subscript q_theta left over from Section 2's eq (13); Section 3 has no q_theta, and the extraction "
              "gives pi^B_Q as 'πBQ' in the same line"),
    (37, "the bootstrap gamma^n V(s_n) is counted twice"): ErratumClass(
        TYPO, "gamma^n V(s_n) stands where V(s_0) belongs: a term replaced, not a glyph dropped; eq (54)'s right side "
              "has the right form"),
    (38, "the inner term must be Q(s', a')"): ErratumClass(
        TYPO, "Q(s, a) inside E_{a'}: the expectation is vacuous and (*) -> (**) fails",
        extraction="two primes missing, and a prime is a small glyph an extraction can drop; but the same line keeps "
                   "a' and s', and (39) keeps Q(s', a')"),
    (38, "G_Q is the greedy policy"): ErratumClass(
        TYPO, "G_Q is Section 3.2's argmax policy (the same 'GQ' glyphs there); (*) -> (**) needs pi^B_Q, which the "
              "paper calls 'analogous to the greedy policy'"),
    (43, "starts from Q(s,a)"): ErratumClass(
        TYPO, "Q(s,a) where tau KL(s) + V_Q(s) belongs ('by comparing terms'); eq (47) starts right"),
    (46, "bootstrap discounted by gamma^(t+n)"): ErratumClass(
        TYPO, "exponent t+n (an extraction does not add 't+'); eq (47) on the next line equals (46) only with "
              "gamma^n"),
    (52, "eq (52) omits the -tau grad KL(s_t) term"): ErratumClass(
        TYPO, "the -tau grad KL(s_t) of (49)-(50) is absent from the estimator the text offers for g_gamma; a whole "
              "term, and (79)-(80) do write a KL-gradient term"),
    (54, "the KL terms are missing from the rewards"): ErratumClass(
        TYPO, "the middle of (54) has r without -tau KL and gamma^d V(s_{t+d}) for gamma^n V(s_{t+n}); its right "
              "side is right"),
    (58, "(59) holds only if"): ErratumClass(
        CONVENTION, "(59) is the semi-gradient of (58), as Q-learning implementations compute it; the annotation "
                    "names only the state distribution as fixed, not a_t's, the later actions' or the target"),
    (60, "sign of tau KL"): ErratumClass(
        TYPO, "- tau KL inside the bracket where (46)-(47) give +; (61), the next line, uses the right sign"),
    (63, "(*) and (**) need minus signs"): ErratumClass(
        TYPO, "both KL terms typed with + where expanding (62) gives -"),
    (63, "the log is missing"): ErratumClass(
        SENTENCE, "the justification of (**) under (63) ('vanishes because E[pi/pibar] = KL'), not the numbered "
                  "equation",
        extraction="a missing log in front of a fraction split over lines; (63) itself keeps such logs, but only the "
                   "PDF can tell"),
    (64, "the first term is +tau^2 grad KL"): ErratumClass(
        TYPO, "-tau^2 grad KL where eq (21) gives +; (65) has +"),
    (71, "log(pi_theta/pibar) in the bracket"): ErratumClass(
        TYPO, "(70)'s pi_theta kept in the bracket though its KL was changed to pi_theta_old (and 'θold' survives "
              "there); held fixed at theta_old it would hold, but the text says (71) computes F^-1 g"),
    (73, "the target of (73) is log pibar"): ErratumClass(
        SENTENCE, "'Evidently, we are regressing log pi_theta towards log pi_theta_old + Delta/tau + KL', the "
                  "sentence after (73); (72)-(73) hold"),
    (78, "Q = V + tau log(pi/pibar)"): ErratumClass(
        TYPO, "middle line V + log(pi/pibar) for V + tau log(pi/pibar) (eq 57); the last line follows from it "
              "without tau, so the algebra was done without it: not an extraction drop"),
    (78, "with the tau's restored"): ErratumClass(
        TYPO, "the last line lacks the factor tau (step eps/tau): a consequence of the middle line's missing tau"),
    (78, "(78) has pi_theta_old in the bracket"): ErratumClass(
        SENTENCE, "'which exactly matches the expression in (71)', the sentence after (78): true only of (71) "
                  "corrected"),
    (79, "no bootstrap and the wrong sign on the KL term"): ErratumClass(
        TYPO, "+ tau grad KL where the estimator needs -, and no gamma^n V(s_{t+n}); the bootstrap alone might be "
              "left implicit, the sign cannot"),
    (80, "no bootstrap and the wrong sign on the KL term"): ErratumClass(
        TYPO, "as (79): + tau grad KL where the estimator needs -, and no bootstrap gamma^n V(s_{t+n})"),
    (82, "factors tau missing and -log|A| outside the discount"): ErratumClass(
        TYPO, "gamma log sum exp(Q/tau) - log|A|: no factor tau, and -log|A| outside gamma",
        extraction=f"the tau before log could be a dropped glyph ({_FIG2}); -log|A| outside the discount cannot"),
    (83, "factor tau missing"): ErratumClass(
        TYPO, "gamma log sum exp(Q/tau): no factor tau before log, so y is not in the units of Q",
        extraction=f"a tau between gamma and log could be a dropped glyph ({_FIG2}), though tau inside exp survives"),
    (83, "without the factor tau the target grows"): ErratumClass(
        TYPO, "consequence of the missing factor tau: the typed target does not tend to eq (81) as tau -> 0",
        extraction=f"as for the missing tau of (83) ({_FIG2})"),
    (86, "with 1/gamma the expected update"): ErratumClass(
        SENTENCE, "'we scale gradients that go into advantage stream by 1/gamma', after (86); (84)-(86) hold. The "
                  "extraction renders gamma and tau distinctly (c = 1/tau just before)"),
    (87, "the term multiplying tau has mean (tau - 1) S"): ErratumClass(
        TYPO, "tau S inside tau(...) where PGQ has S: the text's 'expectation zero under pi' needs S; an extraction "
              "does not add a tau"),
    (87, "tau S inside the parentheses must be S"): ErratumClass(
        TYPO, "as above, at the optimum of an MDP: the inner tau S must be S"),
}


def classify(eq: int | None, description: str,
             classes: dict[tuple[int | None, str], ErratumClass] | None = None) -> ErratumClass:
    """The class of the erratum of equation ``eq`` described by ``description``: the one entry of ``classes``
    (default :data:`ERRATUM_CLASSES`) with that equation number whose prefix starts the description. ValueError if
    there is none (classify the new erratum) or more than one (make the prefixes distinctive)."""
    classes = ERRATUM_CLASSES if classes is None else classes
    found = [c for (e, prefix), c in classes.items() if e == eq and description.startswith(prefix)]
    if len(found) != 1:
        what = "no class" if not found else f"{len(found)} classes (the prefixes are not distinctive)"
        raise ValueError(f"the erratum of eq {eq} has {what}: {description!r}. Add one (eq, prefix) entry for it to "
                         f"softq.book.equation_index.ERRATUM_CLASSES, with its kind ({', '.join(KINDS)}) and reason")
    return found[0]


@dataclass
class Erratum:
    """A typed equation found wrong: the erratum record (``typed_residual`` is how far the typed form is off), the
    check of the corrected form recorded after it (see :func:`_corrected_form`), or None if there is none, and the
    erratum's class (:class:`ErratumClass`, from :func:`classify`)."""

    eq: int | None
    chapter: str
    description: str
    typed_label: str
    typed_residual: float
    corrected_label: str | None
    corrected_residual: float | None
    kind: str
    note: str
    extraction: str | None


def _corrected_form(erratum: dict, later: list[dict]) -> dict | None:
    """The check that verifies the corrected form: among the passing non-erratum checks of the same chapter and
    equation recorded after the erratum, the first whose label says "correct..." (and not "typed"), else the first
    whose label does not mention the typed form, else None."""
    same = [x for x in later if x["chapter"] == erratum["chapter"] and x["eq"] == erratum["eq"]
            and not x["erratum"] and x["passed"]]
    untyped = [x for x in same if "typed" not in x["label"].lower()]
    named = [x for x in untyped if "correct" in x["label"].lower()]
    return (named or untyped or [None])[0]


def errata(records: Iterable[dict],
           classes: dict[tuple[int | None, str], ErratumClass] | None = None) -> list[Erratum]:
    """Every distinct (chapter, equation, description) erratum in the records, in record order, each with its class
    from ``classes`` (default :data:`ERRATUM_CLASSES`). Raises ValueError naming every erratum that has no class (or
    more than one), so that a new erratum cannot go unclassified."""
    records = _validate(records)
    out, seen, unclassified = [], set(), []
    for i, r in enumerate(records):
        if not r["erratum"] or not r["passed"]:
            continue
        key = (r["chapter"], r["eq"], r["erratum"])
        if key in seen:
            continue
        seen.add(key)
        eq = equation_number(r)
        try:
            cls = classify(eq, r["erratum"], classes)
        except ValueError as err:
            unclassified.append(f"{r['chapter']}: {err}")
            continue
        fix = _corrected_form(r, records[i + 1:])
        out.append(Erratum(eq, r["chapter"], r["erratum"], r["label"], float(r["residual"]),
                           None if fix is None else fix["label"], None if fix is None else float(fix["residual"]),
                           cls.kind, cls.note, cls.extraction))
    if unclassified:
        raise ValueError(f"{len(unclassified)} errata without a class:\n" + "\n".join(unclassified))
    return out


def errata_counts(items: Sequence[Erratum]) -> dict[str, int]:
    """How many of the errata ``items`` are of each kind, in the order of :data:`KINDS` (zeros included), and
    ``"extraction?"``: how many could be artifacts of the text extraction."""
    counts = {k: sum(e.kind == k for e in items) for k in KINDS}
    counts["extraction?"] = sum(e.extraction is not None for e in items)
    return counts


def read_checks_json(path: Path | str) -> list[dict]:
    """The check records of a ``checks.json`` written by :func:`softq.book.build.write_checks_json`."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
        raise ValueError(f"{path}: not a checks.json (a JSON object with a list of 'records')")
    return doc["records"]


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def counts_sentence(source: Path | str | Iterable[dict],
                    classes: dict[tuple[int | None, str], ErratumClass] | None = None) -> str:
    """The book's counts in one sentence, from a ``checks.json`` (its path) or from check records: equations checked,
    errata, typed equations with an erratum, errata by kind, e.g. "90 of 90 equations checked; 30 errata in 23 typed
    equations: 23 typos, 3 conventions, 4 sentences (5 of them could be artifacts of the text extraction)". The
    appendix and the preface print it; raises as :func:`errata` does on an unclassified erratum (``classes`` as
    there)."""
    records = read_checks_json(source) if isinstance(source, Path | str) else _validate(source)
    n_checked = sum(row.checked for row in equation_index(records))
    items = errata(records, classes)
    counts = errata_counts(items)
    eqs = {(e.chapter, e.eq) for e in items}
    kinds = ", ".join(_plural(counts[k], k, _PLURAL[k]) for k in KINDS)
    text = (f"{n_checked} of {N_EQUATIONS} equations checked; {_plural(len(items), 'erratum', 'errata')} in "
            f"{_plural(len(eqs), 'typed equation', 'typed equations')}: {kinds}")
    if counts["extraction?"]:
        text += f" ({counts['extraction?']} of them could be artifacts of the text extraction)"
    return text


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
    """The errata list as a Markdown table: equation, chapter, class, what is wrong, typed residual, corrected form,
    why the class, and whether the text extraction could explain it."""
    lines = ["| eq | chapter | class | what is wrong in the typed form | typed off by | corrected form, verified as | "
             "why this class | extraction? |",
             "|---:|---|---|---|---:|---|---|---|"]
    for e in items:
        fix = "—" if e.corrected_label is None else \
            f"{escape_cell(e.corrected_label)} (residual {e.corrected_residual:.1e})"
        typed = "symbolic" if e.typed_residual == float("inf") else f"{e.typed_residual:.2g}"
        extraction = "—" if e.extraction is None else f"possibly: {escape_cell(e.extraction)}"
        lines.append(f"| {e.eq if e.eq is not None else '—'} | {e.chapter} | {e.kind} | {escape_cell(e.description)} | "
                     f"{typed} | {fix} | {escape_cell(e.note)} | {extraction} |")
    return "\n".join(lines)


def markdown_errata_counts(items: Sequence[Erratum]) -> str:
    """The errata counted by class (:func:`errata_counts`) as a Markdown table, with the total."""
    counts = errata_counts(items)
    meaning = {TYPO: "the typeset equation is wrong",
               CONVENTION: "the equation holds under a reading its notation leaves implicit",
               SENTENCE: "the claim that fails is in the prose around the equation"}
    lines = ["| class | meaning | errata | of which the extraction could explain |", "|---|---|---:|---:|"]
    for k in KINDS:
        flagged = errata_counts([e for e in items if e.kind == k])["extraction?"]
        lines.append(f"| {k} | {meaning[k]} | {counts[k]} | {flagged} |")
    lines.append(f"| all | | {len(items)} | {counts['extraction?']} |")
    return "\n".join(lines)
