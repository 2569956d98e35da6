"""Decoupled mode: one MIP per block on an auxiliary head, merged, rewritten and validated like full mode."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcrit import api
from onnxcrit.cli import main
from onnxcrit.decoupled import (AUTO_MACS, BlockTask, block_features, block_network, choose_mode, decoupled_scores,
                                fit_heads, solve_block, split_blocks)
from onnxcrit.errors import SolveError
from onnxcrit.frontend import load_network
from onnxcrit.ir import Conv, Network, Relu
from onnxcrit.reconstruct import Reconstructor
from onnxcrit.tolerance import assert_same
from onnxcrit.validate import run_tensors

from .test_hardening import _descendants, _state

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
BLOCK_KEYS = {"name", "units", "variables", "binaries", "constraints", "status", "seconds", "head_accuracy"}


def case(name: str):
    net, _ = load_network(MODELS / f"{name}.onnx")
    cal = np.load(MODELS / f"{name}_calib.npz")
    return net, cal["x"], cal["y"]


@pytest.fixture(scope="module", params=["digits_cnn", "digits_mlp"])
def decoupled_run(request):
    name = request.param
    result = api.optimize(MODELS / f"{name}.onnx", MODELS / f"{name}_calib.npz",
                          eval_data=MODELS / f"{name}_eval.npz", mode="decoupled", workers=2, measure_latency=False)
    return name, result


def test_decoupled_run_gives_a_valid_smaller_model(decoupled_run):
    name, result = decoupled_run
    report = result.report
    onnx.checker.check_model(result.model, full_check=True)
    assert report["mode"] == "decoupled"
    assert report["params_after"] < report["params_before"]
    assert report["accuracy_before"] - report["accuracy_after"] <= 1.0 + 1e-9  # the default budget held
    assert report["max_abs_vs_masked_ir"] <= report["masked_ir_tolerance"]  # validated by the product
    net, proto = load_network(MODELS / f"{name}.onnx")
    x = np.load(MODELS / f"{name}_eval.npz")["x"]
    written = run_tensors(result.model, net.input_name, x, [net.logits_name])[0]
    # the default reconstruction (lsq) refits the next layers: rebuilt here from the calibration images
    assert report["selection"]["reconstruct"]["applied"] == "lsq"
    fitted, fitted_scales = Reconstructor(proto, net, "lsq", case(name)[1]).reference(result.scales)
    assert_same(written, fitted.forward(x, scales=fitted_scales))  # and again here, by the one shared rule
    assert report["options"]["mode"] == "decoupled" and report["options"]["workers"] == 2


def test_report_has_one_row_per_block(decoupled_run):
    name, result = decoupled_run
    net, _ = load_network(MODELS / f"{name}.onnx")
    blocks = result.report["blocks"]
    assert [b["name"] for b in blocks] == [net.layers[i].name for i in net.scored_indices()]
    for b, i in zip(blocks, net.scored_indices()):
        assert BLOCK_KEYS <= set(b)
        assert b["units"] == net.layers[i].units
        assert b["status"] in ("optimal", "feasible_at_deadline")
        assert b["variables"] >= b["units"] and b["seconds"] > 0
        assert 0 <= b["head_accuracy"] <= 100
    assert blocks[-1]["head"] == "network"  # the last block keeps the network's own output layer
    json.dumps(result.report)  # the report stays JSON


def test_output_layer_is_never_scored(decoupled_run):
    name, result = decoupled_run
    net, _ = load_network(MODELS / f"{name}.onnx")
    assert sorted(result.scores) == net.scored_indices()
    assert net.linear_indices()[-1] not in result.scores
    assert result.report["layers"][-1]["scored"] is False
    assert result.report["layers"][-1]["units_after"] == net.num_classes
    # inside each block, only the block's own layer is scored: the head is the sub-network's output layer
    blocks = split_blocks(net)
    x = np.load(MODELS / f"{name}_calib.npz")
    for block, head in zip(blocks, fit_heads(net, blocks, x["x"], x["y"])):
        sub, _ = block_network(net, block, head)
        assert sub.scored_indices() == [0]


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_one_and_two_workers_give_identical_scores(name):
    net, x, y = case(name)
    one = decoupled_scores(net, x, y, workers=1, time_limit=60)
    two = decoupled_scores(net, x, y, workers=2, time_limit=60)
    assert sorted(one.scores) == sorted(two.scores) == net.scored_indices()
    for k in one.scores:
        assert np.array_equal(one.scores[k], two.scores[k])
    assert [b["name"] for b in one.blocks] == [b["name"] for b in two.blocks]
    assert np.array_equal(one.calibration_indices, two.calibration_indices)


def test_sub_network_reproduces_the_block_and_its_head():
    """At every score 1 a block's sub-network on the layer's pre-activations gives its head's logits on the
    full network's block output; for the last block, the network's own logits."""
    net, x, y = case("digits_cnn")
    blocks = split_blocks(net)
    heads = fit_heads(net, blocks, x, y)
    acts = net.activations(x[:20])
    feats, logits = block_features(net, blocks[:-1], x[:20], [h.pool for h in heads[:-1]])
    for j, (block, head) in enumerate(zip(blocks, heads)):
        sub, radius = block_network(net, block, head)
        assert radius > 0
        got = sub.forward(acts[block.position])
        want = logits if block.last else head.dense.forward(feats[j])
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert [h.kind for h in heads] == ["gap", "gap", "network"]


def test_any_object_with_map_is_an_executor():
    """The worker interface: a cluster backend only needs map(fn, tasks) returning results in order."""
    net, x, y = case("digits_mlp")

    class Recording:
        def __init__(self):
            self.tasks = []

        def map(self, fn, tasks):
            self.tasks = list(tasks)
            return [fn(t) for t in reversed(self.tasks)]  # out of order on purpose: results are re-sorted

    ex = Recording()
    res = decoupled_scores(net, x, y, executor=ex, time_limit=60)
    assert [t.name for t in ex.tasks] == [net.layers[i].name for i in net.scored_indices()]
    assert all(isinstance(t, BlockTask) for t in ex.tasks)
    ref = decoupled_scores(net, x, y, workers=1, time_limit=60)
    for k in ref.scores:
        assert np.array_equal(res.scores[k], ref.scores[k])


def test_process_workers_match_threads():
    # in a child interpreter: a process pool leaves multiprocessing's resource tracker running until exit
    code = f"""
