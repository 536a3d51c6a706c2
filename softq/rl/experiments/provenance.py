"""What produced a result: package versions, softq's commit, the machine. Recorded in every run's ``config.json``
and in every benchmark."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = ["versions", "machine", "git_commit", "CHECKOUT"]

#: The softq checkout this module runs from (``softq/rl/experiments/provenance.py`` is three levels below it).
CHECKOUT = Path(__file__).resolve().parents[3]


def versions() -> dict[str, str]:
    """Versions of what produced a result: python, torch, gymnasium, ale-py, numpy, softq and its git commit."""
    import ale_py
    import gymnasium
    import numpy

    import softq

    return {"python": platform.python_version(), "torch": torch.__version__, "gymnasium": gymnasium.__version__,
            "ale_py": ale_py.__version__, "numpy": numpy.__version__, "softq": softq.__version__,
            "softq_commit": git_commit()}


def git_commit(paths: tuple[str, ...] = ("softq",)) -> str | None:
    """The commit of the softq checkout that runs (``+dirty`` when ``paths`` of it have uncommitted changes), or
    None outside a git checkout."""
    root = CHECKOUT
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", *paths],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """The machine: host, OS, CPU model and cores, GPU (if any)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu": cpu,
            "cores": os.cpu_count(), "gpu": gpu}
