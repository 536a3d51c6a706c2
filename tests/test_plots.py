"""softq.book.plots.savefig: PNG + SVG, byte-identical on re-runs, smoke runs kept out of figures/."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from _runs import write_run  # noqa: E402

from softq import config  # noqa: E402
from softq.book import plots  # noqa: E402


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


def test_learning_curves_mean_and_std_over_seeds(tmp_path):
    """Mean and sample standard deviation at the frames every seed has logged; a run in progress is cut there."""
    import numpy as np

    exp = tmp_path / "a2c-Test"
    write_run(exp, "proper", 0, [100, 200, 300], [None, 2.0, 4.0])
    write_run(exp, "proper", 1, [100, 200, 300], [1.0, 4.0, 8.0])
    write_run(exp, "proper", 2, [100, 200], [1.0, 6.0])  # still running
    write_run(exp, "naive", 0, [100, 200], [5.0, 5.0])
    runs = plots.read_runs(exp, "proper")
    assert sorted(runs) == [0, 1, 2]
    x, mean, std, n = plots.curve_stats(runs)
    assert n == 3 and x.tolist() == [100.0, 200.0]
    assert np.isnan(mean[0]) and mean[1] == 4.0 and abs(std[1] - 2.0) < 1e-12  # sd of 2, 4, 6 (ddof 1)
    x1, mean1, std1, n1 = plots.curve_stats(plots.read_runs(exp, "naive"))
    assert n1 == 1 and std1.tolist() == [0.0, 0.0]  # one seed: no spread, no NaN
    assert plots.has_runs(exp, ("naive", "proper")) and not plots.has_runs(exp, ("soft_q",))
    assert not plots.has_runs(tmp_path / "missing", ("proper",))
    fig, out = plots.learning_curve_grid({"Test": exp, "Again": exp}, ("naive", "proper", "soft_q"), ncols=1)
    assert set(out["Test"]) == {"naive", "proper"} and out["Test"]["proper"]["final_mean"] == 4.0
    assert out["Test"]["proper"]["frames"] == 200.0 and out["Test"]["proper"]["n_seeds"] == 3
    assert len(fig.axes) == 2
    plt.close("all")


def test_few_seeds_are_drawn_one_by_one_and_a_band_outside_the_score_range_is_refused(tmp_path):
    """Three Pong seeds that split into learners and a stall: three thin lines and a thick mean, no band, and the
    y axis on the score's range. Asked for a +-1 sd band, the same runs are refused (the band leaves [-21, 21]);
    five seeds get a band by default when it fits, and a seed's curve outside the stated range raises."""
    import numpy as np

    exp = tmp_path / "a2c-Pong"
    for seed, end in enumerate([20.0, 18.0, -21.0]):
        write_run(exp, "proper", seed, [1, 2, 3], [-21.0, -10.0, end])
    fig, ax = plt.subplots()
    out = plots.plot_learning_curves(ax, exp, ["proper"], limits=(-21, 21))
    assert len(ax.lines) == 4 and not ax.collections  # 3 seeds + the mean, no band
    assert [line.get_linewidth() for line in ax.lines] == [0.7, 0.7, 0.7, 2.0]
    assert out["proper"]["final_seeds"] == {0: 20.0, 1: 18.0, 2: -21.0}
    assert -21 > ax.get_ylim()[0] > -23 and 21 < ax.get_ylim()[1] < 23
    with pytest.raises(ValueError, match="outside the score range"):
        plots.plot_learning_curves(plt.subplots()[1], exp, ["proper"], band="sd", limits=(-21, 21))
    five = tmp_path / "five"
    for seed in range(5):
        write_run(five, "naive", seed, [1, 2], [-20.0 + seed, -19.0 + seed])
    ax5 = plt.subplots()[1]
    plots.plot_learning_curves(ax5, five, ["naive"], limits=(-21, 21))
    assert len(ax5.lines) == 1 and len(ax5.collections) == 1  # the mean and its band
    np.testing.assert_allclose(ax5.lines[0].get_ydata(), [-18.0, -17.0])
    write_run(five, "soft_q", 0, [1, 2], [-20.0, 30.0])
    with pytest.raises(ValueError, match="soft_q/seed0: score_mean100 outside the score range"):
        plots.plot_learning_curves(plt.subplots()[1], five, ["soft_q"], limits=(-21, 21))
    with pytest.raises(ValueError, match="band"):
        plots.plot_learning_curves(ax, exp, ["proper"], band="ci")
    plt.close("all")


