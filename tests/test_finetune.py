"""Fine-tuning and retraining: the trained ONNX keeps its graph and interface, runs in onnxruntime, learns."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("torch")
pytest.importorskip("onnx2torch")

from onnxcrit.data import load_data  # noqa: E402
from onnxcrit.errors import InputError  # noqa: E402
from onnxcrit.finetune import KEPT_UNITS_KEY, finetune, retrain  # noqa: E402
from onnxcrit.frontend import load_network  # noqa: E402
from onnxcrit.validate import session  # noqa: E402

from .onnx_builders import cnn  # noqa: E402

MLP, CNN, SKL = "models/digits_mlp.onnx", "models/digits_cnn.onnx", "tests/data/skl_mlp.onnx"
DATA = {MLP: "models/digits_mlp", CNN: "models/digits_cnn", SKL: "models/digits_mlp",
        "tests/data/torch_legacy_mlp.onnx": "models/digits_mlp",
        "tests/data/torch_dynamo_cnn.onnx": "models/digits_cnn",
        "tests/data/torch_legacy_cnn_bn.onnx": "models/digits_cnn"}


def _train(path):
    return DATA[path] + "_calib.npz"


def _eval(path):
    return DATA[path] + "_eval.npz"


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _without_initializers(model: onnx.ModelProto) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.initializer[:]
    return copy.SerializeToString()


def prune(path, fraction=0.4, seed=0) -> tuple[onnx.ModelProto, dict[str, list[int]]]:
    """A really smaller model: every hidden layer keeps a random `fraction` of its units (sliced initializers)."""
    net, proto = load_network(path)
    arrays = _inits(proto)
    rng = np.random.default_rng(seed)
    lin = net.linear_indices()
    kept, prev, prev_units = {}, None, 0
    for pos in lin:
        layer = net.layers[pos]
        if pos != lin[-1]:
            out = np.sort(rng.choice(layer.units, max(1, int(fraction * layer.units)), replace=False))
            kept[layer.name] = out.tolist()
            for ref in layer.out_refs:
                arrays[ref.tensor] = np.take(arrays[ref.tensor], out, axis=ref.axis)
        if prev is not None:
            block = layer.weight.shape[1] // prev_units
            columns = (prev[:, None] * block + np.arange(block)).reshape(-1)
            for ref in layer.in_refs:
                arrays[ref.tensor] = np.take(arrays[ref.tensor], columns, axis=ref.axis)
        prev, prev_units = (out if pos != lin[-1] else None), layer.units
    small = onnx.ModelProto()
    small.CopyFrom(proto)
    for init in small.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    del small.graph.value_info[:]
    small.metadata_props.add(key=KEPT_UNITS_KEY, value=json.dumps(kept))
    onnx.checker.check_model(small)
    return small, kept


def _interface(model: onnx.ModelProto):
    def info(vi):
        t = vi.type.tensor_type
        return vi.name, t.elem_type, len(t.shape.dim)
    return ([info(v) for v in model.graph.input], [info(v) for v in model.graph.output],
            [(o.domain, o.version) for o in model.opset_import])


def test_the_core_package_never_imports_torch():
    code = ("import sys, onnxcrit.finetune, onnxcrit.frontend, onnxcrit.data, onnxcrit.validate; "
            "sys.exit(1 if 'torch' in sys.modules or 'onnx2torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("module", ["torch", "onnx2torch"])
def test_without_torch_a_one_line_input_error(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(InputError, match=r"needs the 'finetune' extra: pip install 'onnxcrit\[finetune\]'") as err:
        finetune(MLP, _train(MLP), epochs=1)
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    with pytest.raises(InputError, match="finetune' extra"):
        retrain(MLP, _train(MLP), epochs=1)


@pytest.mark.parametrize("path", [MLP, CNN, SKL])
def test_finetune_keeps_the_graph_and_interface(path):
    original = load_network(path)[1]
    result = finetune(path, _train(path), eval_data=_eval(path), epochs=1, lr=1e-3, batch_size=32)
    model = result.model
    assert _interface(model) == _interface(original)
    # everything but the initializers' values is byte-identical: nodes, tail, metadata, opset, names
    assert _without_initializers(model) == _without_initializers(original)
    before, after = _inits(original), _inits(model)
    assert list(before) == list(after)
    assert all(before[k].dtype == after[k].dtype and before[k].shape == after[k].shape for k in before)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    x = load_data(_eval(path), load_network(path)[0]).x[:20]
    outputs = session(model).run(None, {original.graph.input[0].name: x})
    assert [o.shape[0] for o in outputs] == [20] * len(original.graph.output)
    assert result.epochs == 1 and len(result.losses) == 1 and result.seconds > 0
    assert result.eval_accuracy_after is not None and result.eval_accuracy_after > 90


def test_the_sklearn_tail_survives_and_still_labels():
    result = finetune(SKL, _train(SKL), epochs=1)
    labels, probabilities = session(result.model).run(None, {"X": load_data(_eval(SKL), load_network(SKL)[0]).x})
    assert [n.op_type for n in result.model.graph.node][-6:] == ["Softmax", "Identity", "ArgMax",
                                                                  "ArrayFeatureExtractor", "Reshape", "Cast"]
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(labels, probabilities.argmax(axis=1))


@pytest.mark.parametrize("path", [MLP, CNN])
def test_finetuning_a_pruned_model_raises_its_training_accuracy(path):
    small, _ = prune(path, fraction=0.4)
    net = load_network(small)[0]
    assert net.params < load_network(path)[0].params
    result = finetune(small, _train(path), eval_data=_eval(path), epochs=2, lr=1e-3, batch_size=16)
    assert result.train_accuracy_before < 100
    assert result.train_accuracy_after >= result.train_accuracy_before
    assert result.losses[1] <= result.losses[0]
    assert _interface(result.model) == _interface(small)


def test_finetune_is_deterministic_and_reports_progress():
    calls = []
    first = finetune(CNN, _train(CNN), epochs=2, batch_size=30, seed=3, progress=lambda *a: calls.append(a))
    second = finetune(CNN, _train(CNN), epochs=2, batch_size=30, seed=3)
    assert first.model.SerializeToString() == second.model.SerializeToString()
    assert [c[:2] for c in calls] == [(i, 8) for i in range(1, 9)]  # 100 samples, 4 batches, 2 epochs
    assert all(np.isfinite(c[2]) for c in calls)


def test_retrain_random_is_seeded():
    a = retrain(MLP, _train(MLP), epochs=1, seed=1)
    b = retrain(MLP, _train(MLP), epochs=1, seed=1)
    c = retrain(MLP, _train(MLP), epochs=1, seed=2)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.model.SerializeToString() != c.model.SerializeToString()
    assert a.init == "random"


def test_retrain_random_uses_torchs_default_init():
    original = _inits(load_network(MLP)[1])
    result = retrain(MLP, _train(MLP), eval_data=_eval(MLP), epochs=0, seed=0)
    fresh = _inits(result.model)
    for name, array in fresh.items():
        assert not np.array_equal(array, original[name])
    # digits_mlp: Gemm transB=1, weight [out, in]; torch draws weight and bias in +-1/sqrt(fan_in)
    w1 = fresh["fc1.weight"]
    assert np.abs(w1).max() <= 1 / 8 and np.abs(w1).max() > 0.9 / 8
    assert result.train_accuracy_before == result.train_accuracy_after and result.losses == []
    assert result.eval_accuracy_after < 30  # untrained: about chance


def test_retrain_gives_the_same_network_whatever_the_exporter():
    # same architecture 64-32-16-10: scikit-learn's MatMul [in, out] + Add [1, out] vs torch's Gemm transB=1
    skl = retrain(SKL, _train(SKL), epochs=2, seed=4)
    torch_mlp = retrain("tests/data/torch_legacy_mlp.onnx", _train(SKL), epochs=2, seed=4)
    np.testing.assert_allclose(skl.losses, torch_mlp.losses, rtol=1e-5)
    # opset 17 TorchScript export vs opset 20 dynamo export with external data
    legacy = retrain(CNN, _train(CNN), epochs=2, seed=4)
    dynamo = retrain("tests/data/torch_dynamo_cnn.onnx", _train(CNN), epochs=2, seed=4)
    np.testing.assert_allclose(legacy.losses, dynamo.losses, rtol=1e-5)


def test_retrain_from_the_original_init_slices_the_unpruned_weights():
    small, kept = prune(CNN, fraction=0.5, seed=1)
    expected = _inits(small)
    for source in (dict(), dict(kept=kept)):  # metadata, or an explicit mapping
        result = retrain(small, _train(CNN), init=CNN, epochs=0, **source)
        assert result.init == "original"
        got = _inits(result.model)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
        assert result.train_accuracy_before == result.train_accuracy_after
    trained = retrain(small, _train(CNN), eval_data=_eval(CNN), init=CNN, epochs=2, lr=1e-3)
    assert trained.losses[1] <= trained.losses[0]
    assert _without_initializers(trained.model) == _without_initializers(small)


def test_retrain_from_the_original_init_needs_the_kept_units():
    small, kept = prune(MLP)
    del small.metadata_props[:]
    with pytest.raises(InputError, match=r"no 'onnxcrit.kept_units' metadata.*pass kept="):
        retrain(small, _train(MLP), init=MLP, epochs=0)
    with pytest.raises(InputError, match="layer '/fc1/Gemm' has 25 units but 3 kept indices"):
        retrain(small, _train(MLP), init=MLP, kept={**kept, "/fc1/Gemm": [0, 1, 2]}, epochs=0)
    with pytest.raises(InputError, match="unknown layers: nope"):
        retrain(small, _train(MLP), init=MLP, kept={"nope": [0]}, epochs=0)
    with pytest.raises(InputError, match="pass init=PATH"):
        retrain(small, _train(MLP), init="original", epochs=0)


def test_retrain_from_another_architecture_is_refused():
    small, _ = prune(CNN)
    with pytest.raises(InputError, match="has 3 linear layers, the pruned model 4: it must be the unpruned"):
        retrain(small, _train(CNN), init=MLP, epochs=0)
    small, _ = prune("tests/data/torch_legacy_cnn_bn.onnx")
    with pytest.raises(InputError, match="layer 1 is conv in the pruned model but dense"):
        retrain(small, _train(CNN), init=MLP, epochs=0)
    with pytest.raises(InputError, match=r"kept indices must be distinct units of the unpruned layer \(0\.\.31\)"):
        retrain(prune(MLP)[0], _train(MLP), init=SKL, epochs=0)  # 64-32-16-10 is not digits_mlp's 64-64-32-10
    with pytest.raises(InputError, match="has 32 units but 64 kept indices"):
        retrain(SKL, _train(MLP), init=MLP, kept={}, epochs=0)
    wide, narrow = cnn(in_shape=(1, 8, 8), kernel=3), cnn(in_shape=(1, 8, 8), kernel=5, pad=2)
    with pytest.raises(InputError, match=r"cut to the kept units, has shape \[3, 1, 3, 3\].*\[3, 1, 5, 5\]"):
        retrain(narrow, (np.zeros((2, 1, 8, 8)), np.zeros(2)), init=wide, kept={}, epochs=0)


def test_batchnorm_statistics_are_frozen_in_finetune_and_learned_in_retrain():
    path = "tests/data/torch_legacy_cnn_bn.onnx"
    original = _inits(load_network(path)[1])
    stats = [n.input[k] for n in load_network(path)[1].graph.node if n.op_type == "BatchNormalization"
             for k in (3, 4)]
    tuned = _inits(finetune(path, _train(path), epochs=1, lr=1e-2).model)
    for name in stats:
        np.testing.assert_array_equal(tuned[name], original[name])
    fresh = _inits(retrain(path, _train(path), epochs=0).model)
    assert all(np.all(fresh[n] == (0.0 if i % 2 == 0 else 1.0)) for i, n in enumerate(stats))
    learned = retrain(path, _train(path), eval_data=_eval(path), epochs=5, lr=1e-2, batch_size=16)
    learned_inits = _inits(learned.model)
    assert all(not np.array_equal(learned_inits[n], fresh[n]) for n in stats)
    assert learned.train_accuracy_after > 30  # and onnxruntime agreed with torch's logits (checked inside)


@pytest.mark.parametrize("options, pattern", [
    (dict(epochs=-1), "epochs must be"), (dict(lr=0.0), "learning rate must be > 0"),
    (dict(batch_size=0), "batch size must be"),
])
def test_bad_options(options, pattern):
    with pytest.raises(InputError, match=pattern):
        finetune(MLP, _train(MLP), **options)


def test_training_data_is_checked_against_the_model():
    with pytest.raises(InputError, match="training data.*expects \\[N, 64\\]"):
        finetune(MLP, _train(CNN), epochs=1)


def test_weights_in_constant_nodes_are_trained_in_place():
    model = onnx.load(MLP)
    weight = next(t for t in model.graph.initializer if t.name == "fc2.weight")
    model.graph.initializer.remove(weight)
    model.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["fc2.weight"], value=weight))
    result = finetune(model, _train(MLP), epochs=1, lr=1e-2)
    node = result.model.graph.node[0]
    assert node.op_type == "Constant" and node.output[0] == "fc2.weight"
    trained = numpy_helper.to_array(node.attribute[0].t)
    assert trained.shape == (32, 64) and not np.array_equal(trained, numpy_helper.to_array(weight))
    assert "fc2.weight" not in _inits(result.model)


def test_retrain_from_the_original_init_after_the_rewrite_added_a_bias():
    # onnxcrit's own rewrite with bias compensation gives a bias-free layer a new Add: its initial value is 0
    from onnxcrit.finetune import write_kept_units
    from onnxcrit.rewrite import bias_compensation, remove_units

    path = "tests/data/torch_legacy_mlp_nobias.onnx"
    net, proto = load_network(path)
    k = net.scored_indices()[0]
    keep = np.zeros(net.layers[k].units)
    keep[::2] = 1
    x = load_data(_train(MLP), net).x
    small, small_net = remove_units(proto, net, {k: keep}, compensation=bias_compensation(net, x, {k: keep}))
    write_kept_units(small, {net.layers[k].name: np.flatnonzero(keep).tolist()})
    added = set(_inits(small)) - set(_inits(proto))
    assert added  # the compensation bias
    result = retrain(small, _train(MLP), init=path, epochs=0)
    got, full = _inits(result.model), _inits(proto)
    assert all(not got[name].any() for name in added)
    first = net.layers[k].out_refs[0]  # the weight, along its unit axis
    np.testing.assert_array_equal(got[first.tensor], np.take(full[first.tensor], np.flatnonzero(keep), first.axis))
