"""Branching graphs end to end: `optimize` on the exporter corpus (residual Add with and without downsample
shortcuts, fire-module Concat, depthwise-separable, Inception), the written file checked against the masked
IR model by onnxruntime, coupled producers shrinking together, and the parameter count equal to the file's."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxcrit import load_network, optimize, remove_units
from onnxcrit.tolerance import assert_same
from onnxcrit.validate import run_batched, session

from .corpus import ROOT

BRANCHING = ROOT / "tests" / "data" / "branching"
CASES = ["torch_legacy_resnet8", "torch_dynamo_resnet_downsample", "torch_legacy_squeezenet_dense",
         "torch_legacy_squeezenet_allconv", "torch_legacy_mobilenet_dwsep", "torch_legacy_inception",
         "torch_legacy_mlp_residual"]


def _data(name, part):
    d = np.load(BRANCHING / f"{name}_{part}.npz")
    return d["x"], d["y"]


@pytest.mark.parametrize("name", CASES)
def test_optimize_prunes_a_branching_graph(name):
    path = BRANCHING / f"{name}.onnx"
    net, model = load_network(path)
    result = optimize(path, _data(name, "calib"), target_params=0.75, measure_latency=False, round_to=1,
                      reconstruct="none")  # the surgery itself; reconstruction: tests/test_reconstruct.py
    report, new_net = result.report, result.network
    assert report["params_after"] <= 0.75 * report["params_before"] + 1e-9
    assert report["mode"] == "full" and report["groups"]
    # the written model computes the masked IR network (the rewrite's own check, repeated from outside)
    x, _ = _data(name, "eval")
    logits = run_batched(session(result.model), new_net.input_name, x[:64], [new_net.logits_name])[0]
    assert_same(logits, net.forward(x[:64], scales=result.scales))
    # every producer of a group lost the same units, and the group's readers the same columns
    for g in net.deps.prunable():
        kept = int(np.count_nonzero(result.scales[g.key])) if g.key in result.scales else g.units
        for p in [*g.producers, *g.coupled]:
            assert new_net.layers[p].units == kept, (name, net.layers[p].name)
    # the reported count is the file's: elements of the initializers the linear layers own
    owned = {ref.tensor for i in new_net.linear_indices() for ref in (*new_net.layers[i].out_refs,
                                                                      *new_net.layers[i].in_refs)}
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert report["params_after"] == sum(inits[t].size for t in owned if t in inits)
    onnx.checker.check_model(result.model, full_check=True)


def test_depthwise_group_attribute_follows_the_kept_channels():
    name = "torch_legacy_mobilenet_dwsep"
    net, model = load_network(BRANCHING / f"{name}.onnx")
    (key, *_) = [g.key for g in net.deps.prunable() if g.coupled]
    scales = {key: np.r_[np.zeros(5), np.ones(net.layers[key].units - 5)]}
    new, new_net = remove_units(model, net, scales)
    dw = [p for g in net.deps.prunable() if g.key == key for p in g.coupled][0]
    node = next(n for n in new.graph.node if n.name == net.layers[dw].nodes[0])
    assert next(a.i for a in node.attribute if a.name == "group") == net.layers[key].units - 5
    x, _ = _data(name, "eval")
    assert_same(run_batched(session(new), new_net.input_name, x[:32], [new_net.logits_name])[0],
                net.forward(x[:32], scales=scales))


@pytest.mark.parametrize("name", ["torch_legacy_resnet8", "torch_legacy_squeezenet_allconv",
                                  "torch_dynamo_mobilenet_dwsep"])
def test_decoupled_mode_has_one_block_per_group(name):
    """Blocks end at merge points: one MIP per channel group, seen at its last ReLU-read producer or Add."""
    path = BRANCHING / f"{name}.onnx"
    net, _ = load_network(path)
    result = optimize(path, _data(name, "calib"), mode="decoupled", target_params=0.8, measure_latency=False,
                      round_to=1, workers=1, reconstruct="none")  # the blocks and the surgery themselves
    report = result.report
    assert report["mode"] == "decoupled"
    assert [b["name"] for b in report["blocks"]] == [net.layers[k].name for k in net.scored_indices()]
    assert [b["units"] for b in report["blocks"]] == [net.layers[k].units for k in net.scored_indices()]
    assert sorted(result.scores) == net.scored_indices()
    assert report["params_after"] <= 0.8 * report["params_before"] + 1e-9
    x, _ = _data(name, "eval")
    logits = run_batched(session(result.model), result.network.input_name, x[:64], [result.network.logits_name])[0]
    assert_same(logits, net.forward(x[:64], scales=result.scales))


def test_finetune_after_pruning_a_residual_net():
    """onnx2torch takes the pruned DAG as it is: the fine-tuned file keeps the pruned graph and trains."""
    name = "torch_legacy_resnet8"
    path = BRANCHING / f"{name}.onnx"
    result = optimize(path, _data(name, "calib"), eval_data=_data(name, "eval"), target_params=0.6,
                      measure_latency=False, round_to=1, finetune_data=_data(name, "calib"), finetune_epochs=2)
    tuned = result.report["finetune"]
    assert tuned["epochs"] == 2 and len(tuned["losses"]) == 2
    before = {t.name: list(t.dims) for t in load_network(path)[1].graph.initializer}
    after = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert after.keys() <= before.keys() and any(after[k] != before[k] for k in after)


@pytest.mark.parametrize("name", ["torch_legacy_resnet_downsample", "torch_legacy_squeezenet_dense",
                                  "torch_legacy_mobilenet_dwsep"])
def test_bias_compensation_on_branching_graphs(name):
    """Every layer reading a removed unit gets the mean of what it sent (a depthwise conv that loses the unit gets
    nothing); the rewrite with the shifts equals the masked IR with the same shifts, and on the calibration data
    the compensated network is closer to the original than the plain cut."""
    from onnxcrit.rewrite import bias_compensation, with_bias_shift

    net, model = load_network(BRANCHING / f"{name}.onnx")
    x, _ = _data(name, "calib")
    scales = {k: (np.arange(net.layers[k].units) % 4 != 1).astype(float) for k in net.scored_indices()}
    shifts = bias_compensation(net, x, scales)
    readers = {i for k in scales for i in net.linear_indices() if np.any(net.input_columns(i)[0] == k)
               and i not in net.group(k).coupled}
    assert set(shifts) == readers
    new, new_net = remove_units(model, net, scales, compensation=shifts)
    shifted = with_bias_shift(net, shifts)
    assert_same(run_batched(session(new), new_net.input_name, x, [new_net.logits_name])[0],
                shifted.forward(x, scales=scales))
    full = net.forward(x)
    assert np.abs(shifted.forward(x, scales=scales) - full).mean() < np.abs(net.forward(x, scales=scales) - full).mean()


def test_full_mode_reconstructs_a_branching_graph_by_default():
    """lsq is the default reconstruction in full mode, on branching graphs too; the written model is validated
    against the reconstructed network inside optimize, and it is closer to the original than the plain cut."""
    name = "torch_legacy_resnet8"
    path = BRANCHING / f"{name}.onnx"
    common = dict(target_params=0.6, measure_latency=False, round_to=1)
    fitted = optimize(path, _data(name, "calib"), **common)
    plain = optimize(path, _data(name, "calib"), reconstruct="none", **common)
    assert fitted.report["mode"] == "full" and fitted.report["selection"]["reconstruct"]["applied"] == "lsq"
    x, _ = _data(name, "eval")
    net, _ = load_network(path)
    full = net.forward(x)

    def gap(result):
        logits = run_batched(session(result.model), result.network.input_name, x, [result.network.logits_name])[0]
        return float(np.abs(logits - full).mean())

    assert gap(fitted) < gap(plain)
