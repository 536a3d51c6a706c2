"""Run-wide settings read once from the environment.

- ``SMOKE``: true when ``SOFTQ_SMOKE=1`` (the test suite sets it). Smoke mode shrinks step counts, sample sizes
  and training lengths through :func:`smoke`; it never skips a check.
- ``DTYPE``: ``torch.float64``, the dtype of every exact computation in the book.
- :func:`device`: CUDA when present (the Atari agents), else CPU.
- :func:`cores`: the CPU cores this process may run on (what "all the cores" means for threads).
- ``ROOT``, ``FIGURES``, ``RESULTS``, ``BUILD``: the project's folders, wherever the notebook runs from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")

SMOKE: bool = os.environ.get("SOFTQ_SMOKE", "0").strip().lower() in ("1", "true", "yes", "on")
DTYPE: torch.dtype = torch.float64

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "figures"
RESULTS = ROOT / "results"
BUILD = ROOT / "build"


def smoke(full: T, small: T) -> T:
    """``small`` in smoke mode, ``full`` otherwise: ``n_samples = smoke(100_000, 2_000)``."""
    return small if SMOKE else full


def device(prefer: str | None = None) -> torch.device:
    """The device to train on: ``prefer`` if given ("cpu", "cuda", "cuda:1"), else CUDA when available.

    A CUDA device always comes back with its index (``cuda`` -> ``cuda:0``): ``torch.cuda.set_device``, streams and
    graph capture need one, and a run records which GPU it used.
    """
    if prefer is not None:
        try:
            dev = torch.device(prefer)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {prefer!r}: {err}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device: prefer={prefer!r} but CUDA is not available on this machine")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: prefer={prefer!r} but this machine has {torch.cuda.device_count()} GPU(s)")
    else:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", 0)
    return dev


def cores() -> int:
    """The number of CPU cores this process may run on: its affinity mask where the OS has one (a container, a
    ``taskset``, a run pinned by ``softq.rl.experiments.launch``), not the machine's count, which ``os.cpu_count``
    gives."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def generator(seed: int) -> torch.Generator:
    """A CPU torch generator with an explicit seed: every random draw in the book names its seed."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"generator: seed must be a non-negative int, got {seed!r}")
    return torch.Generator().manual_seed(seed)
