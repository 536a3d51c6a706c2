"""softq.book.site: the Markdown prepared for the web, and the built site opened in a real browser (headless
Chromium)."""

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from softq.book import site
from softq.book.site import References

REFS = References(chapters={1: "01_bandit", 2: "02_regularized_mdps", 4: "04_equivalence"},
                  equations={"24": "eq-24"}, sections={"1.5": "sec-1-5", "2.1": "sec-2-1"},
                  eq_sections={15: "sec-1-5", 25: "sec-2-1"}, figures={"2.1": "fig-2-1"})


def test_references_are_collected_from_tags_and_numbered_headings():
    refs = site.collect_references({
        "01_bandit": ["## 1.5 The gradient (eqs 15–17)\n\ntext $$x \\tag{15}$$", "## 2.1 not this chapter's (eq 3)"],
        "02_mdps": ["# 2. MDPs\n## 2.1 Value functions (eq 24)"],
    })
    assert refs.chapters == {1: "01_bandit", 2: "02_mdps"}
    assert refs.equations == {"15": "eq-15"}
    assert refs.sections == {"1.5": "sec-1-5", "2.1": "sec-2-1"}
    assert refs.eq_sections == {15: "sec-1-5", 16: "sec-1-5", 17: "sec-1-5", 24: "sec-2-1"}
    assert refs.equation("15") == ("ref", "eq-15")  # the tagged display wins over its section
    assert refs.equation("16") == ("ref", "sec-1-5")
    assert refs.equation("10") == ("doc", "01_bandit")  # PLAN: eqs 1-23 are chapter 1's
    assert refs.equation("91") is None


def test_prose_links_equations_chapters_and_own_sections():
    text = site.link_prose("eq (24) and eqs 25–26, eq 15, eq 30; chapter 1 (§1.5); §2.1 here, §1.5 there", REFS,
                           "02_regularized_mdps")
    assert "{ref}`eq (24) <eq-24>`" in text
    assert "{ref}`eqs 25–26 <sec-2-1>`" in text
    assert "{ref}`eq 15 <sec-1-5>`" in text
    assert "eq 30" in text and "eq 30 <" not in text  # chapter 2 itself: no link to the page one is on
    assert "[chapter 1](01_bandit.ipynb) ({ref}`§1.5 <sec-1-5>`)" in text
    assert "{ref}`§2.1 <sec-2-1>` here" in text
    assert "§1.5 there" in text  # a bare § in another chapter may be the paper's section: left alone


def test_figure_captions_get_targets_and_book_figures_links():
    refs = site.collect_references({"02_mdps": ["**Figure 2.1.** Soft value iteration.\n"]})
    assert refs.figures == {"2.1": "fig-2-1"}
    out = site.prepare_markdown("**Figure 2.1.** Soft value iteration.\n\nAs Figure 2.1 shows, like the paper's "
                                "Figure 1.", REFS, "02_regularized_mdps")
    assert out.startswith("(fig-2-1)=\n**Figure 2.1.** Soft")
    assert "{ref}`Figure 2.1 <fig-2-1>` shows" in out and "paper's Figure 1." in out
    appendix = site.collect_references({"98_atari_on_a_cpu": ["**Figure 98.1.** The grid.\n"]})
    assert appendix.figures == {"98.1": "fig-98-1"}  # an appendix numbers its figures by its file's 98
    out = site.prepare_markdown("**Figure 98.1.** The grid.\n\nAs Figure 98.1 shows.", appendix, "98_atari_on_a_cpu")
    assert out.startswith("(fig-98-1)=\n**Figure 98.1.**") and "{ref}`Figure 98.1 <fig-98-1>` shows" in out


def test_appendix_tables_link_their_equation_numbers():
    table = "| eq | taught in |\n|---:|---|\n| 24 | 02_regularized_mdps |\n| 10 | 01_bandit |\n| 91 | x |"
    out = site.link_equation_rows(table, REFS, "99_equation_index")
    assert "| {ref}`24 <eq-24>` |" in out and "| [10](01_bandit.ipynb) |" in out and "| 91 | x |" in out


def test_math_code_and_existing_links_are_left_alone():
    text = "see eq 24: $\\text{eq 24}$ and `eq 24` and [eq 24](x.md)\n\n$$\nq \\tag{24}\n$$\n"
    out = site.prepare_markdown(text, REFS, "01_bandit")
    assert out.count("<eq-24>") == 1
    assert "$\\text{eq 24}$" in out and "`eq 24`" in out and "[eq 24](x.md)" in out
    assert "(eq-24)=\n$$\nq \\tag{24}\n$$" in out  # the display carries the target


