"""softq.book.equation_index: the appendix's index and errata, generated from check records."""

import json
import os
import time

import pytest
from _chapters import HEADER

import softq.book.equation_index as ei


def rec(eq, label="a check", *, chapter="01_x", kind="numeric", passed=True, residual=1e-16, tol="1e-12",
        erratum=None):
    return {"chapter": chapter, "label": label, "eq": None if eq is None else str(eq), "kind": kind, "passed": passed,
            "residual": residual, "tolerance": tol, "erratum": erratum, "extra": {}}


RECORDS = [
    rec(1, "exact one"),
    rec(1, "sampled mean within 5 s.e.", kind="inequality", residual=-0.1, tol="0"),
    rec(2, "eq 2 as typed", erratum="sign of tau is wrong", residual=0.5),
    rec(2, "eq 2 typed and corrected agree at tau = 1", residual=0.0),
    rec(2, "eq 2 corrected", residual=3e-15),
    rec(2, "symbolic form", kind="symbolic", residual=0.0, tol="exact"),
    rec(None, "an unnumbered check"),
    rec(3, "a check in another chapter", chapter="02_y", residual=2e-13),
    rec(3, "eq 3 as typed", chapter="02_y", erratum="off by tau", kind="symbolic", residual=float("inf")),
]


def test_plan_covers_every_equation_once():
    covered = [e for first, last, _, _ in ei.PLAN for e in range(first, last + 1)]
    assert covered == list(range(1, ei.N_EQUATIONS + 1))
    assert ei.planned_chapter(88)[0] == "09" and ei.planned_chapter(80)[0] == "06"
    for bad in (0, 91, 1.0, True):
        with pytest.raises(ValueError, match="eq"):
            ei.planned_chapter(bad)


def test_index_rows_counts_methods_and_status():
    rows = ei.equation_index(RECORDS)
    assert [r.eq for r in rows] == list(range(1, 91))
    r1, r2, r3, r4 = rows[:4]
    assert (r1.n_checks, r1.methods, r1.status) == (2, {"exact numeric": 1, "sampling": 1}, "holds as typed")
    assert r1.worst_residual == 1e-16
    assert r2.status == "erratum" and r2.errata == ("sign of tau is wrong",) and r2.n_checks == 4
    assert r2.worst_residual == 3e-15 and r2.methods["symbolic"] == 1   # the erratum's 0.5 is not a residual of a pass
    assert r3.chapters == ("02_y",) and r3.status == "erratum"
    assert r4.status == "not yet checked" and r4.planned == "01" and not r4.checked
    assert sum(r.checked for r in rows) == 3


def test_failed_records_are_shown_failed():
    rows = ei.equation_index([rec(5, passed=False, residual=1.0)])
    assert rows[4].status.startswith("FAILED") and not rows[4].checked


# the classes of RECORDS' two errata, keyed as ei.ERRATUM_CLASSES is: (eq, a prefix of the description)
CLASSES = {
    (2, "sign of tau"): ei.ErratumClass(ei.TYPO, "a sign flipped"),
    (3, "off by tau"): ei.ErratumClass(ei.SENTENCE, "the sentence after it", extraction="a tau could be dropped"),
}


def test_errata_pick_the_corrected_form():
    items = ei.errata(RECORDS, CLASSES)
    assert [(e.eq, e.chapter, e.description) for e in items] == [(2, "01_x", "sign of tau is wrong"),
                                                                (3, "02_y", "off by tau")]
    assert items[0].corrected_label == "eq 2 corrected" and items[0].typed_residual == 0.5
    assert items[1].corrected_label is None
    md = ei.markdown_errata(items)
    assert "sign of tau is wrong" in md and "symbolic" in md and md.count("\n") == 3


def test_errata_carry_their_class_and_the_table_shows_it():
    items = ei.errata(RECORDS, CLASSES)
    assert [(e.kind, e.note, e.extraction) for e in items] == [
        (ei.TYPO, "a sign flipped", None), (ei.SENTENCE, "the sentence after it", "a tau could be dropped")]
    rows = [line.split(" | ") for line in ei.markdown_errata(items).splitlines()[2:]]
    assert [r[2] for r in rows] == ["typo", "sentence"]                     # the class column
    assert rows[0][-1] == "— |" and rows[1][-1] == "possibly: a tau could be dropped |"


