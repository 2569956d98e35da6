"""Conv channels rounded up for onnxruntime's blocked layout (--round-to), the timed choice among the roundings,
the `slower` warning, and latency of fixed-batch models. No test asserts on a real timing: the choice is tested
with fake timers, real timings only have to run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxcrit import api, measure, optimize, rounding, select
from onnxcrit.cli import main
from onnxcrit.errors import InputError
from onnxcrit.frontend import load_network, to_network
from onnxcrit.rewrite import remove_units
from onnxcrit.tolerance import assert_same
from onnxcrit.validate import run_tensors

from .onnx_builders import cnn, sample_inputs

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CNN, CNN_CAL, CNN_EVAL = (MODELS / f for f in ("digits_cnn.onnx", "digits_cnn_calib.npz", "digits_cnn_eval.npz"))


def _conv_units(model: onnx.ModelProto) -> tuple[int, ...]:
    net = to_network(model)
    return tuple(layer.units for layer in net.layers if layer.kind == "conv")


def _fake_timer(table: dict[tuple[int, ...], float], batch_factor: dict[int, float] | None = None, calls=None):
    """A timer reading each model's conv widths: seconds = table[widths] (times batch_factor[batch])."""
    def timer(models, batch):
        if calls is not None:
            calls.append((len(models), batch))
        factor = (batch_factor or {}).get(batch, 1.0)
        return [table[_conv_units(m)] * factor for m in models]
    return timer


# round_up -------------------------------------------------------------------------------------------------

def _case(seed: int):
    """A CNN with conv widths off every block size, random scores with many zeros, a threshold selection."""
    model = cnn(in_shape=(2, 10, 10), channels=(13, 11), dense=(19, 4), seed=seed)
    net = to_network(model)
    rng = np.random.default_rng(seed)
    scores = {}
    for i in net.scored_indices():
        s = rng.uniform(0, 1, net.layers[i].units)
        s[rng.random(len(s)) < 0.4] = 0.0  # LP scores: many exact zeros (ties broken by magnitude)
        scores[i] = s
    keep = select.keep_by_threshold(net, scores, 0.5)
    return model, net, scores, keep


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_round_up_rounds_conv_layers_with_the_best_removed_units(seed, rescale, k):
    model, net, scores, keep0 = _case(seed)
    base = select.to_scales(scores, keep0, rescale)
    plain = {i: s > 0 for i, s in base.items()}
    scales, keep = select.round_up(net, scores, base, k, rescale)
    order = select.removal_order(net, scores)
    rank = {pair: j for j, pair in enumerate(order)}
    for i in net.scored_indices():
        layer, count = net.layers[i], int(keep[i].sum())
        assert np.all(keep[i][plain[i]]), "a unit of the plain selection was dropped"
        assert np.all(scales[i][plain[i]] == base[i][plain[i]])
        if layer.kind != "conv":  # dense layers are not rounded
            assert np.array_equal(keep[i], plain[i]) and np.array_equal(scales[i], base[i])
            continue
        assert count % k == 0 or count == layer.units
        assert count - int(plain[i].sum()) < k  # rounded up, not further
        added = np.flatnonzero(keep[i] & ~plain[i])
        still_removed = np.flatnonzero(~keep[i])
        if len(added) and len(still_removed):  # every added unit outranks every unit left out
            assert min(rank[i, u] for u in added) > max(rank[i, u] for u in still_removed)
        want = np.clip(scores[i][added], 0, 1) if rescale else np.ones(len(added))
        np.testing.assert_array_equal(scales[i][added], want)
    # the rewritten model has the rounded widths and still equals the masked IR
    new, new_net = remove_units(model, net, scales, keep=keep)
    assert [new_net.layers[i].units for i in net.scored_indices()] == [int(keep[i].sum()) for i in net.scored_indices()]
    x = sample_inputs(model, n=16, seed=seed)
    assert_same(run_tensors(new, net.input_name, x, [net.logits_name])[0], net.forward(x, scales=scales))


