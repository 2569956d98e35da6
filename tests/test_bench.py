"""The benchmark suite's fairness: every criterion is compared at onnxcrit's per-layer kept counts.

tools/bench/ is not part of the package; these tests pin the two things its table relies on: masks keep
exactly the requested counts of the highest-scored units, and in a comparison every method's rewritten file
has the same parameter and MAC counts as onnxcrit's.
"""
import sys

import numpy as np
import pytest

from tests.corpus import ROOT

sys.path.insert(0, str(ROOT / "tools" / "bench"))

import methods  # noqa: E402
import models  # noqa: E402
import run  # noqa: E402

from onnxcrit.frontend import load_network  # noqa: E402


def test_keep_top_keeps_the_counts_of_highest_scores():
    scores = {0: np.array([0.3, 0.9, 0.1, 0.9, 0.5]), 4: np.array([2.0, -1.0, 0.0])}
    keep = methods.keep_top(scores, {0: 3, 4: 1})
    assert keep[0].tolist() == [False, True, False, True, True]
    assert keep[4].tolist() == [True, False, False]


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_criteria_score_every_prunable_unit(name):
    net, _ = load_network(ROOT / "models" / f"{name}.onnx")
    x = np.load(ROOT / "models" / f"{name}_calib.npz")["x"][:10]
    for criterion in (methods.l1, methods.l2, methods.activation):
        scores = criterion(net, x)
        assert sorted(scores) == net.scored_indices()
        assert all(s.shape == (net.layers[i].units,) and np.all(s >= 0) for i, s in scores.items())
    first = net.scored_indices()[0]
    w = net.layers[first].weight.reshape(net.layers[first].units, -1)
    np.testing.assert_allclose(methods.l1(net)[first], np.abs(w).sum(axis=1))
    relu = np.maximum(net.activations(x)[first], 0.0)
    np.testing.assert_allclose(methods.activation(net, x)[first], relu.mean(axis=tuple(
        a for a in range(relu.ndim) if a != 1)))


def test_comparison_puts_every_method_at_onnxcrits_counts(monkeypatch):
    monkeypatch.setattr(run, "CONFIGS", run.CONFIGS[:1])  # paper defaults only: the test stays short
    # in this process: a spawned one would leave multiprocessing's resource tracker behind as a child of pytest
    monkeypatch.setattr(methods, "_in_fresh_process", lambda fn, *args: fn(*args))
    case = models.load_case("digits_mlp")
    ev = run.Evaluator(case)
    data_free = {"L1": (methods.l1(ev.net), 0.0, 0.0)}
    rows = run.compare(case, ev, data_free)
    methods_seen = [r["method"] for r in rows]
    assert methods_seen[0].startswith("onnxcrit") and {"L1", "activation", "critical (highest scores removed)",
                                                        f"random (mean of {run.RANDOM_SEEDS})"} <= set(methods_seen)
    ours = rows[0]
    assert 0.3 < ours["params_removed"] < 0.9
    for r in rows[1:]:
        assert r["params_removed"] == pytest.approx(ours["params_removed"], abs=1e-12), r["method"]
        assert r["macs_removed"] == pytest.approx(ours["macs_removed"], abs=1e-12), r["method"]
