"""Build the book: execute every chapter top to bottom in a fresh kernel, write notebooks, HTML and checks.

Usage (``make book`` runs the first form)::

    python -m softq.book                 # every chapter, full mode
    python -m softq.book 01 02           # chapters whose name starts with 01 or 02
    python -m softq.book --smoke         # SOFTQ_SMOKE=1 in the kernels (fast, every check still made)
    python -m softq.book 03 --set TAU=0.3 --set S=9 --out build/variant   # a reader's change of the parameters
    python -m softq.book --figures figures   # `make figures`: also update the committed figures/

For each chapter ``notebooks/NN_topic.md`` (MyST Markdown, paired by jupytext) it writes
``build/notebooks/NN_topic.ipynb`` (executed), ``build/html/NN_topic.html`` (its equations rendered offline by a
local MathJax in ``build/html/mathjax/``) and ``build/checks/NN_topic.jsonl``
(one JSON line per ``softq.book.check`` call, written by the kernel itself) and its figures to ``build/figures/`` (the
committed ``figures/`` change only with ``--figures figures``), then gathers every record into
``build/checks.json`` and prints a table: chapter, seconds, checks passed, errata found.
It exits non-zero if a chapter raises (a failed check raises), or if a chapter makes no check at all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from softq.config import BUILD, ROOT

NOTEBOOKS = ROOT / "notebooks"
KERNEL = "python3"  # the kernelspec every chapter names; `make` installs it into .venv (JUPYTER_PATH points there)


@dataclass
class ChapterResult:
    name: str
    seconds: float
    checks: int
    passed: int
    errata: int
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.checks > 0 and self.passed == self.checks


def chapters(selection: list[str] | None = None) -> list[Path]:
    """The chapter files ``notebooks/NN_*.md`` in order, optionally only those selected: a number is one chapter
    (``3``, ``03``), any other selector a prefix of the file's name (``03_soft``)."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.md"))
    if selection:
        # a number names one chapter ("3" and "03" are chapter 3; "0" is the preface, not every chapter from 00 to 09)
        selection = [f"{int(s):02d}_" if s.isdigit() else s for s in selection]
        picked = [p for p in found if any(p.stem.startswith(s) for s in selection)]
        missing = [s for s in selection if not any(p.stem.startswith(s) for p in found)]
        if missing:
            raise ValueError(f"chapters: no chapter matches {missing}; have {[p.stem for p in found]}")
        return picked
    return found


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


MATHJAX_CONFIG = """MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web",
                                    imageFont: null}, SVG: {font: "STIX-Web"}});
MathJax.Ajax.loadComplete("[MathJax]/config/local/softq.js");
"""


def local_mathjax(html_dir: Path) -> str:
    """Copy MathJax 2.7 (from the ``jupyter-server-mathjax`` package) beside the HTML pages; return their URL of it.

    The pages then render their equations offline: nbconvert's default loads MathJax from a CDN. The copy ships only
    the STIX-Web fonts, so ``config/local/softq.js`` (written here) tells MathJax to use them.
    """
    import jupyter_server_mathjax

    target = html_dir / "mathjax"
    if not (target / "MathJax.js").exists():
        shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", target, dirs_exist_ok=True)
    local = target / "config" / "local" / "softq.js"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(MATHJAX_CONFIG, encoding="utf-8")
    return "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/softq"


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_kind(name: str, value: str, assignment: str) -> None:
    """A number the chapter assigns must stay a number: ``--set 'TAU="0.7"'`` is refused naming ``TAU`` (it would
    fail later, deep in the chapter, with an error that does not). Values that are not literals are not checked."""
    import ast

    try:
        tree = ast.parse(assignment)
        new = ast.literal_eval(value)
    except (SyntaxError, ValueError):
        return
    stmt = tree.body[0] if tree.body else None
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        return
    target, source = stmt.targets[0], stmt.value
    pairs = (zip(target.elts, source.elts, strict=False)
             if isinstance(target, ast.Tuple) and isinstance(source, ast.Tuple) else [(target, source)])
    for t, v in pairs:
        if isinstance(t, ast.Name) and t.id == name:
            try:
                old = ast.literal_eval(v)
            except ValueError:
                return
            number = (int, float)
            if isinstance(old, number) and not isinstance(old, bool) and (
                    isinstance(new, bool) or not isinstance(new, number)):
                raise ValueError(f"set: {name} is a number in the chapter ({old!r}); got {value} "
                                 f"({type(new).__name__})")
            return


PARAMETERS_TAG = "parameters"  # papermill's convention: the code cells that hold a chapter's parameters


def _parameter_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])]


