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


@pytest.mark.parametrize("prefer", [None, "cuda"])
def test_cuda_device_always_has_an_index(monkeypatch, prefer):
    """``torch.cuda.set_device(torch.device("cuda"))`` raises "Expected a torch.device with a specified index"
    (before touching CUDA): every CUDA device softq hands out must carry its index."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    dev = config.device(prefer)
    assert dev == torch.device("cuda", 0) and dev.index == 0
    assert config.device("cuda:1").index == 1
    from torch.cuda import _get_device_index

    assert _get_device_index(dev) == 0  # what set_device does first; torch.device("cuda") raises here


def test_cores_follows_the_affinity_mask(monkeypatch):
    """``cores()`` counts the cores this process may use (a taskset, a container), not the machine's."""
    import os

    from softq import config

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity masks on this OS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert config.cores() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 5})
    assert config.cores() == 3
