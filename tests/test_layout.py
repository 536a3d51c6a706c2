"""The package's parts and the one direction of their imports (CONTRIBUTING.md, "Layout"): the paper's objects
(``softq/*.py``) import neither the book's machinery (``softq/book/``) nor the training engine (``softq/rl/``); the
engine imports nothing of the book; of the book, only ``plots`` reads the engine (run folders). Inside the engine,
four layers: ``parts`` < ``agents`` < ``experiments`` < ``diagnostics``, each importing only its own layer and those
below it (the command line, ``softq.rl.__main__``, sits on top)."""

import ast
from pathlib import Path

import softq

ROOT = Path(softq.__file__).resolve().parent
RL_LAYERS = ("parts", "agents", "experiments", "diagnostics")


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


def _rl_layer(module: str) -> int | None:
    """The rank of an engine module's layer (0 = parts), ``len(RL_LAYERS)`` for the command line and the package,
    None outside the engine."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] != "rl":
        return None
    return RL_LAYERS.index(parts[2]) if len(parts) > 2 and parts[2] in RL_LAYERS else len(RL_LAYERS)


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__"), path


def test_imports_point_one_way():
    allowed = {"paper": {"paper"}, "rl": {"paper", "rl"}, "book": {"paper", "book"}}
    wrong = []
    for module, path in _modules():
        part = _part(module)
        ok = allowed[part] | ({"rl"} if module == "softq.book.plots" else set())
        wrong += [f"{module} imports {name}" for name in sorted(_softq_imports(path)) if _part(name) not in ok]
    assert not wrong, "\n".join(wrong)


def test_the_engine_layers_import_downward():
    wrong = []
    for module, path in _modules():
        rank = _rl_layer(module)
        if rank is None or rank == len(RL_LAYERS):
            continue
        for name in sorted(_softq_imports(path)):
            other = _rl_layer(name)
            if other is not None and other < len(RL_LAYERS) and other > rank:
                wrong.append(f"{module} ({RL_LAYERS[rank]}) imports {name}")
    assert not wrong, "\n".join(wrong)
    assert {p.name for p in (ROOT / "rl").glob("*.py")} == {"__init__.py", "__main__.py"}, \
        "every engine module lives in one of the layers"


def test_the_check_finds_a_wrong_import(tmp_path):
    """The scans above see an import inside a function (so the tests can fail)."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from softq.rl.experiments.folder import read_runs\n")
    assert _softq_imports(f) == {"softq.rl.experiments.folder", "softq.rl.experiments.folder.read_runs"}
    assert _part("softq.rl.experiments.folder") == "rl" and _part("softq.config") == "paper"
    assert _part("softq.book") == "book"
    assert _rl_layer("softq.rl.parts.envs") == 0 and _rl_layer("softq.rl.experiments.folder") == 2
    assert _rl_layer("softq.rl.__main__") == len(RL_LAYERS) and _rl_layer("softq.book.plots") is None
