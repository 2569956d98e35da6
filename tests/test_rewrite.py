"""Rewrite: the smaller ONNX model computes exactly the masked IR forward pass, on every supported style."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper, numpy_helper

from onnxcrit.bounds import interval_bounds
from onnxcrit.errors import UnsupportedModelError
from onnxcrit.frontend import load_network, to_network
from onnxcrit.measure import stored_params
from onnxcrit.output import has_external_data, write_model
from onnxcrit.rewrite import (bias_compensation, dead_units, remove_units, scales_from_keep,
                              with_bias_shift)
from onnxcrit.tolerance import assert_same
from onnxcrit.validate import run_tensors

from .onnx_builders import GraphBuilder, cnn, mlp, sample_inputs

from .corpus import EXPORTED, ROOT  # noqa: E402


def inputs_for(path: Path) -> dict:
    data = path.with_name(path.stem + "_x.npz")
    data = data if data.exists() else path.with_name(path.stem + "_eval.npz")
    return dict(np.load(data))


def rewritten_logits(model, net, x):
    return run_tensors(model, net.input_name, x, [net.logits_name], dtype=net.input_dtype)[0]


def assert_rewrite_exact(model, net, scales, x, compensation=None):
    """Rewrite, then: logits == masked IR forward, unit counts as masked, input model untouched."""
    before = model.SerializeToString()
    new, new_net = remove_units(model, net, scales, compensation=compensation)
    assert model.SerializeToString() == before, "remove_units changed its input model"
    ref = with_bias_shift(net, compensation).forward(x, scales=scales)
    got = rewritten_logits(new, new_net, x)
    assert_same(got, ref, net.input_dtype)
    for i in net.linear_indices():
        want = int(np.count_nonzero(scales[i])) if i in scales else net.layers[i].units
        assert new_net.layers[i].units == want
    return new, new_net


def random_scales(net, data, positive=True):
    scales = {}
    for k in net.scored_indices():
        units = net.layers[k].units
        keep = np.array(data.draw(st.lists(st.booleans(), min_size=units, max_size=units)))
        keep[data.draw(st.integers(0, units - 1))] = True
        factor = np.array(data.draw(st.lists(st.floats(0.25, 4.0), min_size=units, max_size=units))) \
            if positive else np.ones(units)
        scales[k] = np.where(keep, factor, 0.0)
    return scales


# property tests ----------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), hidden=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       style=st.sampled_from(["gemm", "gemm_t0", "gemm_alpha", "matmul", "matmul_rev", "matmul_2d"]),
       bn=st.booleans(), dropout=st.booleans(), compensate=st.booleans(), data=st.data())
def test_random_mlps_rewrite_exactly(seed, hidden, style, bn, dropout, compensate, data):
    model = mlp(widths=(7, *hidden, 4), style=style, seed=seed, bn=bn, dropout=dropout)
    net = to_network(model)
    x = sample_inputs(model, 5, seed=seed)
    scales = random_scales(net, data)
    comp = bias_compensation(net, x, scales) if compensate else None
    assert_rewrite_exact(model, net, scales, x, comp)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), channels=st.lists(st.integers(1, 5), min_size=1, max_size=2),
       pool=st.sampled_from(["max", "avg", "global", None]), bias=st.sampled_from(["input", "add", "none"]),
       bn=st.booleans(), flatten=st.sampled_from(["flatten", "reshape_const", "reshape_zero"]),
       dense=st.lists(st.integers(1, 6), min_size=0, max_size=1), kernel=st.sampled_from([1, 3]),
       compensate=st.booleans(), data=st.data())
def test_random_cnns_rewrite_exactly(seed, channels, pool, bias, bn, flatten, dense, kernel, compensate, data):
    model = cnn(channels=tuple(channels), pool=pool, bias=bias, bn=bn, flatten=flatten, dense=(*dense, 3),
                seed=seed, kernel=kernel, pad=kernel // 2)
    net = to_network(model)
    x = sample_inputs(model, 4, seed=seed)
    scales = random_scales(net, data)
    comp = bias_compensation(net, x, scales) if compensate else None
    assert_rewrite_exact(model, net, scales, x, comp)


# exporter files ------------------------------------------------------------------------------------------

def half_scales(net):
    return {k: (np.arange(net.layers[k].units) % 2 == 0).astype(np.float64) for k in net.scored_indices()}


@pytest.mark.parametrize("path", EXPORTED, ids=lambda p: p.name)
def test_exported_models(path, tmp_path):
    net, model = load_network(path)
    x = inputs_for(path)["x"]
    scales = half_scales(net)
    new, new_net = assert_rewrite_exact(model, net, scales, x)
    # everything but the cut tensors and their shapes is kept
    assert [(o.domain, o.version) for o in new.opset_import] == [(o.domain, o.version) for o in model.opset_import]
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        assert getattr(new, field) == getattr(model, field)
    assert list(new.metadata_props) == list(model.metadata_props)
    assert [(n.name, n.op_type) for n in new.graph.node] == [(n.name, n.op_type) for n in model.graph.node]
    assert list(new.graph.input) == list(model.graph.input)
    assert list(new.graph.output) == list(model.graph.output)
    assert [t.name for t in new.graph.initializer] == [t.name for t in model.graph.initializer]
    assert all(a.data_type == b.data_type for a, b in zip(new.graph.initializer, model.graph.initializer))
    # the counted parameters are exactly the float tensors in the file
    floats = sum(int(np.prod(t.dims)) for t in new.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    assert sum(stored_params(new, new_net)) == floats
    # written in the input's storage style, and read back the same
    out = tmp_path / "pruned.onnx"
    write_model(new, out, external_data=has_external_data(path), input_path=path)
    assert has_external_data(out) == has_external_data(path)
    assert (tmp_path / "pruned.onnx.data").exists() == has_external_data(path)
    again, _ = load_network(out)
    np.testing.assert_array_equal(again.forward(x), new_net.forward(x))


def test_dynamo_reshape_target_is_fixed():
    net, model = load_network(ROOT / "tests" / "data" / "torch_dynamo_cnn.onnx")
    reshape = next(layer for layer in net.layers if layer.kind == "reshape")
    assert reshape.shape_node is not None
    new, new_net = remove_units(model, net, half_scales(net))
    node = next(n for n in new.graph.node if n.op_type == "Reshape")
    target = numpy_helper.to_array(next(t for t in new.graph.initializer if t.name == node.input[1]))
    assert target.tolist() == [-1, 32]  # 8 of 16 channels x 2 x 2
    # value_info is re-inferred, keeps the exporter's entries and their metadata
    shapes = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
              for vi in new.graph.value_info}
    assert shapes["view"] == ["batch", 32] and shapes["conv2d_1"] == ["batch", 8, 4, 4]
    assert [vi.name for vi in new.graph.value_info] == [vi.name for vi in model.graph.value_info]


def test_reshape_attribute_form_opset4():
    """onnxruntime cannot run opset 4: compare the rewritten IR with the masked IR instead."""
    model = cnn(flatten="reshape_attr", opset=4, pool="max", bias="add", channels=(3, 4))
    net = to_network(model)
    scales = {k: np.r_[0.0, np.ones(net.layers[k].units - 1)] for k in net.scored_indices()}
    new, new_net = remove_units(model, net, scales)
    node = next(n for n in new.graph.node if n.op_type == "Reshape")
    assert list(node.attribute[0].ints) == [-1, 3 * 2 * 2]
    x = sample_inputs(model)
    np.testing.assert_allclose(new_net.forward(x), net.forward(x, scales=scales), atol=1e-6)


def test_constant_nodes_and_float16_keep_their_storage():
    model = mlp(widths=(6, 5, 4, 3))
    # move every float initializer into a Constant node, stored as float16
    graph = model.graph
    consts = []
    for t in list(graph.initializer):
        value = numpy_helper.to_array(t).astype(np.float16)
        consts.append(helper.make_node("Constant", [], [t.name], name=f"const_{t.name}",
                                       value=numpy_helper.from_array(value, t.name)))
    del graph.initializer[:]
    nodes = consts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    del graph.value_info[:]
    onnx.checker.check_model(model)
    net = to_network(model)
    scales = {0: np.array([1, 0, 2, 0, 1.0]), 2: np.array([0, 1, 1, 0.5])}
    new, new_net = remove_units(model, net, scales)
    values = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in new.graph.node if n.op_type == "Constant"}
    assert all(v.dtype == np.float16 for v in values.values())
    assert [n.op_type for n in new.graph.node].count("Constant") == len(consts)
    x = sample_inputs(model).astype(np.float16)
    ref = net.forward(x, scales=scales)
    assert_same(new_net.forward(x), ref, np.float16)
    assert_same(rewritten_logits(new, new_net, x), ref, np.float16)


@pytest.mark.parametrize("ir_version", [3, 8])
def test_initializers_listed_as_inputs_get_new_shapes(ir_version):
    g = GraphBuilder((6,))
    g.dense(5, style="matmul", bias=False)
    g.relu()
    g.dense(3, style="matmul", bias=False)
    model = g.model(opset=9)
    model.ir_version = ir_version
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    net = to_network(model)
    x = sample_inputs(model, 6)
    scales = {0: np.array([1, 0, 1, 0, 1.0])}
    comp = bias_compensation(net, x, scales)  # adds a bias initializer to the last MatMul
    new, _ = assert_rewrite_exact(model, net, scales, x, comp)
    onnx.checker.check_model(new, full_check=True)
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in new.graph.input}
    inits = {t.name: list(t.dims) for t in new.graph.initializer}
    assert len(inits) == 3
    if ir_version < 4:
        assert all(dims[name] == shape for name, shape in inits.items())
    else:
        assert all(dims[name] == shape for name, shape in inits.items() if name in dims)


def test_no_bias_layers_get_a_bias_for_compensation():
    g = GraphBuilder((6,), seed=3)
    g.dense(5, style="matmul", bias=False)
    g.relu()
    g.dense(4, style="gemm", bias=False)
    g.relu()
    g.dense(3, style="matmul", bias=False)
    model = g.model()
    net = to_network(model)
    x = sample_inputs(model, 8)
    scales = {0: np.array([1, 0, 1, 0, 1.0]), 2: np.array([1, 0, 1, 1.0])}
    comp = bias_compensation(net, x, scales)
    assert set(comp) == {2, 4} and np.all(comp[4] != 0)
    new, _ = assert_rewrite_exact(model, net, scales, x, comp)
    assert [n.op_type for n in new.graph.node] == ["MatMul", "Relu", "Gemm", "Relu", "MatMul", "Add"]
    assert new.graph.output[0].name == model.graph.output[0].name


@pytest.mark.parametrize("style", ["gemm", "matmul"])
def test_compensation_into_a_scalar_bias(style):
    g = GraphBuilder((6,), seed=1)
    g.dense(5)
    g.relu()
    w = g.const(g.weights(4, 5) if style == "gemm" else g.weights(4, 5).T.copy())
    scalar = g.const(np.array([0.5] if style == "gemm" else 0.5, np.float32), "b")
    if style == "gemm":
        g.node("Gemm", [w, scalar], transB=1)
    else:
        g.node("MatMul", [w])
        g.node("Add", [scalar])
    model = g.model()
    net = to_network(model)
    x = sample_inputs(model, 8)
    scales = {0: np.array([0, 1, 1, 1, 1.0])}
    new, _ = assert_rewrite_exact(model, net, scales, x, bias_compensation(net, x, scales))
    onnx.checker.check_model(new, full_check=True)
    assert (scalar in {t.name for t in new.graph.initializer}) == (style == "matmul")


def test_bias_compensation_dense_is_mean_times_weights():
    model = mlp(widths=(6, 5, 3))
    net = to_network(model)
    x = sample_inputs(model, 16)
    scales = {0: np.array([1, 0, 1, 0, 1.0])}
    comp = bias_compensation(net, x, scales)
    h = net.activations(x)[1]  # after the ReLU
    want = net.layers[2].weight[:, [1, 3]] @ h[:, [1, 3]].mean(axis=0)
    np.testing.assert_allclose(comp[2], want, atol=1e-12)


# dead units ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_dead_units_of_trained_models(kind):
    """The trained digits models have units that never fire on the calibration images: removing them leaves
    onnxruntime's outputs on those images unchanged."""
    net, model = load_network(ROOT / "models" / f"digits_{kind}.onnx")
    x = np.load(ROOT / "models" / f"digits_{kind}_calib.npz")["x"]
    dead = dead_units(net, interval_bounds(net, x, 1e-5))
    assert sum(int(d.sum()) for d in dead.values()) > 0
    new, new_net = remove_units(model, net, scales_from_keep({k: ~d for k, d in dead.items()}))
    before = run_tensors(model, net.input_name, x, [o.name for o in model.graph.output])
    after = run_tensors(new, net.input_name, x, [o.name for o in model.graph.output])
    for a, b in zip(before, after):
        assert_same(b, a)
    assert new_net.macs < net.macs


