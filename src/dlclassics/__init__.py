"""dlclassics: the classic deep-learning course experiments as one tested library and CLI.

The Python API (`dlclassics.api`: `run`, `list_experiments`, `list_runs`, `Result`) is imported on first
use, so `import dlclassics` and `dlclassics list` stay quick and do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

API = ("run", "list_experiments", "list_runs", "Result")
__all__ = [*API, "__version__"]


def __getattr__(name: str) -> Any:
    """`dlclassics.run` and the other names of the API, from `dlclassics.api` (PEP 562)."""
    if name in API:
        return getattr(importlib.import_module("dlclassics.api"), name)
    raise AttributeError(f"module 'dlclassics' has no attribute {name!r}")
