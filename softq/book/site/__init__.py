"""The book's website: every chapter in one Sphinx site (sphinx-book-theme + myst-nb), built offline.

Usage (``make book`` runs it after executing the chapters)::

    python -m softq.book.site                 # build/site/index.html from build/notebooks/ (make book's executed run;
                                         # a chapter not executed there is shown without outputs)
    python -m softq.book.site --sources       # from notebooks/*.md, unexecuted (code without outputs; fast)

The site is built from the *executed* notebooks that :mod:`softq.book` writes, so it shows that run's outputs and
check lines; nothing is executed again (``nb_execution_mode = "off"``). Before Sphinx reads them, each chapter is
copied into ``build/site-src/`` and its Markdown is prepared for the web (:func:`prepare_notebook`); the chapters in
``notebooks/`` stay plain Markdown that JupyterLab renders as it is:

- every display with a ``\\tag{N}`` gets the target ``eq-N``, and every "eq N", "eq (N)", "eqs N–M" in the prose
  links to it (else to the section whose heading names the equation, else to its chapter, :data:`PLAN`);
- every caption paragraph "**Figure N.k.** ..." (written under its figure in the chapter) gets the target ``fig-N-k``
  and every "Figure N.k" links to it ("Figure 1", without a dot, is the paper's and stays text);
- the appendix's tables link each equation number in their first column;
- every "chapter N" links to that chapter, and "§N.M" to book section N.M (in chapter N's own text, or right after
  "chapter N (" elsewhere: elsewhere "§" may name a section of the paper);
- the text after "**Solution.**" folds into a dropdown, and so do the code cells that follow it up to the next
  Markdown cell;
- check lines (:meth:`softq.book.check.CheckRecord.line`) print as HTML with ``ok``, ``errat`` and ``FAIL`` told apart.

Equations render with a local MathJax 3 (``sphinx-mathjax-offline``), search is Sphinx's own index: the site needs
no network.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from softq.book.build import NOTEBOOKS, chapters
from softq.book.equation_index import N_EQUATIONS, PLAN
from softq.config import BUILD, ROOT

CONF_DIR = Path(__file__).resolve().parent  # conf.py and static/ live beside this file
SITE_SRC = BUILD / "site-src"
SITE = BUILD / "site"

# Math and code are left alone: links are only made in the prose between them.
_PROTECTED = re.compile(r"(\$\$.*?\$\$|\$[^$\n]+\$|````.*?````|```.*?```|`[^`\n]+`|\[[^\]\n]*\]\([^)\n]*\)"
                        r"|\{[a-z]+\}`[^`]*`)", re.DOTALL)
_TAG = re.compile(r"\\tag\{([0-9]+[a-z]?)\}")
_EQ_REF = re.compile(r"\b(eqs?\.?|equations?) \(?([0-9]{1,2})([a-z]?)\)?(?:(–|-| and | to )\(?([0-9]{1,2})\)?)?")
_CHAPTER_REF = re.compile(r"\b([Cc]hapters?) ([0-9])\b(?: \((§[0-9]\.[0-9])\))?")
_SECTION_REF = re.compile(r"§([0-9])\.([0-9])\b")
_HEADING = re.compile(r"^(#{2,3}) ([0-9])\.([0-9]+) (.*)$", re.MULTILINE)
_HEADING_EQS = re.compile(r"\beqs? ([0-9]{1,2})(?:[–-]([0-9]{1,2}))?")
_FIGURE = re.compile(r"^\*\*Figure ([0-9]{1,2})\.([0-9]+)\.\*\*", re.MULTILINE)  # a caption (98: an appendix)
_FIGURE_REF = re.compile(r"(?<!\*\*)\bFigure ([0-9]{1,2})\.([0-9]+)\b")
_EQ_ROW = re.compile(r"^\| ([0-9]{1,2}) \|", re.MULTILINE)  # the appendix's tables: the first column is the eq
_MD_LINK = re.compile(r"\]\(([0-9]{2}_[A-Za-z0-9_]+)\.md(#[^)]*)?\)")  # a link to a chapter's source: its page
_SOLUTION = "**Solution.**"
_CHECK_LINE = re.compile(r"^(ok|errat|FAIL)(\s)")


@dataclass
class References:
    """Where the site's links point: chapter documents, equation and section targets (Sphinx labels)."""

    chapters: dict[int, str] = field(default_factory=dict)  # 1 -> "01_bandit"
    equations: dict[str, str] = field(default_factory=dict)  # "24" -> "eq-24" (a tagged display)
    sections: dict[str, str] = field(default_factory=dict)  # "2.1" -> "sec-2-1"
    eq_sections: dict[int, str] = field(default_factory=dict)  # 24 -> "sec-2-1" (its heading names it)
    figures: dict[str, str] = field(default_factory=dict)  # "2.1" -> "fig-2-1" (a "**Figure 2.1.**" caption)

    def equation(self, eq: str) -> tuple[str, str] | None:
        """``("ref", label)`` or ``("doc", document)`` for equation ``eq``, or None if the book does not have it."""
        if eq in self.equations:
            return "ref", self.equations[eq]
        number = int(re.match(r"[0-9]+", eq).group())
        if number in self.eq_sections:
            return "ref", self.eq_sections[number]
        if 1 <= number <= N_EQUATIONS:
            chapter = next(int(c) for first, last, c, _ in PLAN if first <= number <= last)
            if chapter in self.chapters:
                return "doc", self.chapters[chapter]
        return None


