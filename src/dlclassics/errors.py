"""The two kinds of failure a user can meet, each with its exit code.

The CLI catches these and prints one line; anything else is a bug and keeps its traceback.
"""


class UsageError(Exception):
    """The command line, a config value or an experiment id is wrong (exit code 2)."""

    exit_code = 2


class RunError(Exception):
    """The run could not finish: missing or corrupt data, a diverging loss... (exit code 1)."""

    exit_code = 1


class LostResource(RunError):
    """Something the run relies on went away (another training process, the study's database): the work
    done so far is kept in the run folder (or the database) to resume once it is back (exit code 1)."""