def test_round_up_adds_the_highest_scored_units():
    model = cnn(in_shape=(1, 6, 6), channels=(8, 4), dense=(3,), seed=0)
    net = to_network(model)
    first = net.scored_indices()[0]
    scores = {i: np.ones(net.layers[i].units) for i in net.scored_indices()}
    scores[first] = np.array([0.9, 0.0, 0.3, 0.0, 0.8, 0.05, 0.2, 0.0])
    keep = {i: s >= 0.5 for i, s in scores.items()}
    scales, kept = select.round_up(net, scores, select.to_scales(scores, keep, False), 4, False)
    assert np.flatnonzero(kept[first]).tolist() == [0, 2, 4, 6]  # 0.9 and 0.8 kept, then 0.3 and 0.2 added
    assert scales[first].tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    scales, kept = select.round_up(net, scores, select.to_scales(scores, keep, True), 4, True)
    assert scales[first].tolist() == [0.9, 0, 0.3, 0, 0.8, 0, 0.2, 0]


def test_zero_scored_unit_added_under_rescaling_stays_with_zero_weights():
    model = cnn(in_shape=(1, 6, 6), channels=(8, 4), dense=(3,), seed=1)
    net = to_network(model)
    first = net.scored_indices()[0]
    scores = {i: np.ones(net.layers[i].units) for i in net.scored_indices()}
    scores[first] = np.array([0.9, 0.0, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0])
    base = select.to_scales(scores, {i: s > 0.5 for i, s in scores.items()}, True)
    scales, keep = select.round_up(net, scores, base, 4, True)
    assert int(keep[first].sum()) == 4 and int(np.count_nonzero(scales[first])) == 2
    new, new_net = remove_units(model, net, scales, keep=keep)
    assert new_net.layers[first].units == 4
    x = sample_inputs(model, n=8)
    # the function is the unrounded selection's: the two padding channels feed nothing
    assert_same(run_tensors(new, net.input_name, x, [net.logits_name])[0], net.forward(x, scales=base))


def test_optimize_round_to_keeps_the_plain_selection_and_rounds_the_digits_cnn():
    plain = optimize(CNN, CNN_CAL, eval_data=CNN_EVAL, measure_latency=False)
    rounded = optimize(CNN, CNN_CAL, eval_data=CNN_EVAL, measure_latency=False, round_to=8)
    net, _ = load_network(CNN)
    assert plain.report["selection"]["round_to"] == 1 and rounded.report["selection"]["round_to"] == 8
    for i in net.scored_indices():
        kept, was = rounded.scales[i] > 0, plain.scales[i] > 0
        assert np.all(kept[was])
        if net.layers[i].kind == "conv":
            assert kept.sum() % 8 == 0 or kept.sum() == net.layers[i].units
        else:
            assert np.array_equal(kept, was)
    added = sum(int(np.sum((rounded.scales[i] > 0) & ~(plain.scales[i] > 0))) for i in net.scored_indices())
    assert rounded.report["selection"]["units_added"] == added > 0
    meta = {p.key: p.value for p in rounded.model.metadata_props}
    kept_meta = json.loads(meta[api.KEPT_UNITS_KEY])
    assert [len(kept_meta[net.layers[i].name]) for i in net.scored_indices()] == \
        [int((rounded.scales[i] > 0).sum()) for i in net.scored_indices()]


# the timed choice -------------------------------------------------------------------------------------------

def _cand(k, s1, s64, meets=True):
    c = rounding.Candidate(round_to=k, scales={}, keep={}, units=(k,), meets_budget=meets)
    c.speedup = {1: s1, 64: s64}
    return c


