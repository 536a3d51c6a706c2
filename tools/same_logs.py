"""Do two versions of softq compute the same runs? Train the same short runs with a base commit and with the working
tree, side by side on this machine, and compare their logs byte for byte.

    .venv/bin/python tools/same_logs.py BASE            # CartPole: A2C of every rule, DQN of every target
    .venv/bin/python tools/same_logs.py BASE --atari    # also the first 200 updates of a Pong A2C run and the first
                                                        # 20k env steps of a Pong DQN run (pong-cpu)

BASE is any commit (``HEAD``, ``main~3``, a hash); it is checked out into a temporary ``git worktree``. Each run goes
through the command line (``python -m softq.rl train``), the interface both versions share, with its seed and its
threads pinned (one torch thread, one emulator thread), run by run, one at a time. Every column of ``progress.csv``
is compared except the two that measure time (``sps``, ``wall_s``), and every byte of ``agreement.csv``. Floating
point differs between CPU kinds, so two logs agree only when both versions ran on the same machine, as here.

Exit status 0 when every log is identical, 1 otherwise; the table names the first differing row of each log.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMING = ("sps", "wall_s")
PINNED = ["--seed", "0", "--torch-threads", "1", "--env-threads", "1", "--no-progress"]
A2C_CARTPOLE = ["--env", "CartPole-v1", "--frames", "12000", "--penalty", "kl", "--optimizer", "rmsprop_torch",
                "--policy-init-scale", "0.01", "--schedule-frames", "0", "--log-every", "10",
                "--agreement-every", "25"]
DQN_CARTPOLE = ["--algo", "dqn", "--env", "CartPole-v1", "--frames", "6000", "--learning-starts", "500",
                "--buffer-size", "5000", "--target-update", "100", "--log-every", "50", "--tau", "0.5"]
CASES = {
    **{f"a2c-cartpole-{r}": ["--rule", r, *A2C_CARTPOLE] for r in ("naive", "proper", "soft_q")},
    **{f"dqn-cartpole-{t}": ["--target", t, *DQN_CARTPOLE] for t in ("hard", "soft_kl", "soft_ent")},
    "dqn-cartpole-soft_ent-n3-huber": ["--target", "soft_ent", "--n-step", "3", "--loss", "huber",
                                        "--max-grad-norm", "10", *DQN_CARTPOLE],
}
ATARI = {
    # 200 updates of 16 x 5 agent steps, 4 frames each
    "a2c-pong-proper": ["--env", "PongNoFrameskip-v4", "--rule", "proper", "--frames", str(200 * 80 * 4),
                        "--log-every", "10", "--agreement-every", "50"],
    # 20k env steps of pong-cpu's 10 envs, 4 frames each
    "dqn-pong-soft_ent": ["--algo", "dqn", "--env", "PongNoFrameskip-v4", "--preset", "pong-cpu", "--target",
                          "soft_ent", "--frames", str(20_000 * 4), "--log-every", "100"],
}


def comparable(path: Path) -> list[list[str]]:
    """The rows of a CSV log without its timing columns."""
    rows = list(csv.reader(io.StringIO(path.read_text())))
    keep = [i for i, c in enumerate(rows[0]) if c not in TIMING] if rows else []
    return [[r[i] for i in keep] for r in rows]


def first_difference(a: Path, b: Path) -> str | None:
    """None when the logs agree; else where they first differ."""
    if a.exists() != b.exists():
        return f"{a.name}: present in only one of the two runs"
    if not a.exists():
        return None
    ra, rb = comparable(a), comparable(b)
    for i, (x, y) in enumerate(zip(ra, rb, strict=False)):
        if x != y:
            return f"{a.name} row {i}: {x} vs {y}"
    if len(ra) != len(rb):
        return f"{a.name}: {len(ra)} vs {len(rb)} rows"
    return None


def train(tree: Path, args: list[str], out: Path) -> None:
    """One run with the softq of ``tree`` (``python -m`` puts the working directory first on the path)."""
    cmd = [sys.executable, "-m", "softq.rl", "train", *args, *PINNED, "--out", str(out)]
    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed in {tree}: {' '.join(cmd)}\n{done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="the commit to compare the working tree against")
    p.add_argument("--atari", action="store_true", help="also the Pong runs (minutes)")
    p.add_argument("--only", default="", help="comma-separated case names (default: all)")
    a = p.parse_args(argv)
    cases = {**CASES, **(ATARI if a.atari else {})}
    if a.only:
        unknown = set(a.only.split(",")) - set(cases)
        if unknown:
            p.error(f"--only: unknown cases {sorted(unknown)}; known: {sorted(cases)}")
        cases = {k: v for k, v in cases.items() if k in a.only.split(",")}
    with tempfile.TemporaryDirectory(prefix="same-logs-") as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), a.base], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=base, capture_output=True,
                                    text=True).stdout.strip()
            print(f"base {a.base} ({commit}) against the working tree {ROOT}")
            bad = 0
            for name, args in cases.items():
                outs = {}
                for label, tree in (("base", base), ("tree", ROOT)):
                    outs[label] = tmp / label / name
                    train(tree, args, outs[label])
                diffs = [d for f in ("progress.csv", "agreement.csv")
                         if (d := first_difference(outs["base"] / f, outs["tree"] / f))]
                rows = len(comparable(outs["tree"] / "progress.csv")) - 1
                print(f"{name:<34} {'identical' if not diffs else 'DIFFERS'}  ({rows} rows)"
                      + "".join(f"\n    {d}" for d in diffs))
                bad += bool(diffs)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    print(f"{len(cases) - bad} of {len(cases)} logs identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
