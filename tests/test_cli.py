"""The command line: click's runner for every option and exit code, plus the installed console script."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcrit.cli import main
from onnxcrit.frontend import load_network

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CNN, CNN_CAL, CNN_EVAL = (MODELS / f for f in ("digits_cnn.onnx", "digits_cnn_calib.npz", "digits_cnn_eval.npz"))
MLP, MLP_CAL, MLP_EVAL = (MODELS / f for f in ("digits_mlp.onnx", "digits_mlp_calib.npz", "digits_mlp_eval.npz"))

REPORT_KEYS = {"params_before", "params_after", "macs_before", "macs_after", "layers", "accuracy_before",
               "accuracy_after", "agreement", "solver", "timings", "output", "file_size_before",
               "file_size_after", "selection", "calibration", "dead_units_removed", "options"}
SOLVER_KEYS = {"status", "seconds", "objective", "gap", "variables", "binaries", "constraints"}


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def invoke(*args):
    """The whole click result: exit_code, stdout, stderr (click >= 8.2 keeps them apart) and output (both)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def flat(text: str) -> str:
    """Text with every run of whitespace made one space: wrapped summary lines read as one."""
    return " ".join(text.split())


def number(text: str) -> float:
    return float(text.replace(",", ""))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """One full optimize run on the bundled CNN, shared by the tests that read its outputs."""
    folder = tmp_path_factory.mktemp("cnn")
    model = folder / "cnn.onnx"
    shutil.copy(CNN, model)
    before = digest(model)
    result = invoke("optimize", model, "--data", CNN_CAL, "--eval-data", CNN_EVAL, "--report",
                    folder / "report.json", "--no-latency", "--time-limit", "60")
    code, out = result.exit_code, result.stdout
    return dict(folder=folder, model=model, before=before, code=code, out=out, output=result.output,
                report=json.loads((folder / "report.json").read_text()) if code == 0 else None)


def test_optimize_writes_a_smaller_valid_model(cnn_run):
    assert cnn_run["code"] == 0, cnn_run["out"]
    pruned = cnn_run["folder"] / "cnn.pruned.onnx"
    assert pruned.is_file()
    assert digest(cnn_run["model"]) == cnn_run["before"]  # the input is never modified
    onnx.checker.check_model(str(pruned), full_check=True)
    net, proto = load_network(pruned)
    report = cnn_run["report"]
    assert report["output"] == str(pruned)
    # reported parameter counts equal the initializers of the written file
    assert report["params_after"] == sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    assert report["params_before"] == sum(int(np.prod(t.dims)) for t in onnx.load(str(CNN)).graph.initializer)
    assert report["params_after"] < report["params_before"]
    assert [l["units_after"] for l in report["layers"]] == [net.layers[i].units for i in net.linear_indices()]
    assert report["accuracy_before"] - report["accuracy_after"] <= 1.0 + 1e-9  # the default budget
    assert "before -> after" in cnn_run["out"]