def test_choose_takes_the_best_geometric_mean_ties_to_less_rounding():
    cands = [_cand(1, 1.1, 0.5), _cand(4, 1.0, 1.4), _cand(8, 1.2, 1.3), _cand(16, 1.1, 1.3)]
    assert rounding.choose(cands).round_to == 8
    # within the tie margin the smaller K wins
    cands = [_cand(1, 1.0, 1.0), _cand(8, 1.01, 1.01)]
    assert rounding.choose(cands).round_to == 1
    cands = [_cand(1, 1.0, 1.0), _cand(8, 1.1, 1.1)]
    assert rounding.choose(cands).round_to == 8
    # exact ties: less rounding
    assert rounding.choose([_cand(4, 1.2, 1.2), _cand(8, 1.2, 1.2)]).round_to == 4
    # a candidate outside the budget is never chosen, however fast
    assert rounding.choose([_cand(1, 0.9, 0.9), _cand(8, 3.0, 3.0, meets=False)]).round_to == 1


# digits CNN: original convs (8, 16); the default selection keeps (7, 12); K=4 gives (8, 12), K=8 and 16 (8, 16)

def test_auto_writes_the_fastest_candidate_by_the_rule():
    calls = []
    table = {(8, 16): 1.0, (7, 12): 1.25, (8, 12): 0.8}  # K=8 gives the original widths: no faster
    res = optimize(CNN, CNN_CAL, eval_data=CNN_EVAL, latency_timer=_fake_timer(table, calls=calls),
                   reconstruct="none")  # the widths the fake timer's table knows
    lat = res.report["latency"]
    assert [c["round_to"] for c in lat["candidates"]] == [1, 4, 8]
    assert lat["candidates"][2]["same_as"] == [16]  # K=16 has K=8's counts: not measured twice
    assert calls == [(4, 1), (4, 64)]  # the original and three candidates in one run per batch size
    assert lat["round_to"] == 4 and res.report["selection"]["round_to"] == 4
    assert _conv_units(res.model) == (8, 12)
    assert lat["batch_1"] == {"before_ms": 1000.0, "after_ms": 800.0, "speedup": 1.25}
    assert lat["batch_64"]["speedup"] == 1.25 and lat["slower"] is False
    assert lat["candidates"][0]["speedup_batch_64"] == 0.8
    assert all(c["accuracy"] is not None and c["meets_budget"] for c in lat["candidates"])
    assert res.report["options"]["round_to"] == "auto"


def test_latency_batch_option_and_geometric_mean_over_both_batches():
    # K=1 is fastest at batch 1, K=8 at batch 16; K=8 wins on the geometric mean
    def timer(models, batch):
        t = {1: {(8, 16): 1.0, (7, 12): 0.7, (8, 12): 0.95}, 16: {(8, 16): 1.0, (7, 12): 2.0, (8, 12): 1.5}}[batch]
        return [t[_conv_units(m)] for m in models]

    res = optimize(CNN, CNN_CAL, eval_data=CNN_EVAL, latency_timer=timer, latency_batch=16, reconstruct="none")
    lat = res.report["latency"]
    assert set(k for k in lat if k.startswith("batch_")) == {"batch_1", "batch_16"}
    assert lat["round_to"] == 8  # geomeans: K1 sqrt(1/0.7 * 0.5) = 0.85, K4 0.84, K8 1.0


def test_every_candidate_slower_sets_slower_and_the_cli_warns(tmp_path, monkeypatch):
    table = {(8, 16): 1.0, (7, 12): 1.5, (8, 12): 1.2}
    slow_at_64 = {1: 0.5, 64: 1.0}  # the original at batch 1 is twice as fast too: everything is slower

    def fake(models, batch):
        return [table[_conv_units(m)] * (slow_at_64[batch] if i == 0 else 1.0) for i, m in enumerate(models)]

    monkeypatch.setattr(rounding, "default_timer", lambda net, threads=1: fake)
    report = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CNN_CAL), "--eval-data", str(CNN_EVAL),
                                       "-o", str(tmp_path / "o.onnx"), "--report", str(report), "-q",
                                       "--reconstruct", "none"],  # the widths the fake timer's table knows
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lat = json.loads(report.read_text())["latency"]
    assert lat["slower"] is True and lat["round_to"] == 8  # the least slow: the original widths
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert warnings[0].startswith("warning: the pruned model is slower than the original in onnxruntime on this "
                                  "machine: batch 1 x0.50, batch 64 x1.00")
    assert "--round-to 1, 4, 8" in warnings[0]


