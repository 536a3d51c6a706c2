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
