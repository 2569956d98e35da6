"""Branching graphs (residual Add, Concat on channels, depthwise and grouped convs): the IR reads them, and the
rewrite cuts coupled channel groups out of them exactly (METHOD.md section 7).

Property tests run on random graphs from tests/dag_builders.py; the hand-written ones on the trained files in
tests/data/branching/ (its README lists them). A group is named by the Conv/Gemm nodes whose output units it
removes: `producers` finds them through the public API alone (remove one unit of the group, see which weights
lost a row), so these tests do not depend on how the IR stores a group.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st

from onnxcrit import load_network, remove_units
from onnxcrit.measure import stored_params
from onnxcrit.tolerance import assert_same
from onnxcrit.validate import run_tensors

from .corpus import ROOT
from .dag_builders import BIASES, BLOCKS, concat_depthwise_cnn, grouped_cnn, random_cnn, random_mlp, sample_inputs
from .test_rewrite import random_scales

BRANCHING_DIR = ROOT / "tests" / "data" / "branching"
BRANCHING = sorted(BRANCHING_DIR.glob("*.onnx"))




# helpers ------------------------------------------------------------------------------------------------

def ort_logits(model, x, name=None):
    """The model's (first) graph output, or tensor `name`, computed by onnxruntime."""
    name = name or model.graph.output[0].name
    return run_tensors(model, model.graph.input[0].name, x, [name])[0]


def float_elements(model) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def linear_nodes(model) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]


def out_units(model) -> dict[str, int]:
    """Per Conv/Gemm/MatMul node name: its output units, read from its weight initializer."""
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    units = {}
    for node in linear_nodes(model):
        w = dims[node.input[1]]
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            units[node.name] = w[0] if trans_b else w[1]
        elif node.op_type == "MatMul":
            units[node.name] = w[1]
        else:
            units[node.name] = w[0]
    return units


def producers(model, net, k) -> set[str]:
    """The Conv/Gemm/MatMul nodes that lose an output unit when unit 0 of group k is removed."""
    scales = {k: np.r_[0.0, np.ones(net.layers[k].units - 1)]}
    new, _ = remove_units(model, net, scales)
    before, after = out_units(model), out_units(new)
    return {name for name in before if after[name] < before[name]}


def groups_by_index(model, net) -> list[set[int]]:
    """Every scored group as the set of positions (in graph order among Conv/Gemm/MatMul nodes) of its producers."""
    order = {n.name: i for i, n in enumerate(linear_nodes(model))}
    return sorted((set(order[name] for name in producers(model, net, k)) for k in net.scored_indices()),
                  key=min)




def check_rewrite(model, net, scales, x):
    """remove_units: valid file; onnxruntime == masked IR; group widths as masked; parameters as stored."""
    before = model.SerializeToString()
    new, new_net = remove_units(model, net, scales)
    assert model.SerializeToString() == before, "remove_units changed its input model"
    onnx.checker.check_model(new, full_check=True)
    ref = net.forward(x, scales=scales)
    got = ort_logits(new, x, net.logits_name)
    assert_same(got, ref, net.input_dtype)
    assert_same(new_net.forward(x), got, net.input_dtype)
    for k, factor in scales.items():
        assert new_net.layers[k].units == int(np.count_nonzero(factor)), net.layers[k].name
    # every float initializer of these models belongs to a layer: the counted parameters are all of them
    # (`Network.params` counts the folded IR: a zero bias where the file has none, BatchNorm folded)
    assert sum(stored_params(new, new_net)) == float_elements(new)
    return new, new_net


def build(spec):
    kind = spec.pop("kind")
    return random_cnn(**spec) if kind == "cnn" else random_mlp(**spec)


CNN_SPECS = st.fixed_dictionaries(dict(
    kind=st.just("cnn"), seed=st.integers(0, 10_000),
    blocks=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4).map(tuple),
    head=st.sampled_from(["gap", "dense"]), in_channels=st.sampled_from([1, 3]),
    bias=st.sampled_from([*BIASES, "mixed"])))
MLP_SPECS = st.fixed_dictionaries(dict(
    kind=st.just("mlp"), seed=st.integers(0, 10_000), blocks=st.integers(1, 2),
    bias=st.sampled_from([*BIASES, "mixed"]), style=st.sampled_from(["gemm", "matmul"])))
SPECS = st.one_of(CNN_SPECS, CNN_SPECS, CNN_SPECS, MLP_SPECS)  # mostly conv nets


# the builders themselves (run today) --------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(spec=SPECS)
def test_random_dags_are_valid_onnx(spec):
    """check_model(full_check) passes inside the builder; onnxruntime runs the model at batch 3 and 1."""
    model = build(dict(spec))
    x = sample_inputs(model, 3)
    y = ort_logits(model, x)
    assert y.shape == (3, 3) and np.all(np.isfinite(y))
    np.testing.assert_allclose(ort_logits(model, x[:1]), y[:1], rtol=1e-5, atol=1e-5)


