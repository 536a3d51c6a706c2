"""Shared test guards."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _default_dtype_is_restored():
    """A test that changes torch's global default dtype must not leak it into the tests after it."""
    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    torch.set_default_dtype(before)
    assert after == before, f"the test changed torch's default dtype to {after} and did not restore it"


@pytest.fixture(autouse=True)
def _torch_threads_are_restored():
    """An agent sets the process's torch threads (``torch_threads``, or ``auto_torch_threads``); the tests after it
    run with the count they started with, whatever order pytest runs the files in."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def poison(monkeypatch):
    """``poison(module, name, call)``: ``module.name``, a loss function, returns a NaN loss at its ``call``-th call
    (counted from 1) and the true loss otherwise; a tuple's first element is the loss (``a2c_loss`` returns
    ``(loss, stats)``). Returns the call counter ``{"n": calls so far}``. Undone after the test."""

    def apply(module, name: str, call: int) -> dict[str, int]:
        real, calls = getattr(module, name), {"n": 0}

        def poisoned(*a, **k):
            calls["n"] += 1
            out = real(*a, **k)
            if calls["n"] != call:
                return out
            return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")

        monkeypatch.setattr(module, name, poisoned)
        return calls

    return apply
