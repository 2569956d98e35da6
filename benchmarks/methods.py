"""The unit-importance criteria the benchmarks compare, masks made from them, and a runner that measures one in
a fresh process.

Every criterion maps a Network to {scored layer position: importance per unit}; higher means keep. A mask keeps
the `count` most important units of each layer (`keep_top`), the counts taken from onnxcrit's selection.
"""
from __future__ import annotations

import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

from onnxcrit import load_network
from onnxcrit import magnitude as onnxcrit_magnitude


def l1(net, x=None) -> dict[int, np.ndarray]:
    """L1 norm of each unit's incoming weights (filter norm, Li et al. 2017)."""
    return {i: np.abs(net.layers[i].weight).reshape(net.layers[i].units, -1).sum(axis=1)
            for i in net.scored_indices()}


def l2(net, x=None) -> dict[int, np.ndarray]:
    """L2 norm of each unit's incoming weights."""
    return {i: np.sqrt(np.square(net.layers[i].weight).reshape(net.layers[i].units, -1).sum(axis=1))
            for i in net.scored_indices()}


def activation(net, x) -> dict[int, np.ndarray]:
    """Mean ReLU output of each unit over the calibration images (and, for a channel, its positions)."""
    acts = net.activations(x)
    out = {}
    for i in net.scored_indices():
        h = np.maximum(acts[i], 0.0)
        out[i] = h.mean(axis=tuple(a for a in range(h.ndim) if a != 1))
    return out


def magnitude(net, x=None) -> dict[int, np.ndarray]:
    """L1 norm of each unit's incoming weights times the L1 norm of its outgoing weights: the magnitude onnxcrit
    breaks ties of its removal order with (onnxcrit.magnitude)."""
    return onnxcrit_magnitude(net)


def torch_pruning(net, x=None) -> dict[int, np.ndarray]:
    """Torch-Pruning's GroupMagnitudeImportance at its defaults on the same weights (tp_importance.py)."""
    from . import tp_importance

    return tp_importance.torch_pruning_scores(net)


def random_scores(net, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.random(net.layers[i].units) for i in net.scored_indices()}


CRITERIA = {"L1": l1, "L2": l2, "activation": activation, "Torch-Pruning": torch_pruning}  # what the suite runs


def keep_top(scores: dict[int, np.ndarray], counts: dict[int, int]) -> dict[int, np.ndarray]:
    """Per layer, the `counts[i]` highest-scored units (ties by position)."""
    keep = {}
    for i, s in scores.items():
        k = np.zeros(len(s), dtype=bool)
        k[np.argsort(-np.asarray(s), kind="stable")[:counts[i]]] = True
        keep[i] = k
    return keep


def as_scales(keep: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Keep masks as 0/1 scales (kept units at full strength)."""
    return {i: np.asarray(k).astype(np.float64) for i, k in keep.items()}


def magnitude_scales(net, fraction: float) -> dict[int, np.ndarray]:
    """Remove `fraction` of each scored layer's units (at most all but one): those with the smallest L1 norm of
    incoming weights (ties by position). 0/1 scales."""
    scales = {}
    for k in net.scored_indices():
        w = net.layers[k].weight.reshape(net.layers[k].units, -1)
        remove = min(int(round(fraction * len(w))), len(w) - 1)
        order = np.argsort(np.abs(w).sum(axis=1), kind="stable")
        s = np.ones(len(w))
        s[order[:remove]] = 0.0
        scales[k] = s
    return scales


# --------------------------------------------------------------------------------------------------
# measured runs: a fresh interpreter per run, so its peak memory is its own


def _peak_mb() -> float:
    """Peak RSS of this process (VmHWM: ru_maxrss would carry the parent's peak over fork + exec) and of its
    waited-for children (the solver's process, if any)."""
    with open("/proc/self/status") as f:
        own = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def _criterion_child(name: str, path: str, x) -> tuple[dict, float, float]:
    net, _ = load_network(path)
    if name == "Torch-Pruning":  # importing torch is not scoring (its memory counts, though)
        import torch_pruning  # noqa: F401

        from . import tp_importance  # noqa: F401
    clock = time.perf_counter()
    scores = CRITERIA[name](net, x)
    return scores, time.perf_counter() - clock, _peak_mb()


def _onnxcrit_child(path: str, data, options: dict) -> tuple[dict, float, float]:
    from onnxcrit import optimize

    clock = time.perf_counter()
    res = optimize(path, data, measure_latency=False, **options)
    seconds = time.perf_counter() - clock
    out = {"model": res.model.SerializeToString(), "report": res.report, "scores": res.scores,
           "scales": res.scales}
    return out, seconds, _peak_mb()


def _in_fresh_process(fn, *args):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def measured_criterion(name: str, path: str, x=None) -> tuple[dict, float, float]:
    """(scores, seconds spent scoring (model loading excluded), peak RSS in MB of the process)."""
    return _in_fresh_process(_criterion_child, name, path, x)


def measured_onnxcrit(path: str, data, options: dict) -> tuple[dict, float, float]:
    """(optimize's model bytes / report / scores / scales, wall seconds of the whole call, peak RSS in MB)."""
    return _in_fresh_process(_onnxcrit_child, path, data, options)