import numpy as np
from onnxcrit.decoupled import decoupled_scores, local_executor
from onnxcrit.frontend import load_network
net, _ = load_network({str(MODELS / "digits_mlp.onnx")!r})
d = np.load({str(MODELS / "digits_mlp_calib.npz")!r})
with local_executor(2, "processes") as ex:
    procs = decoupled_scores(net, d["x"], d["y"], executor=ex, time_limit=60)
threads = decoupled_scores(net, d["x"], d["y"], workers=2, time_limit=60)
assert sorted(procs.scores) == sorted(threads.scores) == net.scored_indices()
assert all(np.array_equal(procs.scores[k], threads.scores[k]) for k in threads.scores)
print("same")
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "same", proc.stderr[-2000:]


def test_global_deadline_splits_and_stops():
    net, x, y = case("digits_cnn")
    # 3 blocks on 2 workers: 2 rounds, each block may use half the limit
    res = decoupled_scores(net, x, y, workers=2, time_limit=40)
    assert all(15.0 < b["time_limit"] <= 20.0 for b in res.blocks)  # half of what the heads' preparation left
    # shares too short to start a solver (or nothing left after the preparation on a slow machine): nothing is
    # solved, the error says why and holds the record
    with pytest.raises(SolveError, match="too short|the global deadline had passed") as err:
        decoupled_scores(net, x, y, workers=1, time_limit=0.9)
    assert err.value.result.status == "no_solution"
    assert [b["status"] for b in err.value.result.blocks] == ["no_solution"] * 3
    # a block whose turn comes after the global deadline is not started
    sub, _ = block_network(net, split_blocks(net)[0], fit_heads(net, split_blocks(net), x, y)[0])
    late = solve_block(BlockTask(0, "b", 0, sub, np.zeros((1, *sub.input_shape)), np.zeros(1, int), {}, 10.0,
                                 time.time() - 1.0))
    assert late.record.status == "no_solution" and "global deadline" in late.record.message and late.scores is None