def declared_parameters(nb) -> list[str]:
    """The names a reader may ``--set``: those assigned at the top level of the chapter's code cells tagged
    ``parameters`` (in MyST, ``:tags: [parameters]`` under the cell's fence), in order. A name assigned only in an
    untagged cell (chapter 1's symbolic ``S``, say) is not a parameter: the chapter's checks are written for its
    parameters, and a change to anything else is not a variant of the chapter."""
    import ast

    names: list[str] = []
    for cell in _parameter_cells(nb):
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for stmt in tree.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else (
                [stmt.target] if isinstance(stmt, ast.AnnAssign) else [])
            for target in targets:
                for node in target.elts if isinstance(target, ast.Tuple | ast.List) else [target]:
                    if isinstance(node, ast.Name) and node.id not in names:
                        names.append(node.id)
    return names


def set_parameters(nb, overrides: dict[str, str]):
    """``nb`` with each ``NAME = VALUE`` of ``overrides`` assigned right after the first top-level line that assigns
    ``NAME`` in a cell tagged ``parameters`` (a chapter's parameters, e.g. ``S, A, GAMMA, TAU = 6, 3, 0.9, 1.0``):
    what a reader who edits that line gets. Raises ``ValueError`` naming a name that the chapter does not declare as
    a parameter (:func:`declared_parameters`). Returns ``nb`` (changed in place)."""
    declared = declared_parameters(nb)
    for name, value in overrides.items():
        if not _NAME.fullmatch(name):
            raise ValueError(f"set: {name!r} is not a Python name")
        if name not in declared:
            have = f"its parameters are {', '.join(declared)}" if declared else "it declares none"
            raise ValueError(f"set: {name!r} is not a parameter of this chapter ({have}; a code cell tagged "
                             f"{PARAMETERS_TAG!r} declares them)")
        assign = re.compile(rf"^(?:[A-Za-z_][A-Za-z0-9_]*\s*,\s*)*{name}\s*(?:,\s*[A-Za-z_][A-Za-z0-9_]*\s*)*=[^=]")
        for cell in _parameter_cells(nb):
            lines = cell.source.split("\n")
            at = next((i for i, line in enumerate(lines) if assign.match(line)), None)
            if at is not None:
                first = at
                while at + 1 < len(lines) and (lines[at].rstrip().endswith(("(", "[", "{", ",", "\\"))
                                               or lines[at + 1].startswith((" ", ")", "]", "}"))):
                    at += 1  # the assignment continues on the next line
                _check_kind(name, value, "\n".join(lines[first:at + 1]))
                lines.insert(at + 1, f"{name} = {value}  # set by python -m softq.book --set")
                cell.source = "\n".join(lines)
                break
        else:
            raise ValueError(f"set: no cell tagged {PARAMETERS_TAG!r} assigns {name!r} at the start of a line")
    return nb


