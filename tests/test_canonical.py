"""Exporter patterns of published files: the canonical passes are exact, the IR reads what they leave, the
rewrite of the canonical graph equals the masked IR, and the written model keeps the published interface."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxcrit import api, select
from onnxcrit.canonical import canonicalise
from onnxcrit.errors import UnsupportedModelError
from onnxcrit.frontend import load_network
from onnxcrit.measure import stored_params
from onnxcrit.rewrite import remove_units
from onnxcrit.tolerance import assert_same
from onnxcrit.validate import run_tensors

from .onnx_builders import PUBLISHED_PATTERNS, GraphBuilder, _finish, mlp, sample_inputs

# what each pattern is read through (api.recognised_patterns)
EXPECTED = {
    "normalised_cnn": ["input_affine"],
    "normalised_identity": ["input_affine"],
    "rescaled_mlp": ["input_affine"],
    "nhwc_cnn": ["absorb_flatten_transpose", "input_transpose"],
    "nhwc_cnn_batch1": ["absorb_flatten_transpose", "input_transpose", "fixed_batch_1"],
    "cntk_cnn": ["fold_constants", "fixed_batch_1"],
    "torch04_cnn_opset9": ["fold_constants", "merge_zero_pad", "fixed_batch_1"],
    "torch04_cnn_opset11": ["fold_constants", "merge_zero_pad", "fixed_batch_1"],
    "conv_head_gap": ["convolutional_head"],
    "conv_head_reshape": ["convolutional_head"],
    "relu_logits_mlp": [],
}
NAMES = sorted(PUBLISHED_PATTERNS)


def interface(model: onnx.ModelProto):
    """Names, element types and declared dimensions of the graph's inputs and outputs."""
    inits = {t.name for t in model.graph.initializer}

    def dims(vi):
        return [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
    return ([(vi.name, vi.type.tensor_type.elem_type, dims(vi)) for vi in model.graph.input if vi.name not in inits],
            [(vi.name, vi.type.tensor_type.elem_type, dims(vi)) for vi in model.graph.output])


def outputs(model, net, x):
    return run_tensors(model, net.input_name, x, [o.name for o in model.graph.output])


@pytest.mark.parametrize("name", NAMES)
def test_ir_computes_the_published_file(name):
    published = PUBLISHED_PATTERNS[name]()
    net, _ = load_network(published)
    x = sample_inputs(published, 7)  # 7: a fixed batch of 1 runs seven times, a free one once
    assert_same(net.forward(x), run_tensors(published, net.input_name, x, [net.logits_name])[0])
    assert api.recognised_patterns(net) == EXPECTED[name]


@pytest.mark.parametrize("name", NAMES)
def test_canonical_model_is_exact_and_keeps_the_interface(name):
    published = PUBLISHED_PATTERNS[name]()
    before = published.SerializeToString()
    canonical = canonicalise(published)
    assert published.SerializeToString() == before, "canonicalise changed its input"
    onnx.checker.check_model(canonical.model, full_check=True)
    assert interface(canonical.model) == interface(published)
    assert canonical.model.opset_import == published.opset_import
    net, _ = load_network(published)
    x = sample_inputs(published, 5)
    for a, b in zip(outputs(published, net, x), outputs(canonical.model, net, x)):
        assert_same(b, a)
    if not canonical.passes:
        assert canonical.model is published  # nothing to do: the file is used as it is


@pytest.mark.parametrize("name", NAMES)
def test_rewrite_equals_masked_ir_and_keeps_the_published_interface(name):
    published = PUBLISHED_PATTERNS[name]()
    net, model = load_network(published)
    rng = np.random.default_rng(1)
    scales = {}
    for k in net.scored_indices():
        s = rng.uniform(0.2, 1.5, net.layers[k].units)
        s[rng.permutation(len(s))[:len(s) // 2]] = 0.0
        scales[k] = s
    new, new_net = remove_units(model, net, scales)
    x = sample_inputs(published, 5, seed=3)
    assert_same(run_tensors(new, new_net.input_name, x, [new_net.logits_name])[0], net.forward(x, scales=scales))
    assert interface(new) == interface(published)
    assert sum(stored_params(new, new_net)) < sum(stored_params(model, net))


@pytest.mark.parametrize("name", NAMES)
def test_optimize_takes_the_published_file_as_it_is(name, tmp_path):
    published = PUBLISHED_PATTERNS[name]()
    path = tmp_path / f"{name}.onnx"
    onnx.save(published, path)
    before = path.read_bytes()
    net, _ = load_network(published)
    x = sample_inputs(published, 60, seed=5)
    y = net.forward(x).argmax(axis=1)
    result = api.optimize(path, (x[:30], y[:30]), eval_data=(x[30:], y[30:]), threshold=0.1, measure_latency=False)
    assert path.read_bytes() == before
    report = result.report
    assert report["canonicalised"] == EXPECTED[name]
    assert report["max_abs_vs_masked_ir"] <= report["masked_ir_tolerance"]
    assert interface(result.model) == interface(published)
    assert report["params_after"] == sum(stored_params(result.model, result.network))


def test_a_pad_before_max_pooling_is_not_merged():
    """MaxPool pads with -inf, an explicit Pad with zeros: merging would change values, so the Pad stays and
    the front end refuses it in one line."""
    g = GraphBuilder((1, 6, 6))
    g.conv(3, pad=0)
    g.node("Pad", [g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")], mode="constant")
    g.shape = (3, 6, 6)
    g.maxpool()
    g.flatten()
    g.dense(4)
    g.relu()
    g.dense(3)
    model = _finish(g, 13)
    assert canonicalise(model).passes == []
    with pytest.raises(UnsupportedModelError, match="Pad") as err:
        load_network(model)
    assert "\n" not in str(err.value)


def test_average_pool_not_counting_its_own_padding_keeps_the_pad():
    g = GraphBuilder((2, 6, 6))
    g.conv(3, pad=1)
    g.relu()
    g.node("Pad", [g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")], mode="constant")
    g.node("AveragePool", [], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0)
    g.shape = (3, 5, 5)
    g.flatten()
    g.dense(3)
    model = _finish(g, 13)
    assert "merge_zero_pad" not in canonicalise(model).passes


def test_normalisation_between_layers_is_refused_in_one_line():
    g = GraphBuilder((6,))
    g.dense(5)
    g.relu()
    g.node("Sub", [g.const(np.float32(0.5), "shift")])
    g.dense(3)
    with pytest.raises(UnsupportedModelError, match="Sub of a constant is supported before the first") as err:
        load_network(_finish(g, 13))
    assert "\n" not in str(err.value)


def test_a_layer_whose_kept_units_all_score_zero_stays_valid():
    """A wide MLP solved on many images once scored a whole layer 0, and deploying the kept unit at its score
    removed the layer's last unit (a ValueError traceback): the kept unit is deployed at full strength."""
    model = mlp(widths=(12, 10, 8, 5))
    net, _ = load_network(model)
    scores = {k: np.zeros(net.layers[k].units) for k in net.scored_indices()}
    scores[net.scored_indices()[0]][:3] = 0.5
    keep = select.keep_by_threshold(net, scores, 0.1)
    scales = select.to_scales(scores, keep, rescale=True)
    assert all(s.any() for s in scales.values())
    new, new_net = remove_units(model, net, scales)
    x = sample_inputs(model, 5)
    assert_same(run_tensors(new, new_net.input_name, x, [new_net.logits_name])[0], net.forward(x, scales=scales))


def test_fixed_batch_models_are_run_one_declared_batch_at_a_time():
    """A [1, ...] input is fed in batches of 1 (onnxruntime refuses more), a last partial batch padded."""
    published = PUBLISHED_PATTERNS["cntk_cnn"]()
    net, model = load_network(published)
    assert net.fixed_batch == 1
    x = sample_inputs(published, 3)
    logits = run_tensors(model, net.input_name, x, [net.logits_name])[0]
    assert logits.shape == (3, 5)
    two = onnx.ModelProto()
    two.CopyFrom(model)
    for vi in (two.graph.input[0], two.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 2
    two.graph.node[[n.op_type for n in two.graph.node].index("Reshape")].input[1] = "two_by_64"
    two.graph.initializer.append(onnx.numpy_helper.from_array(np.array([2, 64], np.int64), "two_by_64"))
    assert_same(run_tensors(two, net.input_name, x, [net.logits_name])[0], logits)  # 3 = 2 + 1 padded