def chapter_number(name: str) -> int:
    """``"04_equivalence"`` -> 4 (the preface is 0, the appendix 99)."""
    match = re.match(r"([0-9]{2})_", name)
    if not match:
        raise ValueError(f"chapter name must start with two digits and '_', got {name!r}")
    return int(match.group(1))


def collect_references(notebooks: dict[str, list[str]]) -> References:
    """The link targets of the whole book, from each chapter's Markdown cells (``{name: [cell source, ...]}``)."""
    refs = References()
    for name, cells in notebooks.items():
        n = chapter_number(name)
        if 1 <= n <= 9:
            refs.chapters[n] = name
        for text in cells:
            for eq in _TAG.findall(text):
                refs.equations.setdefault(eq, f"eq-{eq}")
            for major, minor in _FIGURE.findall(text):
                refs.figures[f"{major}.{minor}"] = f"fig-{major}-{minor}"
            for _, major, minor, title in _HEADING.findall(text):
                if int(major) != n:
                    continue
                label = f"sec-{major}-{minor}"
                refs.sections[f"{major}.{minor}"] = label
                for first, last in _HEADING_EQS.findall(title):
                    for eq in range(int(first), int(last or first) + 1):
                        refs.eq_sections.setdefault(eq, label)
    return refs


def _link(text: str, target: tuple[str, str], chapter: str) -> str:
    kind, where = target
    if kind == "doc":
        return f"[{text}]({where}.ipynb)" if where != chapter else text
    return f"{{ref}}`{text} <{where}>`"


def link_prose(text: str, refs: References, chapter: str) -> str:
    """``text`` (prose, no math or code) with its equation, chapter and section references turned into links."""
    n = chapter_number(chapter)

    def eq(m: re.Match) -> str:
        target = refs.equation(m.group(2) + m.group(3))
        return _link(m.group(0), target, chapter) if target else m.group(0)

    def chap(m: re.Match) -> str:
        number = int(m.group(2))
        words = f"{m.group(1)} {m.group(2)}"
        out = _link(words, ("doc", refs.chapters[number]), chapter) if number in refs.chapters else words
        if m.group(3):
            sec = m.group(3)[1:]
            label = refs.sections.get(sec)
            out += f" ({_link(m.group(3), ('ref', label), chapter) if label else m.group(3)})"
        return out

    def sec(m: re.Match) -> str:
        label = refs.sections.get(f"{m.group(1)}.{m.group(2)}")
        return _link(m.group(0), ("ref", label), chapter) if label and int(m.group(1)) == n else m.group(0)

    def fig(m: re.Match) -> str:
        label = refs.figures.get(f"{m.group(1)}.{m.group(2)}")
        return _link(m.group(0), ("ref", label), chapter) if label else m.group(0)

    text = _EQ_REF.sub(eq, text)
    text = _FIGURE_REF.sub(fig, text)
    text = _CHAPTER_REF.sub(chap, text)
    # "§N.M" not already inside a link made above (the chapter rule links its own)
    parts = re.split(r"(\{ref\}`[^`]*`|\[[^\]]*\]\([^)]*\))", text)
    return "".join(p if i % 2 else _SECTION_REF.sub(sec, p) for i, p in enumerate(parts))


