"""Command line: ``python -m softq.rl train ...`` and ``python -m softq.rl bench ...``.

Examples::

    python -m softq.rl train --rule proper --env CartPole-v1 --seed 0 --frames 100000 --lr 2e-3 --num-envs 8
    python -m softq.rl train --env PongNoFrameskip-v4 --rules naive,proper,soft_q --seeds 0,1,2 \\
        --frames 10000000 --experiment a2c-pong --parallel 3 --time-limit-minutes 9   # then again with --resume
    python -m softq.rl train --env PongNoFrameskip-v4 --rules naive,proper,soft_q --seeds 0,1,2 --fill \
        --parallel 2 --time-limit-minutes 170   # the grid: skips finished runs, resumes paused ones (--dry-run)
    python -m softq.rl train --algo dqn --backup soft_ent --tau 0.1 --n-step 5 --env PongNoFrameskip-v4
    python -m softq.rl train --algo dqn --preset pong-cpu --backups hard,soft_ent,soft_kl --fill \
        --parallel 2   # Figure 2's Pong panel on a 2-core CPU (softq.rl.agents.dqn.PONG_CPU: 4M frames a run)
    python -m softq.rl train --algo dqn --backups hard,soft_kl,soft_ent --taus 0.1,0.01 --n-steps 1,5 \
        --experiment dqn-pong --parallel 3 --time-limit-minutes 9   # 9 variants (hard once per n)
    python -m softq.rl bench --game pong --seconds 10

Every field of the algorithm's Config (:class:`softq.rl.agents.a2c.Config` for ``--algo a2c``, the default;
:class:`softq.rl.agents.dqn.Config` for ``--algo dqn``) is an option (``--num-envs``, ``--tau``, ...), with that
algorithm's defaults; bad values are rejected with a message naming them. Runs go to
``results/<experiment>/<rule>/seed<k>/`` (see :mod:`softq.rl.experiments.loop`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from softq.rl.agents.a2c import RULES
from softq.rl.agents.base import ALGORITHMS, field_type
from softq.rl.experiments.loop import config_class


def _list(kind):
    def parse(text: str):
        try:
            items = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            msg = f"expected a comma-separated list of {kind.__name__}, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items

    return parse


def _given(argv: list[str], name: str) -> bool:
    """Whether the option ``name`` (``--seed``) is spelled out in ``argv``, as ``--seed 3`` or ``--seed=3``."""
    return any(a == name or a.startswith(name + "=") for a in argv)


def _algo(argv: list[str]) -> str:
    """The value of ``--algo`` in ``argv`` (default a2c): it decides which Config's fields are options."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default="a2c")
    return pre.parse_known_args(argv)[0].algo


