"""Run folders written by hand for tests that read the results layout (softq.book.plots, softq.rl.experiments.stats)."""


def write_run(root, rule, seed, frames, scores):
    """``root/<rule>/seed<seed>/progress.csv`` with columns frames, updates, score_mean100 (None: no game yet)."""
    d = root / rule / f"seed{seed}"
    d.mkdir(parents=True)
    lines = ["frames,updates,score_mean100"] + [f"{f},{i},{'' if s is None else s}"
                                                for i, (f, s) in enumerate(zip(frames, scores, strict=True))]
    (d / "progress.csv").write_text("\n".join(lines) + "\n")
    return d
