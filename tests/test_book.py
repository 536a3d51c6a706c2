"""softq.book: a chapter is executed in a fresh kernel, its checks recorded, and a false check fails the build."""

import json
import textwrap

import pytest
from _chapters import HEADER

from softq.book import build as book


def _chapter(tmp_path, name, code):
    md = tmp_path / f"{name}.md"
    md.write_text(HEADER + f"\n# {name}\n\n```{{code-cell}} ipython3\n{textwrap.dedent(code)}\n```\n")
    return md


@pytest.fixture
def out(tmp_path, monkeypatch):
    for var in ("SOFTQ_CHAPTER", "SOFTQ_CHECKS_FILE", "SOFTQ_SMOKE", "SOFTQ_FIGURES"):
        monkeypatch.delenv(var, raising=False)  # run_chapter sets them for the kernel; restore afterwards
    return tmp_path / "build"


def test_chapter_checks_are_recorded_and_gathered(tmp_path, out):
    md = _chapter(tmp_path, "90_good", """\
        from softq.book.check import check
        from softq.config import SMOKE
        check("one plus one", 1 + 1, 2, eq=1)
        check("typed wrongly", 3, 2, eq=2, erratum="3 is not 2")
        check("the kernel sees smoke mode", float(SMOKE), 1.0)
        """)
    res = book.run_chapter(md, out, smoke=True, timeout=120)
    assert res.ok, res.error
    assert (res.checks, res.passed, res.errata) == (3, 3, 1)
    assert (out / "notebooks" / "90_good.ipynb").exists() and (out / "html" / "90_good.html").exists()
    html = (out / "html" / "90_good.html").read_text(encoding="utf-8")
    assert '<script src="mathjax/MathJax.js?config=' in html and "mathjax/2.7" not in html  # local, not the CDN
    for needed in ("MathJax.js", "config/TeX-AMS-MML_HTMLorMML-full.js", "config/Safe.js", "config/local/softq.js",
                   "fonts/HTML-CSS/STIX-Web/woff"):
        assert (out / "html" / "mathjax" / needed).exists(), needed
    doc = json.loads(book.write_checks_json(out, [res], smoke=True).read_text())
    assert [r["label"] for r in doc["records"]] == ["one plus one", "typed wrongly", "the kernel sees smoke mode"]
    assert doc["records"][0]["chapter"] == "90_good" and doc["records"][1]["erratum"] == "3 is not 2"
    assert "90_good" in book.table([res]) and "ok" in book.table([res])


def test_a_false_check_fails_the_chapter(tmp_path, out):
    md = _chapter(tmp_path, "91_bad", """\
        from softq.book.check import check
        check("a false claim", 1.0, 2.0)
        """)
    res = book.run_chapter(md, out, smoke=False, timeout=120)
    assert not res.ok
    assert "a false claim" in res.error and "AssertionError" in res.error
    assert "FAILED" in book.table([res])


def test_a_chapter_without_checks_fails(tmp_path, out):
    res = book.run_chapter(_chapter(tmp_path, "92_silent", "x = 1"), out, smoke=False, timeout=120)
    assert not res.ok and "no check" in res.error


def test_unknown_chapter_selection_is_named():
    with pytest.raises(ValueError, match="no chapter matches"):
        book.chapters(["99_not_a_chapter"])


def test_set_parameters_assigns_after_the_first_assignment_and_names_unknown_ones():
    import nbformat.v4 as v4

    params = {"tags": ["parameters"]}
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("S, A = 1, 2 (prose, not code)"),
        v4.new_code_cell("import torch\nS, A, GAMMA = 6, 3, 0.9\nmdp = make(S, A)\nS, A = 2, 2", metadata=params),
        v4.new_code_cell("CFG = dict(a=1,\n           b=2)\nuse(CFG)", metadata=params),
    ])
    book.set_parameters(nb, {"A": "5", "CFG": "dict(a=3)"})
    assert nb.cells[1].source.split("\n")[:4] == [
        "import torch", "S, A, GAMMA = 6, 3, 0.9", "A = 5  # set by python -m softq.book --set", "mdp = make(S, A)"]
    assert nb.cells[2].source.split("\n")[2] == "CFG = dict(a=3)  # set by python -m softq.book --set"
    assert nb.cells[0].source == "S, A = 1, 2 (prose, not code)"
    with pytest.raises(ValueError, match="'TAU'"):
        book.set_parameters(nb, {"TAU": "1"})
    with pytest.raises(ValueError, match="not a Python name"):
        book.set_parameters(nb, {"1x": "1"})