def _preset(argv: list[str]) -> str | None:
    """The value of ``--preset`` in ``argv`` (DQN: a name in :data:`softq.rl.agents.dqn.PRESETS`), or None: it sets the
    defaults of the Config's options, which explicit options then override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset")
    return pre.parse_known_args(argv)[0].preset


def option_help(f: dataclasses.Field, default) -> str:
    """``--help``'s text for a Config field, from its :class:`softq.rl.agents.base.Option`: the meaning, the unit, the
    allowed values and the default."""
    opt, kind = f.metadata["option"], field_type(f)
    unit = f" [{opt.unit}]" if opt.unit else ""
    named = opt.choices and all(c in opt.help for c in opt.choices)          # the meaning already lists them
    allowed = "" if (kind is str and not opt.choices) or named else f"; {opt.describe(kind)}"
    return f"{opt.help}{unit}{allowed} (default {default!r})".replace("%", "%%")


def _parser(algo: str = "a2c", preset: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m softq.rl", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    other = "dqn" if algo == "a2c" else "a2c"
    t = sub.add_parser("train", help="train one run, or several (rule, seed) runs",
                       description=f"Train {algo.upper()} runs. Every field of softq.rl.{algo}.Config is an option.",
                       epilog=f"{other.upper()} has its own options: python -m softq.rl train --algo {other} --help")
    cls = config_class(algo)
    presets = {}
    if algo == "dqn":
        from softq.rl.agents.dqn import PRESETS as presets

        t.add_argument("--preset", choices=sorted(presets), default="cleanrl",
                       help="a named set of defaults for the options below, which explicit options override: "
                            "cleanrl (CleanRL's dqn_atari), pong-cpu (softq.rl.agents.dqn.PONG_CPU: Tianshou's "
                            "Atari DQN, Pong in 4M frames on a 2-core CPU)")
    chosen = presets.get(preset or "cleanrl", {})
    fields = dataclasses.fields(cls)
    for title in dict.fromkeys(f.metadata["option"].group for f in fields):
        group = t.add_argument_group(f"{algo.upper()}: {title}")
        for f in fields:
            if f.metadata["option"].group == title:
                default = chosen.get(f.name, f.default)
                group.add_argument(f"--{f.name.replace('_', '-')}", *f.metadata["option"].aliases,
                                   type=field_type(f), default=default, help=option_help(f, default))
    t.add_argument("--rules", type=_list(str), help=f"A2C: several rules, comma-separated, from {RULES}")
    t.add_argument("--backups", "--targets", type=_list(str),
                   help="DQN: several backups, comma-separated (hard,soft_kl,soft_ent)")
    t.add_argument("--taus", type=_list(float), help="DQN: several temperatures of the soft targets")
    t.add_argument("--n-steps", type=_list(int), help="DQN: several lookaheads n")
    t.add_argument("--seeds", type=_list(int), help="several seeds, comma-separated")
    t.add_argument("--envs", type=_list(str),
                   help="several environments, comma-separated (e.g. the paper's six games), each its own experiment")
    t.add_argument("--out", help="the run's folder (one run only); default results/<experiment>/...")
    t.add_argument("--results", type=Path, default=Path("results"), help="root of the results layout")
    t.add_argument("--experiment", help="experiment name, the folder under --results; {env} in it stands for the "
                                        "game's id, {algo} for --algo (default {algo}-{env})")
    t.add_argument("--resume", action="store_true", help="continue from each run's checkpoint.pt")
    t.add_argument("--fill", action="store_true",
                   help="run what is missing of the grid: skip finished runs, resume those with a checkpoint, "
                        "start the others (a partial run without checkpoint starts afresh); softq.rl.experiments.grid")
    t.add_argument("--dry-run", action="store_true",
                   help="with --fill: print the plan and, with --bench, what it costs; run nothing")
    t.add_argument("--launcher", choices=("local", "ray"), default="local",
                   help="with --fill: local (this machine, --parallel at once) or ray (one Ray task per run on the "
                        "cluster at --ray-address; softq.rl.experiments.cluster)")
    t.add_argument("--ray-address", default="auto",
                   help="ray.init(address=...): auto (the running cluster), ray://host:10001, or local (a cluster in "
                        "this process)")
    t.add_argument("--cpus-per-run", type=int, help="Ray: CPUs each run asks for (default: its envs, at most 8)")
    t.add_argument("--gpus-per-run", type=float, default=0.0,
                   help="Ray: GPUs each run asks for (0.25: four runs share a GPU); also the dry run's GPU-hours")
    t.add_argument("--bench", type=Path,
                   help="with --dry-run: a `make bench` file (results/bench/<machine>.json) of the machines that "
                        "will train; the plan's wall time and GPU-hours are estimated from its throughput")
    t.add_argument("--concurrent", type=int, default=1,
                   help="with --bench: how many runs train at once (the cluster's GPUs / --gpus-per-run)")
    t.add_argument("--parallel", type=int, default=1, help="runs at once, as subprocesses (default 1: in turn)")
    t.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    i = sub.add_parser("inspect", help="what an A2C run's RMSProp state says about its gradients (gradients.json)",
                       description="For each run folder, read checkpoint.pt and write gradients.json beside it: per "
                                   "parameter tensor, the RMS of recent gradients, the silent weights and dead units, "
                                   "and torch's step over TensorFlow's (softq.rl.parts.optim.gradient_report).")
    i.add_argument("runs", nargs="+", type=Path, help="run folders (results/<experiment>/<rule>/seed<k>)")
    b = sub.add_parser("bench", help="env and training throughput (results/bench/<tag>.json)")
    b.add_argument("--game", default="pong")
    b.add_argument("--num-envs", type=int, default=16)
    b.add_argument("--threads", type=int, default=0, help="env threads / processes (0: min(num_envs, cores))")
    b.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    b.add_argument("--device", default="auto")
    b.add_argument("--tag", help="file name (default: the machine kind, e.g. cpu-2core)")
    b.add_argument("--out", type=Path, default=Path("results/bench"))
    b.add_argument("--what", type=_list(str), default=["a2c", "dqn", "graph"],
                   help="what to measure: a2c, dqn, graph (the CUDA-graph check; CUDA only), phases (where an A2C "
                        "update's time goes on the CPU, and the most overlapping env and network could buy)")
    b.add_argument("--dqn-num-envs", type=_list(int), default=[8], help="DQN: numbers of envs to measure")
    b.add_argument("--side-by-side", type=Path, metavar="OLD_TREE",
                   help="instead: this code against another checkout (git worktree add OLD_TREE <commit>), "
                        "alternating, --reps times each; saved under 'side_by_side' in the machine's file")
    b.add_argument("--reps", type=int, default=3, help="repetitions of each --side-by-side measurement")
    return p


def _inspect(args, parser) -> int:
    """``inspect``: write ``gradients.json`` into each run folder from its checkpoint."""
    import json

    from softq.rl.diagnostics.inspect import checkpoint_gradient_report
    from softq.rl.experiments.folder import RunFolder

    for run in args.runs:
        ckpt = RunFolder(run).checkpoint_path
        if not ckpt.exists():
            parser.error(f"argument runs: {run} has no {ckpt.name} (checkpoints stay on the machine that trained)")
        try:
            report = checkpoint_gradient_report(ckpt)
        except ValueError as e:
            parser.error(str(e))
        (run / "gradients.json").write_text(json.dumps(report, indent=1) + "\n")
        dead = {r["name"]: f"{r['dead_outputs']}/{r['outputs']}" for r in report["layers"] if r.get("dead_outputs")}
        print(f"[{run}] update {report['updates']}: dead output units {dead or 'none'}")
    return 0


def _bench(args, parser) -> int:
    """``bench``: bad input is answered with a usage error naming the argument, not a traceback."""
    for name in ("seconds",):
        if not getattr(args, name) > 0:
            parser.error(f"argument --{name}: must be > 0, got {getattr(args, name)}")
    for name in ("num_envs", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.threads < 0:
        parser.error(f"argument --threads: must be >= 0, got {args.threads}")
    if any(n < 1 for n in args.dqn_num_envs):
        parser.error(f"argument --dqn-num-envs: every number must be >= 1, got {args.dqn_num_envs}")
    try:
        if args.side_by_side is not None:
            from softq.rl.diagnostics.bench import save_side_by_side, side_by_side

            if not args.side_by_side.is_dir():
                parser.error(f"argument --side-by-side: {args.side_by_side} is not a directory (a checkout of the "
                             "old code: git worktree add OLD_TREE <commit>)")
            what = tuple(w for w in args.what if w in ("a2c", "dqn"))
            record = side_by_side(args.side_by_side, reps=args.reps, seconds=args.seconds, game=args.game,
                                  num_envs=args.num_envs, dqn_num_envs=args.dqn_num_envs[0], what=what)
            save_side_by_side(record, args.out, args.tag)
            return 0
        from softq.rl.diagnostics.bench import run_bench

        run_bench(game=args.game, num_envs=args.num_envs, threads=args.threads, seconds=args.seconds,
                  device=args.device, tag=args.tag, out_dir=args.out, what=args.what, dqn_num_envs=args.dqn_num_envs)
    except ValueError as e:
        parser.error(str(e))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    algo = _algo(argv)
    preset = _preset(argv)
    parser = _parser(algo if algo in ALGORITHMS else "a2c", preset if algo == "dqn" else None)
    if argv[:1] == ["train"] and algo not in ALGORITHMS:
        parser.error(f"argument --algo: must be one of {tuple(ALGORITHMS)}, got {algo!r}")
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args, parser)
    if args.command == "inspect":
        return _inspect(args, parser)

    from softq.rl.agents.base import NonFiniteLoss
    from softq.rl.experiments.folder import RunFolder
    from softq.rl.experiments.grid import expand
    from softq.rl.experiments.launch import launch
    from softq.rl.experiments.loop import RunBusy, outcome, run_dir, shown, train

    cls = config_class(args.algo)
    envs = args.envs or [args.env]
    if args.envs and args.experiment and len(envs) > 1 and "{env}" not in args.experiment:
        parser.error("--experiment names one experiment; with several --envs put {env} in it (a2c-paper-{env}), "
                     "or leave it out (each game's is <algo>-<env>)")
    for one, several in (("--seed", "--seeds"), ("--rule", "--rules"), ("--backup", "--backups"),
                         ("--target", "--targets"), ("--backup", "--targets"), ("--target", "--backups"),
                         ("--tau", "--taus"), ("--n-step", "--n-steps"), ("--env", "--envs")):
        if _given(argv, one) and _given(argv, several):
            parser.error(f"{one} and {several} both given: {several} alone names every value")
    if args.algo == "a2c" and (args.backups or args.taus or args.n_steps):
        parser.error("--backups, --taus and --n-steps are DQN options (--algo dqn)")
    if args.algo == "dqn" and args.rules:
        parser.error("--rules is an A2C option; DQN takes --backups, --taus, --n-steps")
    try:
        base = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
        cfgs = expand(base, envs=envs, seeds=args.seeds, rules=args.rules, backups=args.backups, taus=args.taus,
                      n_steps=args.n_steps)
    except ValueError as e:
        parser.error(str(e))
    if args.dry_run and not args.fill:
        parser.error("--dry-run goes with --fill")
    if args.launcher != "local" and not args.fill:
        parser.error("--launcher goes with --fill (the grid decides what each run does)")
    if args.concurrent < 1:
        parser.error(f"--concurrent must be >= 1, got {args.concurrent}")
    if args.fill and args.resume:
        parser.error("--fill decides for each run whether to resume: leave out --resume")
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.out is not None and len(cfgs) > 1:
        parser.error("--out names one run's folder; with several rules/seeds use --results and --experiment")
    if args.out is not None:
        if not args.out.strip():
            parser.error("--out is empty: name the run's folder")
        args.out = Path(args.out)
    if args.experiment is not None:
        name = Path(args.experiment)
        if not args.experiment.strip() or name.is_absolute() or ".." in name.parts:
            parser.error(f"--experiment {args.experiment!r}: a name inside --results (no absolute path, no '..')")
    outs = [args.out] if args.out is not None else [
        run_dir(args.results, (args.experiment or "{algo}-{env}").format(algo=args.algo, env=c.env), c.rule, c.seed)
        for c in cfgs]
    if len(set(outs)) < len(outs):
        parser.error("two runs would share a folder (a seed or variant given twice?): "
                     + ", ".join(sorted({str(o) for o in outs if outs.count(o) > 1})))
    if args.fill:
        from softq.rl.experiments.grid import describe, fill, plan

        try:
            planned = plan(list(zip(cfgs, outs, strict=True)))
        except ValueError as e:
            parser.error(str(e))
        if args.algo == "a2c":
            from softq.rl.agents.a2c import paper_protocol_differences

            kinds = {tuple(paper_protocol_differences(c)) for c in cfgs}
            for diff in sorted(kinds):
                print("protocol: " + ("the paper's A2C, except " + "; ".join(diff) if diff
                                      else "the paper's A2C (Section 6.1), 320M frames a run"), file=sys.stderr)
        print(describe(planned), file=sys.stderr)
        if args.bench is not None:
            from softq.rl.experiments.cluster import describe_estimate, estimate

            try:
                est = estimate(planned, args.bench, concurrent=args.concurrent, gpus=args.gpus_per_run)
            except ValueError as e:
                parser.error(str(e))
            print(describe_estimate(est), file=sys.stderr)
        if args.dry_run:
            return 0
        if args.launcher == "ray":
            from softq.rl.experiments.cluster import fill_ray

            try:
                failed = fill_ray(planned, address=args.ray_address, cpus=args.cpus_per_run, gpus=args.gpus_per_run)
            except ValueError as e:
                parser.error(str(e))
            return 1 if failed else 0
        return 1 if fill(planned, parallel=args.parallel, progress=not args.no_progress) else 0
    if len(cfgs) == 1:
        try:
            result = train(cfgs[0], outs[0], resume=args.resume, progress=not args.no_progress)
        except NonFiniteLoss as e:
            print(f"FAILED: {e}", file=sys.stderr)
            return 1
        except (FileExistsError, ValueError, RunBusy) as e:
            parser.error(str(e))
        print(f"[{shown(outs[0])}] {outcome(result)}")
        return 0
    if not args.resume:
        taken = [str(o) for o in outs if RunFolder(o).holds_run()]
        if taken:
            parser.error(f"these folders already hold runs: {', '.join(taken)}; --fill runs only what is missing "
                         "(and resumes what has a checkpoint), --resume continues them")
    failed = launch(list(zip(cfgs, outs, strict=True)), resume=args.resume, parallel=args.parallel,
                    progress=not args.no_progress)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