def test_summary_says_kept_and_removed(cnn_run):
    """Every before -> after total spells out which share is kept and which removed, and the numbers are the
    report's; the selection line says in words what the accuracy budget did."""
    import re

    report, out = cnn_run["report"], flat(cnn_run["out"])
    for label, key in (("parameters", "params"), ("MACs/sample", "macs"), ("file size", "file_size")):
        match = re.search(rf"{re.escape(label)} ([\d,]+) -> ([\d,]+)(?: bytes)? \(kept ([\d.]+)%, removed ([\d.]+)%\)",
                          out)
        assert match, (label, out)
        before, after, kept, removed = map(number, match.groups())
        assert (before, after) == (report[f"{key}_before"], report[f"{key}_after"])
        assert kept == pytest.approx(100 * after / before, abs=0.05)
        assert removed == pytest.approx(100 - 100 * after / before, abs=0.05)
    # the unit counts the selection line names are the layers' (scored ones), the images the evaluation file's
    scored = [layer for layer in report["layers"] if layer["scored"]]
    total = sum(layer["units_before"] for layer in scored)
    removed = total - sum(layer["units_after"] for layer in scored)
    match = re.search(r"selection accuracy budget ([\d.]+) points? .*?on ([\d,]+) evaluation images: removed the "
                      r"([\d,]+) lowest-scored units \(of ([\d,]+)\) while accuracy stayed within budget "
                      r"\(([\d.]+)% -> ([\d.]+)%\); ([\d,]+) candidates? measured", out)
    assert match, out
    budget, images, units_removed, units, acc_before, acc_after, measured = map(number, match.groups())
    assert budget == report["options"]["max_accuracy_drop"] == 1.0
    assert images == len(np.load(CNN_EVAL)["y"]) == report["accuracy_samples"]
    assert (units_removed, units) == (removed, total) == (report["selection"]["units_removed"],
                                                           report["selection"]["units_scored"])
    assert acc_before == pytest.approx(report["accuracy_before"], abs=0.005)
    assert acc_after == pytest.approx(report["accuracy_after"], abs=0.005)
    assert measured == sum(len(a["tried"]) for a in report["selection"]["attempts"])
    # 450 images cannot promise a 1-point budget on new data (654 could): the confirmation line says so
    confirmation = report["selection"]["confirmation"]
    assert confirmation["too_small"] and not confirmation["confirmed"]
    assert (f"confirmation not confirmed: 450 evaluation images are too few to promise a 1-point budget on new data "
            f"at 90% ({confirmation['images_needed']:,}+ would be); it was met on all of them") in out
    assert "accuracy (evaluation data)" in out
    assert "tried 0 thresholds" not in out and "threshold 0)" not in out
    assert "max |logit diff|" not in out  # unlabelled; the labelled figure is under --verbose
    assert "warning: no --eval-data" not in cnn_run["output"]  # held-out data given: no warning


def test_calibration_only_accuracy_is_flagged(tmp_path):
    """Without --eval-data: one warning line on stderr naming the number of calibration images, the accuracy
    labelled as calibration data, and the threshold rule said in words."""
    import re

    result = invoke("optimize", MLP, "--data", MLP_CAL, "-o", tmp_path / "p.onnx", "--report", tmp_path / "r.json",
                    "--no-latency")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    count = len(np.load(MLP_CAL)["y"])
    assert warnings[0].startswith(f"warning: no --eval-data: accuracy below is measured on the {count} calibration "
                                  "images the MIP was solved on")
    assert warnings[0].endswith("give held-out data with --eval-data")  # one line, not wrapped
    assert "warning" not in result.stdout
    out = flat(result.stdout)
    assert report["accuracy_data"] == "calibration" and report["accuracy_samples"] == count
    match = re.search(r"accuracy \(calibration data\) ([\d.]+)% -> ([\d.]+)% on ([\d,]+) images", out)
    assert match, out
    assert [number(v) for v in match.groups()] == [pytest.approx(report["accuracy_before"], abs=0.005),
                                                  pytest.approx(report["accuracy_after"], abs=0.005), count]
    match = re.search(r"units scoring below ([\d.]+) removed \(([\d,]+) of ([\d,]+) units\)", out)
    assert match, out
    assert number(match.group(1)) == report["selection"]["threshold"] == 0.1
    assert report["selection"]["by_default"] is True and report["selection"]["rule"] == "threshold"
    scored = [layer for layer in report["layers"] if layer["scored"]]
    assert number(match.group(2)) == sum(l["units_before"] - l["units_after"] for l in scored)
    assert number(match.group(3)) == sum(l["units_before"] for l in scored)
    # --quiet silences the warning too (errors only); --verbose labels the logit change
    quiet = invoke("optimize", MLP, "--data", MLP_CAL, "-o", tmp_path / "q.onnx", "--no-latency", "-q")
    assert quiet.exit_code == 0 and quiet.output == ""
    verbose = invoke("optimize", MLP, "--data", MLP_CAL, "-o", tmp_path / "v.onnx", "--no-latency", "-v")
    match = re.search(r"logit change largest ([\d.e+-]+), mean ([\d.e+-]+): how far any logit", flat(verbose.stdout))
    assert match and float(match.group(1)) == pytest.approx(report["max_abs_logit_diff"], rel=1e-2)