def test_learning_curves_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        plots.curve_stats({})
    with pytest.raises(ValueError, match="no experiments"):
        plots.learning_curve_grid({}, ("proper",))
    d = tmp_path / "e" / "proper" / "seed0"
    d.mkdir(parents=True)
    (d / "progress.csv").write_text("frames,loss\n1,2\n")
    with pytest.raises(ValueError, match="score_mean100"):
        plots.read_runs(tmp_path / "e", "proper")


def test_every_figure_2_variant_has_a_style():
    """Figure 2's six DQN variants, named as softq.rl.agents.dqn.Config.rule names them, each get their own colour."""
    from softq.book.plots import RULE_STYLE
    from softq.rl.agents.dqn import Config

    variants = [Config(env="CartPole-v1", backup="hard", n_step=n) for n in (1, 5)]
    variants += [Config(env="CartPole-v1", backup=t, tau=tau) for t in ("soft_ent", "soft_kl") for tau in (0.1, 0.01)]
    rules = [c.rule for c in variants]
    assert all(rule in RULE_STYLE for rule in rules)
    assert len({RULE_STYLE[rule][0] for rule in rules}) == len(rules)


def _run(root, rule, seed, status, **cfg):
    import json

    d = root / rule / f"seed{seed}"
    d.mkdir(parents=True)
    base = {"rule": rule, "seed": seed, "lr": 7e-4, "optimizer": "rmsprop_torch", "torch_threads": 1, "frames": 10**7}
    (d / "config.json").write_text(json.dumps({"config": {**base, **cfg},
                                               "machine": {"cpu": "Some CPU", "cores": 2, "gpu": None}}))
    (d / "status.json").write_text(json.dumps(status))


def test_run_records_spread_and_caption(tmp_path):
    """config_spread names the fields that differ (not rule, seed or run control); the caption gives frames
    reached, the paper's budget, the machine, the optimizer and wall times."""
    _run(tmp_path, "naive", 0, {"status": "done", "frames": 10**7, "wall_s": 4500})
    _run(tmp_path, "proper", 0, {"status": "paused", "frames": 4 * 10**6, "wall_s": 1800}, torch_threads=2)
    records = plots.run_records(tmp_path, ("naive", "proper", "soft_q"))
    assert sorted(records) == [("naive", 0), ("proper", 0)]
    assert plots.config_spread(records) == {}
    caption = plots.budget_caption(records)
    assert caption == ("2 runs (1 finished), 4.0-10.0M frames each (paper: 320M); Some CPU (2 cores); "
                       "optimizer rmsprop_torch, 30-75 min per run"), caption
    _run(tmp_path, "soft_q", 0, {"status": "done", "frames": 10**7, "wall_s": 4500}, lr=1e-3)
    records = plots.run_records(tmp_path, ("naive", "proper", "soft_q"))
    assert plots.config_spread(records) == {"lr": [0.0007, 0.001]}
    with pytest.raises(ValueError, match="no runs"):
        plots.budget_caption({})
    dqn = {("hard", 0): {"config": {"algo": "dqn", "lr": 1e-4}, "machine": {"cpu": "Some CPU", "cores": 2},
                         "status": {"status": "done", "frames": 4 * 10**6, "wall_s": 3696}}}
    assert plots.budget_caption(dqn, paper_frames=40e6) == ("1 run (1 finished), 4.0M frames each (paper: 40M); "
                                                            "Some CPU (2 cores); optimizer adam, 62 min per run")


def test_figure_dir_follows_softq_figures(tmp_path, monkeypatch):
    from softq.book import plots

    monkeypatch.setenv("SOFTQ_FIGURES", str(tmp_path / "variant"))
    assert plots.figure_dir() == tmp_path / "variant"
    monkeypatch.delenv("SOFTQ_FIGURES")
    assert plots.figure_dir() in (plots.config.FIGURES, plots.config.BUILD / "figures-smoke")