def test_builders_write_the_branching_ops():
    ops = lambda m: [n.op_type for n in m.graph.node]  # noqa: E731
    groups = lambda m: [a.i for n in m.graph.node for a in n.attribute if a.name == "group"]  # noqa: E731
    assert ops(random_cnn(blocks=("basic",))).count("Add") == 1
    assert ops(random_cnn(blocks=("down2",), bias="bn")).count("BatchNormalization") == 4
    assert "Concat" in ops(random_cnn(blocks=("fire",)))
    dw = random_cnn(blocks=("dwsep",), stem=5)
    assert 5 in groups(dw)
    assert ops(random_cnn(blocks=("plain",), bias="add")).count("Add") == 2
    assert ops(random_mlp(style="matmul", bias="add")).count("MatMul") == 4
    assert sorted(set(groups(grouped_cnn()))) == [1, 2]


@pytest.mark.parametrize("path", BRANCHING, ids=lambda p: p.name)
def test_corpus_files_run_in_onnxruntime(path):
    ev = np.load(path.with_name(path.stem + "_eval.npz"))
    logits = ort_logits(onnx.load(path), ev["x"])
    assert logits.shape == (len(ev["y"]), 10)
    assert (logits.argmax(1) == ev["y"]).mean() >= 0.9


# property tests (need DAG support) -----------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(spec=SPECS)
def test_random_dags_ir_equals_onnxruntime(spec):
    model = build(dict(spec))
    net, _ = load_network(model)
    x = sample_inputs(model, 5, seed=spec["seed"])
    assert_same(net.forward(x), ort_logits(model, x), net.input_dtype)


@settings(max_examples=40, deadline=None)
@given(spec=SPECS, positive=st.booleans(), data=st.data())
def test_random_dags_rewrite_exactly(spec, positive, data):
    model = build(dict(spec))
    net, canonical = load_network(model)
    scales = random_scales(net, data, positive)
    check_rewrite(canonical, net, scales, sample_inputs(model, 5, seed=spec["seed"]))


@settings(max_examples=25, deadline=None)
@given(spec=SPECS, how=st.sampled_from(["empty", "ones"]))
def test_removing_nothing_is_deterministic(spec, how):
    model = build(dict(spec))
    net, canonical = load_network(model)
    scales = {} if how == "empty" else {k: np.ones(net.layers[k].units) for k in net.scored_indices()}
    a, _ = remove_units(canonical, net, scales)
    b, _ = remove_units(canonical, net, scales)
    assert a.SerializeToString() == b.SerializeToString()
    x = sample_inputs(model, 5, seed=spec["seed"])
    out_a, out_b = ort_logits(a, x, net.logits_name), ort_logits(b, x, net.logits_name)
    assert out_a.tobytes() == out_b.tobytes()
    assert out_a.tobytes() == ort_logits(canonical, x, net.logits_name).tobytes()
    assert_same(out_a, ort_logits(model, x), net.input_dtype)


# the trained corpus (need DAG support) -------------------------------------------------------------------

@pytest.mark.parametrize("path", BRANCHING, ids=lambda p: p.name)
def test_corpus_ir_equals_onnxruntime(path):
    net, _ = load_network(path)
    ev = np.load(path.with_name(path.stem + "_eval.npz"))
    onnx_logits = ort_logits(onnx.load(path), ev["x"])
    assert_same(net.forward(ev["x"]), onnx_logits, net.input_dtype)
    assert (net.forward(ev["x"]).argmax(1) == ev["y"]).mean() >= 0.9


@pytest.mark.parametrize("path", BRANCHING, ids=lambda p: p.name)
def test_corpus_every_other_unit_removed(path):
    net, model = load_network(path)
    scales = {k: (np.arange(net.layers[k].units) % 2 == 0).astype(np.float64) for k in net.scored_indices()}
    x = np.load(path.with_name(path.stem + "_calib.npz"))["x"]
    new, _ = remove_units(model, net, scales)
    onnx.checker.check_model(new, full_check=True)
    assert_same(ort_logits(new, x, net.logits_name), net.forward(x, scales=scales), net.input_dtype)
    assert float_elements(new) < float_elements(model) or not scales


