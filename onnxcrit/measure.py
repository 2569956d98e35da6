"""Size and speed of a model: parameters and MACs per layer, file size, onnxruntime latency."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx

from .ir import Network
from .validate import session


def tensor_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Element count of every constant tensor of the main graph (initializers and Constant nodes)."""
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Constant" or not node.output or not node.attribute:
            continue
        attr = node.attribute[0]
        if attr.name == "value":
            sizes[node.output[0]] = int(np.prod(attr.t.dims, dtype=np.int64))
        elif attr.name in ("value_floats", "value_ints"):
            sizes[node.output[0]] = len(attr.floats) + len(attr.ints)
        else:
            sizes[node.output[0]] = 1
    return sizes


def stored_params(model: onnx.ModelProto, net: Network) -> list[int]:
    """Per linear layer (in order), the elements of the stored tensors its refs name, each tensor counted once.

    Unlike `layer.params` (the folded IR's weight + bias) this counts what the file holds, e.g. a
    BatchNormalization's four tensors.
    """
    sizes = tensor_sizes(model)
    seen: set[str] = set()
    counts = []
    for i in net.linear_indices():
        layer = net.layers[i]
        names = [ref.tensor for ref in (*layer.out_refs, *layer.in_refs)]
        own = [name for name in dict.fromkeys(names) if name not in seen and name in sizes]
        seen.update(own)
        counts.append(sum(sizes[name] for name in own))
    return counts


def layer_table(net: Network, model: onnx.ModelProto | None = None) -> list[dict]:
    """One row per linear layer: name, kind, units, params, macs (per sample).

    params counts the file's tensors the layer owns when `model` is given (see `stored_params`), else the
    folded IR's weight + bias.
    """
    stored = stored_params(model, net) if model is not None else None
    rows = []
    for j, i in enumerate(net.linear_indices()):
        layer = net.layers[i]
        rows.append(dict(name=layer.name, kind=layer.kind, units=layer.units,
                         params=stored[j] if stored is not None else layer.params, macs=layer.macs))
    return rows


def totals(rows: list[dict]) -> dict:
    """Sum of params, macs and units over the rows of `layer_table`."""
    return {key: int(sum(row[key] for row in rows)) for key in ("units", "params", "macs")}


def file_size(model: onnx.ModelProto | str | os.PathLike) -> int:
    """Bytes on disk (the model file plus its external data files), or the serialised size of a ModelProto."""
    if isinstance(model, onnx.ModelProto):
        return model.ByteSize()
    path = Path(model)
    header = onnx.load(str(path), load_external_data=False)
    files = {path.resolve()}
    tensors = list(header.graph.initializer) + [a.t for n in header.graph.node for a in n.attribute
                                                if a.type == onnx.AttributeProto.TENSOR]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            files.add((path.parent / info.get("location", "")).resolve())
    return sum(f.stat().st_size for f in files if f.is_file())


def latency(model: onnx.ModelProto | str | os.PathLike, input_name: str, input_shape: tuple[int, ...],
            batch: int, repeats: int = 30, warmup: int = 5, threads: int = 1, seed: int = 0,
            optimization: str = "all", clock: str = "wall", fixed_batch: int | None = None) -> float:
    """Median seconds of one onnxruntime run on a random batch [batch, *input_shape].

    One CPU session with `threads` intra-op threads and the given graph optimisation level (see
    `validate.session`); `warmup` runs are discarded first. clock="wall" times wall-clock; clock="cpu" times
    the calling thread's CPU time, which with threads=1 (onnxruntime then runs in the caller's thread) is the
    same work but does not count time the machine gave to other processes. fixed_batch: the batch size the
    model's input is declared with (`Network.fixed_batch`), if fixed; the time for `batch` samples is then
    that of ceil(batch / fixed_batch) consecutive runs of that batch (the model refuses any other).
    """
    return paired_timings([model], input_name, input_shape, batch, repeats, warmup, threads, seed,
                          optimization, fixed_batch=fixed_batch)[clock][0]


