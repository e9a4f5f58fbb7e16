"""The `dlclassics` command: list | run | runs | data.

User errors (UsageError, exit 2; RunError, exit 1) are printed as one line without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlclassics import __version__, registry
from dlclassics.config import describe, load_toml, parse_assignments, resolve
from dlclassics.errors import RunError, UsageError

if TYPE_CHECKING:  # imported when used: they import torch
    from dlclassics.distributed import Placement
    from dlclassics.runs import Run

DEFAULT_RUNS = Path("runs")


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
    listing.add_argument("experiment", nargs="?")

    run = commands.add_parser("run", help="run an experiment")
    run.add_argument("experiment")
    run.add_argument("--recipe", choices=("seed", "tuned"), default="tuned",
                     help="seed = the source's hyperparameters; tuned (default) = ours, same or better, faster")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config option")
    run.add_argument("--config", type=Path, help="TOML file of option values")
    run.add_argument("--dataset", help="dataset for experiments that accept several (mnist, fashion-mnist, ...)")
    run.add_argument("--epochs", type=int)
    run.add_argument("--seed", type=int)
    run.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    run.add_argument("--quick", action="store_true", help="tiny smoke-test size")
    run.add_argument("--data-dir", type=Path, help="folder holding the datasets (or one dataset's files)")
    run.add_argument("--carve-test", type=float, default=0.0, metavar="FRACTION",
                     help="when only one split exists, carve a deterministic test split of this fraction")
    run.add_argument("--out", type=Path, default=DEFAULT_RUNS, help="root folder of run folders (default: runs)")
    run.add_argument("--resume", nargs="?", const="latest", metavar="RUN_DIR",
                     help="continue an interrupted run (default: the latest incomplete one)")
    run.add_argument("--workers", type=int, default=1, help="local processes for hyperparameter searches")
    run.add_argument("--nproc", type=int, default=1, metavar="N",
                     help="train on N local processes with DistributedDataParallel (under torchrun, leave it out)")
    run.add_argument("--threads", type=int, metavar="N",
                     help="torch threads per process (default: the cores divided by the local processes)")
    run.add_argument("--storage", help="Optuna database URL shared by workers on many machines")
    run.add_argument("--from-run", type=Path, help="an earlier run folder this experiment builds on")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and stop")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    runs = commands.add_parser("runs", help="recent finished runs with their key metrics")
    runs.add_argument("experiment", nargs="?")
    runs.add_argument("--out", type=Path, default=DEFAULT_RUNS)
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--markdown", action="store_true",
                      help="the latest run of each experiment as README results-table rows")

    data = commands.add_parser("data", help="dataset status and download")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    status = data_commands.add_parser("status", help="where each dataset was found, per split")
    status.add_argument("names", nargs="*")
    status.add_argument("--data-dir", type=Path)
    fetch = data_commands.add_parser("fetch", help="download a dataset into the user cache and verify it")
    fetch.add_argument("name")
    fetch.add_argument("--to", type=Path, help="folder to download into (default: the user cache)")
    return parser


def config_layers(module: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Override layers in precedence order: recipe, quick size, TOML file, shortcut flags, --set."""
    shortcuts = {name: getattr(args, name) for name in ("dataset", "epochs", "seed", "device")
                 if getattr(args, name) is not None}
    return [module.RECIPES.get(args.recipe, {}),
            {**module.QUICK, "quick": True} if args.quick else {},
            load_toml(args.config) if args.config else {},
            shortcuts,
            parse_assignments(args.set)]


def command_list(args: argparse.Namespace) -> int:
    if args.experiment:
        module = registry.load(args.experiment)
        print(f"{args.experiment}: {module.TITLE}\n")
        for name, kind, default, help_text in describe(module.Config):
            print(f"  {name:<22} {kind:<6} {default!s:<12} {help_text}")
        seed = module.RECIPES.get("seed", {})
        print(f"\n  seed recipe: {', '.join(f'{k}={v}' for k, v in seed.items()) or '(same as defaults)'}")
        return 0
    for experiment_id in registry.EXPERIMENTS:
        print(f"{experiment_id:<22} {registry.load(experiment_id).TITLE}")
    return 0


