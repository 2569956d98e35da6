"""Resource guards: the full MIP's memory estimated before building, refusal or a switch to decoupled mode over the
limit, a time limit that covers the build, and a MemoryError as one line."""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcrit import ResourceError, SolveError, optimize
from onnxcrit import resources, scoring
from onnxcrit.api import Progress
from onnxcrit.calibration import choose_calibration
from onnxcrit.cli import main
from onnxcrit.formulation import build_problem
from onnxcrit.formulation import model as formulation_model
from onnxcrit.formulation.conv import conv_matrix
from onnxcrit.formulation.dense import dense_matrix
from onnxcrit.frontend import load_network

from .corpus import ROOT
from .onnx_builders import cnn

CNN, CAL, EVAL = (ROOT / "models" / f for f in ("digits_cnn.onnx", "digits_cnn_calib.npz", "digits_cnn_eval.npz"))
MLP, MLP_CAL = ROOT / "models" / "digits_mlp.onnx", ROOT / "models" / "digits_mlp_calib.npz"


def calibration(path, data, n):
    net, _ = load_network(path)
    d = np.load(data)
    idx, _ = choose_calibration(net, d["x"], d["y"], n, 0)
    return net, d["x"][idx].astype(np.float64), d["y"][idx]


@pytest.mark.parametrize("path, data, n", [(MLP, MLP_CAL, 50), (CNN, CAL, 10), (CNN, CAL, 60)],
                         ids=["mlp-50", "cnn-10", "cnn-60"])
def test_the_estimate_is_within_a_factor_2_of_what_the_build_allocates(path, data, n):
    net, x, y = calibration(path, data, n)
    est = resources.estimate_full(net, n)
    tracemalloc.start()
    try:
        build_problem(net, x, y, relax=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    build = est.bytes - resources.BASE_BYTES  # the build's share; the rest is the solver process's interpreter
    assert peak <= build <= 2 * peak, (build, peak)


def test_the_nonzeros_are_those_of_the_layer_matrices_the_build_multiplies():
    for path in (MLP, CNN):
        net, _ = load_network(path)
        per_image = [(conv_matrix if net.layers[k].kind == "conv" else dense_matrix)(net.layers[k]).nnz
                     for k in net.linear_indices()]
        est = resources.estimate_full(net, 7)
        assert est.nonzeros == 7 * sum(per_image)  # no zero weights in these files
        assert est.largest == 7 * max(per_image)


def test_the_memory_limit_comes_from_the_option_or_the_machine():
    assert resources.memory_limit(2.5)[0] == int(2.5e9)
    room = resources.available_bytes()
    assert room is None or room > 0
    limit, how = resources.memory_limit(None)
    assert limit is None or (limit == int(resources.MEMORY_FRACTION * room) and "available" in how)


def test_full_mode_over_the_limit_is_refused_in_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CAL), "--mode", "full", "--memory-limit",
                                    "0.001", "--no-latency", "-o", str(out), "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("onnxcrit: error: the full MIP for 10 calibration images "
                                                   "would need about ")
    assert "more than the 1 MB allowed by --memory-limit: use --mode decoupled or fewer --num-samples" in lines[0]
    assert "nonzeros" in lines[0] and "Traceback" not in res.output
    assert not out.exists() and not (tmp_path / "r.json").exists()
    with pytest.raises(ResourceError, match="would need about"):
        optimize(CNN, CAL, mode="full", memory_limit=0.001, measure_latency=False)


def test_auto_switches_to_decoupled_under_the_limit_and_says_why():
    notes = []

    class Notes(Progress):
        def note(self, message):
            notes.append(message)

    res = optimize(CNN, CAL, memory_limit=0.001, measure_latency=False, progress=Notes())
    assert res.report["mode"] == "decoupled"
    assert "would need about" in res.report["mode_reason"] and "more than the 1 MB" in res.report["mode_reason"]
    assert any(n.startswith("mode decoupled: the full MIP for 10 calibration images") for n in notes)
    plenty = optimize(CNN, CAL, memory_limit=1000.0, measure_latency=False)
    assert plenty.report["mode"] == "full"


