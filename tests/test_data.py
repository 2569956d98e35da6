"""Data files: loading, casting and one-line refusals."""
from __future__ import annotations

import numpy as np
import pytest

from onnxcrit.data import load_data
from onnxcrit.errors import InputError
from onnxcrit.frontend import load_network

CNN = "models/digits_cnn.onnx"


@pytest.fixture(scope="module")
def cnn_net():
    return load_network(CNN)[0]


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_loads_the_bundled_files(cnn_net):
    data = load_data("models/digits_cnn_eval.npz", cnn_net)
    assert data.x.dtype == np.float32 and data.x.shape == (450, 1, 8, 8)
    assert data.y.dtype == np.int64 and set(np.unique(data.y)) == set(range(10))


def test_input_name_instead_of_x_and_cast(tmp_path, cnn_net):
    x = np.zeros((3, 1, 8, 8), dtype=np.uint8)
    data = load_data(_save(tmp_path / "d.npz", input=x, y=np.array([0, 1, 2])), cnn_net)
    assert data.x.dtype == np.float32


@pytest.mark.parametrize("arrays, pattern", [
    (dict(y=np.zeros(3)), r"no array 'x'"),
    (dict(x=np.zeros((3, 1, 8, 8))), r"no array 'y'"),
    (dict(x=np.zeros((3, 8, 8, 1)), y=np.zeros(3)), r"\[3, 8, 8, 1\].*\[N, 1, 8, 8\].*NHWC"),
    (dict(x=np.zeros((3, 64)), y=np.zeros(3)), r"\[3, 64\].*reshape"),
    (dict(x=np.zeros((3, 2, 8, 8)), y=np.zeros(3)), r"expects \[N, 1, 8, 8\]"),
    (dict(x=np.array([["a"] * 64] * 3).reshape(3, 1, 8, 8), y=np.zeros(3)), r"dtype <U1"),
    (dict(x=np.full((3, 1, 8, 8), np.nan), y=np.zeros(3)), r"NaN or infinite"),
    (dict(x=np.zeros((3, 1, 8, 8)), y=np.array([0, 1, 10])), r"model has 10 classes"),
    (dict(x=np.zeros((3, 1, 8, 8)), y=np.array([0, 1])), r"expected \[3\]"),
    (dict(x=np.zeros((3, 1, 8, 8)), y=np.array([0.5, 1, 2])), r"non-integer"),
    (dict(x=np.zeros((0, 1, 8, 8)), y=np.zeros(0)), r"no samples"),
])
def test_refusals(tmp_path, cnn_net, arrays, pattern):
    with pytest.raises(InputError, match=pattern) as info:
        load_data(_save(tmp_path / "d.npz", **arrays), cnn_net)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path, cnn_net):
    with pytest.raises(InputError, match="no such file"):
        load_data(tmp_path / "missing.npz", cnn_net)
    (tmp_path / "t.npz").write_text("not a zip")
    with pytest.raises(InputError, match="not an .npz archive"):
        load_data(tmp_path / "t.npz", cnn_net)
    with pytest.raises(InputError, match="not a file"):
        load_data(tmp_path, cnn_net)


def test_labels_optional_when_not_needed(tmp_path, cnn_net):
    data = load_data(_save(tmp_path / "d.npz", x=np.zeros((2, 1, 8, 8))), cnn_net, need_labels=False)
    assert data.y is None
