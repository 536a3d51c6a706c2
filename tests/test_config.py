"""softq.config: the smoke switch is read from the environment; bad choices are named."""

import importlib

import pytest
import torch

import softq.config as config


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_smoke_switch_reads_environment(monkeypatch, value, expected):
    monkeypatch.setenv("SOFTQ_SMOKE", value)
    mod = importlib.reload(config)
    assert mod.SMOKE is expected
    assert mod.smoke("full", "small") == ("small" if expected else "full")
    monkeypatch.delenv("SOFTQ_SMOKE")
    importlib.reload(config)


def test_dtype_and_paths():
    assert config.DTYPE is torch.float64
    assert (config.ROOT / "softq" / "config.py").exists()


def test_device_and_generator_validate():
    assert config.device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="prefer"):
            config.device("cuda")
    with pytest.raises(ValueError, match="seed"):
        config.generator(-1)
    a = torch.rand(3, generator=config.generator(5))
    b = torch.rand(3, generator=config.generator(5))
    assert torch.equal(a, b)


def test_unknown_device_names_itself():
    with pytest.raises(ValueError, match="device must be"):
        config.device("gpu0")