def _write_episodes(path, rows):
    path.mkdir(parents=True)
    lines = ["frames,episodes,score_mean100"] + [f"{f},{e},{s}" for f, e, s in rows]
    (path / "progress.csv").write_text("\n".join(lines) + "\n")


def test_game_lengths_over_the_last_window(tmp_path):
    # seed 0: 4 games in the last 1000 frames (rows at 1000 and 2000) -> 250 frames per game; seed 1: no game
    # finished in the window -> NaN; a log shorter than the window is read from its first row.
    _write_episodes(tmp_path / "hard" / "seed0", [(500, 0, ""), (1000, 2, -21), (1500, 4, -20), (2000, 6, -19)])
    _write_episodes(tmp_path / "hard" / "seed1", [(1000, 3, -21), (2000, 3, -21)])
    lengths = plots.game_lengths(tmp_path, "hard", window_frames=1000)
    assert lengths[0] == pytest.approx(250.0)
    assert lengths[1] != lengths[1]  # NaN
    assert plots.game_lengths(tmp_path, "hard", window_frames=1e9)[0] == pytest.approx(1500 / 6)
    assert plots.game_lengths(tmp_path, "soft_ent_tau0.1") == {}


def test_game_length_trace_row_by_row(tmp_path):
    # window 1000: row 1000 looks back to row 0 (2 games in 1000 frames), row 1500 to row 500 (4 in 1000), row 2000
    # to row 1000 (4 in 1000); the first row has no window (NaN); the scores are the log's.
    _write_episodes(tmp_path / "hard" / "seed0", [(0, 0, ""), (500, 1, -21), (1000, 2, -21), (1500, 5, -20),
                                                  (2000, 6, -19)])
    frames, scores, lengths = plots.game_length_trace(tmp_path, "hard", window_frames=1000)[0]
    assert frames.tolist() == [0, 500, 1000, 1500, 2000]
    assert scores[1:].tolist() == [-21, -21, -20, -19]
    assert lengths[0] != lengths[0] and lengths[1:].tolist() == pytest.approx([500, 500, 250, 250])
    assert plots.game_lengths(tmp_path, "hard", window_frames=1000)[0] == lengths[-1]


@pytest.mark.parametrize("window", [0, -1.0, float("nan"), "1e6"])
def test_game_lengths_rejects_a_bad_window(tmp_path, window):
    with pytest.raises(ValueError, match="window_frames"):
        plots.game_lengths(tmp_path, "hard", window_frames=window)
    with pytest.raises(ValueError, match="window_frames"):
        plots.game_length_trace(tmp_path, "hard", window_frames=window)


def test_plot_pairs_checks_the_one_difference_and_skips_missing_runs(tmp_path, capsys):
    """plot_pairs draws a panel per complete pair and raises when a pair differs in more than its field."""
    status = {"status": "done", "frames": 10**7, "wall_s": 1200, "frames_per_s": 8333}
    _run(tmp_path, "a", 0, status, optimizer="rmsprop_tf")
    _run(tmp_path, "b", 0, status)
    _run(tmp_path, "c", 0, status, optimizer="rmsprop_tf", lr=1e-3)
    _run(tmp_path, "missing", 0, status)
    for rule in ("a", "b", "c"):
        (tmp_path / rule / "seed0" / "progress.csv").write_text("frames,score_mean100\n0,-21\n10000000,-5\n")
    runs = {r: tmp_path / r / "seed0" for r in ("a", "b", "c", "missing")}
    fig = plots.plot_pairs({"good": {"tf": runs["a"], "torch": runs["b"]},
                            "not yet": {"tf": runs["a"], "torch": runs["missing"]}}, "optimizer", ncols=2)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == ["good"]
    assert "tf: -5.0 at 10.00M frames (done, 20 min, 8333 frames/s)" in capsys.readouterr().out
    plt.close(fig)
    assert plots.plot_pairs({"not yet": {"x": runs["missing"]}}, "optimizer") is None
    with pytest.raises(AssertionError, match="differ in optimizer only"):
        plots.plot_pairs({"confounded": {"tf": runs["c"], "torch": runs["b"]}}, "optimizer")
    with pytest.raises(AssertionError, match="do differ in lr"):
        plots.plot_pairs({"same": {"x": runs["a"], "y": runs["a"]}}, "lr")