def test_parameter_budget_is_said_in_words(tmp_path):
    import re

    result = invoke("optimize", MLP, "--data", MLP_CAL, "--target-params", "0.5", "-o", tmp_path / "p.onnx",
                    "--report", tmp_path / "r.json", "--no-latency")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    match = re.search(r"selection parameter budget 50%: removed the ([\d,]+) lowest-scored units \(of ([\d,]+)\) "
                      r"until at most 50% of the parameters remained \(kept ([\d.]+)%\)", flat(result.stdout))
    assert match, result.stdout
    assert number(match.group(1)) == report["selection"]["units_removed"]
    assert number(match.group(2)) == report["selection"]["units_scored"]
    assert number(match.group(3)) == pytest.approx(100 * report["params_after"] / report["params_before"], abs=0.05)


def test_report_schema(cnn_run):
    report = cnn_run["report"]
    assert REPORT_KEYS <= set(report)
    assert SOLVER_KEYS <= set(report["solver"])
    for layer in report["layers"]:
        assert {"name", "kind", "units_before", "units_after"} <= set(layer)
    assert report["solver"]["status"] in ("optimal", "feasible_at_deadline")
    assert report["selection"]["rule"] == "accuracy budget"


def test_refuses_to_overwrite_the_input(tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copy(MLP, model)
    before = digest(model)
    code, out = run("optimize", model, "--data", MLP_CAL, "-o", model)
    assert code == 2 and "refusing to write over the input" in out
    assert digest(model) == before and sorted(os.listdir(tmp_path)) == ["m.onnx"]


@pytest.mark.parametrize("args, pattern", [
    (["--lam", "-1"], "lambda must be > 0"),
    (["--eps", "-0.1"], "eps must be >= 0"),
    (["--threshold", "2"], "threshold must be in"),
    (["--time-limit", "0"], "time limit must be > 0"),
    (["--num-samples", "0"], "num_samples must be >= 1"),
    (["--target-params", "1.5"], "target params must be"),
    (["--max-accuracy-drop", "-1"], "max accuracy drop"),
    (["--threshold", "0.1", "--mean-threshold"], "exclude each other"),
    (["--quiet", "--verbose"], "exclude each other"),
    (["--max-accuracy-drop", "1"], "needs evaluation data"),
    (["-o", "/nonexistent-folder/x.onnx"], "does not exist"),
    (["--solver", "gurobi"], "Invalid value"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, args, pattern):
    model = tmp_path / "m.onnx"
    shutil.copy(MLP, model)
    code, out = run("optimize", model, "--data", MLP_CAL, *args)
    assert code == 2, out
    assert pattern in out
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert "Traceback" not in out


def test_parameter_budget_and_threshold_rules(tmp_path):
    out_path = tmp_path / "p.onnx"
    code, out = run("optimize", MLP, "--data", MLP_CAL, "--target-params", "0.5", "-o", out_path, "--report",
                    tmp_path / "r.json", "--no-latency", "-q")
    assert code == 0, out
    assert out == ""  # --quiet
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["params_after"] <= 0.5 * report["params_before"] + 1e-9
    assert report["selection"]["rule"] == "parameter budget"
    code, out = run("optimize", MLP, "--data", MLP_CAL, "--threshold", "0.1", "-o", out_path, "--report",
                    tmp_path / "r.json", "--no-latency")
    assert code == 0, out
    assert json.loads((tmp_path / "r.json").read_text())["selection"]["rule"] == "threshold"


def test_unreachable_parameter_budget_exits_1(tmp_path):
    code, out = run("optimize", MLP, "--data", MLP_CAL, "--target-params", "0.001", "-o", tmp_path / "p.onnx")
    assert code == 1 and "closest" in out.splitlines()[-1] or "keeping one unit per layer" in out
    assert not (tmp_path / "p.onnx").exists()


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    code, out = run("optimize", CNN, "--data", CNN_CAL, "--threshold", "0.1", "-o", tmp_path / "p.onnx",
                    "--plot", tmp_path / "p.png", "--no-latency", "-q")
    assert code == 0, out
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_and_evaluate(tmp_path):
    code, out = run("inspect", CNN)
    assert code == 0 and "conv" in out and "3,658" in out
    code, out = run("evaluate", CNN, "--data", CNN_EVAL, "--compare", CNN, "--json", "--no-latency")
    assert code == 0
    result = json.loads(out)
    assert result["compare"]["agreement"] == 100.0 and result["accuracy"] == result["compare"]["accuracy"]


def table_rows(text: str, first_cells: list[str]) -> dict[str, list[str]]:
    """The cells of the rich table rows whose first cell is one of `first_cells`."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) > 1 and cells[0] in first_cells:
            rows[cells[0]] = cells
    return rows


def header(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("┃"))
    return [c.strip() for c in line.strip().strip("┃").split("┃")]


def initializer_elements(path: Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


@pytest.fixture()
def two_models(tmp_path, monkeypatch, cnn_run):
    """The bundled CNN and its pruned version from `cnn_run`, as short relative names (table cells never fold)."""
    assert cnn_run["code"] == 0, cnn_run["out"]
    shutil.copy(CNN, tmp_path / "a.onnx")
    shutil.copy(cnn_run["folder"] / "cnn.pruned.onnx", tmp_path / "b.onnx")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_inspect_several_files_one_row_each(two_models):
    result = invoke("inspect", "a.onnx", "b.onnx")
    assert result.exit_code == 0, result.output
    assert header(result.stdout) == ["file", "opset", "producer", "input shape", "layers", "units", "params",
                                     "MACs/sample"]
    rows = table_rows(result.stdout, ["a.onnx", "b.onnx"])
    assert list(rows) == ["a.onnx", "b.onnx"]
    for name, cells in rows.items():
        net, proto = load_network(two_models / name)
        assert int(cells[1]) == proto.opset_import[0].version
        assert cells[2] == f"{proto.producer_name} {proto.producer_version}"
        assert cells[3] == "[" + ", ".join(d.dim_param or str(d.dim_value)
                                         for d in proto.graph.input[0].type.tensor_type.shape.dim) + "]"
        assert int(cells[4]) == len(net.linear_indices())
        assert number(cells[5]) == sum(net.layers[i].units for i in net.scored_indices())
        assert number(cells[6]) == initializer_elements(two_models / name)
        assert number(cells[7]) == net.macs
    assert number(rows["b.onnx"][6]) < number(rows["a.onnx"][6])


def test_evaluate_several_files_one_row_each(two_models):
    from onnxcrit.validate import run_tensors

    result = invoke("evaluate", "a.onnx", "b.onnx", "--data", CNN_EVAL, "--no-latency")
    assert result.exit_code == 0, result.output
    assert header(result.stdout) == ["file", "params", "MACs/sample", "accuracy", "agreement"]
    rows = table_rows(result.stdout, ["a.onnx", "b.onnx"])
    assert list(rows) == ["a.onnx", "b.onnx"]
    ev = np.load(CNN_EVAL)
    predicted = {}
    for name, cells in rows.items():
        net, proto = load_network(two_models / name)
        predicted[name] = run_tensors(proto, net.input_name, ev["x"], [net.logits_name])[0].argmax(axis=1)
        assert number(cells[1]) == initializer_elements(two_models / name)
        assert number(cells[2]) == net.macs
        assert float(cells[3].rstrip("%")) == pytest.approx(100 * np.mean(predicted[name] == ev["y"]), abs=0.005)
    assert rows["a.onnx"][4] == "(reference)"
    agreement = 100 * np.mean(predicted["a.onnx"] == predicted["b.onnx"])
    assert float(rows["b.onnx"][4].rstrip("%")) == pytest.approx(agreement, abs=0.005)
    # --json: a list, one entry per model, the same numbers; --compare is the same as a second file
    listed = json.loads(invoke("evaluate", "a.onnx", "b.onnx", "--data", CNN_EVAL, "--no-latency", "--json").stdout)
    assert [entry["model"] for entry in listed] == ["a.onnx", "b.onnx"]
    assert listed[1]["agreement"] == pytest.approx(agreement, abs=1e-3) and "agreement" not in listed[0]
    compared = invoke("evaluate", "a.onnx", "--compare", "b.onnx", "--data", CNN_EVAL, "--no-latency")
    assert table_rows(compared.stdout, ["a.onnx", "b.onnx"]) == rows


def test_evaluate_without_data(two_models):
    """No --data: parameters, MACs and latency on random inputs; no accuracy or agreement column; exit 0."""
    result = invoke("evaluate", "a.onnx", "b.onnx")
    assert result.exit_code == 0, result.output
    columns = header(result.stdout)
    assert columns == ["file", "params", "MACs/sample", "latency b1", "latency b64"]
    rows = table_rows(result.stdout, ["a.onnx", "b.onnx"])
    for name, cells in rows.items():
        assert number(cells[1]) == initializer_elements(two_models / name)
        assert all(cell.endswith(" ms") and float(cell[:-3]) >= 0 for cell in cells[3:])  # measured, any value
    single = json.loads(invoke("evaluate", "a.onnx", "--no-latency", "--json").stdout)
    assert single == {"params": initializer_elements(two_models / "a.onnx"), "macs": load_network(CNN)[0].macs}


@pytest.mark.parametrize("command", ["inspect", "evaluate"])
def test_a_missing_second_file_is_named_in_one_line(two_models, command):
    result = invoke(command, "a.onnx", "missing.onnx", *(["--no-latency"] if command == "evaluate" else []))
    assert result.exit_code == 2
    assert result.stdout == ""  # nothing printed for the good first file either
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0] == "onnxcrit: error: missing.onnx: no such file", result.stderr


def test_evaluate_names_the_model_the_data_does_not_fit(two_models):
    shutil.copy(MLP, "mlp.onnx")
    result = invoke("evaluate", "a.onnx", "mlp.onnx", "--data", CNN_EVAL, "--no-latency")
    assert result.exit_code == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcrit: error: mlp.onnx: ") and "expects [N, 64]" in lines[0]


@pytest.mark.parametrize("content, pattern", [(b"", "empty file"), (b"junk", "not"), (None, "no such file")])
def test_inspect_bad_files_exit_2(tmp_path, content, pattern):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    code, out = run("inspect", path)
    assert code == 2 and pattern in out and len(out.strip().splitlines()) == 1


def test_console_script_in_a_subprocess(tmp_path):
    """The installed `onnxcrit` entry point: exit codes and one-line errors, no traceback."""
    exe = shutil.which("onnxcrit", path=str(Path(sys.executable).parent)) or shutil.which("onnxcrit")
    assert exe, "the onnxcrit console script is not installed"
    done = subprocess.run([exe, "inspect", str(MLP)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "dense" in done.stdout
    done = subprocess.run([exe, "optimize", str(MLP), "--data", str(tmp_path / "none.npz")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no such file" in done.stderr and "Traceback" not in done.stderr
    out = tmp_path / "m.pruned.onnx"
    done = subprocess.run([exe, "optimize", str(MLP), "--data", str(MLP_CAL), "--threshold", "0.1", "-o", str(out),
                           "--no-latency", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert out.is_file()


def test_formulation_variants_reach_the_solver(tmp_path):
    """--loss/--margin/--sparsity change the problem: the lse loss adds tangent-plane rows, the paper's
    sparsity adds its shift columns."""
    rows = {}
    for name, extra in (("base", []), ("lse", ["--loss", "lse"]), ("paper", ["--sparsity", "paper"]),
                        ("margin", ["--margin", "3"])):
        code, out = run("optimize", MLP, "--data", MLP_CAL, "--threshold", "0.1", "-o", tmp_path / f"{name}.onnx",
                        "--report", tmp_path / f"{name}.json", "--no-latency", "-q", *extra)
        assert code == 0, out
        rows[name] = json.loads((tmp_path / f"{name}.json").read_text())
    base = rows["base"]["solver"]
    assert rows["lse"]["options"]["loss"] == "lse" and rows["lse"]["solver"]["constraints"] > base["constraints"]
    assert rows["paper"]["options"]["sparsity"] == "paper" and rows["paper"]["solver"]["variables"] > base["variables"]
    assert rows["margin"]["options"]["margin"] == 3.0
    assert rows["margin"]["params_after"] >= rows["base"]["params_after"]  # a larger margin never prunes more here


def test_optimize_then_finetune_in_one_go(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    out = tmp_path / "ft.onnx"
    code, text = run("optimize", CNN, "--data", CNN_CAL, "--eval-data", CNN_EVAL, "--target-params", "0.5",
                     "--finetune-data", CNN_CAL, "--finetune-epochs", "2", "-o", out, "--report", tmp_path / "r.json",
                     "--no-latency", "-q")
    assert code == 0, text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["finetune"]["epochs"] == 2 and len(report["finetune"]["losses"]) == 2
    net, proto = load_network(out)
    assert report["params_after"] == sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    # the written model is the fine-tuned one: its held-out accuracy is the one reported
    ev = np.load(CNN_EVAL)
    from onnxcrit.validate import run_tensors
    logits = run_tensors(proto, net.input_name, ev["x"], [net.logits_name])[0]
    assert abs(float(np.mean(logits.argmax(1) == ev["y"])) * 100 - report["accuracy_after"]) < 1e-3


def test_finetune_and_retrain_commands(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    pruned = tmp_path / "p.onnx"
    assert run("optimize", CNN, "--data", CNN_CAL, "--target-params", "0.6", "-o", pruned, "--no-latency", "-q")[0] == 0
    code, text = run("finetune", pruned, "--data", CNN_CAL, "--eval-data", CNN_EVAL, "--epochs", "1", "-o",
                     tmp_path / "f.onnx")
    assert code == 0 and "held-out accuracy" in text, text
    code, text = run("retrain", pruned, "--data", CNN_CAL, "--epochs", "1", "--init", CNN, "-o", tmp_path / "r.onnx")
    assert code == 0, text
    for name in ("f.onnx", "r.onnx"):
        net, proto = load_network(tmp_path / name)
        assert [o.name for o in proto.graph.output] == ["logits"]
    code, text = run("retrain", tmp_path / "f.onnx", "--data", CNN_CAL, "-o", tmp_path / "f.onnx")
    assert code == 2 and "refusing to write over the input" in text
    code, text = run("retrain", pruned, "--data", CNN_CAL, "--init", pruned, "-o", tmp_path / "x.onnx")
    assert code == 2 and text.strip().startswith("onnxcrit: error:") and len(text.strip().splitlines()) == 1, text


def test_every_command_and_option_has_a_help_line():
    import click

    result = invoke("--help")
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:")[1].strip().splitlines()
    assert sorted(line.split()[0] for line in commands) == sorted(main.commands)
    assert all(len(line.split(None, 1)) == 2 and "..." not in line for line in commands), commands  # not cut
    for name, command in main.commands.items():
        assert command.short_help and len(command.short_help) <= 66, name  # fits click's 80-column listing
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help and "\n" not in param.help, (name, param.name)
        assert invoke(name, "--help").exit_code == 0
