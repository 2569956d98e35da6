"""What the benchmarks share: where they write their tables (benchmarks/results/, one file each, also printed),
and accuracy of a model computed by onnxruntime or by the IR's numpy forward pass."""
from __future__ import annotations

import os

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BATCH = 256  # onnxruntime runs in chunks of this many samples


def publish(path: str | os.PathLike, text: str, echo: bool = True) -> None:
    """Write `text` to `path` (its folder made as needed) and print it unless `echo` is False."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    if echo:
        print(text)


def logits(model: onnx.ModelProto, net, x: np.ndarray) -> np.ndarray:
    """The logits of `model` (the tensor `net.logits_name`, read under any tail) for x, by onnxruntime: one CPU
    thread, default graph optimisation, chunks of BATCH samples; float32 as the model computes them."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if [o.name for o in probe.graph.output] != [net.logits_name]:
        del probe.graph.output[:]
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(net.logits_name))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    x = np.asarray(x, dtype=net.input_dtype)
    return np.concatenate([sess.run([net.logits_name], {net.input_name: x[i:i + BATCH]})[0]
                           for i in range(0, len(x), BATCH)])


def ort_accuracy(model: onnx.ModelProto, net, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in percent of `model` on (x, y), by onnxruntime (`logits`)."""
    return float(np.mean(logits(model, net, x).argmax(axis=1) == y) * 100.0)


def ir_accuracy(net, x: np.ndarray, y: np.ndarray, scales: dict | None = None) -> float:
    """Top-1 accuracy in percent of the (masked) IR network: its float64 numpy forward pass."""
    return float(np.mean(net.forward(x, scales=scales).argmax(axis=1) == y) * 100.0)