def test_links_to_a_chapters_source_point_to_its_page():
    """A link to ``NN_name.md`` (what GitHub and Lab open) becomes a link to that chapter's page on the site, with its
    anchor; other links are left alone."""
    text = "the appendix [Training Atari](98_atari_on_a_cpu.md), [errata](99_equation_index.md#errata), [x](x.md)"
    out = site.prepare_markdown(text, REFS, "06_a2c_entropy")
    assert "[Training Atari](98_atari_on_a_cpu.ipynb)" in out and "[errata](99_equation_index.ipynb#errata)" in out
    assert "[x](x.md)" in out


def test_numbered_headings_get_targets_and_keep_their_text():
    out = site.prepare_markdown("## 1.5 The gradient (eqs 15–23)\n\nbody eq 15", REFS, "01_bandit")
    assert out.startswith("(sec-1-5)=\n## 1.5 The gradient (eqs 15–23)\n")
    assert out.endswith("body {ref}`eq 15 <sec-1-5>`")


def test_solutions_fold_with_the_code_cells_after_them():
    import nbformat.v4 as v4

    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("*Show that x.* **Solution.** Because y."),
        v4.new_code_cell("check(...)"),
        v4.new_markdown_cell("## Next"),
        v4.new_code_cell("other()"),
    ])
    site.prepare_notebook(nb, REFS, "01_bandit")
    question, solution = nb.cells[0].source.split("\n\n", 1)
    assert question == "*Show that x.*"
    assert solution.startswith("````{admonition} Solution\n:class: dropdown\n") and "Because y." in solution
    assert nb.cells[1].metadata["tags"] == ["hide-input"]
    assert "tags" not in nb.cells[3].metadata


def test_check_lines_become_html_with_their_status_marked():
    text = ("ok    eq 1     holds <a>           residual 0 <= 1e-12\n"
            "errat eq 52    as typed            residual 0.9 > 1e-9\n      erratum: the 1/2 is missing\nplain\n")
    rich = site.check_lines_html(text)
    assert '<span class="softq-ok">ok</span>' in rich and '<span class="softq-errat">errat</span>' in rich
    assert '<span class="softq-erratum">      erratum: the 1/2 is missing</span>' in rich
    assert "holds &lt;a&gt;" in rich  # escaped
    assert site.check_lines_html("no check here\n") is None


def test_chapter_number_rejects_names_without_a_number():
    assert site.chapter_number("99_equation_index") == 99
    with pytest.raises(ValueError, match="chapter name"):
        site.chapter_number("preface")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=15000", "--dump-dom"]


def _rendered(url: str, profile) -> str:
    """The page's DOM after its scripts ran (MathJax, search), as Chromium renders it."""
    done = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", url], capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout


#: Loads every chapter page in a 1400-pixel-wide frame and reports, per page, the code (code cells and code blocks,
#: not a cell's printed output) and displayed equations wider than their box (they would scroll sideways), each by
#: its longest line or its TeX.
_OVERFLOW_PROBE = """<html><body>{frames}<script>
addEventListener('load', () => setTimeout(() => {{
  const report = {{}};
  for (const f of document.querySelectorAll('iframe')) {{
    const d = f.contentDocument, wide = el => el.scrollWidth > el.clientWidth + 1;
    report[f.getAttribute('src')] = {{
      code: [...d.querySelectorAll('div.cell_input pre, div.highlight pre')].filter(p =>
        !p.closest('.cell_output') && wide(p)).map(p =>
        p.textContent.split('\\n').reduce((a, b) => a.length >= b.length ? a : b).trim()),
      math: [...d.querySelectorAll('mjx-container[display="true"]')].filter(wide).map(e =>
        f.contentWindow.MathJax.startup.document.getMathItemsWithin(e)[0].math.slice(0, 80))}};
  }}
  document.body.setAttribute('data-report', JSON.stringify(report));
}}, 3000));
</script></body></html>"""