def test_auto_picks_full_for_small_models_and_decoupled_for_large():
    for name in ("digits_cnn", "digits_mlp"):
        net, _, _ = case(name)
        assert choose_mode(net, 10)[0] == "full"
    # one VGG-style layer at CIFAR size: 64 -> 128 channels, 3 x 3, on 16 x 16 (19M MACs per image)
    big = Network([Conv("c", np.zeros((128, 64, 3, 3)), np.zeros(128), (64, 16, 16), pads=(1, 1, 1, 1)),
                   Relu("r", (128, 16, 16)),
                   Conv("o", np.zeros((4, 128, 16, 16)), np.zeros(4), (128, 16, 16))], "x", (64, 16, 16))
    mode, why = choose_mode(big, 10)
    assert mode == "decoupled" and f"{AUTO_MACS:,}" in why


def test_auto_goes_decoupled_when_the_bounds_leave_many_relus_unstable():
    """Interval bounds widen with depth (and with eps): past AUTO_UNSTABLE unstable ReLU inputs the full problem
    is not built. On the digits CNN eps 1e-5 leaves none; a box of +-0.5 around each image leaves most."""
    from onnxcrit.decoupled import AUTO_UNSTABLE, unstable_inputs

    net, x, _ = case("digits_cnn")
    assert unstable_inputs(net, x[:10], 1e-5) == 0
    assert choose_mode(net, 10, x, 1e-5)[0] == "full"
    assert unstable_inputs(net, x[:200], 0.5) > AUTO_UNSTABLE
    mode, why = choose_mode(net, 200, x, 0.5)
    assert mode == "decoupled" and "unstable" in why and f"{AUTO_UNSTABLE:,}" in why


