"""Validation of rewritten models, measurements, and writing models to disk."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxcrit import output
from onnxcrit.errors import ValidationError
from onnxcrit.frontend import load_network, to_network
from onnxcrit.measure import file_size, latency, layer_table, paired_latency, stored_params, summary, totals
from onnxcrit.output import has_external_data, write_model
from onnxcrit.rewrite import bias_compensation, remove_units
from onnxcrit.tolerance import allowed_error
from onnxcrit.validate import check_rewrite

from .onnx_builders import cnn, mlp, sample_inputs

from .corpus import EXPORTED, ROOT  # noqa: E402


def digits(kind):
    net, model = load_network(ROOT / "models" / f"digits_{kind}.onnx")
    calib = np.load(ROOT / "models" / f"digits_{kind}_calib.npz")
    evals = np.load(ROOT / "models" / f"digits_{kind}_eval.npz")
    return net, model, calib, evals


def every_other(net):
    return {k: (np.arange(net.layers[k].units) % 2 == 0).astype(np.float64) for k in net.scored_indices()}


# check_rewrite -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_valid_rewrite_passes_and_measures(kind):
    net, model, calib, evals = digits(kind)
    scales = every_other(net)
    new, _ = remove_units(model, net, scales)
    report = check_rewrite(model, new, net, scales, [calib["x"], evals["x"]], evals["y"])
    assert report.ok, report.reasons
    assert report.max_abs_vs_masked_ir <= report.tolerance == allowed_error(
        np.concatenate([net.forward(x, scales=scales).reshape(-1) for x in (calib["x"], evals["x"])]))
    assert report.samples == len(calib["x"]) + len(evals["x"])
    assert 0 <= report.agreement <= 1 and report.max_abs_logit_diff > 0
    assert report.accuracy_before > 0.9  # the models are trained
    pred = net.forward(evals["x"], scales=scales).argmax(axis=1)
    assert report.accuracy_after == pytest.approx(np.mean(pred == evals["y"]))
    report.raise_if_failed()


def test_identity_rewrite_agrees_fully():
    net, model, calib, evals = digits("mlp")
    scales = {k: np.ones(net.layers[k].units) for k in net.scored_indices()}
    new, _ = remove_units(model, net, scales)
    report = check_rewrite(model, new, net, scales, [evals["x"]], [evals["y"]])
    assert report.ok and report.agreement == 1.0 and report.max_abs_logit_diff == 0.0
    assert report.accuracy_before == report.accuracy_after


def test_tampered_weight_is_caught():
    net, model, calib, _ = digits("cnn")
    scales = every_other(net)
    new, _ = remove_units(model, net, scales)
    weight = next(t for t in new.graph.initializer if t.name == "fc1.weight")
    value = numpy_helper.to_array(weight).copy()
    value[0, 0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(value, weight.name))
    report = check_rewrite(model, new, net, scales, [calib["x"]], None)
    assert not report.ok
    assert any("masked IR" in reason for reason in report.reasons)
    with pytest.raises(ValidationError, match="masked IR"):
        report.raise_if_failed()


def test_the_numpy_reference_runs_on_the_first_inputs_and_agreement_on_all(monkeypatch):
    """IR_CHECK bounds the slow float64 reference; a tampered model is still caught on those inputs, and the
    agreement with the original counts every input."""
    from onnxcrit import validate

    monkeypatch.setattr(validate, "IR_CHECK", 7)
    net, model, calib, evals = digits("cnn")
    scales = every_other(net)
    new, _ = remove_units(model, net, scales)
    calls = []
    forward = type(net).forward
    monkeypatch.setattr(type(net), "forward", lambda self, x, **kw: calls.append(len(x)) or forward(self, x, **kw))
    report = check_rewrite(model, new, net, scales, [calib["x"], evals["x"]], [None, evals["y"]])
    assert report.ok and calls == [7, 7]
    assert report.samples == len(calib["x"]) + len(evals["x"]) > 14
    weight = next(t for t in new.graph.initializer if t.name == "fc1.weight")
    value = numpy_helper.to_array(weight).copy()
    value[0, 0] += 0.5
    weight.CopyFrom(numpy_helper.from_array(value, weight.name))
    assert not check_rewrite(model, new, net, scales, [calib["x"]]).ok


def test_wrong_scales_are_caught():
    """A model rewritten without compensation does not pass as the compensated one."""
    net, model, calib, _ = digits("mlp")
    scales = every_other(net)
    comp = bias_compensation(net, calib["x"], scales)
    plain, _ = remove_units(model, net, scales)
    compensated, _ = remove_units(model, net, scales, compensation=comp)
    assert check_rewrite(model, compensated, net, scales, [calib["x"]], compensation=comp).ok
    assert not check_rewrite(model, plain, net, scales, [calib["x"]], compensation=comp).ok


def test_interface_changes_are_caught():
    net, model, calib, _ = digits("mlp")
    scales = every_other(net)
    new, _ = remove_units(model, net, scales)
    renamed = onnx.ModelProto.FromString(new.SerializeToString())
    renamed.graph.output[0].name = "scores"
    renamed.graph.node[-1].output[0] = "scores"
    report = check_rewrite(model, renamed, net, scales, [calib["x"]])
    assert not report.ok and any("output names changed" in r for r in report.reasons)
    retyped = onnx.ModelProto.FromString(new.SerializeToString())
    retyped.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    report = check_rewrite(model, retyped, net, scales, [calib["x"]])
    assert not report.ok and any("element type" in r or "onnx" in r for r in report.reasons)


def test_invalid_model_is_caught():
    net, model, calib, _ = digits("mlp")
    scales = every_other(net)
    new, _ = remove_units(model, net, scales)
    broken = onnx.ModelProto.FromString(new.SerializeToString())
    broken.graph.node[0].input[1] = "no_such_tensor"
    report = check_rewrite(model, broken, net, scales, [calib["x"]])
    assert not report.ok and any(r.startswith(("onnx.checker", "onnxruntime")) for r in report.reasons)


def test_check_by_path_with_tail_and_external_data(tmp_path):
    net, model = load_network(ROOT / "tests" / "data" / "skl_mlp.onnx")
    x = np.load(ROOT / "tests" / "data" / "skl_mlp_x.npz")["x"]
    scales = every_other(net)
    new, _ = remove_units(model, net, scales)
    path = write_model(new, tmp_path / "skl.onnx", external_data=True)
    report = check_rewrite(model, path, net, scales, [x])
    assert report.ok, report.reasons


def test_large_models_go_through_files(monkeypatch, tmp_path):
    """Past the size limit, the rewritten and probe models are written with external data and still check."""
    monkeypatch.setattr(output, "EXTERNAL_DATA_THRESHOLD", 1000)
    net, model, calib, _ = digits("cnn")
    scales = every_other(net)
    new, _ = remove_units(model, net, scales)
    assert output.needs_external_data(new)
    assert check_rewrite(model, new, net, scales, [calib["x"]]).ok
    path = write_model(new, tmp_path / "big.onnx")  # automatic
    assert has_external_data(path) and (tmp_path / "big.onnx.data").is_file()


# measure ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", EXPORTED, ids=lambda p: p.name)
def test_stored_params_equal_the_files_float_tensors(path):
    net, model = load_network(path)
    floats = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    assert sum(stored_params(model, net)) == floats
    rows = layer_table(net, model)
    assert totals(rows)["params"] == floats
    assert totals(rows)["macs"] == net.macs
    if "bn" not in path.name and "nobias" not in path.name:  # then the file holds exactly the IR's tensors
        assert totals(layer_table(net))["params"] == net.params == floats


def test_layer_table_counts():
    model = cnn(channels=(3, 4), dense=(6, 5), pool="max")
    rows = layer_table(to_network(model), model)
    assert [(r["kind"], r["units"], r["params"], r["macs"]) for r in rows] == [
        ("conv", 3, 3 * 9 + 3, 3 * 9 * 64), ("conv", 4, 4 * 3 * 9 + 4, 4 * 3 * 9 * 16),
        ("dense", 6, 16 * 6 + 6, 16 * 6), ("dense", 5, 6 * 5 + 5, 6 * 5)]


def test_file_size_and_latency(tmp_path):
    model = mlp()
    net = to_network(model)
    path = write_model(model, tmp_path / "m.onnx")
    assert file_size(path) == path.stat().st_size == file_size(model)
    ext = write_model(model, tmp_path / "e.onnx", external_data=True)
    assert file_size(ext) == ext.stat().st_size + (tmp_path / "e.onnx.data").stat().st_size
    t = latency(path, net.input_name, net.input_shape, batch=4, repeats=5, warmup=1)
    assert 0 < t < 1
    before, after = paired_latency([model, path], net.input_name, net.input_shape, batch=2, repeats=5, warmup=1)
    assert 0 < before < 1 and 0 < after < 1
    info = summary(model, net, batches=(1, 2), repeats=3, warmup=1)
    assert set(info["latency"]) == {1, 2} and info["macs"] == net.macs


# output --------------------------------------------------------------------------------------------------

def test_write_refuses_the_input_file(tmp_path):
    src = ROOT / "tests" / "data" / "torch_dynamo_mlp.onnx"
    net, model = load_network(src)
    with pytest.raises(ValueError, match="input model"):
        write_model(model, src, input_path=src)
    # nor its external data file, nor through another spelling of the same path
    (tmp_path / "link").symlink_to(src.parent)
    with pytest.raises(ValueError, match="input model"):
        write_model(model, tmp_path / "link" / src.name, input_path=src)
    other = tmp_path / "x.onnx"
    onnx.save(model, other, save_as_external_data=True, location="y.onnx.data", size_threshold=0)
    with pytest.raises(ValueError, match="input model"):
        write_model(model, tmp_path / "y.onnx", external_data=True, input_path=other)
    write_model(model, tmp_path / "y.onnx", input_path=other)  # no data file, no clash


def test_write_is_atomic(tmp_path, monkeypatch):
    model = mlp()
    target = tmp_path / "out.onnx"

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_model(model, target, external_data=True)
    assert list(tmp_path.iterdir()) == []


def test_write_is_deterministic_and_loadable(tmp_path):
    model = cnn()
    for name in ("a.onnx", "b.onnx"):
        write_model(model, tmp_path / name, external_data=True)
    assert (tmp_path / "a.onnx.data").read_bytes() == (tmp_path / "b.onnx.data").read_bytes()
    loaded = onnx.load(str(tmp_path / "a.onnx"))
    x = sample_inputs(model)
    np.testing.assert_array_equal(to_network(loaded).forward(x), to_network(model).forward(x))
    write_model(model, tmp_path / "c.onnx")
    assert (tmp_path / "c.onnx").read_bytes() == model.SerializeToString()
    assert oct((tmp_path / "c.onnx").stat().st_mode & 0o777) != oct(0o600)
