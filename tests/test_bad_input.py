"""Bad input corpus: each case exits 2 (or 1 where stated) with one line naming the problem, writes nothing,
and leaves every input file byte-identical."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcrit.cli import main

from .onnx_builders import GraphBuilder, mlp
from .test_frontend import _product_model, _residual_model, _sigmoid_model, _two_inputs_model
from .test_select import _two_detectors

ROOT = Path(__file__).resolve().parents[1]
MLP = ROOT / "models" / "digits_mlp.onnx"
MLP_CAL = ROOT / "models" / "digits_mlp_calib.npz"
MLP_EVAL = ROOT / "models" / "digits_mlp_eval.npz"


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _calib_for(model: onnx.ModelProto, folder: Path, n: int = 30) -> Path:
    """Random inputs labelled with the model's own predictions (so every class it predicts is usable)."""
    from onnxcrit.frontend import to_network

    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).standard_normal((n, *dims)).astype(np.float32)
    try:
        y = to_network(model).predict(x)
    except Exception:  # an unsupported model: any labels do, it is refused before they matter
        y = np.arange(n) % 3
    path = folder / "calib.npz"
    np.savez(path, x=x, y=y)
    return path


# Each case: (setup(folder) -> argument list, expected exit code, pattern in the one error line)
def case_missing_model(d):
    return ["optimize", d / "nope.onnx", "--data", MLP_CAL]


def case_directory(d):
    (d / "dir.onnx").mkdir()
    return ["optimize", d / "dir.onnx", "--data", MLP_CAL]


def case_empty(d):
    (d / "e.onnx").write_bytes(b"")
    return ["optimize", d / "e.onnx", "--data", MLP_CAL]


def case_text(d):
    (d / "t.onnx").write_text("this is a text file, not a model\n" * 20)
    return ["optimize", d / "t.onnx", "--data", MLP_CAL]


