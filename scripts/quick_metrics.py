"""Every registered experiment's --quick metrics on generated data, to show a change keeps the numbers.

    .venv/bin/python scripts/quick_metrics.py before.json          # run all, write {experiment: metrics}
    .venv/bin/python scripts/quick_metrics.py after.json
    .venv/bin/python scripts/quick_metrics.py --compare before.json after.json

Timing fields (`*time*`, `*_s`) are left out: they differ between any two runs. The data are the test
suite's generated files in each dataset's official layout; consumers run on their producer's run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")  # a run folder's name differs between any two runs


def is_timing(key: str) -> bool:
    return "time" in key or key.endswith("_s") or key.endswith("per_s")


def without_timing(value, root: str):
    """`value` without timing fields, with the temporary folder's path and run ids masked."""
    if isinstance(value, dict):
        return {k: without_timing(v, root) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, str):
        return RUN_ID.sub("<run id>", value.replace(root, "<tmp>"))
    return value


def measure(only: set[str] | None = None) -> dict[str, dict]:
    """{experiment (or "consumer from producer"): metrics}; `only` limits it to those experiments (their
    producers run too, unrecorded)."""
    import pytest
    from conftest import generated_data_for_every_experiment, run_quick
    from test_smoke_all import NEEDS_A_RUN, PRODUCERS

    from dlclassics import registry

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as monkeypatch:
        root = Path(tmp)
        data = generated_data_for_every_experiment(root, monkeypatch)
        folders: dict[str, Path] = {}

        def run(experiment: str, key: str, *extra: str) -> Path:
            folder = run_quick(experiment, data, root / "runs" / key, *extra)
            results[key] = without_timing(json.loads((folder / "metrics.json").read_text()), tmp)
            return folder

        wanted = set(registry.EXPERIMENTS) if only is None else set(only)
        needed_by = {consumer: producer for consumer, producer in PRODUCERS.items() if consumer in wanted}
        needed_by |= {experiment: needs[1] for experiment, needs in NEEDS_A_RUN.items() if experiment in wanted}
        for experiment in registry.EXPERIMENTS:
            if experiment not in wanted and experiment not in needed_by.values():
                continue
            option, needed = NEEDS_A_RUN.get(experiment, ("", None))
            extra = (option, str(folders[needed])) if needed else ()
            folders[experiment] = run(experiment, experiment, *extra)
            print(f"{experiment}: done", file=sys.stderr)
        for consumer, producer in sorted(PRODUCERS.items()):
            if consumer in wanted:
                run(consumer, f"{consumer} from {producer}", "--from-run", str(folders[producer]))
    if only is not None:
        results = {key: value for key, value in results.items() if key.split(" from ")[0] in only}
    return results


def compare(before: dict, after: dict) -> int:
    differing = 0
    for key in sorted(set(before) | set(after)):
        if before.get(key) == after.get(key):
            print(f"identical  {key}")
            continue
        differing += 1
        old, new = before.get(key) or {}, after.get(key) or {}
        changed = [name for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
        print(f"DIFFERENT  {key}: {', '.join(f'{n} {old.get(n)!r} -> {new.get(n)!r}' for n in changed)}")
    print(f"{len(set(before) | set(after)) - differing} identical, {differing} different")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--compare", action="store_true", help="compare two files written by this script")
    parser.add_argument("--only", help="comma-separated experiments (default: all); with --compare, compare only these")
    args = parser.parse_args()
    if args.compare:
        only = set(args.only.split(",")) if args.only else None
        before, after = ({key: value for key, value in json.loads(path.read_text()).items()
                          if only is None or key.split(" from ")[0] in only} for path in args.files)
        return compare(before, after)
    only = set(args.only.split(",")) if args.only else None
    args.files[0].write_text(json.dumps(measure(only), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