# groups: positions among the Conv/Gemm nodes in graph order of every scored group's producers
EXPECTED_GROUPS = {
    # identity shortcuts: the stem and every block's last conv are one group (one stage)
    "torch_legacy_resnet_basic": [{0, 2, 4}, {1}, {3}],
    "torch_dynamo_resnet_basic": [{0, 2, 4}, {1}, {3}],
    # stem | downsample 1x1, block 1 conv2, block 2 conv2 | block convs 1
    "torch_legacy_resnet_downsample": [{0}, {1, 3, 5}, {2}, {4}],
    "torch_dynamo_resnet_downsample": [{0}, {1, 3, 5}, {2}, {4}],
    "torch_legacy_resnet8": [{0, 2}, {1}, {3, 5}, {4}, {6, 8}, {7}],
    # Concat inputs are separate groups (expand 1x1 and expand 3x3 each on their own)
    "torch_legacy_squeezenet_allconv": [{0}, {1}, {2}, {3}, {4}, {5}, {6}],
    "torch_legacy_squeezenet_dense": [{0}, {1}, {2}, {3}, {4}, {5}, {6}],
    "torch_legacy_inception": [{0}, {1}, {2}, {3}, {4}],
    # the depthwise conv follows its input group (it loses the same channels, owns no group)
    "torch_legacy_mobilenet_dwsep": [{0, 1}, {2, 3}, {4}],
    "torch_legacy_mlp_residual": [{0, 2}, {1}],
    # every conv touches a group=2 conv: all frozen
    "torch_legacy_grouped_conv": [],
    "torch_dynamo_squeezenet_allconv": [{0}, {1}, {2}, {3}, {4}, {5}, {6}],
    "torch_dynamo_mobilenet_dwsep": [{0, 1}, {2, 3}, {4}],
    # tf2onnx: graph order stem, b1 conv1, b1 conv2, b2 conv1, b2 conv2, b2 shortcut 1x1, fc (MatMul)
    "keras3_resnet": [{0, 2}, {1}, {3}, {4, 5}],
    # expand 3x3 comes before expand 1x1 in graph order (the Concat reads 1x1 first)
    "keras3_fire": [{0}, {1}, {2}, {3}, {4}, {5}, {6}],
    # the depthwise convs' BatchNorm stays as Mul + Add after them
    "keras3_mobilenet": [{0, 1}, {2, 3}, {4}],
}


def test_expected_groups_cover_the_corpus():
    assert {p.stem for p in BRANCHING} == set(EXPECTED_GROUPS)


@pytest.mark.parametrize("name", sorted(EXPECTED_GROUPS))
def test_corpus_groups(name):
    net, model = load_network(BRANCHING_DIR / f"{name}.onnx")
    assert groups_by_index(model, net) == EXPECTED_GROUPS[name]
    nodes = linear_nodes(model)
    for k in net.scored_indices():
        # the key is a layer of the group: one of its producers
        assert set(net.layers[k].nodes) & producers(model, net, k), net.layers[k].name
        # the output layer never loses units
        assert nodes[-1].name not in producers(model, net, k)


def test_depthwise_conv_group_attribute_follows_the_kept_channels():
    net, model = load_network(BRANCHING_DIR / "torch_legacy_mobilenet_dwsep.onnx")
    stem = min(net.scored_indices())
    scales = {stem: (np.arange(16) % 2 == 0).astype(np.float64)}
    x = np.load(BRANCHING_DIR / "torch_legacy_mobilenet_dwsep_calib.npz")["x"]
    new, _ = check_rewrite(model, net, scales, x)
    dw = next(n for n in new.graph.node if n.name == "/dw1/dw1.0/Conv")
    assert next(a.i for a in dw.attribute if a.name == "group") == 8
    dims = {t.name: list(t.dims) for t in new.graph.initializer}
    assert dims[dw.input[1]] == [8, 1, 3, 3]


def test_residual_stage_removal_shrinks_every_member():
    """Removing 3 of the 8 stage channels of resnet_basic: the stem, both blocks' conv2 lose 3 output channels,
    both blocks' conv1 and the fc lose 3 input channels; the result is exact."""
    net, model = load_network(BRANCHING_DIR / "torch_legacy_resnet_basic.onnx")
    stage = next(k for k in net.scored_indices() if "/conv1/Conv" in net.layers[k].nodes)
    scales = {stage: np.array([1, 0, 1, 0, 2.0, 1, 0.5, 0])}
    x = np.load(BRANCHING_DIR / "torch_legacy_resnet_basic_calib.npz")["x"]
    new, _ = check_rewrite(model, net, scales, x)
    dims = {t.name: list(t.dims) for t in new.graph.initializer}
    shape = {n.name: dims[n.input[1]] for n in linear_nodes(new)}
    assert shape["/conv1/Conv"][0] == 5
    for b in (0, 1):
        assert shape[f"/layers/layers.{b}/conv2/Conv"][0] == 5
        assert shape[f"/layers/layers.{b}/conv1/Conv"][1] == 5
    assert shape["/fc/Gemm"] == [10, 5]