def run_chapter(md: Path, out: Path, smoke: bool, timeout: int,
                overrides: dict[str, str] | None = None, figures: Path | None = None) -> ChapterResult:
    """Execute one chapter in a fresh kernel (cwd = notebooks/), write its notebook, HTML and check records.
    ``overrides`` (``{name: Python expression}``) changes the chapter's parameters first (:func:`set_parameters`).
    Figures go to ``figures`` (``make figures``: the committed ``figures/``), by default ``out/figures``."""
    import jupytext
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    if overrides and figures is not None:
        raise ValueError("a variant of a chapter (--set) writes its figures beside its records, not to --figures")
    name = md.stem
    nb = set_parameters(jupytext.read(md), overrides or {})  # a bad --set raises here, before `out` is touched
    for sub in ("notebooks", "html", "checks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    records_file = out / "checks" / f"{name}.jsonl"
    records_file.unlink(missing_ok=True)

    nb.metadata.setdefault("kernelspec", {"name": KERNEL, "display_name": "Python 3 (softq)", "language": "python"})
    # The kernel inherits this process's environment: that is how the chapter learns its name and record file.
    # They are this chapter's only: restored when it has run (a caller's own SOFTQ_FIGURES, say, stays its own).
    saved = {k: os.environ.get(k) for k in ("SOFTQ_CHAPTER", "SOFTQ_CHECKS_FILE", "SOFTQ_SMOKE", "SOFTQ_FIGURES")}
    os.environ["SOFTQ_CHAPTER"] = name
    os.environ["SOFTQ_CHECKS_FILE"] = str(records_file)
    os.environ["SOFTQ_SMOKE"] = "1" if smoke else "0"
    # The figures go under `out` (build/figures), so that a build leaves the committed figures/ alone: rounding
    # differs between CPUs and the live runs are re-trained. `make figures` passes figures=figures/ to update them.
    os.environ["SOFTQ_FIGURES"] = str(figures if figures is not None else out / "figures")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # IPC transport: the kernel talks to us over local sockets in build/, not over TCP ports.
    sockets = tempfile.mkdtemp(prefix="softq-kernel-")
    km = KernelManager(kernel_name=KERNEL, transport="ipc", ip=os.path.join(sockets, "k"))
    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    error = None
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()  # drop the traceback's terminal colours
        error = text.splitlines()[-1] if text else repr(err)
    except Exception as err:  # a dead kernel or a timeout: report it as the chapter's failure
        error = f"{type(err).__name__}: {err}"
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=False)
        shutil.rmtree(sockets, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start

    nbformat.write(nb, out / "notebooks" / f"{name}.ipynb")
    html, _ = HTMLExporter(template_name="lab", mathjax_url=local_mathjax(out / "html")).from_notebook_node(nb)
    (out / "html" / f"{name}.html").write_text(html, encoding="utf-8")

    recs = _read_records(records_file)
    if error is None and not recs:
        error = "the chapter made no check(...): every chapter verifies what it claims"
    return ChapterResult(name, seconds, len(recs), sum(r["passed"] for r in recs),
                         len({r["eq"] or r["label"] for r in recs if r["erratum"] and r["passed"]}), error)


def write_checks_json(out: Path, results: list[ChapterResult], smoke: bool) -> Path:
    """Gather every chapter's records into ``build/checks.json``: a summary per chapter and all records."""
    records = []
    for r in results:
        records.extend(_read_records(out / "checks" / f"{r.name}.jsonl"))
    doc = {
        "smoke": smoke,
        "chapters": [
            {"chapter": r.name, "seconds": round(r.seconds, 2), "checks": r.checks, "passed": r.passed,
             "errata": r.errata, "error": r.error}
            for r in results
        ],
        "records": records,
    }
    path = out / "checks.json"
    path.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    return path


def table(results: list[ChapterResult]) -> str:
    """The summary ``make book`` prints."""
    rows = [f"{'chapter':<32} {'seconds':>8} {'checks passed':>14} {'errata found':>13}  status"]
    for r in results:
        status = "ok" if r.ok else f"FAILED: {r.error or 'a check failed'}"
        rows.append(f"{r.name:<32} {r.seconds:>8.1f} {f'{r.passed}/{r.checks}':>14} {r.errata:>13}  {status}")
    total = sum(r.seconds for r in results)
    rows.append(f"{'total':<32} {total:>8.1f} {sum(r.passed for r in results):>7}/{sum(r.checks for r in results):<6}"
                f" {sum(r.errata for r in results):>13}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m softq.book", description=__doc__.split("\n\n")[0])
    ap.add_argument("select", nargs="*", help="chapter name prefixes (default: all)")
    ap.add_argument("--smoke", action="store_true", help="run the chapters in smoke mode (SOFTQ_SMOKE=1)")
    ap.add_argument("--out", type=Path, default=BUILD, help="output folder (default: build/)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell (default: 1800)")
    ap.add_argument("--figures", type=Path, help="where the chapters write their figures (default: <out>/figures; "
                                                 "`make figures`: figures/, the book's committed figures)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="change a chapter parameter, as a reader editing its first cells would (repeatable)")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            ap.error(f"--set wants NAME=VALUE, got {item!r}")
        overrides[name.strip()] = value.strip()
    if args.timeout <= 0:
        ap.error(f"--timeout must be > 0, got {args.timeout}")
    if overrides and args.figures is not None:
        ap.error("--figures goes with a build of the book, not with --set (a variant's figures stay in --out)")
    args.out = args.out.resolve()  # the kernels run in notebooks/: a relative path would point there
    figures = args.figures.resolve() if args.figures is not None else None
    try:
        todo = chapters(args.select)
    except ValueError as err:
        ap.error(str(err))
    if not todo:
        print(f"no chapters found in {NOTEBOOKS}", file=sys.stderr)
        return 1

    results = []
    for md in todo:
        print(f"running {md.name} ({'smoke' if args.smoke else 'full'} mode) ...", flush=True)
        try:
            results.append(run_chapter(md, args.out, args.smoke, args.timeout, overrides, figures))
        except ValueError as err:
            ap.error(f"{md.stem}: {err}")
    path = write_checks_json(args.out, results, args.smoke)
    print()
    print(table(results))
    print(f"\nexecuted notebooks: {args.out / 'notebooks'}   HTML: {args.out / 'html'}   checks: {path}   "
          f"figures: {figures or args.out / 'figures'}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
