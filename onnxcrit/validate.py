"""Checks with onnx.checker and onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def session(model: onnx.ModelProto | str, threads: int = 1) -> ort.InferenceSession:
    """A CPU onnxruntime session with a fixed thread count (deterministic timings and results)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model whose graph outputs are exactly `names` (e.g. to read the logits under a tail)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name: o for o in copy.graph.output}
    del copy.graph.output[:]
    for name in names:
        copy.graph.output.append(existing.get(name) or onnx.helper.make_empty_tensor_value_info(name))
    return copy


def run_tensors(model: onnx.ModelProto, input_name: str, x: np.ndarray, names: list[str],
                dtype=np.float32) -> list[np.ndarray]:
    """Values of the named tensors for input x, computed by onnxruntime."""
    sess = session(with_outputs(model, names))
    return sess.run(names, {input_name: np.asarray(x, dtype=dtype)})