def command_run(args: argparse.Namespace) -> int:
    from dlclassics import distributed

    module = registry.load(args.experiment)
    config = resolve(module.Config, *config_layers(module, args))
    if not 0.0 <= args.carve_test < 1.0:
        raise UsageError(f"--carve-test must be a fraction in [0, 1); got {args.carve_test}")
    place = distributed.placement()
    check_processes(args, place)
    if args.dry_run:
        import dataclasses

        print(json.dumps({"experiment": args.experiment, "config": dataclasses.asdict(config)}, indent=2))
        return 0
    # Ranks other than 0 learn from rank 0 whether the run resumes (their machine may hold no run folders).
    resume_dir = resume_folder(args) if place is None or place.rank == 0 else None
    if args.nproc > 1 and place is None:
        return distributed.launch(args.argv, args.nproc)
    report = execute(module, args.experiment, config, args, resume_dir)
    if report is not None:
        print(report)
    return 0


def check_processes(args: argparse.Namespace, place: Placement | None) -> None:
    """--nproc against torchrun's variables, and against the search options that start processes of their own."""
    if args.nproc < 1:
        raise UsageError(f"--nproc must be at least 1; got {args.nproc}")
    if place is not None and args.nproc not in (1, place.local_world_size):
        raise UsageError(f"--nproc {args.nproc}, but torchrun started {place.local_world_size} processes on this "
                         "machine; leave --nproc out under torchrun")
    if (place.world_size if place else args.nproc) > 1 and (args.workers > 1 or args.storage):
        raise UsageError("--workers and --storage run search trials in processes of their own; with --nproc or "
                         "torchrun every trial trains on all the processes instead: leave them out")


def resume_folder(args: argparse.Namespace) -> Path | None:
    """The run folder `--resume` names (the latest interrupted one by default), checked; None without --resume."""
    from dlclassics.runs import latest_incomplete

    resume_dir = None
    if args.resume == "latest":
        resume_dir = latest_incomplete(args.out, args.experiment)
        if resume_dir is None:
            raise UsageError(f"--resume: no interrupted run of '{args.experiment}' under {args.out}")
    elif args.resume:
        resume_dir = Path(args.resume)
        if not (resume_dir / "config.json").is_file():
            raise UsageError(f"--resume: {resume_dir} is not a run folder")
    return resume_dir


def execute(module: Any, experiment_id: str, config: Any, args: argparse.Namespace,
            resume_dir: Path | None) -> Path | None:
    """Run one experiment into its run folder and return the report's path.

    In a process group (--nproc, torchrun) rank 0 does this; the other ranks run the experiment in a
    scratch copy of rank 0's folder and return None (see `distributed`).
    """
    from dlclassics import distributed
    from dlclassics.engine import resolve_device

    place = distributed.placement()
    threads = distributed.use_threads(place.local_world_size if place else 1, args.threads)
    device = resolve_device(config.device)
    if place is None:
        return record_run(module, experiment_id, config, args, resume_dir, device, threads)
    with distributed.process_group(place, device) as device:
        if place.rank == 0:
            return record_run(module, experiment_id, config, args, resume_dir, device, threads)
        try:
            with distributed.scratch_run_folder() as (folder, resume):
                module.run(config, new_run(experiment_id, folder, config, device, args, resume, threads))
        except KeyboardInterrupt:  # rank 0 says how to resume
            raise RunError("interrupted") from None
        return None


def new_run(experiment_id: str, folder: Path, config: Any, device: Any, args: argparse.Namespace, resume: bool,
            threads: int) -> Run:
    """What the experiment's `run` receives; ranks other than 0 stay quiet."""
    from dlclassics import distributed
    from dlclassics.runs import Run

    return Run(experiment=experiment_id, dir=folder, config=config, device=device, data_dir=args.data_dir,
               carve_test=args.carve_test, quiet=args.quiet or distributed.rank() > 0, resume=resume,
               workers=args.workers, storage=args.storage, from_run=args.from_run, threads=threads,
               world_size=distributed.world_size())


