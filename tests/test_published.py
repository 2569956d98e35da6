"""Files as other exporters publish them (tests/data/published/, written by torch's legacy and dynamo
exporters, tf2onnx from Keras, and onnx.helper where the exporter is old): each goes through `optimize`
unchanged, with the default accuracy budget met, the published interface kept and the input file untouched."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcrit import api
from onnxcrit.cli import main
from onnxcrit.frontend import load_model, load_network
from onnxcrit.measure import stored_params
from onnxcrit.tolerance import assert_same
from onnxcrit.validate import run_tensors

from .corpus import PUBLISHED
from .test_canonical import interface

# what each file is read through (api.recognised_patterns)
EXPECTED = {
    "cntk_mnist8_style_opset8": ["fold_constants", "fixed_batch_1"],
    "keras3_cnn_nhwc": ["absorb_flatten_transpose"],  # the flatten target is computed from Shape (Keras 3)
    "tfkeras_cnn_rescaling": ["absorb_flatten_transpose", "input_affine"],
    "tfkeras_mlp": [],
    "onnxhelper_pad_opset11": ["merge_zero_pad"],
    "tfkeras_cnn_nhwc": ["absorb_flatten_transpose"],  # one channel: the input Transpose moves no data
    "tfkeras_cnn_nhwc_batch1": ["absorb_flatten_transpose", "fixed_batch_1"],
    "tfkeras_cnn_nhwc_rgb": ["absorb_flatten_transpose", "input_transpose"],
    "torch04_flatten_opset9": ["fold_constants", "fixed_batch_1"],
    "torch_dynamo_cnn_batch1": ["fixed_batch_1"],
    "torch_dynamo_pad_avgpool": ["merge_zero_pad"],
    "torch_legacy_allconv_1x1": ["convolutional_head"],
    "torch_legacy_allconv_gap": ["convolutional_head"],
    "torch_legacy_cnn_batch1_flatten": ["fixed_batch_1"],
    "torch_legacy_cnn_batch1_view": ["fixed_batch_1"],
    "torch_legacy_cnn_norm": ["input_affine"],
    "torch_legacy_mlp_256x4": [],
    "torch_legacy_mlp_batch1": ["fixed_batch_1"],
    "torch_legacy_mlp_identity_norm": ["input_affine"],
    "torch_legacy_mlp_norm_feature": ["input_affine"],
    "torch_legacy_mlp_norm_scalar": ["input_affine"],
    "torch_legacy_mlp_relu_logits": [],
    "torch_legacy_mlp_relu_logits_softmax": [],
    "torch_legacy_pad_opset10": ["merge_zero_pad"],
    "torch_legacy_pad_opset13": ["fold_constants", "merge_zero_pad"],
}


def data(path, split):
    return path.with_name(f"{path.stem}_{split}.npz")


def test_every_published_file_is_listed():
    assert sorted(p.stem for p in PUBLISHED) == sorted(EXPECTED)


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_ir_computes_the_published_file(path):
    net, _ = load_network(path)
    x = np.load(data(path, "eval"))["x"][:64]
    published = load_model(path)
    assert_same(net.forward(x), run_tensors(published, net.input_name, x, [net.logits_name])[0], net.input_dtype)
    assert api.recognised_patterns(net) == EXPECTED[path.stem]


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_optimize_meets_the_default_budget_on_the_published_file(path):
    before = {p: p.read_bytes() for p in path.parent.glob(path.stem + ".onnx*")}
    result = api.optimize(path, data(path, "calib"), eval_data=data(path, "eval"), measure_latency=False)
    assert {p: p.read_bytes() for p in path.parent.glob(path.stem + ".onnx*")} == before
    report = result.report
    assert report["canonicalised"] == EXPECTED[path.stem]
    assert report["accuracy_before"] - report["accuracy_after"] <= 1.0 + 1e-9
    assert report["params_after"] < report["params_before"]
    assert report["params_after"] == sum(stored_params(result.model, result.network))
    assert interface(result.model) == interface(load_model(path))
    # the written model equals the masked IR of the canonical one (with the default reconstruction, lsq on these
    # chains, the reconstructed IR: optimize checked it against that, within the tolerance it reports)
    assert report["max_abs_vs_masked_ir"] <= report["masked_ir_tolerance"]
    if report["selection"]["reconstruct"]["method"] == "none":
        net, _ = load_network(path)
        x = np.load(data(path, "eval"))["x"][:32]
        written = run_tensors(result.model, net.input_name, x, [net.logits_name])[0]
        assert_same(written, net.forward(x, scales=result.scales), net.input_dtype)


def test_cli_on_a_fixed_batch_nhwc_file(tmp_path):
    path = next(p for p in PUBLISHED if p.stem == "tfkeras_cnn_nhwc_batch1")
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    res = CliRunner().invoke(main, ["optimize", str(path), "--data", str(data(path, "calib")), "--eval-data",
                                    str(data(path, "eval")), "-o", str(out), "--report", str(report), "-q"])
    assert res.exit_code == 0, res.output
    saved = json.loads(report.read_text())
    assert saved["canonicalised"] == EXPECTED[path.stem]
    assert interface(onnx.load(out)) == interface(load_model(path))
