"""Writing models: atomically, deterministically, with external data when asked or when the model is too big.

A model is written to temporary files in the target folder and moved into place with `os.replace`, so a
failure leaves nothing behind and a reader never sees half a file. External data goes to one file named
`<output file name>.data` next to the output.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

from .frontend import stored_tensors

# protobuf cannot serialise a message of 2 GiB or more; stay clear of it. Tests lower this.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**25
# a tensor goes to the external file when it is a float tensor of rank >= 2 (a weight) or this big
EXTERNAL_TENSOR_MIN_BYTES = 1024
# tensors of at least ALIGN_THRESHOLD bytes start on an ALIGN_LARGE boundary (lets onnxruntime map them)
ALIGN_THRESHOLD = 1 << 20
ALIGN_LARGE = 1 << 16
ALIGN_SMALL = 16

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def has_external_data(path: str | os.PathLike) -> bool:
    """True when the ONNX file at `path` keeps any tensor in an external file."""
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored_tensors(model))


def serialized_size(model: onnx.ModelProto) -> int:
    """Bytes the model would take as one protobuf (estimated from its tensors when protobuf cannot tell)."""
    try:
        return model.ByteSize()
    except Exception:  # noqa: BLE001 - very large messages on some protobuf backends
        return sum(len(t.raw_data) for t in stored_tensors(model))


def needs_external_data(model: onnx.ModelProto) -> bool:
    return serialized_size(model) > EXTERNAL_DATA_THRESHOLD


def write_model(model: onnx.ModelProto, path: str | os.PathLike, *, external_data: bool | None = None,
                input_path: str | os.PathLike | None = None) -> Path:
    """Write `model` to `path` atomically; returns the path.

    external_data: True writes weights to `<name>.data` next to the output, False keeps them inline, None
    decides by size (external above EXTERNAL_DATA_THRESHOLD). Refuses to write over `input_path` or its
    external data. The same model always gives the same bytes.
    """
    path = Path(path)
    if external_data is None:
        external_data = needs_external_data(model)
    elif not external_data and needs_external_data(model):
        raise ValueError(f"{path}: the model is too big for one protobuf file; it needs external data")
    data_name = path.name + ".data"
    targets = [path.resolve()] + ([(path.parent / data_name).resolve()] if external_data else [])
    if input_path is not None:
        protected = {Path(input_path).resolve(), *_external_files(Path(input_path))}
        clash = [str(t) for t in targets if t in protected]
        if clash:
            raise ValueError(f"refusing to write over the input model ({', '.join(clash)})")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    temps: list[str] = []
    try:
        model_tmp = _temp_in(folder, path.name, temps)
        if external_data:
            data_tmp = _temp_in(folder, data_name, temps)
            out = _to_external(model, data_name, data_tmp)
        else:
            out = model
        with open(model_tmp, "wb") as f:
            f.write(out.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        if external_data:
            os.replace(data_tmp, folder / data_name)
            temps.remove(data_tmp)
        os.replace(model_tmp, path)
        temps.remove(model_tmp)
    finally:
        for leftover in temps:
            try:
                os.unlink(leftover)
            except FileNotFoundError:
                pass
    return path


def _temp_in(folder: Path, name: str, temps: list[str]) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    temps.append(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written model gets the usual permissions
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _external_files(path: Path) -> list[Path]:
    """The external data files a model file refers to (none if it is not a readable model)."""
    if not path.is_file():
        return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not our business here whether the input is valid
        return []
    files = set()
    for t in stored_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            files.add((path.parent / info.get("location", "")).resolve())
    return sorted(files)


def _goes_external(tensor: onnx.TensorProto) -> bool:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raise ValueError(f"tensor '{tensor.name}' still points to external data; load it before writing")
    nbytes = len(tensor.raw_data) if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).nbytes
    return (tensor.data_type in _FLOATS and len(tensor.dims) >= 2) or nbytes >= EXTERNAL_TENSOR_MIN_BYTES


def _to_external(model: onnx.ModelProto, data_name: str, data_path: str) -> onnx.ModelProto:
    """A copy of the model whose initializers live in `data_path` (recorded as `data_name`)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    offset = 0
    with open(data_path, "wb") as f:
        for tensor in out.graph.initializer:
            if not _goes_external(tensor):
                continue
            if not tensor.HasField("raw_data"):  # typed fields (float_data, ...) -> raw bytes
                raw = numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name).raw_data
                for typed in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(typed)
                tensor.raw_data = raw
            raw = tensor.raw_data
            align = ALIGN_LARGE if len(raw) >= ALIGN_THRESHOLD else ALIGN_SMALL
            pad = (-offset) % align
            f.write(b"\0" * pad)
            offset += pad
            f.write(raw)
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.ClearField("raw_data")
            offset += len(raw)
        f.flush()
        os.fsync(f.fileno())
    return out