def test_dead_units_are_removed_without_changing_outputs():
    net, model = load_network(ROOT / "models" / "digits_mlp.onnx")
    # make some units dead on this data: push their biases far below zero
    model = onnx.ModelProto.FromString(model.SerializeToString())
    bias = next(t for t in model.graph.initializer if t.name == "fc2.bias")
    value = numpy_helper.to_array(bias).copy()
    value[::3] = -1e3
    bias.CopyFrom(numpy_helper.from_array(value, "fc2.bias"))
    net = to_network(model)
    x = np.load(ROOT / "models" / "digits_mlp_calib.npz")["x"]
    dead = dead_units(net, interval_bounds(net, x, 1e-5))
    assert dead[2].sum() >= len(value[::3])
    new, new_net = remove_units(model, net, scales_from_keep({k: ~d for k, d in dead.items()}))
    ref = net.forward(x)
    assert_same(rewritten_logits(new, new_net, x), ref)
    # over a whole input box the same holds, for any point of the box
    box = interval_bounds(net, np.full((1, 64), 0.5), 0.5)
    dead_box = dead_units(net, box)
    assert dead_box[2].sum() >= len(value[::3])
    new, new_net = remove_units(model, net, scales_from_keep({k: ~d for k, d in dead_box.items()}))
    points = np.random.default_rng(0).uniform(0, 1, (64, 64)).astype(np.float32)
    ref = net.forward(points)
    assert_same(rewritten_logits(new, new_net, points), ref)


