"""Front end: recognised layers and the IR forward pass against onnxruntime on every supported style."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper

from onnxcrit.errors import InputError, UnsupportedModelError
from onnxcrit.frontend import load_network, to_network
from onnxcrit.tolerance import assert_same
from onnxcrit.validate import run_tensors

from .onnx_builders import GraphBuilder, cnn, mlp, sample_inputs


def assert_matches_ort(model: onnx.ModelProto, n: int = 6):
    net = to_network(model)
    x = sample_inputs(model, n)
    ref = run_tensors(model, net.input_name, x, [net.logits_name])[0]
    ours = net.forward(x)
    assert_same(ours, ref, net.input_dtype)
    return net


@pytest.mark.parametrize("style", ["gemm", "gemm_t0", "gemm_alpha", "matmul", "matmul_rev", "matmul_2d"])
def test_dense_styles_match_onnxruntime(style):
    net = assert_matches_ort(mlp(style=style))
    assert [l.kind for l in net.layers] == ["dense", "relu", "dense", "relu", "dense"]
    assert [l.units for l in net.layers if l.kind == "dense"] == [10, 8, 5]


def test_matmul_without_bias():
    g = GraphBuilder((6,))
    g.dense(5, style="matmul", bias=False)
    g.relu()
    g.dense(3, style="matmul", bias=False)
    net = assert_matches_ort(g.model())
    assert np.all(net.layers[0].bias == 0)


def test_dense_batchnorm_dropout_identity_folded():
    net = assert_matches_ort(mlp(bn=True, dropout=True))
    assert [l.kind for l in net.layers] == ["dense", "relu", "dense", "relu", "dense"]
    # the folded BatchNorm's four tensors are indexed by the first layer's units
    assert len(net.layers[0].out_refs) == 2 + 4


@pytest.mark.parametrize("bias", ["input", "add", "none"])
@pytest.mark.parametrize("pool", ["max", "avg", "global", None])
def test_cnn_styles_match_onnxruntime(bias, pool):
    assert_matches_ort(cnn(pool=pool, bias=bias))


@pytest.mark.parametrize("flatten", ["flatten", "reshape_const", "reshape_zero"])
def test_flatten_forms(flatten):
    net = assert_matches_ort(cnn(flatten=flatten, bn=True))
    reshape = [l for l in net.layers if l.kind == "reshape"][0]
    assert reshape.out_shape == (4 * 2 * 2,)
    assert (reshape.shape_node is not None) == (flatten == "reshape_const")


def test_reshape_attribute_form_opset1():
    """Opset 1-4 Reshape carries its shape as an attribute; onnxruntime cannot run opset < 7, so compare the
    IR with the same weights in the opset-5 input form."""
    old = cnn(flatten="reshape_attr", opset=4, pool="max", bias="add")
    new = cnn(flatten="reshape_const", opset=17, pool="max", bias="add")
    net_old, net_new = to_network(old), to_network(new)
    x = sample_inputs(new)
    ref = run_tensors(new, net_new.input_name, x, [net_new.logits_name])[0]
    assert_same(net_old.forward(x), ref)
    assert net_old.layers[[l.kind for l in net_old.layers].index("reshape")].shape_node is not None


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_auto_pad(auto_pad, stride):
    g = GraphBuilder((2, 7, 7))
    g.conv(3, kernel=3, stride=stride, auto_pad=auto_pad)
    g.relu()
    g.flatten()
    g.dense(4)
    assert_matches_ort(g.model())


def test_conv_dilation_stride_and_ceil_maxpool():
    g = GraphBuilder((1, 11, 11))
    g.conv(3, kernel=3, stride=2, pad=2, dilation=2)
    g.relu()
    g.node("MaxPool", [], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    g.shape = (3, 3, 3)
    g.flatten()
    g.dense(4)
    assert_matches_ort(g.model())


def test_tails_are_kept_and_ignored():
    for tail in ("softmax", "logsoftmax", "argmax"):
        net = assert_matches_ort(mlp(tail=tail))
        assert net.tail_ops[0].lower() == tail


def test_params_and_macs():
    net = to_network(cnn(channels=(3, 4), dense=(6, 5), pool="max"))
    conv1, conv2 = [l for l in net.layers if l.kind == "conv"]
    assert conv1.params == 3 * 1 * 9 + 3 and conv1.macs == 3 * 9 * 8 * 8
    assert conv2.params == 4 * 3 * 9 + 4 and conv2.macs == 4 * 3 * 9 * 4 * 4
    inits = sum(int(np.prod(t.dims)) for t in cnn(channels=(3, 4), dense=(6, 5), pool="max").graph.initializer)
    assert net.params == inits


def test_cast_input_and_external_data(tmp_path):
    model = mlp()
    onnx.save(mlp(), tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    net, loaded = load_network(tmp_path / "m.onnx")
    x = sample_inputs(model)
    np.testing.assert_allclose(net.forward(x), to_network(model).forward(x), atol=0, rtol=0)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(InputError, match="external data file 'm.onnx.data'"):
        load_network(tmp_path / "m.onnx")


# refusals --------------------------------------------------------------------------------------------

def _residual_model():
    g = GraphBuilder((6,))
    g.dense(6)
    g.relu()
    skip = g.tensor
    g.dense(6)
    g.nodes.append(helper.make_node("Add", [g.tensor, skip], ["res"], name="residual_add"))
    g.tensor = "res"
    g.relu()
    g.dense(3)
    return g.model()


def _concat_model():
    g = GraphBuilder((6,))
    g.dense(6)
    g.relu()
    a = g.tensor
    g.nodes.append(helper.make_node("Concat", [a, a], ["cat"], name="the_concat", axis=1))
    g.tensor, g.shape = "cat", (12,)
    g.dense(3)
    return g.model()


def _sigmoid_model():
    g = GraphBuilder((6,))
    g.dense(6)
    g.node("Sigmoid", [], prefix="act")
    g.dense(3)
    return g.model()


def _grouped_conv_model():
    g = GraphBuilder((2, 6, 6))
    w = g.const(np.ones((4, 1, 3, 3), np.float32))
    g.node("Conv", [w], prefix="dw", kernel_shape=[3, 3], group=2)
    g.shape = (4, 4, 4)
    g.relu()
    g.flatten()
    g.dense(3)
    return g.model()


def _product_model():
    g = GraphBuilder((6,))
    g.dense(6)
    g.relu()
    skip = g.tensor
    g.dense(6)
    g.nodes.append(helper.make_node("Mul", [g.tensor, skip], ["prod"], name="gate"))
    g.tensor = "prod"
    g.dense(3)
    return g.model()


def _spatial_concat_model():
    g = GraphBuilder((2, 4, 4))
    g.conv(3)
    g.relu()
    a = g.tensor
    g.nodes.append(helper.make_node("Concat", [a, a], ["cat"], name="rows", axis=2))
    g.tensor, g.shape = "cat", (3, 4, 2)
    g.flatten()
    g.dense(3)
    return g.model()


def _two_inputs_model():
    model = mlp()
    model.graph.input.append(helper.make_tensor_value_info("other", onnx.TensorProto.FLOAT, [1, 3]))
    return model


@pytest.mark.parametrize("build, pattern", [
    (_product_model, r"Mul node 'gate'.*several activations"),
    (_spatial_concat_model, r"Concat node 'rows'.*axis 2"),
    (_sigmoid_model, r"Sigmoid node 'act_\d+'.*only Relu"),
    (_two_inputs_model, r"2 inputs"),
    (lambda: mlp(relu=False), r"no Relu"),
])
def test_refusals_name_the_problem(build, pattern):
    with pytest.raises(UnsupportedModelError, match=pattern) as info:
        to_network(build())
    assert "\n" not in str(info.value)


def test_residual_concat_and_grouped_graphs_are_read():
    """A residual Add couples the two layers it joins; a Concat of one tensor twice gives each unit two columns of
    the next layer; a grouped (not depthwise) conv freezes the channels it touches."""
    net = to_network(_residual_model())
    assert [layer.kind for layer in net.layers] == ["dense", "relu", "dense", "add", "relu", "dense"]
    assert net.inputs_of(3) == (2, 1)
    (stage,) = net.deps.prunable()
    assert sorted(stage.producers) == [0, 2] and stage.units == 6 and net.scored_indices() == [0]
    net = to_network(_concat_model())
    keys, units = net.input_columns(len(net.layers) - 1)
    assert keys.tolist() == [0] * 12 and units.tolist() == list(range(6)) * 2
    net = to_network(_grouped_conv_model())
    assert net.layers[0].group == 2 and net.scored_indices() == []
    net, _ = load_network(Path(__file__).parent / "data" / "branching" / "torch_legacy_grouped_conv.onnx")
    assert net.groups[0].frozen == "grouped convolution '/conv2/Conv' (group 2)" and net.scored_indices() == []


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_network(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="not a file"):
        load_network(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        load_network(tmp_path / "empty.onnx")
    (tmp_path / "text.onnx").write_text("hello, this is not a model\n")
    with pytest.raises(InputError, match="not"):
        load_network(tmp_path / "text.onnx")
    data = mlp().SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError):
        load_network(tmp_path / "cut.onnx")


# property test -----------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       style=st.sampled_from(["gemm", "gemm_t0", "matmul", "matmul_rev"]))
def test_random_mlps_match_onnxruntime(seed, hidden, style):
    assert_matches_ort(mlp(widths=(7, *hidden, 4), style=style, seed=seed))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), channels=st.lists(st.integers(1, 5), min_size=1, max_size=2),
       pool=st.sampled_from(["max", "avg", "global", None]), bn=st.booleans(),
       kernel=st.sampled_from([1, 2, 3]), pad=st.integers(0, 1))
def test_random_cnns_match_onnxruntime(seed, channels, pool, bn, kernel, pad):
    assert_matches_ort(cnn(channels=tuple(channels), pool=pool, bn=bn, seed=seed, kernel=kernel, pad=pad))


# files written by the real exporters ----------------------------------------------------------------------------

from .corpus import EXPORTED, ROOT  # noqa: E402


@pytest.mark.parametrize("path", EXPORTED, ids=lambda p: p.name)
def test_exported_files_match_onnxruntime(path):
    """torch legacy (Gemm, BatchNorm, Dropout, MatMul without bias), torch dynamo (external .data, Reshape with
    allowzero), skl2onnx (MatMul+Add, Softmax/ArgMax/ArrayFeatureExtractor tail)."""
    net, model = load_network(path)
    sample = path.with_name(path.stem + "_x.npz")
    x = np.load(sample)["x"] if sample.exists() else np.load(path.with_name(path.stem + "_eval.npz"))["x"][:64]
    ref = run_tensors(model, net.input_name, x, [net.logits_name])[0]
    assert_same(net.forward(x), ref, net.input_dtype)


def test_exporter_specifics_are_recognised():
    bn_net, bn_model = load_network(ROOT / "tests" / "data" / "torch_legacy_cnn_bn.onnx")
    assert sum(n.op_type == "BatchNormalization" for n in bn_model.graph.node) == 2
    assert [l.kind for l in bn_net.layers if l.kind in ("conv", "dense")] == ["conv", "conv", "dense"]
    skl_net, _ = load_network(ROOT / "tests" / "data" / "skl_mlp.onnx")
    assert skl_net.tail_ops[0] == "Softmax" and "ArrayFeatureExtractor" in skl_net.tail_ops
    dyn_net, dyn_model = load_network(ROOT / "tests" / "data" / "torch_dynamo_cnn.onnx")
    reshape = [l for l in dyn_net.layers if l.kind == "reshape"][0]
    assert reshape.shape_node is not None  # its target [-1, 64] spells out a unit count


# layout no-ops --------------------------------------------------------------------------------------------------

def _with_layout_ops(perm):
    g = GraphBuilder((2, 4, 4))
    g.conv(3, kernel=3, pad=1)
    g.relu()
    g.global_avgpool()  # [3, 1, 1]
    g.node("Transpose", [], perm=perm)
    g.shape = tuple(g.shape[p - 1] for p in perm[1:])
    g.node("Squeeze", [g.const(np.array([2, 3], dtype=np.int64), "axes")])
    g.shape = (3,)
    g.node("Unsqueeze", [g.const(np.array([2], dtype=np.int64), "axes")])
    g.node("Squeeze", [g.const(np.array([2], dtype=np.int64), "axes")])
    g.dense(4)
    return g.model()


def test_squeeze_unsqueeze_and_layout_free_transpose():
    net = assert_matches_ort(_with_layout_ops([0, 1, 3, 2]))  # swaps two size-1 axes: no data moves
    assert [l.kind for l in net.layers].count("reshape") == 4


def test_transpose_that_moves_data_is_refused():
    g = GraphBuilder((2, 4, 4))
    g.conv(3, kernel=3, pad=1)
    g.relu()
    g.node("Transpose", [], perm=[0, 2, 3, 1], prefix="to_nhwc")
    g.shape = (4, 4, 3)
    g.flatten()
    g.dense(4)
    with pytest.raises(UnsupportedModelError, match=r"Transpose node 'to_nhwc_\d+'.*changes the memory layout"):
        to_network(g.model())


def _view_model(rest):
    """Shape -> Gather -> Unsqueeze -> Concat(rest) -> Reshape, as torch writes x.view(x.size(0), ...)."""
    g = GraphBuilder((2, 4, 4))
    g.conv(3, kernel=3, pad=1)
    g.relu()
    x = g.tensor
    g.nodes += [
        helper.make_node("Shape", [x], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", g.const(np.array(0, dtype=np.int64), "idx")], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", g.const(np.array([0], dtype=np.int64), "ax")], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", g.const(np.array(rest, dtype=np.int64), "rest")], ["target"], name="cat",
                         axis=0),
        helper.make_node("Reshape", [x, "target"], ["flat"], name="view"),
    ]
    g.tensor, g.shape = "flat", (48,)
    g.dense(5)
    return g.model()


def test_view_with_computed_batch_is_a_flatten():
    net = assert_matches_ort(_view_model([-1]))
    reshape = [l for l in net.layers if l.kind == "reshape"][0]
    assert reshape.out_shape == (48,) and reshape.shape_node is None


def test_view_with_computed_sizes_gets_a_constant_target_when_units_go():
    """x.view(x.size(0), 48) (and Keras 3's flatten) computes a target that spells out the size: the rewrite
    replaces the computation by a constant target for the smaller layer, and drops the Shape branch."""
    from onnxcrit.rewrite import remove_units
    model = _view_model([48])
    net = assert_matches_ort(model)
    reshape = [l for l in net.layers if l.kind == "reshape"][0]
    assert reshape.shape_node == "flat" and reshape.computed_target == (0, 48)
    k = net.scored_indices()[0]  # the conv before the view
    scales = {k: np.r_[0.0, np.ones(net.layers[k].units - 1)]}
    new, new_net = remove_units(model, net, scales)
    assert "Shape" not in [n.op_type for n in new.graph.node]
    x = sample_inputs(model, 5)
    assert_same(run_tensors(new, new_net.input_name, x, [new_net.logits_name])[0], net.forward(x, scales=scales))
