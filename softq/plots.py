"""Figures of the book, written by code: :func:`savefig` saves every figure as PNG (notebooks, README) and SVG.

In smoke mode (``softq.config.SMOKE``) figures go to ``build/figures-smoke/`` so a smoke run never overwrites the
book's figures in ``figures/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

from softq import config

__all__ = ["figure_dir", "savefig"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


def figure_dir() -> Path:
    """``figures/`` in full mode, ``build/figures-smoke/`` in smoke mode."""
    return config.BUILD / "figures-smoke" if config.SMOKE else config.FIGURES


def savefig(fig, name: str, *, dpi: int = 150) -> tuple[Path, Path]:
    """Write ``fig`` (a matplotlib Figure) to ``<figure_dir>/<name>.png`` and ``.svg``; return both paths.

    ``name`` is a plain file stem (letters, digits, ``_``, ``-``), e.g. ``"ch01_mc_convergence"``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be a plain file stem (letters, digits, _ and -), got {name!r}")
    out = figure_dir()
    out.mkdir(parents=True, exist_ok=True)
    png, svg = out / f"{name}.png", out / f"{name}.svg"
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    # No timestamp and a fixed id salt: re-running a chapter rewrites byte-identical SVGs (clean git diffs).
    with matplotlib.rc_context({"svg.hashsalt": name}):
        fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
    return png, svg
