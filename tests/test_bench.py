"""The benchmarks (benchmarks/, not part of the package).

The suite's fairness: every criterion is compared at onnxcrit's per-layer kept counts. These tests pin the two
things its table relies on: masks keep exactly the requested counts of the highest-scored units, and in a
comparison every method's rewritten file has the same parameter and MAC counts as onnxcrit's. And the
benchmarks use onnxcrit's public API only; where they copy a product rule, the copy matches the product.
"""
import ast

import numpy as np
import pytest

import onnxcrit
from benchmarks import latency, methods, models
from benchmarks import suite as run
from onnxcrit import rounding, select
from onnxcrit.frontend import load_network
from tests.corpus import ROOT


def test_keep_top_keeps_the_counts_of_highest_scores():
    scores = {0: np.array([0.3, 0.9, 0.1, 0.9, 0.5]), 4: np.array([2.0, -1.0, 0.0])}
    keep = methods.keep_top(scores, {0: 3, 4: 1})
    assert keep[0].tolist() == [False, True, False, True, True]
    assert keep[4].tolist() == [True, False, False]


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_criteria_score_every_prunable_unit(name):
    net, _ = load_network(ROOT / "models" / f"{name}.onnx")
    x = np.load(ROOT / "models" / f"{name}_calib.npz")["x"][:10]
    for criterion in (methods.l1, methods.l2, methods.activation):
        scores = criterion(net, x)
        assert sorted(scores) == net.scored_indices()
        assert all(s.shape == (net.layers[i].units,) and np.all(s >= 0) for i, s in scores.items())
    first = net.scored_indices()[0]
    w = net.layers[first].weight.reshape(net.layers[first].units, -1)
    np.testing.assert_allclose(methods.l1(net)[first], np.abs(w).sum(axis=1))
    relu = np.maximum(net.activations(x)[first], 0.0)
    np.testing.assert_allclose(methods.activation(net, x)[first], relu.mean(axis=tuple(
        a for a in range(relu.ndim) if a != 1)))


def test_comparison_puts_every_method_at_onnxcrits_counts(monkeypatch):
    monkeypatch.setattr(run, "CONFIGS", run.CONFIGS[:1])  # paper defaults only: the test stays short
    # in this process: a spawned one would leave multiprocessing's resource tracker behind as a child of pytest
    monkeypatch.setattr(methods, "_in_fresh_process", lambda fn, *args: fn(*args))
    case = models.load_case("digits_mlp")
    ev = run.Evaluator(case)
    data_free = {"L1": (methods.l1(ev.net), 0.0, 0.0)}
    rows = run.compare(case, ev, data_free)
    methods_seen = [r["method"] for r in rows]
    assert methods_seen[0].startswith("onnxcrit") and {"L1", "activation", "critical (highest scores removed)",
                                                        f"random (mean of {run.RANDOM_SEEDS})"} <= set(methods_seen)
    ours = rows[0]
    assert 0.3 < ours["params_removed"] < 0.9
    for r in rows[1:]:
        assert r["params_removed"] == pytest.approx(ours["params_removed"], abs=1e-12), r["method"]
        assert r["macs_removed"] == pytest.approx(ours["macs_removed"], abs=1e-12), r["method"]


def test_benchmarks_use_only_the_public_api():
    """`from onnxcrit import NAME` with NAME in onnxcrit.__all__; no onnxcrit submodule, no private name."""
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("onnxcrit")], (path.name, node.lineno)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.startswith("onnxcrit"):
                assert node.module == "onnxcrit", (path.name, node.lineno, node.module)
                names = [a.name for a in node.names]
                assert set(names) <= set(onnxcrit.__all__), (path.name, node.lineno, names)
    assert all(hasattr(onnxcrit, name) for name in onnxcrit.__all__)


def test_magnitude_baseline_is_onnxcrits_magnitude():
    for name in ("digits_mlp", "digits_cnn"):
        net, _ = load_network(ROOT / "models" / f"{name}.onnx")
        ours, theirs = methods.magnitude(net), select.magnitude(net)
        assert sorted(ours) == sorted(theirs) and ours
        for i in ours:
            np.testing.assert_array_equal(ours[i], theirs[i])


def test_latency_benchmark_applies_round_to_autos_rule():
    """benchmarks/latency.py re-applies --round-to auto to magnitude masks: same K, timer budget and choice."""
    assert latency.AUTO_ROUNDINGS == rounding.ROUNDINGS and latency.AUTO_TIE == rounding.TIE
    assert latency.AUTO_TIMING == dict(repeats=rounding.REPEATS, warmup=rounding.WARMUP, seconds=rounding.SECONDS)
    rng = np.random.default_rng(0)
    for _ in range(200):
        ks = sorted(rng.choice([1, 4, 8, 16], size=rng.integers(1, 5), replace=False).tolist())
        base = rng.uniform(0.5, 1.5, 2)  # near ties too: within and beyond the 2% a larger K must win by
        speedups = {k: (base * rng.choice([0.7, 0.99, 1.0, 1.015, 1.03, 1.5])).tolist() for k in ks}
        cands = [rounding.Candidate(round_to=k, scales={}, keep={}, units=(), speedup=dict(zip((1, 64), s)))
                 for k, s in speedups.items()]
        assert latency.choose_round_to(speedups) == rounding.choose(cands).round_to


def test_latency_benchmark_candidates_are_the_products():
    net, model = load_network(ROOT / "models" / "digits_cnn.onnx")
    scales = methods.magnitude_scales(net, 0.3)
    scores = {k: np.linspace(0.1, 1.0, len(s)) for k, s in scales.items()}
    ours = latency.rounded(net, model, scores, scales)
    sel = select.Selection(scales=scales, rule="threshold", rescaled=False)
    theirs = rounding.candidates(net, model, scores, sel, rounding.ROUNDINGS)
    assert sorted({v.round_to for v in ours.values()}) == [c.round_to for c in theirs]
    for c in theirs:
        for k in [c.round_to, *c.same_as]:
            assert ours[k].model.SerializeToString() == c.model.SerializeToString()


def test_branching_groups_match_onnxcrits_and_removal_matches_masking(tmp_path):
    """benchmarks/branching.py: Torch-Pruning's channel groups map one to one onto onnxcrit's group keys through
    the exporter's node names, and both removals (onnxcrit's rewrite, Torch-Pruning's) compute the masked model."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torch_pruning")
    from benchmarks import branching

    assert branching.onnx_name("layer1.0.conv1") == "/layer1/layer1.0/conv1/Conv"
    assert branching.onnx_name("layer2.0.shortcut.0") == "/layer2/layer2.0/shortcut/shortcut.0/Conv"
    torch.manual_seed(0)
    x = np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32)
    for name, count, joined in (("resnet20_mnist", 12, 3), ("firenet_mnist", 13, 0)):
        model = branching.build(name).eval()
        for m in model.modules():  # distinct BatchNorm statistics: no folded constants the exporter would share
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.1, 0.1)
        example = torch.from_numpy(x[:1])
        groups = branching.Groups(model, example)
        assert len(groups) == count and sum(len(p) > 1 for p in groups.producers) == joined
        path = str(tmp_path / f"{name}.onnx")
        branching.export(model, example, path)
        for backend in (branching.TorchBackend(model, groups, example), branching.OnnxBackend(path, groups)):
            assert branching.check_backend(backend, model, groups, x) < 1e-4, (name, backend.kind)