def test_not_slower_prints_no_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(rounding, "default_timer",
                        lambda net, threads=1: _fake_timer({(8, 16): 1.0, (7, 12): 0.9, (8, 12): 0.95}))
    result = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CNN_CAL), "--eval-data", str(CNN_EVAL),
                                       "-o", str(tmp_path / "o.onnx"), "--reconstruct", "none"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "slower than the original" not in result.output
    assert "conv rounding none: the fastest of --round-to 1, 4, 8 here" in " ".join(result.output.split())


def test_an_accuracy_budget_excludes_a_candidate_that_breaks_it():
    net, proto = load_network(CNN)
    scores = {i: np.linspace(0, 1, net.layers[i].units) for i in net.scored_indices()}
    keep = select.keep_by_threshold(net, scores, 0.3)
    chosen = select.Selection(scales=select.to_scales(scores, keep, False), rule="accuracy budget", rescaled=False)
    counts = {}

    def accuracy(scales, built=None):  # the original 90%; rounding to 8 channels costs 5 points, the rest 0.5
        if scales is None:
            return 90.0
        widths = _conv_units(built[0])
        counts[widths] = counts.get(widths, 0) + 1
        return 85.0 if widths == (8, 16) else 89.5

    def timer(models, batch):  # the original, then the candidates by K: the more rounding the faster
        return [1.0] + [2.0 - 0.3 * j for j in range(len(models) - 1)]

    cand, lat = api._round(net, proto, scores, chosen, "accuracy budget", "auto", True, 64, timer, accuracy, 1.0,
                           None, api.Progress(), {})
    rows = {c["round_to"]: c for c in lat["candidates"]}
    assert rows[8]["meets_budget"] is False and rows[8]["accuracy"] == 85.0
    assert cand.round_to == lat["round_to"] != 8
    assert all(rows[k]["meets_budget"] for k in rows if k != 8)
    assert lat["round_to"] == max(k for k in rows if k != 8)  # the fastest that meets the budget


def test_a_parameter_budget_excludes_candidates_above_it():
    def timer(models, batch):  # the original, then the candidates by K: the more rounding the faster
        return [1.0] + [2.0 - 0.3 * j for j in range(len(models) - 1)]

    res = optimize(CNN, CNN_CAL, target_params=0.6, latency_timer=timer)
    lat = res.report["latency"]
    assert res.report["params_after"] <= 0.6 * res.report["params_before"]
    assert any(not c["meets_budget"] for c in lat["candidates"])
    assert all(c["meets_budget"] for c in lat["candidates"] if c["round_to"] == lat["round_to"])


def test_no_latency_measures_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("latency measured under --no-latency")

    for name in ("paired_timings", "paired_latency", "latency"):
        monkeypatch.setattr(measure, name, boom)
    monkeypatch.setattr(rounding, "default_timer", boom)
    for extra, k in (([], 1), (["--round-to", "8"], 8)):
        report = tmp_path / "r.json"
        result = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CNN_CAL), "--eval-data",
                                           str(CNN_EVAL), "-o", str(tmp_path / "o.onnx"), "--report", str(report),
                                           "--no-latency", "-q", *extra], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        data = json.loads(report.read_text())
        assert "latency" not in data and data["selection"]["round_to"] == k
        assert "latency" not in data["timings"]


@pytest.mark.parametrize("value", ["0", "-3", "x", "1.5", ""])
def test_bad_round_to_exits_2_with_one_line(tmp_path, value):
    model = tmp_path / "m.onnx"
    shutil.copy(CNN, model)
    result = CliRunner().invoke(main, ["optimize", str(model), "--data", str(CNN_CAL), "--round-to", value])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and "round-to must be 'auto' or an integer >= 1" in result.output
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


