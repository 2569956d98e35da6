"""Selection rules: exact parameter counting, thresholds, budgets."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxcrit import select
from onnxcrit.frontend import load_network, to_network

from .onnx_builders import cnn, mlp


def _random_scores(net, seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.uniform(0, 1, net.layers[i].units) for i in net.scored_indices()}


@pytest.mark.parametrize("model", [mlp(), cnn(pool="max"), cnn(pool="global")])
def test_params_after_counts_the_smaller_network(model):
    """params_after equals the parameter count of the network with those units really deleted."""
    net = to_network(model)
    scores = _random_scores(net)
    keep = select.keep_by_threshold(net, scores, 0.5)
    assert select.params_after(net, {i: np.ones_like(k) for i, k in keep.items()}) == net.params
    # delete the units by hand in the IR and count what is left
    total, prev = 0, None
    for i in net.linear_indices():
        w = net.layers[i].weight
        if prev is not None:
            cols = select.input_mask(net, i, keep)
            w = w[:, cols]
        if i in keep:
            w = w[keep[i]]
        total += w.size + w.shape[0]
        prev = i
    assert select.params_after(net, keep) == total


def test_threshold_keeps_at_least_one_unit_and_says_so():
    net = to_network(mlp())
    scores = {i: np.zeros(net.layers[i].units) for i in net.scored_indices()}
    scores[net.scored_indices()[0]][3] = 0.05
    notes = []
    keep = select.keep_by_threshold(net, scores, 0.1, notes=notes)
    assert all(k.sum() == 1 for k in keep.values())
    assert keep[net.scored_indices()[0]][3]
    assert len(notes) == len(keep) and "kept the best one" in notes[0]


def test_mean_rule():
    net = to_network(mlp())
    scores = _random_scores(net, 3)
    keep = select.keep_by_threshold(net, scores, None, mean_rule=True)
    for i, s in scores.items():
        assert np.array_equal(keep[i], s >= s.mean())


def test_accuracy_budget_is_met_on_the_bundled_mlp():
    net, _ = load_network("models/digits_mlp.onnx")
    data = np.load("models/digits_mlp_eval.npz")
    x, y = data["x"], data["y"]
    scores = _random_scores(net, 1)
    base = select.accuracy(net, x, y)
    best, closest = select.by_accuracy(net, scores, x, y, max_drop=2.0, rescale=False)
    assert best is not None
    acc = select.accuracy(net, x, y, best.scales)
    assert base - acc <= 2.0
    kept = {i: s > 0 for i, s in best.scales.items()}
    assert select.params_after(net, kept) == min(r["params_after"] for r in best.tried if r["drop"] <= 2.0)


def test_accuracy_many_measures_the_grid_and_ladder_at_once_with_the_same_result():
    net, _ = load_network("models/digits_mlp.onnx")
    data = np.load("models/digits_mlp_eval.npz")
    x, y = data["x"], data["y"]
    scores = _random_scores(net, 1)
    one = select.by_accuracy(net, scores, x, y, max_drop=2.0, rescale=None, ladder=5)
    batches, singles = [], []

    def many(list_of_scales):
        batches.append(len(list_of_scales))
        return [select.accuracy(net, x, y, s) for s in list_of_scales]

    def single(scales):
        singles.append(scales)
        return select.accuracy(net, x, y, scales)

    both = select.by_accuracy(net, scores, x, y, max_drop=2.0, rescale=None, ladder=5, accuracy_of=single,
                              accuracy_many=many)
    assert both[0].tried == one[0].tried and both[0].rescaled == one[0].rescaled
    assert all(np.array_equal(both[0].scales[k], one[0].scales[k]) for k in scores)
    assert batches[0] == 2 * 16  # the grid: 16 counts, kept units at their score and at full strength
    grid_and_ladder = sum(batches) // 2
    assert len(one[0].tried) == grid_and_ladder + (len(singles) - 1) // 2  # the rest: bisection, one at a time


def test_params_budget():
    net = to_network(cnn(pool="max"))
    scores = _random_scores(net, 2)
    best, _ = select.by_params(net, scores, 0.5)
    kept = {i: s > 0 for i, s in best.scales.items()}
    assert select.params_after(net, kept) <= 0.5 * net.params
    impossible, closest = select.by_params(net, scores, 0.0001)
    assert impossible is None and all(s.astype(bool).sum() == 1 for s in closest.scales.values())


def _two_detectors() -> onnx.ModelProto:
    """x [N, 2] -> two hidden units, each passing one class's evidence through -> 2 logits: every hidden unit is
    indispensable, so removing either one misclassifies a whole class."""
    from onnx import TensorProto, helper, numpy_helper

    eye = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")
    zero = numpy_helper.from_array(np.zeros(2, np.float32), "b")
    eye2, zero2 = numpy_helper.from_array(np.eye(2, dtype=np.float32), "w2"), numpy_helper.from_array(
        np.zeros(2, np.float32), "b2")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2])],
                              [eye, zero, eye2, zero2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unreachable_accuracy_budget_retries_with_wider_margins_then_fails():
    from onnxcrit import optimize
    from onnxcrit.api import Progress
    from onnxcrit.errors import BudgetError

    class Notes(Progress):
        def __init__(self):
            self.notes, self.solves = [], 0

        def note(self, message):
            self.notes.append(message)

        def start(self, stage, deadline=None):
            self.solves += stage == "score"

    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, (40, 2)).astype(np.float32)
    y = x.argmax(axis=1)
    progress = Notes()
    with pytest.raises(BudgetError, match="no selection keeps the accuracy drop within 1 points"):
        optimize(_two_detectors(), (x, y), eval_data=(x, y), num_samples=4, max_accuracy_drop=1.0,
                 measure_latency=False, progress=progress)
    assert progress.solves == 3
    assert [n for n in progress.notes if "solving again" in n] == [
        "accuracy budget not met; solving again with margin 2",
        "accuracy budget not met; solving again with margin 4"]


def test_mac_budget_counts_what_the_rewritten_model_computes(tmp_path):
    """macs_after equals the MACs of the rewritten network for any keep masks, and --target-macs keeps at most
    that fraction of them (the report says so in words); a second budget is refused in one line."""
    from click.testing import CliRunner

    from onnxcrit import api
    from onnxcrit.cli import main
    from onnxcrit.frontend import load_network
    from onnxcrit.rewrite import remove_units, scales_from_keep

    from .corpus import ROOT
    model = ROOT / "models" / "digits_cnn.onnx"
    net, proto = load_network(model)
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep = {k: rng.random(net.layers[k].units) < 0.6 for k in net.scored_indices()}
        for k in keep:
            keep[k][0] = True
        _, new_net = remove_units(proto, net, scales_from_keep(keep))
        assert select.macs_after(net, keep) == new_net.macs
    calib = ROOT / "models" / "digits_cnn_calib.npz"
    result = api.optimize(model, calib, target_macs=0.5, measure_latency=False)
    assert result.report["selection"]["rule"] == "MAC budget"
    assert result.report["macs_after"] <= 0.5 * result.report["macs_before"]
    res = CliRunner().invoke(main, ["optimize", str(model), "--data", str(calib), "--target-macs", "0.5",
                                    "--target-params", "0.5", "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "give one budget" in res.output and not (tmp_path / "o.onnx").exists()