def test_layer_without_relu_has_no_dead_units():
    g = GraphBuilder((4,))
    g.dense(3)
    g.dense(3)  # no ReLU between: negative values reach the next layer
    g.relu()
    g.dense(2)
    net = to_network(g.model())
    bounds = interval_bounds(net, np.zeros((1, 4)) - 100, 1e-5)
    dead = dead_units(net, bounds)
    assert not dead[0].any()


def test_all_dead_layer_keeps_one_unit():
    net = to_network(mlp(widths=(4, 3, 2)))
    bounds = interval_bounds(net, np.zeros((2, 4)), 1e-5)
    bounds.upper[0][:] = -1.0
    bounds.upper[0][:, 1] = -0.5
    bounds.lower[1][:] = bounds.upper[1][:] = 0.0  # what the ReLU after it gives
    dead = dead_units(net, bounds)
    assert dead[0].tolist() == [True, False, True]


# refusals --------------------------------------------------------------------------------------------------

def test_shared_weight_is_refused():
    g = GraphBuilder((5,))
    g.dense(5)
    g.relu()
    w = g.nodes[0].input[1]
    g.node("Gemm", [w], transB=1)  # reuses the first layer's weight
    g.relu()
    g.dense(3)
    model = g.model()
    net = to_network(model)
    with pytest.raises(UnsupportedModelError, match="shared|used by"):
        remove_units(model, net, {0: np.array([1, 0, 1, 1, 1.0])})
    # untouched layers may share tensors
    remove_units(model, net, {2: np.array([1, 1, 1, 1, 1.0])})