def test_concat_offsets_after_removal():
    """fire1's expands (8 + 8 -> Concat 16) lose different numbers of channels; fire2's squeeze reads the
    concatenation at the new offsets."""
    net, model = load_network(BRANCHING_DIR / "torch_legacy_squeezenet_dense.onnx")
    by_node = {}
    for k in net.scored_indices():
        for name in net.layers[k].nodes:
            by_node[name] = k
    e1, e3 = by_node["/fire1/expand1x1/Conv"], by_node["/fire1/expand3x3/Conv"]
    scales = {e1: np.r_[np.zeros(5), np.ones(3)], e3: np.r_[1.0, np.zeros(6), 1.5]}
    x = np.load(BRANCHING_DIR / "torch_legacy_squeezenet_dense_calib.npz")["x"]
    new, _ = check_rewrite(model, net, scales, x)
    dims = {t.name: list(t.dims) for t in new.graph.initializer}
    squeeze = next(n for n in new.graph.node if n.name == "/fire2/squeeze/Conv")
    assert dims[squeeze.input[1]][1] == 3 + 2


def test_grouped_conv_freezes_only_the_groups_touching_it():
    """conv_b feeds a group=2 conv and conv_g is one: their groups are frozen; conv_a and conv_c are prunable."""
    model = grouped_cnn()
    net, canonical = load_network(model)
    order = [n.name for n in linear_nodes(canonical)]
    found = [{order[i] for i in g} for g in groups_by_index(canonical, net)]
    assert found == [{"conv_a"}, {"conv_c"}]
    x = sample_inputs(model, 5)
    assert_same(net.forward(x), ort_logits(model, x), net.input_dtype)
    scales = {k: np.r_[0.0, 2.0, np.ones(net.layers[k].units - 2)] for k in net.scored_indices()}
    check_rewrite(canonical, net, scales, x)


def test_residual_add_after_concat():
    """A fire module followed by an identity residual block: the Add couples the block's last conv with both
    expands (each at its offset in the Concat). Whatever the grouping, the rewrite must be exact."""
    model = random_cnn(seed=3, blocks=("fire", "basic"), head="dense", bias="mixed")
    net, canonical = load_network(model)
    x = sample_inputs(model, 6)
    assert_same(net.forward(x), ort_logits(model, x), net.input_dtype)
    scales = {k: (np.arange(net.layers[k].units) % 2 == 0).astype(np.float64) for k in net.scored_indices()}
    check_rewrite(canonical, net, scales, x)


def key_of(net, node_name):
    return next(k for k in net.scored_indices() if node_name in net.layers[k].nodes)


@pytest.mark.parametrize("cut", ["e1", "e3", "both"])
def test_depthwise_conv_after_concat(cut):
    """The depthwise conv reads a Concat: its channels are expand 1x1's 3 then expand 3x3's 2. Removing a channel
    of either group (or of both at once) removes it from the depthwise weight and bias, and `group` becomes the
    number of channels left in total (not one group's count)."""
    model = concat_depthwise_cnn()
    net, canonical = load_network(model)
    e1, e3 = key_of(net, "e1"), key_of(net, "e3")
    scales = {}
    if cut in ("e1", "both"):
        scales[e1] = np.array([1.0, 0.0, 2.0])
    if cut in ("e3", "both"):
        scales[e3] = np.array([0.0, 0.5])
    new, _ = check_rewrite(canonical, net, scales, sample_inputs(model, 6))
    left = 5 - {"e1": 1, "e3": 1, "both": 2}[cut]
    dw = next(n for n in new.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == left
    assert {t.name: list(t.dims) for t in new.graph.initializer}[dw.input[1]] == [left, 1, 3, 3]


@pytest.mark.parametrize("blocks", [("dwsep",), ("basic",), ("fire",)])
def test_per_channel_mul_add_between_layers(blocks):
    """tf2onnx leaves BatchNorm after a DepthwiseConv2D as Mul + Add of [1, C, 1, 1] constants (keras3_mobilenet):
    per-channel ops the channels pass through, to slice when channels go."""
    model = random_cnn(seed=5, blocks=blocks, bias="muladd")
    net, canonical = load_network(model)
    x = sample_inputs(model, 6)
    assert_same(net.forward(x), ort_logits(model, x), net.input_dtype)
    scales = {k: np.r_[0.0, 2.0, np.ones(net.layers[k].units - 2)] for k in net.scored_indices()
              if net.layers[k].units >= 2}
    check_rewrite(canonical, net, scales, x)


def test_corpus_has_its_data_files():
    for path in BRANCHING:
        for suffix in ("_calib.npz", "_eval.npz"):
            assert path.with_name(path.stem + suffix).exists(), path.name
    assert len(BRANCHING) >= 16
    assert all(Path(p).suffix == ".onnx" for p in BRANCHING)