def case_truncated(d):
    data = MLP.read_bytes()
    (d / "cut.onnx").write_bytes(data[: len(data) // 3])
    return ["optimize", d / "cut.onnx", "--data", MLP_CAL]


def _model_case(build):
    def setup(d):
        model = build()
        return ["optimize", _save(model, d / "m.onnx"), "--data", _calib_for(model, d)]
    return setup


def case_missing_external_data(d):
    model = mlp()
    onnx.save(model, str(d / "x.onnx"), save_as_external_data=True, location="x.onnx.data", size_threshold=0)
    (d / "x.onnx.data").unlink()
    return ["optimize", d / "x.onnx", "--data", MLP_CAL]


def _copy_mlp(d):
    shutil.copy(MLP, d / "m.onnx")
    return d / "m.onnx"


def _data_case(**arrays):
    def setup(d):
        np.savez(d / "data.npz", **arrays)
        return ["optimize", _copy_mlp(d), "--data", d / "data.npz"]
    return setup


def case_data_missing(d):
    return ["optimize", _copy_mlp(d), "--data", d / "none.npz"]


def case_data_not_npz(d):
    (d / "data.npz").write_text("1,2,3\n")
    return ["optimize", _copy_mlp(d), "--data", d / "data.npz"]


def case_few_images(d):
    return ["optimize", _copy_mlp(d), "--data", MLP_CAL, "--num-samples", "1000"]


def case_wrong_labels_all_wrong(d):
    cal = np.load(MLP_CAL)
    y = cal["y"].copy()
    y[y == 2] = 7  # images of 2 labelled 7: the model never agrees, so class 7 ... has real 7s still
    y[cal["y"] == 7] = 2  # swap: no image labelled 2 or 7 is classified as its label
    np.savez(d / "data.npz", x=cal["x"], y=y)
    return ["optimize", _copy_mlp(d), "--data", d / "data.npz"]


def case_output_is_input(d):
    m = _copy_mlp(d)
    return ["optimize", m, "--data", MLP_CAL, "-o", m]


def case_output_folder_missing(d):
    return ["optimize", _copy_mlp(d), "--data", MLP_CAL, "-o", d / "missing" / "out.onnx"]


def case_output_folder_not_writable(d):
    # /proc refuses new files even for root, unlike a chmod'ed folder
    return ["optimize", _copy_mlp(d), "--data", MLP_CAL, "-o", "/proc/onnxcrit-out.onnx"]


def case_report_folder_missing(d):
    return ["optimize", _copy_mlp(d), "--data", MLP_CAL, "--report", d / "missing" / "r.json"]


def _option_case(*options):
    def setup(d):
        return ["optimize", _copy_mlp(d), "--data", MLP_CAL, *options]
    return setup


def case_deadline_too_short(d):
    return ["optimize", _copy_mlp(d), "--data", MLP_CAL, "--time-limit", "0.001"]


def case_unreachable_budget(d):
    return ["optimize", _copy_mlp(d), "--data", MLP_CAL, "--target-params", "0.0005"]


def case_unreachable_accuracy_budget(d):
    x = np.random.default_rng(0).uniform(0.1, 1.0, (40, 2)).astype(np.float32)
    np.savez(d / "two.npz", x=x, y=x.argmax(axis=1))
    return ["optimize", _save(_two_detectors(), d / "two.onnx"), "--data", d / "two.npz", "--eval-data",
            d / "two.npz", "--num-samples", "4", "--max-accuracy-drop", "1", "--no-latency", "-q"]


def case_evaluate_bad_data(d):
    np.savez(d / "data.npz", x=np.zeros((4, 8, 8), np.float32), y=np.zeros(4))
    return ["evaluate", _copy_mlp(d), "--data", d / "data.npz"]


def case_inspect_unsupported(d):
    return ["inspect", _save(_product_model(), d / "r.onnx")]


def case_all_groups_frozen(d):
    grouped = ROOT / "tests" / "data" / "branching" / "torch_legacy_grouped_conv"
    return ["optimize", f"{grouped}.onnx", "--data", f"{grouped}_calib.npz", "-o", d / "out.onnx"]


def case_reconstruct_branching(d):
    return [*_model_case(_residual_model)(d), "--reconstruct", "merge"]


def _opset_model(opset):
    g = GraphBuilder((6,), opset=opset)
    g.dense(5)
    g.relu()
    g.dense(3)
    return g.model()


CASES = {
    "not a file": (case_missing_model, 2, "no such file"),
    "a directory": (case_directory, 2, "not a file"),
    "empty file": (case_empty, 2, "empty file"),
    "text file": (case_text, 2, "not"),
    "truncated protobuf": (case_truncated, 2, "not"),
    "unsupported op": (_model_case(_sigmoid_model), 2, "Sigmoid node"),
    "two inputs": (_model_case(_two_inputs_model), 2, "2 inputs"),
    "no relu": (_model_case(lambda: mlp(relu=False)), 2, "no Relu"),
    "product of activations": (_model_case(_product_model), 2, "Mul node 'gate'"),
    "merge on a residual net": (case_reconstruct_branching, 2, "reconstruction 'merge' pairs a removed unit"),
    "every group kept whole": (case_all_groups_frozen, 2, "nothing to prune: every channel group is kept whole"),
    "external data missing": (case_missing_external_data, 2, "external data file 'x.onnx.data'"),
    "data file missing": (case_data_missing, 2, "no such file"),
    "data not npz": (case_data_not_npz, 2, "not an .npz archive"),
    "data without x": (_data_case(y=np.zeros(3)), 2, "no array 'x'"),
    "data without y": (_data_case(x=np.zeros((3, 64))), 2, "no array 'y'"),
    "wrong rank": (_data_case(x=np.zeros((3, 8, 8)), y=np.zeros(3)), 2, "expects [N, 64]"),
    "nhwc given to nchw": (lambda d: ["optimize", ROOT / "models" / "digits_cnn.onnx", "--data",
                                      _nhwc(d)], 2, "NHWC"),
    "string dtype": (_data_case(x=np.array([["a"] * 64] * 3), y=np.zeros(3)), 2, "numbers are needed"),
    "nan in x": (_data_case(x=np.full((3, 64), np.nan), y=np.zeros(3)), 2, "NaN"),
    "inf in x": (_data_case(x=np.full((3, 64), np.inf), y=np.zeros(3)), 2, "NaN or infinite"),
    "labels outside classes": (_data_case(x=np.zeros((3, 64)), y=np.array([0, 1, 12])), 2, "10 classes"),
    "fewer images than requested": (case_few_images, 2, "1000"),
    "a class never classified right": (case_wrong_labels_all_wrong, 2, "class"),
    "output equals input": (case_output_is_input, 2, "refusing to write over the input"),
    "output folder missing": (case_output_folder_missing, 2, "does not exist"),
    "output folder not writable": (case_output_folder_not_writable, 2, "not writable"),
    "report folder missing": (case_report_folder_missing, 2, "does not exist"),
    "negative eps": (_option_case("--eps", "-1"), 2, "eps must be >= 0"),
    "nan eps": (_option_case("--eps", "nan"), 2, "eps must be >= 0"),
    "negative lambda": (_option_case("--lam", "-5"), 2, "lambda must be > 0"),
    "threshold above 1": (_option_case("--threshold", "1.5"), 2, "threshold must be in [0, 1]"),
    "negative time limit": (_option_case("--time-limit", "-3"), 2, "time limit must be > 0"),
    "infinite time limit": (_option_case("--time-limit", "inf"), 2, "time limit must be > 0"),
    "accuracy budget over 100": (_option_case("--eval-data", str(MLP_EVAL), "--max-accuracy-drop", "150"), 2,
                                 "max accuracy drop"),
    "params budget zero": (_option_case("--target-params", "0"), 2, "target params"),
    "both budgets": (_option_case("--eval-data", str(MLP_EVAL), "--max-accuracy-drop", "1", "--target-params",
                                  "0.5"), 2, "give one budget"),
    "num samples not a number": (_option_case("--num-samples", "ten"), 2, "is not a valid integer"),
    "deadline too short for any solution": (case_deadline_too_short, 1, "no solution"),
    "unreachable parameter budget": (case_unreachable_budget, 1, "cannot keep only"),
    "unreachable accuracy budget": (case_unreachable_accuracy_budget, 1, "no selection keeps the accuracy drop"),
    "evaluate with wrong shape": (case_evaluate_bad_data, 2, "expects [N, 64]"),
    "inspect unsupported model": (case_inspect_unsupported, 2, "several activations"),
}


def _nhwc(d: Path) -> Path:
    ev = np.load(ROOT / "models" / "digits_cnn_eval.npz")
    np.savez(d / "nhwc.npz", x=ev["x"].transpose(0, 2, 3, 1), y=ev["y"])
    return d / "nhwc.npz"


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(tmp_path, name):
    setup, code, pattern = CASES[name]
    args = [str(a) for a in setup(tmp_path)]
    before = _snapshot(tmp_path)
    shared_before = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in args if Path(p).is_file()}
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1, result.output
    assert lines[0].startswith("onnxcrit: error:") or "Error:" in result.output, result.output
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert _snapshot(tmp_path) == before  # nothing written, inputs unchanged
    for path, digest in shared_before.items():
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("opset", [7, 21])
def test_old_and_new_opsets_are_supported(tmp_path, opset):
    model = _opset_model(opset)
    path = _save(model, tmp_path / "m.onnx")
    result = CliRunner().invoke(main, ["optimize", str(path), "--data", str(_calib_for(model, tmp_path)),
                                       "--threshold", "0.1", "--no-latency", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = onnx.load(str(tmp_path / "m.pruned.onnx"))
    assert out.opset_import[0].version == opset


def test_a_class_without_images_is_reported_not_refused(tmp_path):
    """A data set with fewer classes than the model (e.g. a subset) calibrates on the classes it has."""
    cal = np.load(MLP_CAL)
    keep = cal["y"] != 4
    np.savez(tmp_path / "data.npz", x=cal["x"][keep], y=cal["y"][keep])
    result = CliRunner().invoke(main, ["optimize", str(MLP), "--data", str(tmp_path / "data.npz"), "-o",
                                       str(tmp_path / "out.onnx"), "--report", str(tmp_path / "r.json"),
                                       "--threshold", "0.1", "--no-latency", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    assert "class 4: no images in the data" in report["calibration"]["skipped"]
    assert all(cal["y"][keep][i] != 4 for i in report["calibration"]["indices"])


def test_case_count():
    assert len(CASES) >= 30