def _overflowing(site_dir: Path, profile) -> dict[str, dict[str, list[str]]]:
    """``{page: {"code": [...], "math": [...]}}``: what scrolls sideways on each chapter page in a 1400x1000 window."""
    pages = sorted(p.name for p in site_dir.glob("[0-9][0-9]_*.html"))
    probe = site_dir / "_overflow_probe.html"
    probe.write_text(_OVERFLOW_PROBE.format(frames="".join(
        f'<iframe src="{page}" width="1400" height="1000"></iframe>' for page in pages)))
    dom = subprocess.run([CHROMIUM, *FLAGS, "--allow-file-access-from-files", "--window-size=1400,1000",
                          f"--user-data-dir={profile}", probe.as_uri()], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    report = re.search(r'data-report="([^"]*)"', dom)
    assert report, "the overflow probe did not finish"
    return json.loads(html.unescape(report.group(1)))


def _visible_text(dom: str) -> str:
    return re.sub(r"<(style|script|pre)\b.*?</\1>", "", dom, flags=re.DOTALL)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt install chromium; make test installs it)")
def test_built_site_in_a_real_browser(tmp_path):
    """The site from one executed chapter (chapter 1, smoke mode) and the others' sources: the index links every
    chapter and says which lack outputs, chapter 1 shows its executed check lines and figure, equations are typeset
    by the local MathJax (no raw $$, no error box), no code cell or displayed equation of any chapter scrolls
    sideways in a 1400-pixel window, and search finds a word of chapter 4."""
    subprocess.run([sys.executable, "-m", "softq.book", "01", "--smoke", "--out", str(tmp_path / "run")], check=True,
                   capture_output=True, timeout=600)
    index = site.build(out=tmp_path / "site", src=tmp_path / "src", executed=tmp_path / "run" / "notebooks")
    profile = tmp_path / "profile"
    home = _rendered(index.as_uri(), profile)
    for md in sorted(site.NOTEBOOKS.glob("[0-9][0-9]_*.md")):
        assert f'href="{md.stem}.html"' in home, f"the index does not link {md.stem}"
    assert "not executed in that run: 00_preface, 02_regularized_mdps" in _visible_text(home).replace("\n", " ")
    bandit = _rendered((index.parent / "01_bandit.html").as_uri(), profile)
    assert bandit.count('<span class="softq-ok">ok</span>') >= 30, "chapter 1's check lines are not shown"
    assert '<span class="softq-errat">errat</span>' in bandit, "chapter 1's errata are not marked"
    assert re.search(r'<img [^>]*src="[^"]*\.png"', bandit), "chapter 1's figure is not shown"
    assert "Traceback" not in bandit, "an error shows"
    assert str(site.ROOT) not in _visible_text(bandit), "an absolute path shows"
    assert "softq-ok" not in _rendered((index.parent / "02_regularized_mdps.html").as_uri(), profile)
    assert 'class="dropdown admonition toggle toggle-hidden"' in bandit, "exercise solutions are not folded"
    assert 'href="#eq-7"' in bandit and 'id="eq-7"' in bandit, "eq (7) is not linked to its display"
    assert 'href="02_regularized_mdps.html#eq-40"' in _rendered((index.parent / "04_equivalence.html").as_uri(),
                                                                 profile), "no link to another chapter's equation"
    assert 'id="fig-1-1"' in bandit, "Figure 1.1 has no anchor"
    for page in ("01_bandit", "02_regularized_mdps", "05_natural_gradient"):
        dom = _rendered((index.parent / f"{page}.html").as_uri(), profile)
        assert dom.count("<mjx-container") > 50, f"{page}: equations not typeset"
        assert "<mjx-merror" not in dom, f"{page}: a MathJax error box"
        text = _visible_text(dom)
        assert "$$" not in text and "\\tag{" not in text, f"{page}: raw LaTeX shows"
        assert "https://cdn" not in dom and "mathjax/tex-chtml.js" in dom, f"{page}: MathJax is not the local copy"
    report = _overflowing(index.parent, profile)
    assert len(report) == len(list(site.NOTEBOOKS.glob("[0-9][0-9]_*.md"))), "a chapter page was not measured"
    wide = {page: r for page, r in report.items() if r["code"] or r["math"]}
    assert not wide, f"in a 1400-pixel window these scroll sideways: {wide}"
    found = _rendered((index.parent / "search.html").as_uri() + "?q=dueling", profile)
    assert re.search(r"found \d+ page", found), "search did not finish"
    assert 'href="04_equivalence.html' in found, "search does not find chapter 4's 'dueling'"
