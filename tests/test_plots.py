"""softq.plots.savefig: PNG + SVG, byte-identical on re-runs, smoke runs kept out of figures/."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from softq import config, plots  # noqa: E402


def _figure():
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 0, 2], label="a line")
    ax.legend()
    return fig


def test_savefig_is_reproducible_and_respects_smoke(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(config, "BUILD", tmp_path / "build")
    monkeypatch.setattr(config, "SMOKE", False)
    png, svg = plots.savefig(_figure(), "demo")
    first = (png.read_bytes(), svg.read_bytes())
    plots.savefig(_figure(), "demo")
    assert (png.read_bytes(), svg.read_bytes()) == first
    assert png.parent == tmp_path / "figures"
    monkeypatch.setattr(config, "SMOKE", True)
    png_smoke, _ = plots.savefig(_figure(), "demo")
    assert png_smoke.parent == tmp_path / "build" / "figures-smoke"
    plt.close("all")


@pytest.mark.parametrize("name", ["", "../escape", "a b", "fig.png", None])
def test_bad_names_are_rejected(name):
    with pytest.raises(ValueError, match="name"):
        plots.savefig(_figure(), name)
    plt.close("all")