def test_units_mixed_into_one_channel_are_refused():
    g = GraphBuilder((6,))
    g.dense(8)
    g.relu()
    g.node("Reshape", [g.const(np.array([-1, 2, 2, 2], dtype=np.int64), "shape")])
    g.shape = (2, 2, 2)
    g.conv(3, kernel=1, pad=0)
    g.relu()
    g.flatten()
    g.dense(2)
    model = g.model()
    net = to_network(model)
    # the dependency map freezes the dense layer's units: they are mixed into the conv's input channels
    assert 0 not in net.scored_indices() and "mixes channels" in net.group(0).frozen
    with pytest.raises(ValueError, match="not a scored layer"):
        remove_units(model, net, {0: np.r_[0.0, np.ones(7)]})
    # removing the conv's channels is fine
    assert_rewrite_exact(model, net, {3: np.array([1, 0, 1.0])}, sample_inputs(model))


@pytest.mark.parametrize("scales, pattern", [
    ({0: np.zeros(10)}, "at least one"),
    ({0: np.ones(9)}, "10 units"),
    ({0: -np.ones(10)}, ">= 0"),
    ({4: np.ones(5)}, "not a scored layer"),
])
def test_bad_scales(scales, pattern):
    model = mlp()
    with pytest.raises(ValueError, match=pattern):
        remove_units(model, to_network(model), scales)


def test_rewrite_is_deterministic(tmp_path):
    net, model = load_network(ROOT / "tests" / "data" / "torch_dynamo_cnn.onnx")
    scales = half_scales(net)
    a, _ = remove_units(model, net, scales)
    b, _ = remove_units(model, net, scales)
    assert a.SerializeToString() == b.SerializeToString()
    write_model(a, tmp_path / "a.onnx", external_data=True)
    write_model(b, tmp_path / "b.onnx", external_data=True)
    assert (tmp_path / "a.onnx.data").read_bytes() == (tmp_path / "b.onnx.data").read_bytes()
    # the files differ only in the data file's name they point to
    text_a = (tmp_path / "a.onnx").read_bytes().replace(b"a.onnx.data", b"X.onnx.data")
    text_b = (tmp_path / "b.onnx").read_bytes().replace(b"b.onnx.data", b"X.onnx.data")
    assert text_a == text_b
