"""The removal order's tie-break under lsq: each unit's OBS saliency (onnxcrit/saliency.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import onnxcrit
from onnxcrit import select
from onnxcrit.frontend import load_network
from onnxcrit.ir import INPUT
from onnxcrit.reconstruct import DAMP, _design
from onnxcrit.saliency import obs_saliency

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
BRANCHING = ROOT / "tests" / "data" / "branching"


def _refit_cost(net, x, k: int, unit: int) -> float:
    """Brute force: remove `unit` of group k from every reader, refit each reader's other weights by the damped
    least squares lsq uses, and sum the objective left: mean over rows of ||Z - W'X||^2 + lambda ||W' - W||^2."""
    h = {INPUT: np.asarray(x, dtype=np.float64).reshape(-1, *net.input_shape)}
    total = 0.0
    for i, layer in enumerate(net.layers):
        ins = net.inputs_of(i)
        if getattr(layer, "weight", None) is not None and getattr(layer, "group", 1) == 1:
            keys, units = net.input_columns(i)
            owner = np.repeat(np.where(keys == k, units, -1), layer.per_column)
            if np.any(owner == unit):
                d = _design(layer, h[ins[0]])
                d = d - d.mean(axis=0)
                w = layer.weight.reshape(layer.units, -1)
                z = d @ w.T
                gram = d.T @ d / len(d)
                lam = DAMP * float(np.mean(np.diag(gram)))
                rest = np.flatnonzero(owner != unit)
                g = gram[np.ix_(rest, rest)] + lam * np.eye(len(rest))
                w_new = np.linalg.solve(g, (d[:, rest].T @ z / len(d) + lam * w[:, rest].T)).T
                resid = z - d[:, rest] @ w_new.T
                total += float(np.sum(resid ** 2) / len(d) + lam * np.sum((w_new - w[:, rest]) ** 2)
                               + lam * np.sum(w[:, owner == unit] ** 2))
        h[i] = layer.forward(*[h[p] for p in ins])
    return total


@pytest.mark.parametrize("path", [MODELS / "digits_mlp.onnx", MODELS / "digits_cnn.onnx",
                                  BRANCHING / "torch_legacy_resnet8.onnx"], ids=["mlp", "cnn", "resnet8"])
def test_the_saliency_is_the_cost_of_refitting_the_readers_without_the_unit(path):
    net, _ = load_network(path)
    x = np.load(str(path).replace(".onnx", "_calib.npz"))["x"][:60]
    sal = obs_saliency(net, x)
    assert sorted(sal) == sorted(g.key for g in net.deps.prunable())
    rng = np.random.default_rng(0)
    for k in sal:
        for unit in rng.choice(len(sal[k]), size=2, replace=False):
            assert sal[k][unit] == pytest.approx(_refit_cost(net, x, k, int(unit)), rel=1e-7)


def test_the_ties_decide_among_equal_scores_only():
    net, _ = load_network(MODELS / "digits_mlp.onnx")
    scores = {k: np.where(np.arange(net.layers[k].units) % 3 == 0, 1.0, 0.0) for k in net.scored_indices()}
    rng = np.random.default_rng(1)
    ties = {k: rng.uniform(0.1, 1.0, net.layers[k].units) for k in scores}
    order = select.removal_order(net, scores, ties=ties)
    zeros = [(k, u) for k, u in order if scores[k][u] == 0]
    assert order[:len(zeros)] == zeros  # the scores first
    for k in scores:
        mine = [u for kk, u in zeros if kk == k]
        assert np.all(np.diff(ties[k][mine]) >= 0)  # then, within a layer, by the tie-break


def test_the_pipeline_breaks_ties_by_saliency_under_lsq_only():
    common = dict(eval_data=MODELS / "digits_cnn_eval.npz", measure_latency=False)
    lsq = onnxcrit.optimize(MODELS / "digits_cnn.onnx", MODELS / "digits_cnn_calib.npz", **common)
    none = onnxcrit.optimize(MODELS / "digits_cnn.onnx", MODELS / "digits_cnn_calib.npz", reconstruct="none",
                             **common)
    assert lsq.report["selection"]["ties"] == "obs" and none.report["selection"]["ties"] == "magnitude"
    assert lsq.report["timings"]["saliency"] > 0 and "saliency" not in none.report["timings"]
