"""softq.rl.experiments.provenance: the commit a run records is this checkout's, and its root is found from the
module's own place in the package (a layer deeper than it once was)."""

import subprocess
from pathlib import Path

import pytest

import softq
from softq.rl.experiments import provenance

CHECKOUT = Path(softq.__file__).resolve().parents[1]


@pytest.mark.skipif(not (CHECKOUT / ".git").exists(), reason="not a git checkout")
def test_the_recorded_commit_is_this_checkouts():
    head = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain", "--", "softq"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert provenance.git_commit() == head + ("+dirty" if dirty else "")


def test_the_checkout_is_found_from_the_modules_place():
    assert provenance.CHECKOUT == CHECKOUT and (CHECKOUT / "softq" / "__init__.py").exists()


def test_machine_names_the_cpu_and_cores():
    m = provenance.machine()
    assert m["cores"] >= 1 and isinstance(m["cpu"], str) and m["hostname"]