def test_a_number_stays_a_number_and_a_number_selects_one_chapter():
    """--set 'TAU="0.7"' is refused naming TAU (a number in the chapter); an int for a float is fine; an expression
    is not checked. The selector "0" is the preface alone, "3" and "03" chapter 3."""
    import nbformat.v4 as v4

    def nb():
        return v4.new_notebook(cells=[v4.new_code_cell("S, A, GAMMA, TAU = 6, 3, 0.9, 0.01  # the instance",
                                                       metadata={"tags": ["parameters"]})])

    with pytest.raises(ValueError, match=r"TAU is a number in the chapter \(0.01\); got \"0.7\" \(str\)"):
        book.set_parameters(nb(), {"TAU": '"0.7"'})
    with pytest.raises(ValueError, match="S is a number"):
        book.set_parameters(nb(), {"S": "True"})
    book.set_parameters(nb(), {"TAU": "1", "S": "2 * 4"})
    assert [p.stem[:2] for p in book.chapters(["0"])] == ["00"]
    assert [p.stem[:2] for p in book.chapters(["3", "04"])] == ["03", "04"]


def test_only_a_declared_parameter_can_be_set(tmp_path):
    """A reader's --set changes what a cell tagged "parameters" assigns, and nothing else: chapter 1's symbolic S (an
    untagged cell) is refused naming S and the chapter's parameters, before anything runs; a chapter that tags no cell
    (the preface) refuses every name."""
    import jupytext
    import nbformat.v4 as v4

    nb = v4.new_notebook(cells=[
        v4.new_code_cell("import math\nTAU = 0.7  # the temperature\nB: int = 5", metadata={"tags": ["parameters"]}),
        v4.new_code_cell("S = symbolic_bandit(3)\nprint(S.q)"),
    ])
    assert book.declared_parameters(nb) == ["TAU", "B"]
    with pytest.raises(ValueError, match=r"'S' is not a parameter of this chapter \(its parameters are TAU, B"):
        book.set_parameters(nb, {"S": "9"})
    assert nb.cells[1].source == "S = symbolic_bandit(3)\nprint(S.q)"
    with pytest.raises(ValueError, match="'TAU' is not a parameter of this chapter .it declares none"):
        book.set_parameters(v4.new_notebook(cells=[v4.new_code_cell("TAU = 1")]), {"TAU": "2"})
    chapter_1 = jupytext.read(book.chapters(["01"])[0])
    assert "TAU" in book.declared_parameters(chapter_1) and "S" not in book.declared_parameters(chapter_1)
    with pytest.raises(ValueError, match="'S' is not a parameter"):
        book.set_parameters(chapter_1, {"S": "9"})
    for md in book.chapters(["02", "03", "04", "05", "09"]):
        assert {"S", "A", "GAMMA", "TAU"} <= set(book.declared_parameters(jupytext.read(md))), md.stem
    assert book.declared_parameters(jupytext.read(book.chapters(["00"])[0])) == []


def test_a_bad_set_leaves_the_output_folder_alone(tmp_path, out):
    md = _chapter(tmp_path, "94_kept", "from softq.book.check import check\nS = 3\ncheck('S', S, 3)")
    assert book.run_chapter(md, out, smoke=True, timeout=120).ok
    records = (out / "checks" / "94_kept.jsonl").read_bytes()
    with pytest.raises(ValueError, match="BOGUS"):
        book.run_chapter(md, out, smoke=True, timeout=120, overrides={"BOGUS": "1"})
    assert (out / "checks" / "94_kept.jsonl").read_bytes() == records


def test_set_is_checked_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        book.main(["00", "--set", "TAU"])
    assert "--set wants NAME=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        book.main(["01", "--set", "S=9", "--out", "/nonexistent/softq-never-written"])
    assert "01_bandit: set: 'S' is not a parameter of this chapter" in capsys.readouterr().err


def test_a_build_writes_its_figures_under_out_and_figures_only_where_asked(tmp_path, out):
    """make book leaves the committed figures/ alone: a chapter's savefig lands in <out>/figures; with figures=
    (make figures) it lands there; a variant (--set) cannot write to figures=."""
    code = """\
        import matplotlib.pyplot as plt
        from softq.book.check import check
        from softq.book.plots import savefig
        fig, ax = plt.subplots()
        png, _ = savefig(fig, "ch90_demo")
        check("a figure was written", float(png.exists()), 1.0)
        """
    md = _chapter(tmp_path, "93_fig", code)
    assert book.run_chapter(md, out, smoke=False, timeout=120).ok
    assert (out / "figures" / "ch90_demo.png").exists()
    assert book.run_chapter(md, out, smoke=False, timeout=120, figures=tmp_path / "committed").ok
    assert (tmp_path / "committed" / "ch90_demo.svg").exists()
    with pytest.raises(ValueError, match="variant"):
        book.run_chapter(md, out, smoke=False, timeout=120, overrides={"x": "1"}, figures=tmp_path / "committed")