def prepare_markdown(text: str, refs: References, chapter: str) -> str:
    """One Markdown cell for the site: targets before tagged displays and numbered headings, links in the prose."""
    n = chapter_number(chapter)
    out = []
    for i, part in enumerate(_PROTECTED.split(text)):
        if i % 2 == 0:
            part = _HEADING.sub(lambda m: (f"(sec-{m.group(2)}-{m.group(3)})=\n{m.group(0)}"
                                           if int(m.group(2)) == n else m.group(0)), part)
            part = _FIGURE.sub(lambda m: f"(fig-{m.group(1)}-{m.group(2)})=\n{m.group(0)}", part)
            lines = part.split("\n")
            # headings keep their text as typed (their anchors are targets); prose gets links
            out.append("\n".join(line if line.startswith(("#", "(sec-", "(fig-"))
                                 else link_prose(line, refs, chapter) for line in lines))
        elif part.startswith("$$") and (tag := _TAG.search(part)) and (not out or out[-1].endswith("\n")
                                                                          or out[-1] == ""):
            out.append(f"({refs.equations.get(tag.group(1), 'eq-' + tag.group(1))})=\n{part}")
        else:
            out.append(_MD_LINK.sub(r"](\1.ipynb\2)", part) if part.startswith("[") else part)
    return "".join(out)


def link_equation_rows(text: str, refs: References, chapter: str) -> str:
    """A Markdown output's table rows that start with an equation number (the appendix's index and errata), with
    that number linked to the equation."""
    def row(m: re.Match) -> str:
        target = refs.equation(m.group(1))
        return f"| {_link(m.group(1), target, chapter)} |" if target else m.group(0)

    return _EQ_ROW.sub(row, text)


def fold_solution(text: str) -> tuple[str, bool]:
    """Split a Markdown cell at "**Solution.**": the question stays, the solution folds. Returns (text, folded)."""
    at = text.find(_SOLUTION)
    if at < 0:
        return text, False
    question, answer = text[:at].rstrip(), text[at + len(_SOLUTION):].strip()
    fence = "`" * 4
    block = f"{fence}{{admonition}} Solution\n:class: dropdown\n\n{answer}\n{fence}"
    return (f"{question}\n\n{block}" if question else block), True


def check_lines_html(text: str) -> str | None:
    """A stream output with check lines as HTML (each status in a span), or None if it has no check line."""
    lines = text.split("\n")
    if not any(_CHECK_LINE.match(line) for line in lines):
        return None
    body = []
    for line in lines:
        m = _CHECK_LINE.match(line)
        if m:
            status = m.group(1)
            body.append(f'<span class="softq-{status.lower()}">{status}</span>{html.escape(line[len(status):])}')
        elif line.strip().startswith("erratum:"):
            body.append(f'<span class="softq-erratum">{html.escape(line)}</span>')
        else:
            body.append(html.escape(line))
    return '<pre class="softq-checks">' + "\n".join(body) + "</pre>"


def prepare_notebook(nb, refs: References, chapter: str):
    """The notebook node ``nb`` made ready for the site (in place; returned): see the module docstring."""
    from nbformat.v4 import new_output

    folding = False
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source, folded = fold_solution(cell.source)
            folding = folded
            cell.source = prepare_markdown(cell.source, refs, chapter)
        elif cell.cell_type == "code":
            if folding:
                tags = cell.metadata.setdefault("tags", [])
                if "hide-input" not in tags:
                    tags.append("hide-input")
            outputs = []
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if "text/markdown" in data:
                    data["text/markdown"] = link_equation_rows(data["text/markdown"], refs, chapter)
                if out.get("output_type") == "stream" and out.get("name") == "stdout":
                    rich = check_lines_html(out["text"])
                    if rich is not None:
                        out = new_output("display_data", data={"text/html": rich, "text/plain": out["text"]})
                outputs.append(out)
            cell["outputs"] = outputs
    return nb


