"""The package's three parts and the one direction of their imports (CONTRIBUTING.md, "Layout"): the paper's objects
(``softq/*.py``) import neither the book's machinery (``softq/book/``) nor the training engine (``softq/rl/``); the
engine imports nothing of the book; of the book, only ``plots`` reads the engine (run folders)."""

import ast
from pathlib import Path

import softq

ROOT = Path(softq.__file__).resolve().parent


def _softq_imports(path: Path) -> set[str]:
    """Every ``softq...`` module a file imports, at any level of the file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n == "softq" or n.startswith("softq.")}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("book", "rl") else "paper"


def test_imports_point_one_way():
    allowed = {"paper": {"paper"}, "rl": {"paper", "rl"}, "book": {"paper", "book"}}
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        part = _part(module)
        ok = allowed[part] | ({"rl"} if module == "softq.book.plots" else set())
        wrong += [f"{module} imports {name}" for name in sorted(_softq_imports(path)) if _part(name) not in ok]
    assert not wrong, "\n".join(wrong)


def test_the_check_finds_a_wrong_import(tmp_path):
    """The scan above sees an import inside a function (so the test can fail)."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from softq.rl.folder import read_runs\n")
    assert _softq_imports(f) == {"softq.rl.folder", "softq.rl.folder.read_runs"}
    assert _part("softq.rl.folder") == "rl" and _part("softq.config") == "paper" and _part("softq.book") == "book"
