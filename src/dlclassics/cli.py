"""The `dlclassics` command: list | run | runs | report | data.

User errors (UsageError, exit 2; RunError, exit 1) are printed as one line without a traceback, and
so are Ctrl-C and the operating system's refusals (a path that cannot be read or written, a full disk).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlclassics import __version__, registry
from dlclassics.config import describe
from dlclassics.data.registry import names as dataset_names
from dlclassics.errors import RunError, UsageError

if TYPE_CHECKING:
    from dlclassics.runs.request import RunRequest

DEFAULT_RUNS = Path("runs")
MAX_WORKERS = 64  # local processes; more is a typo, not a machine this runs on
MAX_PROCESSES = 1024  # --nproc (training processes on this machine) and --threads per process


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see 'dlclassics {self.prog.split()[-1]} --help')"
                         if " " in self.prog else f"{message} (see 'dlclassics --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dlclassics", description="Classic deep-learning course experiments.")
    parser.add_argument("--version", action="version", version=f"dlclassics {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    listing = commands.add_parser("list", help="list the experiments, or the options of one")
    listing.add_argument("experiment", nargs="?", help="show this experiment's options, their defaults and ranges")

    run = commands.add_parser("run", help="run an experiment", epilog=_run_epilog(),
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description="Run an experiment into runs/<id>/<time>-<id>/: model, figures, "
                                          "metrics and a report beside the source's numbers.")
    run.add_argument("experiment", help="the experiment's id (listed below)")
    run.add_argument("--recipe", choices=("seed", "tuned"), default="tuned",
                     help="seed = the source's hyperparameters; tuned (default) = ours, same or better, faster")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config option")
    run.add_argument("--config", type=Path, help="TOML file of option values")
    run.add_argument("--dataset", "--corpus", help="dataset (or text corpus) for experiments that accept several "
                     "(mnist, fashion-mnist, ...; topic-vae: manpages-dev, 20newsgroups, synthetic, ...)")
    run.add_argument("--epochs", type=int, help="training epochs (the main training of the experiment)")
    run.add_argument("--seed", type=int, help="seed of every random draw; the same seed gives the same numbers")
    run.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"),
                     help="where to compute (auto: CUDA, then Apple MPS, then the CPU)")
    run.add_argument("--quick", action="store_true", help="tiny smoke-test size")
    run.add_argument("--data-dir", type=Path, help="folder holding the datasets (or one dataset's files)")
    run.add_argument("--unverified", action="store_true",
                     help="accept data files that are not the official ones (your own IDX files); the run is "
                          "marked 'unverified, not comparable'")
    run.add_argument("--carve-test", type=float, default=0.0, metavar="FRACTION",
                     help="when only one split exists, carve a deterministic test split of this fraction")
    run.add_argument("--out", type=Path, default=DEFAULT_RUNS, help="root folder of run folders (default: runs)")
    run.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                     help="continue an interrupted run (default: the latest incomplete one)")
    run.add_argument("--workers", type=bounded_int(1, MAX_WORKERS), default=1,
                     help=f"local processes for hyperparameter searches (1 to {MAX_WORKERS})")
    run.add_argument("--nproc", type=bounded_int(1, MAX_PROCESSES), default=1, metavar="N",
                     help="train on N local processes with DistributedDataParallel (under torchrun, leave it out)")
    run.add_argument("--threads", type=bounded_int(1, MAX_PROCESSES), metavar="N",
                     help="torch threads per process (default: the cores divided by the local processes)")
    run.add_argument("--capture", choices=("auto", "on", "off"), default="auto",
                     help="capture the training step as CUDA graphs (auto: fits of 5,000+ steps on CUDA; off: eager)")
    run.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                     help="autocast of the training step on CUDA (auto: bf16 for conv nets; fp32: none)")
    run.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                     help="conv nets' weights in NHWC layout on CUDA (auto: on for conv nets; off: as built)")
    run.add_argument("--storage", help="Optuna database URL shared by workers on many machines")
    run.add_argument("--study", metavar="NAME",
                     help="join this existing study in --storage (the name another run printed and recorded) "
                          "instead of starting the run's own")
    run.add_argument("--from-run", "--backbone-run", dest="from_run", type=Path,
                     help="an earlier run folder this experiment builds on (cifar-transfer: its backbone)")
    run.add_argument("--weights", help="a pretrained weights file (cifar-transfer: torchvision's AlexNet)")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--no-site", action="store_true", help="do not refresh the results site (OUT/site) at the end")
    run.add_argument("--log", choices=("tensorboard",),
                     help="also log to TensorBoard: event files in the run folder's tensorboard/ "
                          "(needs the tensorboard extra)")
    run.add_argument("--mlflow", metavar="URI",
                     help="also log to this MLflow tracking store (http://host:5000, sqlite:///mlflow.db, ...): "
                          "one MLflow run per run, nested runs per search trial (needs the mlflow extra)")

    runs = commands.add_parser("runs", help="recent finished runs with their key metrics")
    runs.add_argument("experiment", nargs="?", help="only this experiment's runs")
    runs.add_argument("--out", type=Path, default=DEFAULT_RUNS, help="root folder of run folders (default: runs)")
    runs.add_argument("--limit", type=bounded_int(1, 1_000_000), default=20, help="at most this many runs (default: 20)")
    runs.add_argument("--markdown", action="store_true",
                      help="the latest run of each experiment as README results-table rows")

    report = commands.add_parser("report", help="build the results site: static HTML pages over all runs",
                                 description="Build a static site over every run (index, one page per run and "
                                             "per experiment); it works from file://. Every run refreshes it.")
    report.add_argument("--runs", type=Path, default=DEFAULT_RUNS, metavar="DIR",
                        help="root folder of run folders (default: runs)")
    report.add_argument("--out", type=Path, metavar="DIR",
                        help="the site's folder (default: site/ in the --runs folder)")
    report.add_argument("--open", action="store_true", help="open the site in the web browser")

    data = commands.add_parser("data", help="dataset status and download")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    status = data_commands.add_parser("status", help="where each dataset was found, per split")
    status.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all)")
    status.add_argument("--data-dir", type=Path, help="look only in this folder (DIR/<name>/ or DIR itself)")
    fetch = data_commands.add_parser("fetch", help="download a dataset into the user cache and verify it",
                                     description="Download a dataset and verify every file before keeping it.")
    fetch.add_argument("name", help=f"the dataset: {', '.join(dataset_names())}")
    fetch.add_argument("--to", type=Path, help="folder to download into (default: the user cache)")
    return parser


def bounded_int(low: int, high: int) -> Any:
    """An argparse type: an integer in [low, high], so a typo cannot start a thousand processes."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expects an integer from {low} to {high}; got {text!r}")
        return value
    return parse