def test_cli_mode_and_workers(tmp_path):
    cnn = MODELS / "digits_cnn.onnx"
    args = ["optimize", str(cnn), "--data", str(MODELS / "digits_cnn_calib.npz"), "--threshold", "0.1",
            "--no-latency", "-q", "-o", str(tmp_path / "out.onnx"), "--report", str(tmp_path / "r.json")]
    result = CliRunner().invoke(main, args + ["--mode", "decoupled", "--workers", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "decoupled" and len(report["blocks"]) == 3
    result = CliRunner().invoke(main, args, catch_exceptions=False)  # default: auto
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mode"] == "full" and report["blocks"] == [] and report["options"]["mode"] == "auto"
    for bad in (["--workers", "0"], ["--mode", "fast"]):
        result = CliRunner().invoke(main, args + bad, catch_exceptions=False)
        assert result.exit_code == 2, result.output


HARD = ["--num-samples", "100", "--eps", "0.01", "--threshold", "0.1", "--mip"]  # conv1's block: > 15 s


def test_cli_global_deadline_holds(tmp_path):
    limit = 4.0
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["optimize", str(MODELS / "digits_cnn.onnx"), "--data",
                                       str(MODELS / "digits_cnn_calib.npz"), *HARD, "--mode", "decoupled",
                                       "--workers", "2", "--time-limit", str(limit), "-o", str(tmp_path / "o.onnx")],
                                catch_exceptions=False)
    elapsed = time.perf_counter() - start
    assert result.exit_code == 1, result.output
    assert "/conv1/Conv" in result.output  # the error names the block without a solution
    assert elapsed < limit * 1.1 + 4.0, elapsed  # heads and builds come on top of the solves' limit
    assert not (tmp_path / "o.onnx").exists()
    assert [p for p in _descendants(os.getpid()) if _state(p) not in ("Z", "gone")] == []


def test_ctrl_c_stops_running_block_solves(tmp_path):
    exe = Path(sys.executable).parent / "onnxcrit"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "onnxcrit.cli"]
    proc = subprocess.Popen([*cmd, "optimize", str(MODELS / "digits_cnn.onnx"), "--data",
                             str(MODELS / "digits_cnn_calib.npz"), *HARD, "--mode", "decoupled", "--workers", "2",
                             "--time-limit", "120", "-o", str(tmp_path / "o.onnx")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(_descendants(proc.pid)) < 2:  # both workers' solvers running
        time.sleep(0.2)
    children = _descendants(proc.pid)
    assert children, "no solver process started"
    time.sleep(0.5)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert time.perf_counter() - sent < 10  # not the 60 s each block's solve was allowed
    assert proc.returncode != 0 and "interrupted" in stderr and "Traceback" not in stderr
    assert os.listdir(tmp_path) == []
    time.sleep(0.5)
    assert [p for p in children if Path(f"/proc/{p}").exists() and "Z" not in _state(p)] == []


def test_ray_executor_gives_the_thread_pool_results(tmp_path):
    """A local Ray instance solves the blocks as Ray tasks, with the same scores as the thread pool, and the
    CLI takes --executor ray; a cluster address that cannot be reached is refused in one line."""
    pytest.importorskip("ray")
    net, x, y = case("digits_cnn")
    threads = decoupled_scores(net, x, y, workers=2, time_limit=60)
    on_ray = decoupled_scores(net, x, y, workers=2, time_limit=60, executor_kind="ray")
    assert sorted(on_ray.scores) == sorted(threads.scores)
    for k in threads.scores:
        assert np.array_equal(on_ray.scores[k], threads.scores[k])
    res = CliRunner().invoke(main, ["optimize", str(MODELS / "digits_mlp.onnx"), "--data",
                                    str(MODELS / "digits_mlp_calib.npz"), "--mode", "decoupled", "--executor",
                                    "ray:127.0.0.1:1", "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "cannot start or reach Ray at 127.0.0.1:1" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()


def test_budget_search_candidates_on_ray_and_threads_give_the_serial_result():
    """The budget search measures its grid and ladder candidates on the run's executor: a local Ray instance
    and the thread pool give exactly the one-at-a-time result (same written bytes, same candidates measured)."""
    pytest.importorskip("ray")
    from onnxcrit import select

    calls = []
    real = select.by_accuracy

    def spy(*args, **kwargs):
        many = kwargs.get("accuracy_many")
        if many is not None:
            def counted(batch):
                calls.append((kwargs["accuracy_of"], len(batch)))
                return many(batch)
            kwargs["accuracy_many"] = counted
        return real(*args, **kwargs)

    runs = {}
    for executor, workers in (("serial", 1), ("threads", 2), ("ray", 2)):
        select.by_accuracy = spy
        try:
            runs[executor] = api.optimize(MODELS / "digits_cnn.onnx", MODELS / "digits_cnn_calib.npz",
                                          eval_data=MODELS / "digits_cnn_eval.npz", mode="decoupled",
                                          workers=workers, executor=executor, measure_latency=False)
        finally:
            select.by_accuracy = real
        batches = [n for _, n in calls]
        if executor == "serial":
            assert batches == []  # one candidate at a time
        else:
            assert batches[0] == 16  # the grid: 16 counts, kept units at full strength (decoupled mode)
        calls.clear()
    serial = runs["serial"]
    for executor in ("threads", "ray"):
        other = runs[executor]
        assert other.model.SerializeToString() == serial.model.SerializeToString(), executor
        assert other.report["selection"]["attempts"] == serial.report["selection"]["attempts"], executor
