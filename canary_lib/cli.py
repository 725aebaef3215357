"""The `canary` command line (also `python -m canary_lib`). Each subcommand is a thin call into the library,
the same functions the notebooks call. Heavy modules are imported inside the handlers so `--help` is fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from canary_lib.config import load_config
from canary_lib.errors import CanaryError
from canary_lib.redact import redact


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="+", help="parameter YAML files, merged left to right")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key, e.g. --set seed=123 --set controller.K=10",
    )


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.params, args.overrides)
    from canary_lib.train import train_from_config

    train_from_config(cfg, Path(args.out))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.step is not None:  # a kept adapter snapshot, into its own directory
        from canary_lib.snapshots import evaluate_snapshot

        evaluate_snapshot(Path(args.run_dir), args.step, overrides=args.overrides)
        return 0
    from canary_lib.evaluate import evaluate_run

    evaluate_run(Path(args.run_dir), overrides=args.overrides)
    return 0


def _cmd_rejudge(args: argparse.Namespace) -> int:
    from canary_lib.rejudge import agreement_line, rejudge_dir, rejudge_run

    metrics = rejudge_run(Path(args.run_dir), args.overrides, name=args.name)
    print(
        f"{rejudge_dir(args.run_dir, metrics['judge_name'])}: general misaligned "
        f"{metrics.get('general_misaligned_pct')}%; {metrics['eval_judge_requests']} judge requests"
    )
    print(agreement_line(metrics["agreement"]))
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    from canary_lib.results import build_results

    res = build_results(Path(args.runs_dir), Path(args.out), judge=args.judge)
    print(res.table1[["label", "n_seeds", "Gen. %Mis.", "In-Dom. %Mis."]].to_string(index=False))
    return 0


def _cmd_prep_data(args: argparse.Namespace) -> int:
    cfg = load_config(args.params, args.overrides)
    from canary_lib.data.prepare import prepare_data

    prepare_data(cfg)
    return 0


def _cmd_organism_build(args: argparse.Namespace) -> int:
    cfg = load_config(args.params, args.overrides)
    from canary_lib.organism import ensure_base_model

    print(ensure_base_model(cfg))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from canary_lib.sweep import run_sweep

    return run_sweep(Path(args.sweep), dry_run=args.dry_run)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from canary_lib.sweep import reproduce

    return reproduce(args.profile)


def _cmd_readme_images(args: argparse.Namespace) -> int:
    from canary_lib.readme_images import write_readme_images

    for path in write_readme_images(args.results, args.out):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canary", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run (one method x one seed) with Algorithm 1")
    _add_params(p)
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained run with the judge (resumable)")
    p.add_argument("run_dir")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--step",
        type=int,
        default=None,
        help="evaluate the adapter snapshot kept after this step (train.snapshot_every) into "
        "RUN/snapshot_evals/step<S>/",
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("rejudge", help="score a finished run's answers with another judge (no new generation)")
    p.add_argument("run_dir")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="judge.KEY=VALUE",
        help="the other judge's settings, e.g. --set judge.backend=openai --set judge.model=gpt-4o",
    )
    p.add_argument("--name", default=None, help="its directory RUN/rejudged/<name> (default: the judge model's name)")
    p.set_defaults(func=_cmd_rejudge)

    p = sub.add_parser("results", help="Table 1, Table 2, correlation and frontier from a runs directory")
    p.add_argument("runs_dir", help="runs/<profile> with <method>/seed<k> run directories")
    p.add_argument("--out", required=True, help="results directory")
    p.add_argument("--judge", default=None, help="use the re-judging of this name (canary rejudge --name)")
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("prep-data", help="prepare the datasets and prompt sets of a profile")
    _add_params(p)
    p.set_defaults(func=_cmd_prep_data)

    p = sub.add_parser("organism", help="the CPU model organism")
    osub = p.add_subparsers(dest="organism_command", required=True)
    b = osub.add_parser("build", help="pre-train (or reuse the cached) base organism and print its path")
    _add_params(b)
    b.set_defaults(func=_cmd_organism_build)

    p = sub.add_parser("sweep", help="run a sweep (profile x methods x seeds) through papermill")
    p.add_argument("sweep", help="sweep YAML, e.g. parameters/sweeps/organism.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs without executing")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("reproduce", help="the whole pipeline for a profile: Table 1, Table 2, Figure 2")
    p.add_argument("--profile", default="organism")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("readme-images", help="PNGs of Table 1 and Figure 2 for the README (reads results only)")
    p.add_argument("--results", default="results/organism", help="a finished reproduction's results directory")
    p.add_argument("--out", default="docs/images", help="where table1.png and figure2.png go")
    p.set_defaults(func=_cmd_readme_images)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CanaryError as exc:
        print(f"canary: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (training), or one during evaluation: both resume on a rerun
        print("canary: interrupted; run the same command again to resume from what was saved", file=sys.stderr)
        return 130
    except OSError as exc:  # a read-only or full disk, a missing path: one line, not a traceback
        print(f"canary: {redact(os_error_line(exc))}", file=sys.stderr)
        return 2


def os_error_line(exc: OSError) -> str:
    """ "PATH: No space left on device (ENOSPC); ..." for an OSError the command cannot recover from."""
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    name = errno.errorcode.get(exc.errno or 0, "")
    hint = {
        errno.ENOSPC: "free space and rerun (finished work is kept; the run resumes)",
        errno.EDQUOT: "free space and rerun (finished work is kept; the run resumes)",
        errno.EROFS: "the file system is read-only: choose a writable directory",
        errno.EACCES: "no permission: choose a directory you can write, or fix its permissions",
        errno.EPERM: "no permission: choose a directory you can write, or fix its permissions",
    }.get(exc.errno or 0)
    return f"{where}{exc.strerror or exc}" + (f" ({name})" if name else "") + (f"; {hint}" if hint else "")
