"""S0's two files, read with `weights_only=True` only: a data file (`torch.save({"x": [N, 784],
"energy": [N, 1]})`) and a state-dict file (the regressor's weights, or our exact energy's). A file
holding any pickled Python object is refused, because unpickling it could run arbitrary code. The
models these state dicts fit are built in `training.energy`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dlclassics.errors import RunError, UsageError
from dlclassics.files import atomic_torch_save, load_tensor_file

FEATURES = 784  # S0's states are flattened 28x28 images


def _safe_load(path: Path | str, what: str, expected: str) -> Any:
    """torch.load with weights_only=True (`files.load_tensor_file`); a path that does not exist is a usage error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{what} file {path} does not exist")
    return load_tensor_file(path, expected)


DATA_FORMAT = "torch.save({'x': float tensor [N, 784], 'energy': float tensor [N, 1]})"



def load_energy_data(path: Path | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's data file: x [N, 784] and energy [N, 1], as float32."""
    data = _safe_load(path, "energy data", DATA_FORMAT)
    if not isinstance(data, Mapping) or not {"x", "energy"} <= set(data):
        keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise RunError(f"{path} must hold a dict with keys 'x' and 'energy'; found {keys}")
    x, energy = data["x"], data["energy"]
    if not (isinstance(x, torch.Tensor) and isinstance(energy, torch.Tensor)):
        raise RunError(f"{path}: 'x' and 'energy' must be tensors")
    if x.layout != torch.strided or energy.layout != torch.strided:
        raise RunError(f"{path}: 'x' and 'energy' must be dense tensors; save x.to_dense() and energy.to_dense()")
    if x.ndim != 2 or x.shape[1] != FEATURES or energy.shape[:1] != x.shape[:1] or energy.numel() != len(x):
        raise RunError(f"{path}: expected x [N, {FEATURES}] and energy [N, 1]; found x {list(x.shape)} "
                       f"and energy {list(energy.shape)}")
    if len(x) == 0:
        raise RunError(f"{path} holds no examples (x is [0, {FEATURES}])")
    x, energy = x.float(), energy.reshape(-1, 1).float()
    if not (x.isfinite().all() and energy.isfinite().all()):
        raise RunError(f"{path}: 'x' and 'energy' must hold finite numbers; found NaN or infinity")
    return x, energy


def save_energy_data(path: Path, x: torch.Tensor, energy: torch.Tensor) -> None:
    """Write (x, energy) in the source's data-file format."""
    atomic_torch_save(path, {"x": x.detach().float().cpu(), "energy": energy.detach().float().reshape(-1, 1).cpu()})


def load_state_dict(path: Path | str, what: str, expected: str) -> Mapping[str, torch.Tensor]:
    """A state dict (names -> tensors) from `path`; `what` names the file in messages, `expected` its format."""
    state = _safe_load(path, what, expected)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RunError(f"{path} must hold a state dict (names -> tensors); expected {expected}")
    return state