RUN_EXAMPLES = """examples:
  dlclassics run fashion-mlp                         the tuned recipe (the quickstart's run)
  dlclassics run fashion-mlp --recipe seed           the source's hyperparameters
  dlclassics run mnist-mlp --quick                   a smoke-test size run
  dlclassics run vae --data-dir DIR --carve-test 0.2 only a test split in DIR: carve train/test from it
  dlclassics run mnist-mlp --data-dir DIR --unverified   your own IDX files (marked not comparable)
  dlclassics run loss-landscape --from-run runs/fashion-mlp/<run>
  dlclassics run fashion-mlp --resume                continue the latest interrupted run
  dlclassics list ID                                 an experiment's options, defaults and ranges"""


def _run_epilog() -> str:
    lines = [f"  {experiment_id:<22} {registry.title(experiment_id)}" for experiment_id in registry.EXPERIMENTS]
    return "experiments:\n" + "\n".join(lines) + "\n\n" + RUN_EXAMPLES


def command_list(args: argparse.Namespace) -> int:
    if args.experiment:
        module = registry.load(args.experiment)
        print(f"{args.experiment}: {module.TITLE}\n")
        print(f"  {'option':<20} {'type':<6} {'default':<14} {'valid':<26} description")
        for name, kind, default, valid, help_text in describe(module.Config):
            print(f"  {name:<20} {kind:<6} {default!s:<14} {valid:<26} {help_text}")
        seed = module.RECIPES.get("seed", {})
        print(f"\n  seed recipe: {', '.join(f'{k}={v}' for k, v in seed.items()) or '(same as defaults)'}")
        return 0
    for experiment_id in registry.EXPERIMENTS:
        print(f"{experiment_id:<22} {registry.title(experiment_id)}")
    return 0


