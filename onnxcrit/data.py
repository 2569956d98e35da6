"""Loading `.npz` data files (arrays `x` and `y`) and checking them against the model's input."""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import numpy as np

from .errors import InputError
from .ir import Network


@dataclass
class Dataset:
    """Inputs shaped [N, *input_shape] in the model's input dtype, and integer labels (or None)."""

    x: np.ndarray
    y: np.ndarray | None
    source: str




def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise InputError(f"{what} file {path}: no such file")
    if not path.is_file():
        raise InputError(f"{what} file {path}: not a file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{what} file {path}: not an .npz archive (expected arrays 'x' and 'y' saved with "
                         "numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception as exc:
        raise InputError(f"{what} file {path}: cannot read ({type(exc).__name__}: {exc})") from None


def load_data(source, net: Network, *, need_labels: bool = True, what: str = "data") -> Dataset:
    """Read and check a data set for `net`: a .npz path, an (x, y) tuple, a dict with 'x'/'y', or a Dataset.

    x may be stored under the model's input name instead of 'x'. Raises InputError with one line.
    """
    if isinstance(source, Dataset):
        arrays, label = {"x": source.x, "y": source.y}, source.source
    elif isinstance(source, (str, os.PathLike)):
        arrays, label = _read_npz(Path(source), what), f"{what} file {source}"
    elif isinstance(source, tuple):
        if len(source) != 2:
            raise InputError(f"{what}: expected an (x, y) pair, got a tuple of {len(source)}")
        arrays, label = {"x": source[0], "y": source[1]}, what
    elif isinstance(source, dict):
        arrays, label = dict(source), what
    elif isinstance(source, np.ndarray):
        arrays, label = {"x": source, "y": None}, what
    else:
        raise InputError(f"{what}: expected a .npz path, an (x, y) pair or a dict, got {type(source).__name__}")

    x = arrays.get("x")
    if x is None:
        x = arrays.get(net.input_name)
    if x is None:
        found = ", ".join(sorted(k for k in arrays if arrays[k] is not None)) or "none"
        raise InputError(f"{label}: no array 'x' (or '{net.input_name}'); arrays found: {found}")
    x = np.asarray(x)
    x = _check_x(x, net, label)
    y = arrays.get("y")
    if y is None:
        if need_labels:
            raise InputError(f"{label}: no array 'y' with the labels, which this command needs")
    else:
        y = _check_y(np.asarray(y), len(x), net.num_classes, label)
    return Dataset(x=x, y=y, source=label)


def _check_x(x: np.ndarray, net: Network, label: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise InputError(f"{label}: array 'x' has dtype {x.dtype}; numbers are needed")
    expected = tuple(net.input_shape)
    if x.ndim == 0 or len(x) == 0:
        raise InputError(f"{label}: array 'x' holds no samples (shape {list(x.shape)})")
    if tuple(x.shape[1:]) != expected:
        hint = ""
        if x.ndim == len(expected) + 1 and sorted(x.shape[1:]) == sorted(expected):
            perm = next(p for p in permutations(range(len(expected))) if tuple(x.shape[1:][i] for i in p) == expected)
            hint = (f"; it looks like a different layout (e.g. NHWC given to an NCHW model): "
                    f"transpose with x.transpose(0, {', '.join(str(p + 1) for p in perm)})")
        elif int(np.prod(x.shape[1:])) == int(np.prod(expected)):
            hint = f"; the sizes agree: reshape with x.reshape(-1, {', '.join(map(str, expected))})"
        raise InputError(f"{label}: array 'x' has shape {list(x.shape)} but the model's input "
                         f"'{net.input_name}' expects [N, {', '.join(map(str, expected))}]{hint}")
    x = x.astype(net.input_dtype, copy=False)
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise InputError(f"{label}: array 'x' has {bad} NaN or infinite values")
    return x


def _check_y(y: np.ndarray, n: int, classes: int, label: str) -> np.ndarray:
    if y.dtype.kind not in "biuf":
        raise InputError(f"{label}: array 'y' has dtype {y.dtype}; integer class labels are needed")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise InputError(f"{label}: array 'y' has shape {list(y.shape)}; expected [{n}] to match 'x'")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (y == np.round(y))):
        raise InputError(f"{label}: array 'y' holds non-integer labels")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= classes):
        raise InputError(f"{label}: labels range over {int(y.min())}..{int(y.max())} but the model has "
                         f"{classes} classes (0..{classes - 1})")
    return y