def record_run(module: Any, experiment_id: str, config: Any, args: argparse.Namespace, resume_dir: Path | None,
               device: Any, threads: int) -> Path:
    """Run the experiment into a new run folder (or `resume_dir`): config.json, metrics, report."""
    from dlclassics import distributed
    from dlclassics.runs import atomic_write_json, config_record, finish, new_run_dir, write_report

    folder = resume_dir or new_run_dir(args.out, experiment_id)
    distributed.send_run_folder(folder, resume_dir is not None)
    run = new_run(experiment_id, folder, config, device, args, resume_dir is not None, threads)
    if config.quick:
        run.mark_not_comparable("--quick: a smoke-test size run, not comparable with the source")
    atomic_write_json(folder / "config.json", config_record(run))
    started = time.perf_counter()
    try:
        metrics = module.run(config, run)
    except (KeyboardInterrupt, RunError) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        if not _resumable(folder):  # nothing worth keeping: leave no folder behind
            shutil.rmtree(folder, ignore_errors=True)
            raise RunError(reason) from None
        raise RunError(f"{reason}; continue with: dlclassics run {experiment_id} --resume {folder}") from None
    metrics = {**metrics, "wall_time_s": round(time.perf_counter() - started, 2)}
    atomic_write_json(folder / "metrics.json", metrics)
    write_report(run, module.TITLE, metrics, module.REFERENCES)
    return finish(run) / "report.md"


def _resumable(folder: Path) -> bool:
    """An interrupted run is worth resuming once it has a checkpoint or a search journal."""
    return any(folder.glob("checkpoint*.pt")) or (folder / "study.journal").exists()


def command_runs(args: argparse.Namespace) -> int:
    from dlclassics.runs import format_number, list_runs

    rows = list_runs(args.out, args.experiment)[: args.limit]
    if args.markdown:
        print(results_table(rows))
        return 0
    if not rows:
        print(f"no finished runs under {args.out}")
    for row in rows:
        keys = [k for k in row["metrics"] if k.startswith(("test_", "val_", "best_")) or k == "wall_time_s"][:5]
        summary = ", ".join(f"{k}={format_number(row['metrics'][k])}" for k in keys)
        print(f"{row['experiment']:<22} {Path(row['path']).name:<26} {summary}")
    return 0


def results_table(rows: list[dict[str, Any]]) -> str:
    """One Markdown row per reference of the newest run of each experiment (rows are newest first)."""
    from dlclassics.runs import format_number

    lines = ["| experiment | what | source | ours | verdict | wall time | machine |", "|---|---|---|---|---|---|---|"]
    seen = set()
    for row in rows:
        folder = Path(row["path"])
        if row["experiment"] in seen or not (folder / "references.json").is_file():
            continue
        seen.add(row["experiment"])
        record = json.loads((folder / "config.json").read_text())
        machine = f"{record['machine']['processor']}, {record['machine']['cpu_count']} cores, {record['device']}"
        for ref in json.loads((folder / "references.json").read_text()):
            lines.append(f"| {row['experiment']} | {ref['what']} | {format_number(ref['source'])} | "
                         f"{format_number(ref['ours'])} | {ref['verdict']} | "
                         f"{row['metrics']['wall_time_s']:.0f} s | {machine} |")
    return "\n".join(lines)


def command_data(args: argparse.Namespace) -> int:
    from dlclassics.data import images

    if args.data_command == "fetch":
        from dlclassics.data.fetch import fetch

        print(f"{args.name}: downloaded and verified in {fetch(args.name, args.to)}")
        return 0
    bad = 0
    for name in args.names or list(images.IMAGE_DATASETS):
        folder, splits = images.status(name, args.data_dir)
        for split in splits:
            print(f"{name:<14} {split.split:<6} {split.state:<8} {split.detail}")
            bad += split.state == "corrupt"
        if folder is not None and {s.state for s in splits} == {"ok", "missing"}:
            print(f"{name:<14} {'':<6} partial  only some splits are present; use --carve-test to split them")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # what --nproc hands to each process
        handler = {"list": command_list, "run": command_run, "runs": command_runs, "data": command_data}
        return handler[args.command](args)
    except (UsageError, RunError) as exc:
        rank = os.environ.get("RANK", "0")  # set by torchrun and --nproc; only rank 0 speaks for the group
        where = f" (rank {rank})" if rank != "0" else ""
        print(f"dlclassics: error{where}: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `dlclassics list | head`
        return 0