INDEX = """# softq

An executable reading of John Schulman, Xi Chen and Pieter Abbeel,
*Equivalence Between Policy Gradients and Soft Q-Learning* (2017, [arXiv:1704.06440](https://arxiv.org/abs/1704.06440)).
Every numbered equation of the paper is checked as typed, by SymPy or by exact computation; where a typed equation
is wrong, its check fails on the page, and the corrected form is derived and checked under the same number. Every
chapter runs top to bottom in Jupyter; this site shows the outputs of one run of `make book`{stamp}.

Check lines read `ok` (the claim holds), `errat` (the equation fails as typed: an erratum) or `FAIL`.

```{{toctree}}
:maxdepth: 1
:caption: Chapters

{toc}
```
"""


def load_notebooks(sources: bool, executed: Path | None = None) -> tuple[dict[str, object], list[str]]:
    """``({chapter name: notebook node}, [chapters without outputs])``: each chapter's executed notebook from
    ``executed`` (default ``build/notebooks/``, written by ``make book`` or ``python -m softq.book 01 ...``), or its
    Markdown without outputs where there is none; with ``sources``, every chapter's Markdown."""
    import jupytext
    import nbformat

    mds = chapters()
    if not mds:
        raise FileNotFoundError(f"no chapters in {NOTEBOOKS}")
    executed = BUILD / "notebooks" if executed is None else Path(executed)
    out, without = {}, []
    for md in mds:
        run = executed / f"{md.stem}.ipynb"
        if not sources and run.exists():
            out[md.stem] = nbformat.read(run, as_version=4)
        else:
            out[md.stem] = jupytext.read(md)
            without.append(md.stem)
    return out, without


def build(sources: bool = False, out: Path = SITE, src: Path = SITE_SRC, quiet: bool = True,
          executed: Path | None = None) -> Path:
    """Write the site's sources to ``src`` and build it into ``out``; return ``out / "index.html"``.
    ``executed``: the folder of executed notebooks (:func:`load_notebooks`)."""
    import nbformat
    from sphinx.cmd.build import build_main

    notebooks, without = load_notebooks(sources, executed)
    if without and not sources:
        print(f"softq.book.site: no executed notebook for {', '.join(without)}: shown without outputs "
              f"(`make book` runs every chapter)", file=sys.stderr)
    refs = collect_references({name: [c.source for c in nb.cells if c.cell_type == "markdown"]
                               for name, nb in notebooks.items()})
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name, nb in notebooks.items():
        nbformat.write(prepare_notebook(nb, refs, name), src / f"{name}.ipynb")
    stamp = ("" if not without else " (here without outputs: built from the unexecuted chapters)"
             if len(without) == len(notebooks) else
             f" (without outputs, not executed in that run: {', '.join(without)})")
    (src / "index.md").write_text(INDEX.format(toc="\n".join(notebooks), stamp=stamp), encoding="utf-8")
    args = ["-b", "html", "-c", str(CONF_DIR), "-j", "1", str(src), str(out)] + (["-q"] if quiet else [])
    if build_main(args) != 0:
        raise RuntimeError(f"sphinx-build failed: sphinx-build {' '.join(args)}")
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m softq.book.site", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", action="store_true", help="build from notebooks/*.md without outputs")
    ap.add_argument("--executed", type=Path, default=None,
                    help="folder of executed notebooks (default: build/notebooks, make book's)")
    ap.add_argument("--out", type=Path, default=SITE, help=f"output folder (default: {SITE.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    try:
        index = build(sources=args.sources, out=args.out, executed=args.executed)
    except FileNotFoundError as err:
        print(f"python -m softq.book.site: {err}", file=sys.stderr)
        return 1
    print(f"site: {index}")
    return 0