def test_an_erratum_without_a_class_raises():
    unclassified = RECORDS + [rec(7, "eq 7 as typed", erratum="a new erratum", residual=1.0)]
    with pytest.raises(ValueError, match=r"1 errata without a class(.|\n)*eq 7(.|\n)*a new erratum"):
        ei.errata(unclassified, CLASSES)
    with pytest.raises(ValueError, match="without a class"):
        ei.counts_sentence(unclassified, CLASSES)
    with pytest.raises(ValueError, match="no class"):               # same text, other equation: not that class
        ei.classify(4, "sign of tau is wrong", CLASSES)
    with pytest.raises(ValueError, match="2 classes"):
        ei.classify(2, "sign of tau is wrong", {**CLASSES, (2, "sign"): ei.ErratumClass(ei.TYPO, "again")})
    with pytest.raises(ValueError, match="kind"):
        ei.ErratumClass("misprint", "no such kind")
    with pytest.raises(ValueError, match="reason"):
        ei.ErratumClass(ei.TYPO, " ")


def test_counts_by_class_are_computed_from_the_records(tmp_path):
    more = RECORDS + [rec(3, "eq 3 also", chapter="02_y", erratum="off by tau again", residual=1.0),
                      rec(2, "a failed erratum check", erratum="sign of tau is wrong, twice", passed=False)]
    items = ei.errata(more, CLASSES)
    assert ei.errata_counts(items) == {"typo": 1, "convention": 0, "sentence": 2, "extraction?": 2}
    sentence = "3 of 90 equations checked; 3 errata in 2 typed equations: 1 typo, 0 conventions, 2 sentences " \
               "(2 of them could be artifacts of the text extraction)"
    assert ei.counts_sentence(more, CLASSES) == sentence
    path = tmp_path / "checks.json"                               # as softq.book.build.write_checks_json writes
    path.write_text(json.dumps({"smoke": True, "chapters": [], "records": more}))
    assert ei.counts_sentence(path, CLASSES) == ei.counts_sentence(str(path), CLASSES) == sentence
    assert ei.counts_sentence([rec(1)], CLASSES) == ("1 of 90 equations checked; 0 errata in 0 typed equations: "
                                                     "0 typos, 0 conventions, 0 sentences")
    md = ei.markdown_errata_counts(items)
    assert "| typo | the typeset equation is wrong | 1 | 0 |" in md and "| sentence |" in md
    assert md.splitlines()[-1] == "| all | | 3 | 2 |"
    path.write_text(json.dumps([rec(1)]))
    with pytest.raises(ValueError, match="not a checks.json"):
        ei.counts_sentence(path)


def test_the_book_classification_table():
    for (eq, prefix), cls in ei.ERRATUM_CLASSES.items():
        assert isinstance(eq, int) and 1 <= eq <= ei.N_EQUATIONS and len(prefix) >= 10, (eq, prefix)
        assert cls.kind in ei.KINDS and cls.note.strip()
        assert ei.classify(eq, prefix) is cls                                # each prefix picks its own entry only
    kinds = {k: sum(c.kind == k for c in ei.ERRATUM_CLASSES.values()) for k in ei.KINDS}
    assert all(kinds.values())   # each kind occurs (the examples: semi-gradients of 22-23, sentences of 73, 86)
    assert ei.classify(22, "the last nabla must act on the leading v_theta only").kind == ei.CONVENTION
    assert ei.classify(73, "the target of (73) is log pibar + ...").kind == ei.SENTENCE
    assert ei.classify(86, "with 1/gamma the expected update ...").kind == ei.SENTENCE


def test_markdown_index_one_row_per_equation_and_escapes_pipes():
    rows = ei.equation_index(RECORDS + [rec(4, erratum="KL[p||q] is wrong")])
    md = ei.markdown_index(rows)
    body = md.splitlines()[2:]
    assert [int(line.split("|")[1]) for line in body] == list(range(1, 91))
    assert "KL\\[p\\|\\|q\\]" in md and "not yet checked" in body[10]
    assert ei.escape_cell("a|b\nc") == "a\\|b c"
    assert ei.escape_cell("[T_pi^n V](s), *x*") == r"\[T\_pi^n V\](s), \*x\*"  # no link, no emphasis


def test_bad_records_and_eq_numbers_raise():
    with pytest.raises(ValueError, match="records"):
        ei.equation_index([{"label": "no chapter"}])
    for bad in ("900", "46a", "0"):
        with pytest.raises(ValueError, match="eq="):
            ei.equation_index([rec(bad)])
    with pytest.raises(ValueError, match="n_equations"):
        ei.equation_index([], n_equations=0)
    with pytest.raises(ValueError, match="kind"):
        ei.check_method(rec(1, kind="other"))




