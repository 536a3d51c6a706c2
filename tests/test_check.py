"""softq.book.check: a false claim raises, a true one records and prints, an erratum expects its failure."""

import json
import math

import numpy as np
import pytest
import sympy as sp
import torch

from softq.book import check as chk


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTQ_CHAPTER", "test_chapter")
    monkeypatch.setenv("SOFTQ_CHECKS_FILE", str(tmp_path / "records.jsonl"))
    monkeypatch.setattr(chk, "RECORDS", [])
    return tmp_path / "records.jsonl"


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_passing_check_records_prints_and_writes(_isolated, capsys):
    rec = chk.check("identity", torch.tensor([1.0, 2.0]), np.array([1.0, 2.0 + 1e-13]), eq=12, n=3)
    assert rec.passed and rec.erratum is None and rec.eq == "12" and rec.chapter == "test_chapter"
    assert rec.residual == pytest.approx(1e-13, rel=1e-2)
    out = capsys.readouterr().out
    assert "eq 12" in out and "identity" in out and "<=" in out
    (line,) = _lines(_isolated)
    assert line["label"] == "identity" and line["passed"] is True and line["extra"] == {"n": 3}


def test_failing_check_raises_with_label_residual_and_tolerance(_isolated):
    with pytest.raises(AssertionError, match=r"'wrong'.*eq 7.*residual 0\.5.*1e-12"):
        chk.check("wrong", 1.0, 1.5, eq=7)
    (line,) = _lines(_isolated)
    assert line["passed"] is False


def test_rtol_and_atol_follow_isclose():
    chk.check("rel", 1000.0, 1000.5, atol=0.0, rtol=1e-3)
    with pytest.raises(AssertionError):
        chk.check("rel too tight", 1000.0, 1000.5, atol=0.0, rtol=1e-4)


def test_nan_never_passes():
    with pytest.raises(AssertionError):
        chk.check("nan", math.nan, math.nan, atol=1.0)
    with pytest.raises(AssertionError):
        chk.check_le("nan", math.nan, 0.0, atol=1.0)


def test_erratum_expects_failure_and_is_recorded(_isolated, capsys):
    rec = chk.check("typed form", 2.0, 1.0, eq=11, erratum="exp(q)/tau should be exp(q/tau)")
    assert rec.passed and rec.erratum
    assert "erratum: exp(q)/tau" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="expected the typed form to fail"):
        chk.check("typed form that holds", 1.0, 1.0, eq=11, erratum="claimed wrong")
    assert [x["passed"] for x in _lines(_isolated)] == [True, False]


def test_check_le():
    rec = chk.check_le("bounded", [0.1, 0.2], 0.3)
    assert rec.residual == pytest.approx(-0.1)
    with pytest.raises(AssertionError, match="max\\(lhs - rhs\\)"):
        chk.check_le("not bounded", [0.1, 0.4], 0.3)


def test_check_sym_proves_and_refutes():
    x = sp.symbols("x", positive=True)
    chk.check_sym("log of exp", sp.log(sp.exp(x)), x)
    with pytest.raises(AssertionError, match="simplify"):
        chk.check_sym("false identity", sp.exp(x) / 2, sp.exp(x / 2))
    chk.check_sym("typed with misplaced parenthesis", sp.exp(x) / 2, sp.exp(x / 2), erratum="exp(x)/2 != exp(x/2)")


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="atol"):
        chk.check("x", 1.0, 1.0, atol=-1.0)
    with pytest.raises(ValueError, match="got"):
        chk.check("x", "one", 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        chk.check("x", np.zeros(2), np.zeros(3))


def test_summary_counts_current_chapter(capsys):
    chk.check("a", 1.0, 1.0)
    chk.check("b", 2.0, 1.0, eq=5, erratum="off by one")
    chk.check("c", 3.0, 1.0, eq=5, erratum="off by two")
    assert chk.summary() == {"checks": 3, "passed": 3, "errata": 1, "erratum_checks": 2}