def command_run(args: argparse.Namespace) -> int:
    with terminate_as_interrupt():
        return run_command(args)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or `kill`'s stop) ends a run as Ctrl-C does: one line, and a resumable folder."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a notebook's worker thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_request(args: argparse.Namespace) -> RunRequest:
    """The parsed `dlclassics run` arguments as the session's request (the Python API's too)."""
    from dlclassics.runs.request import RunRequest

    shortcuts = {name: getattr(args, name) for name in ("dataset", "epochs", "seed", "device", "weights")
                 if getattr(args, name) is not None}
    return RunRequest(
        experiment=args.experiment, recipe=args.recipe, quick=args.quick, config_file=args.config,
        options=shortcuts, assignments=args.set, data_dir=args.data_dir, carve_test=args.carve_test,
        unverified=args.unverified, out=args.out, resume=args.resume, workers=args.workers, nproc=args.nproc,
        threads=args.threads, storage=args.storage, study=args.study, from_run=args.from_run, quiet=args.quiet,
        log=args.log, mlflow=args.mlflow, argv=args.argv,
        accelerations={"capture": args.capture, "precision": args.precision, "channels_last": args.channels_last})


def run_command(args: argparse.Namespace) -> int:
    from dlclassics.runs.request import launches_processes, prepare, run_prepared

    prepared = prepare(run_request(args))
    if args.dry_run:
        import dataclasses

        print(json.dumps({"experiment": args.experiment, "recipe": args.recipe,
                          "config": dataclasses.asdict(prepared.config)}, indent=2))
        return 0
    if launches_processes(prepared):
        from dlclassics import distributed

        return distributed.launch(args.argv, args.nproc)
    report = run_prepared(prepared)
    if report is not None:
        print(report)
        if not args.no_site:
            from dlclassics import site

            print(site.refresh(args.out))
    return 0


def command_runs(args: argparse.Namespace) -> int:
    from dlclassics.runs.report import format_number
    from dlclassics.runs.results import list_runs, results_table

    found = list_runs(args.out, args.experiment)
    for reason in found.skipped:
        print(f"dlclassics: skipped {reason}", file=sys.stderr)
    rows = found.rows[: args.limit]
    if args.markdown:
        print(results_table(rows))
        return 0
    if not rows:
        print(f"no finished runs under {args.out}")
    for row in rows:
        summary = ", ".join(f"{k}={format_number(v)}" for k, v in key_metrics(row["metrics"]).items())
        print(f"{row['experiment']:<22} {Path(row['path']).name:<26} {summary}")
    return 0


def key_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """What a listing shows of a run: its first five test, validation and best metrics and its wall time."""
    keys = [k for k in metrics if str(k).startswith(("test_", "val_", "best_")) or k == "wall_time_s"][:5]
    return {key: metrics[key] for key in keys}


def command_report(args: argparse.Namespace) -> int:
    from dlclassics import site

    index = site.build(args.runs, args.out)
    print(index)
    if args.open:
        site.open_in_browser(index)
    return 0


def command_data(args: argparse.Namespace) -> int:
    from dlclassics.data import registry

    if args.data_command == "fetch":
        from dlclassics.data.fetch import fetch

        print(f"{args.name}: downloaded and verified in {fetch(args.name, args.to)}")
        return 0
    bad = 0
    for name in args.names or registry.names():
        folder, splits = registry.status(name, args.data_dir)
        for split in splits:
            print(f"{name:<14} {split.split:<6} {split.state:<10} {split.detail}")
            bad += split.state in ("damaged", "unofficial")
        if folder is not None and {s.state for s in splits} == {"ok", "missing"}:
            print(f"{name:<14} {'':<6} {'partial':<10} only some splits are present; use --carve-test to split them")
    return 1 if bad else 0


def parse(argv: list[str]) -> argparse.Namespace:
    """The command's arguments, with the words themselves as `argv` (what --nproc hands to each process
    and what the resume hint repeats)."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        handler = {"list": command_list, "run": command_run, "runs": command_runs, "report": command_report,
                   "data": command_data}
        return handler[args.command](args)
    except (UsageError, RunError) as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", RunError.exit_code)
    except BrokenPipeError:  # `dlclassics list | head`
        return 0
    except OSError as exc:  # the operating system refused a path: unreadable, read-only, full disk...
        return _fail(os_error_message(exc), RunError.exit_code)


def os_error_message(exc: OSError) -> str:
    """The one line for a path the operating system refused: what it said, and which path."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}; check that path, its permissions and the free space"


def _fail(message: str, code: int) -> int:
    rank = os.environ.get("RANK", "0")  # set by torchrun and --nproc; only rank 0 speaks for the group
    where = f" (rank {rank})" if rank != "0" else ""
    print(f"dlclassics: error{where}: {message}", file=sys.stderr)
    return code