def paired_latency(models: list, input_name: str, input_shape: tuple[int, ...], batch: int, repeats: int = 30,
                   warmup: int = 5, threads: int = 1, seed: int = 0, optimization: str = "all",
                   clock: str = "wall", fixed_batch: int | None = None, seconds: float | None = None
                   ) -> list[float]:
    """Median seconds per `batch` samples of each model, timed in alternation (run 1 of every model, then
    run 2, ...).

    Interleaving puts before and after under the same machine load, so their ratio is steadier than two
    separate `latency` calls on a busy machine. See `latency` for clock and fixed_batch, `paired_timings`
    for seconds.
    """
    return paired_timings(models, input_name, input_shape, batch, repeats, warmup, threads, seed,
                          optimization, fixed_batch=fixed_batch, seconds=seconds)[clock]


def runs_per_batch(batch: int, fixed_batch: int | None) -> tuple[int, int]:
    """(the batch size to feed, how many consecutive runs make `batch` samples): (batch, 1) for a free batch,
    (fixed_batch, ceil(batch / fixed_batch)) for a model whose input is declared with a fixed batch size."""
    if fixed_batch is None:
        return batch, 1
    return fixed_batch, -(-batch // fixed_batch)


def paired_timings(models: list, input_name: str, input_shape: tuple[int, ...], batch: int, repeats: int = 30,
                   warmup: int = 5, threads: int = 1, seed: int = 0, optimization: str = "all",
                   fixed_batch: int | None = None, seconds: float | None = None) -> dict[str, list[float]]:
    """{"wall": medians, "cpu": medians}, one per model, in seconds per `batch` samples (see `paired_latency`).

    fixed_batch: see `latency`. seconds: stop after the round (one timed run of every model) that passes this
    many seconds of timing, once at least min(5, repeats) rounds are in; `repeats` stays the maximum.
    """
    sessions = [session(m if isinstance(m, onnx.ModelProto) else str(m), threads=threads, optimization=optimization)
                for m in models]
    dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}
    feed_batch, runs = runs_per_batch(batch, fixed_batch)
    feeds = []
    for sess in sessions:
        elem = next(i for i in sess.get_inputs() if i.name == input_name).type
        x = np.random.default_rng(seed).standard_normal((feed_batch, *input_shape)).astype(dtypes[elem])
        feeds.append({input_name: x})
    for sess, feed in zip(sessions, feeds):
        for _ in range(warmup):
            sess.run(None, feed)
    wall: list[list[float]] = [[] for _ in sessions]
    cpu: list[list[float]] = [[] for _ in sessions]
    began = time.perf_counter()
    for done in range(repeats):
        for j, (sess, feed) in enumerate(zip(sessions, feeds)):
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(runs):
                sess.run(None, feed)
            cpu[j].append(time.thread_time() - start_cpu)
            wall[j].append(time.perf_counter() - start)
        if seconds is not None and done + 1 >= min(5, repeats) and time.perf_counter() - began >= seconds:
            break
    return {"wall": [statistics.median(b) for b in wall], "cpu": [statistics.median(b) for b in cpu]}


def summary(model: onnx.ModelProto, net: Network, *, path: str | os.PathLike | None = None,
            batches: tuple[int, ...] = (1, 64), repeats: int = 30, warmup: int = 5, threads: int = 1) -> dict:
    """Everything above for one model: layers, totals, file size (of `path` if written), latency per batch
    (per `batch` samples; a fixed-batch model runs its own batch size as often as needed)."""
    rows = layer_table(net, model)
    source = path if path is not None else model
    return dict(layers=rows, **totals(rows), file_size=file_size(source),
                latency={b: latency(source, net.input_name, net.input_shape, b, repeats, warmup, threads,
                                    fixed_batch=net.fixed_batch)
                         for b in batches})