@pytest.mark.parametrize("options", [dict(round_to=0), dict(round_to="x"), dict(round_to=True),
                                     dict(latency_batch=0), dict(latency_batch=2.5)])
def test_api_refuses_bad_rounding_options(options):
    with pytest.raises(InputError):
        optimize(CNN, CNN_CAL, **options)


def test_help_documents_the_options():
    result = CliRunner().invoke(main, ["optimize", "--help"])
    text = " ".join(result.output.split())
    assert "--round-to auto|K" in text and "[default: auto]" in text and "MEASURES" in text
    assert "depends on the machine" in text and "--latency-batch" in text and "[default: 64" in text


# fixed batch -------------------------------------------------------------------------------------------------

def _fixed_batch_cnn(batch: int = 1) -> onnx.ModelProto:
    model = cnn(in_shape=(1, 8, 8), channels=(7, 5), dense=(4,), seed=3)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = batch
    for vi in model.graph.output:  # let onnxruntime infer the output batch
        vi.type.tensor_type.ClearField("shape")
    return model


def test_runs_per_batch():
    assert measure.runs_per_batch(64, None) == (64, 1)
    assert measure.runs_per_batch(64, 1) == (1, 64)
    assert measure.runs_per_batch(5, 2) == (2, 3)
    assert measure.runs_per_batch(1, 8) == (8, 1)


def test_fixed_batch_latency_runs_the_declared_batch():
    model = _fixed_batch_cnn(1)
    net = to_network(model)
    assert net.fixed_batch == 1
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # the model refuses any other batch
        measure.paired_timings([model], net.input_name, net.input_shape, 4, repeats=1, warmup=0)
    timings = measure.paired_timings([model, model], net.input_name, net.input_shape, 4, repeats=3, warmup=1,
                                     fixed_batch=net.fixed_batch)
    assert all(t > 0 for t in timings["wall"] + timings["cpu"])
    assert measure.latency(model, net.input_name, net.input_shape, 3, repeats=2, warmup=0,
                           fixed_batch=net.fixed_batch) > 0
    # the whole rounding stage with the default (onnxruntime) timer on the fixed-batch model
    scores = {i: np.linspace(0, 1, net.layers[i].units) for i in net.scored_indices()}
    keep = select.keep_by_threshold(net, scores, 0.3)
    chosen = select.Selection(scales=select.to_scales(scores, keep, False), rule="threshold", rescaled=False)
    cand, lat = api._round(net, model, scores, chosen, "threshold", "auto", True, 8, None, None, None, None,
                           api.Progress(), {})
    assert set(k for k in lat if k.startswith("batch_")) == {"batch_1", "batch_8"}
    assert [c["round_to"] for c in lat["candidates"]][0] == 1 and isinstance(lat["slower"], bool)


def test_fixed_batch_is_read_from_the_input():
    assert to_network(_fixed_batch_cnn(2)).fixed_batch == 2
    assert to_network(cnn()).fixed_batch is None


def test_a_pinned_rounding_that_breaks_the_budget_is_written_with_a_note():
    net, proto = load_network(CNN)
    scores = {i: np.linspace(0, 1, net.layers[i].units) for i in net.scored_indices()}
    keep = select.keep_by_threshold(net, scores, 0.3)
    chosen = select.Selection(scales=select.to_scales(scores, keep, False), rule="accuracy budget", rescaled=False)

    class Notes(api.Progress):
        def __init__(self):
            self.notes = []

        def note(self, message):
            self.notes.append(message)

    def accuracy(scales, built=None):
        return 90.0 if scales is None else 85.0

    progress = Notes()
    cand, lat = api._round(net, proto, scores, chosen, "accuracy budget", 8, False, 64, None, accuracy, 1.0, None,
                           progress, {})
    assert cand.round_to == 8 and lat is None and not cand.meets_budget
    assert progress.notes == ["--round-to 8 breaks the accuracy budget (accuracy 90.00% -> 85.00%); written as asked"]