@pytest.fixture
def layout(tmp_path):
    """A chapter file, a package folder, and a build folder, with controlled modification times."""
    md = tmp_path / "notebooks" / "01_x.md"
    md.parent.mkdir()
    md.write_text(HEADER + "\n# x\n\n```{code-cell} ipython3\nfrom softq.book.check import check\n"
                  "check('one', 1.0, 1.0, eq=7)\n```\n")
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("x = 1\n")
    old = time.time() - 100
    os.utime(md, (old, old))
    os.utime(pkg / "m.py", (old, old))
    return md, pkg, tmp_path / "build"


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_collect_prefers_fresh_book_records_then_the_cache(layout):
    md, pkg, build = layout
    _write(build / "checks" / "01_x.jsonl", [rec(1, chapter="01_x")])
    got = ei.collect_records([md], build=build, package=pkg, run_missing=False)
    assert got[0].source == "book" and len(got[0].records) == 1
    os.utime(build / "checks" / "01_x.jsonl", (time.time() - 200, time.time() - 200))   # older than the chapter
    with pytest.raises(ValueError, match="no fresh records"):
        ei.collect_records([md], build=build, package=pkg, run_missing=False)
    _write(build / "appendix-smoke" / "checks" / "01_x.jsonl", [rec(2, chapter="01_x")] * 2)
    got = ei.collect_records([md], build=build, package=pkg, run_missing=False)
    assert got[0].source == "appendix cache" and len(got[0].records) == 2
    (pkg / "m.py").touch()                                                # code changed after the records
    os.utime(pkg / "m.py", (time.time() + 10, time.time() + 10))
    with pytest.raises(ValueError, match="no fresh records"):
        ei.collect_records([md], build=build, package=pkg, run_missing=False)


def test_collect_runs_a_missing_chapter_in_smoke_mode_and_restores_the_environment(layout, monkeypatch):
    md, pkg, build = layout
    monkeypatch.setenv("SOFTQ_CHAPTER", "99_appendix")
    monkeypatch.delenv("SOFTQ_CHECKS_FILE", raising=False)
    monkeypatch.setenv("SOFTQ_SMOKE", "0")
    got = ei.collect_records([md], build=build, package=pkg, timeout=120, log=lambda *_: None)
    assert got[0].source == "ran now (smoke)" and got[0].error is None
    assert [(r["chapter"], r["eq"]) for r in got[0].records] == [("01_x", "7")]
    assert (build / "appendix-smoke" / "checks" / "01_x.jsonl").exists()
    assert os.environ["SOFTQ_CHAPTER"] == "99_appendix" and os.environ["SOFTQ_SMOKE"] == "0"
    assert "SOFTQ_CHECKS_FILE" not in os.environ
    again = ei.collect_records([md], build=build, package=pkg, run_missing=False)   # now cached
    assert again[0].source == "appendix cache"


def test_collect_looks_first_in_the_build_that_runs_it(layout, monkeypatch):
    md, pkg, build = layout
    other = build.parent / "other-out"                          # python -m softq.book --out other-out
    _write(other / "checks" / "01_x.jsonl", [rec(3, chapter="01_x")])
    _write(build / "checks" / "01_x.jsonl", [rec(1, chapter="01_x")] * 2)
    monkeypatch.setenv("SOFTQ_CHECKS_FILE", str(other / "checks" / "99_appendix.jsonl"))
    got = ei.collect_records([md], build=build, package=pkg, run_missing=False)
    assert got[0].source == "this build" and [r["eq"] for r in got[0].records] == ["3"]
    monkeypatch.setenv("SOFTQ_CHECKS_FILE", str(build / "checks" / "99_appendix.jsonl"))   # make book: build/ itself
    got = ei.collect_records([md], build=build, package=pkg, run_missing=False)
    assert got[0].source == "book" and len(got[0].records) == 2
    monkeypatch.delenv("SOFTQ_CHECKS_FILE")
    assert ei.collect_records([md], build=build, package=pkg, run_missing=False, this_build=other)[0].source == \
        "this build"


def test_collect_bad_arguments(layout):
    md, pkg, build = layout
    with pytest.raises(ValueError, match="no such chapter"):
        ei.collect_records([md.parent / "02_missing.md"], build=build, package=pkg)
    with pytest.raises(ValueError, match="timeout"):
        ei.collect_records([md], build=build, package=pkg, timeout=0)
