"""tools/same_logs.py: what it compares, and that it reports a difference where there is one."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("same_logs", Path(__file__).parent.parent / "tools" / "same_logs.py")
same_logs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_logs)


def _log(path: Path, rows: list[str]) -> Path:
    path.write_text("frames,loss,sps,wall_s\n" + "".join(r + "\n" for r in rows))
    return path


def test_timing_columns_are_ignored_and_values_are_not(tmp_path):
    a = _log(tmp_path / "a.csv", ["100,0.5,900,1.0", "200,0.25,950,2.0"])
    b = _log(tmp_path / "b.csv", ["100,0.5,10,7.5", "200,0.25,11,9.0"])
    assert same_logs.first_difference(a, b) is None
    c = _log(tmp_path / "c.csv", ["100,0.5,900,1.0", "200,0.2500001,950,2.0"])
    assert same_logs.first_difference(a, c) == "a.csv row 2: ['200', '0.25'] vs ['200', '0.2500001']"


def test_a_shorter_or_missing_log_differs(tmp_path):
    a = _log(tmp_path / "a.csv", ["100,0.5,900,1.0", "200,0.25,950,2.0"])
    short = _log(tmp_path / "s.csv", ["100,0.5,900,1.0"])
    assert same_logs.first_difference(a, short) == "a.csv: 3 vs 2 rows"
    assert "only one" in same_logs.first_difference(a, tmp_path / "missing.csv")
    assert same_logs.first_difference(tmp_path / "x.csv", tmp_path / "y.csv") is None


def test_unknown_case_is_refused(capsys):
    import pytest

    with pytest.raises(SystemExit):
        same_logs.main(["HEAD", "--only", "bogus"])
    assert "unknown cases ['bogus']" in capsys.readouterr().err
