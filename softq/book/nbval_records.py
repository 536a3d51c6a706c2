"""A pytest plugin for ``make test``: each chapter run by nbval records its checks, as ``make book`` does.

nbval starts one kernel per notebook when that notebook's first cell is set up, and the kernel inherits this
process's environment. This hook runs first, so every chapter's kernel starts with ``SOFTQ_CHAPTER`` set to the
notebook's name and ``SOFTQ_CHECKS_FILE`` pointing at ``<notebook folder>/checks/<name>.jsonl``. The appendix
(``notebooks/99_*``, run last) then builds the equation index from the smoke runs' records instead of running
every chapter a second time. Enabled with ``pytest -p softq.book.nbval_records``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_started: set[Path] = set()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    path = Path(str(item.fspath))
    if path.suffix != ".ipynb":
        return
    os.environ["SOFTQ_CHAPTER"] = path.stem
    records = path.parent / "checks" / f"{path.stem}.jsonl"
    os.environ["SOFTQ_CHECKS_FILE"] = str(records)
    if path not in _started:  # a fresh file per run of the notebook, as softq.book does
        _started.add(path)
        records.parent.mkdir(parents=True, exist_ok=True)
        records.unlink(missing_ok=True)