def slow_builders(monkeypatch, seconds):
    """Every layer builder takes at least `seconds` longer: a slow build whatever the machine."""
    for kind, builder in list(formulation_model.BUILDERS.items()):
        def slow(*args, _builder=builder, **kwargs):
            time.sleep(seconds)
            return _builder(*args, **kwargs)
        monkeypatch.setitem(formulation_model.BUILDERS, kind, slow)


def test_the_time_limit_covers_the_build(monkeypatch):
    net, _ = load_network(CNN)
    d = np.load(CAL)
    layers = len(net.layers)
    seen = {}
    real_solve = scoring.solve

    def spy(milp, **kwargs):
        seen["time_limit"] = kwargs["time_limit"]
        return real_solve(milp, **kwargs)

    monkeypatch.setattr(scoring, "solve", spy)
    slow_builders(monkeypatch, 0.2)  # the build takes at least 0.2 s a layer
    limit = 0.2 * layers + 30.0
    res = scoring.compute_scores(net, d["x"], d["y"], time_limit=limit)
    assert res.build_seconds >= 0.2 * layers
    assert seen["time_limit"] <= limit - 0.2 * layers  # the solve got what the build left, not the whole limit
    # a build that cannot finish in time stops after the layer that passed the deadline: no solve at all
    seen.clear()
    slow_builders(monkeypatch, 1.0)
    clock = time.perf_counter()
    with pytest.raises(SolveError, match=r"no solution within time_limit=1.5 s: building the problem passed it after layer \d+ of") as err:
        scoring.compute_scores(net, d["x"], d["y"], time_limit=1.5)
    assert time.perf_counter() - clock < 1.5 + 1.0 + 10.0  # the limit, one more layer, a generous margin
    assert "time_limit" not in seen and err.value.result.status == "no_solution"


def test_a_memory_error_in_the_build_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise MemoryError("Unable to allocate 14.2 GiB for an array with shape (1144522240,) and data type float64")

    monkeypatch.setitem(formulation_model.BUILDERS, "conv", boom)
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CAL), "--no-latency", "-o", str(out)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines == ["onnxcrit: error: out of memory in the score stage (Unable to allocate 14.2 GiB for an array "
                     "with shape (1144522240,) and data type float64): use --mode decoupled or fewer --num-samples; "
                     "nothing was written"], res.stderr
    assert not out.exists()
    with pytest.raises(ResourceError, match="out of memory in the score stage"):
        optimize(CNN, CAL, measure_latency=False)


def test_a_small_conv_net_estimate_is_sane():
    """A generated CNN (padding, pooling): the estimate grows linearly in the images and is positive."""
    import onnx

    from onnxcrit.frontend import load_network as load

    model = cnn()
    net, _ = load(onnx.load_from_string(model.SerializeToString()))
    one, ten = resources.estimate_full(net, 1), resources.estimate_full(net, 10)
    assert ten.nonzeros == 10 * one.nonzeros and ten.largest == 10 * one.largest > 0
    assert ten.bytes - resources.BASE_BYTES == pytest.approx(10 * (one.bytes - resources.BASE_BYTES), rel=1e-6)


def test_a_deep_graph_is_estimated_by_all_its_layers():
    """ResNet-8 (corpus): many convs of similar size; the finished problem, not the largest layer, sets the peak
    (measured by tools/bench_memory.py: 673 MB for 200 images, the largest layer's term alone said 438 MB)."""
    net, _ = load_network(ROOT / "tests" / "data" / "branching" / "torch_legacy_resnet8.onnx")
    est = resources.estimate_full(net, 200)
    assert est.nonzeros * resources.BYTES_PER_TOTAL_NONZERO > est.largest * resources.BYTES_PER_NONZERO
    assert est.bytes == int(resources.BYTES_PER_TOTAL_NONZERO * est.nonzeros + resources.BASE_BYTES)
    assert est.bytes >= 673 * 2**20
