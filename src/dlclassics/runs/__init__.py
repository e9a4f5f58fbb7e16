"""Runs: a session that takes an experiment from its start to its report, and the folders runs leave.

- `session`: the `Run` an experiment receives (data, training, timers, figures, history, model);
- `request`: a command checked and resolved before any folder exists, then run (here or on N processes);
- `lifecycle`: the run's life in its folder (config.json, start, resume checks, interruption, finish);
- `results`: the finished runs under a folder, listed and as the README's results table;
- `trackers`: TensorBoard and MLflow, fed by the session;
- `folder`: a run folder's name, standard files, lock and provenance (code, machine, load);
- `report`: references to the source's numbers, verdicts and report.md;
- `contract`: runs that build on runs (`--from-run`), finished runs under a folder;
- `products`: the names of files and metrics a producer writes for its consumers.

The names an experiment module needs are importable from `dlclassics.runs` itself.
"""

from dlclassics.runs.contract import FinishedRun, Upstream
from dlclassics.runs.folder import CONFIG, HISTORY, METRICS, MODEL
from dlclassics.runs.report import Reference, markdown_table
from dlclassics.runs.session import Run

__all__ = ["CONFIG", "HISTORY", "METRICS", "MODEL", "FinishedRun", "Reference", "Run", "Upstream",
           "markdown_table"]
