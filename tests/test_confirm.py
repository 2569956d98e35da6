"""Confirming an accuracy budget on evaluation images the selection never saw (onnxcrit/confirm.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcrit import BudgetError, optimize
from onnxcrit import confirm as confirm_mod
from onnxcrit.cli import main
from onnxcrit.confirm import Confirmer, Split, paired_drop, split_evaluation
from onnxcrit.data import Dataset
from onnxcrit.frontend import load_network
from onnxcrit.select import Selection

from .corpus import ROOT

CNN, CAL, EVAL = (ROOT / "models" / f for f in ("digits_cnn.onnx", "digits_cnn_calib.npz", "digits_cnn_eval.npz"))
MLP = ROOT / "models" / "digits_mlp.onnx"


def dataset(y):
    y = np.asarray(y)
    return Dataset(np.arange(len(y), dtype=np.float32).reshape(-1, 1), y, "test")


def test_the_split_is_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(10), [41, 40, 39, 38, 37, 36, 35, 34, 33, 32])
    split = split_evaluation(dataset(y), seed=0)
    both = np.concatenate([split.choose_indices, split.confirm_indices])
    assert sorted(both.tolist()) == list(range(len(y)))  # disjoint, nothing lost
    for c in range(10):  # each class halved, the odd image to one side or the other
        a, b = np.sum(split.choose.y == c), np.sum(split.confirm.y == c)
        assert abs(int(a) - int(b)) <= 1 and a + b == np.sum(y == c)
    assert abs(len(split.choose_indices) - len(split.confirm_indices)) <= 1
    again = split_evaluation(dataset(y), seed=0)
    assert np.array_equal(again.confirm_indices, split.confirm_indices)  # deterministic for a seed
    assert not np.array_equal(split_evaluation(dataset(y), seed=1).confirm_indices, split.confirm_indices)
    assert np.array_equal(split.confirm.x[:, 0].astype(int), split.confirm_indices)  # x and y cut alike
    assert split_evaluation(dataset([3]), seed=0) is None  # one image cannot be split


def test_the_interval_is_agresti_mins():
    # Agresti & Min (2005), "Wald+2": add 1/2 to each cell; their R code: diff = (c - b) / (n + 2),
    # sd = sqrt((b + c + 1) - (c - b)^2 / (n + 2)) / (n + 2); here b = losses, c = gains, drop = -(diff)
    before = np.array([True] * 100)
    after = before.copy()
    after[:5] = False  # 5 losses
    before[99], after[99] = False, True  # 1 gain
    stats = paired_drop(before, after, 0.9)
    assert (stats["losses"], stats["gains"], stats["samples"]) == (5, 1, 100)
    assert stats["drop"] == pytest.approx(4.0)
    z = 1.6448536269514722
    center, sd = 4 / 102, np.sqrt(6 + 1 - 16 / 102) / 102
    assert stats["interval"] == pytest.approx([100 * (center - z * sd), 100 * (center + z * sd)])
    same = paired_drop(before, before, 0.9)  # unchanged predictions: drop 0, an interval of +-z / (n + 2)
    assert same["drop"] == 0 and same["interval"] == pytest.approx([-100 * z / 102, 100 * z / 102])
    assert paired_drop(before, after, 0.0)["interval"] == pytest.approx([100 * center] * 2)


def test_the_upper_end_holds_at_its_level():
    """Simulated pairs with a known drop of 1.5 points: the upper end of the 90% interval falls below the true drop
    in about 5% of the samples (one-sided), not more."""
    rng = np.random.default_rng(0)
    n, p_loss, p_gain, trials = 500, 0.02, 0.005, 2000
    below = 0
    for _ in range(trials):
        kind = rng.choice(4, size=n, p=[p_loss, p_gain, 0.1, 1 - p_loss - p_gain - 0.1])  # loss, gain, both wrong
        before, after = (kind != 1) & (kind != 2), (kind != 0) & (kind != 2)
        below += paired_drop(before, after, 0.9)["interval"][1] < 100 * (p_loss - p_gain)
    assert below / trials <= 0.08


class FakeConfirmer(Confirmer):
    """A Confirmer whose confirm part is `n` images and whose candidates lose `losses(removed units)` of them."""

    def __init__(self, net, n, budget, losses, confidence=0.9):
        y = np.zeros(2 * n, dtype=np.int64)
        split = Split(dataset(y[:n]), dataset(y[n:]), np.arange(n), np.arange(n, 2 * n))
        self.net, self.split, self.budget, self.confidence = net, split, budget, confidence
        self.needed = confirm_mod.images_needed(budget, confidence)
        self.tested = []

        def correct(scales, built=None):
            if scales is None:
                return np.ones(n, dtype=bool)
            removed = int(sum(int(np.sum(s == 0)) for s in scales.values()))
            self.tested.append(removed)
            out = np.ones(n, dtype=bool)
            out[:losses(removed)] = False
            return out

        self.correct = correct


def ladder(net, counts, drop=0.0):
    scores = {i: np.linspace(0.0, 1.0, net.layers[i].units) for i in net.scored_indices()}
    rows = [{"removed_units": c, "params_after": 100 - c, "accuracy": 0.0, "drop": drop, "rescaled": False,
             "threshold": 0.0} for c in counts]
    chosen = Selection(scales={i: np.where(np.arange(len(s)) < 1, 0.0, 1.0) for i, s in scores.items()},
                       rule="accuracy budget", tried=rows, rescaled=False)
    return scores, chosen


def test_rungs_are_tested_smallest_first_and_testing_stops_at_the_first_failure():
    net, _ = load_network(MLP)
    scores, chosen = ladder(net, [1, 5, 10, 20, 30, 40])
    # 1,000 confirm images; up to 20 removed units lose nothing, 30 lose 30 images (3 points), 40 lose nothing
    fake = FakeConfirmer(net, 1000, 1.0, lambda removed: 30 if removed == 30 else 0)
    sel = fake.confirm(scores, chosen)
    assert fake.tested == [1, 5, 10, 20, 30]  # 40 would pass, but the sequence stopped at 30's failure
    assert sel is not None and sel.confirmation["confirmed"]
    assert int(sum(int(np.sum(s == 0)) for s in sel.scales.values())) == 20
    record = sel.confirmation
    assert [r["removed_units"] for r in record["ladder"]] == [1, 5, 10, 20, 30]
    assert [r["confirmed"] for r in record["ladder"]] == [True] * 4 + [False]
    assert record["confirm_samples"] == 1000 and record["drop_on_confirm"] == 0.0 and not record["too_small"]
    assert record["interval"][1] <= 1.0 and "within the 1-point budget" in record["message"]


def test_ample_data_and_no_confirmed_rung_is_an_unmet_budget():
    net, _ = load_network(MLP)
    scores, chosen = ladder(net, [1, 5])
    fake = FakeConfirmer(net, 2000, 0.5, lambda removed: 60)  # 3 points lost from the first rung on
    assert fake.confirm(scores, chosen) is None
    record = chosen.confirmation
    assert not record["confirmed"] and not record["too_small"] and record["drop_on_confirm"] == pytest.approx(3.0)
    assert "above the 0.5-point budget" in record["message"]
    assert "no removal kept the accuracy drop within 0.5 points on the 2,000 confirmation images" in \
        confirm_mod.failure_message(record)


def test_too_small_data_keep_the_choice_unconfirmed_and_say_so():
    net, _ = load_network(MLP)
    scores, chosen = ladder(net, [1, 5])
    fake = FakeConfirmer(net, 100, 0.5, lambda removed: 0)  # 100 images: no interval fits 0.5 points
    sel = fake.confirm(scores, chosen)
    assert sel is chosen  # the choose part's pick, kept
    record = sel.confirmation
    assert not record["confirmed"] and record["too_small"] and record["fallback"]
    assert "too small to promise a 0.5-point budget" in record["message"]


def test_enough_images_to_promise_a_budget():
    # the interval of a candidate that changes nothing is +-z / (n + 2): it must fit in the budget
    assert confirm_mod.images_needed(1.0, 0.9) == 327  # 200 x 1.645 / 1.0 - 2, rounded up
    assert confirm_mod.images_needed(0.5, 0.9) == 656
    assert confirm_mod.images_needed(5.0, 0.9) == confirm_mod.MIN_CONFIRM_SAMPLES
    assert confirm_mod.images_needed(0.0, 0.9) is None and confirm_mod.images_needed(0.0, 0.0) == 200


def test_optimize_chooses_on_one_half_and_confirms_on_the_other():
    # 450 images: 225 confirm images can promise 2 points at 90% (not 1: a 1-point budget needs 654 images)
    res = optimize(CNN, CAL, eval_data=EVAL, measure_latency=False, max_accuracy_drop=2.0)
    record = res.report["selection"]["confirmation"]
    n = len(np.load(EVAL)["y"])
    assert record["choose_samples"] + record["confirm_samples"] == n == res.report["accuracy_samples"]
    assert record["confidence"] == res.report["options"]["confidence"] == 0.9
    assert record["budget"] == res.report["options"]["max_accuracy_drop"] == 2.0
    lo, hi = record["interval"]
    assert lo <= record["drop_on_confirm"] <= hi
    assert record["confirmed"] == (hi <= 2.0 + 1e-9 and not record["fallback"])
    # what was written is what the record measured: the confirm half's drop, recomputed here
    split = split_evaluation(Dataset(np.load(EVAL)["x"], np.load(EVAL)["y"], "eval"), seed=0)
    from onnxcrit.validate import run_tensors

    net, proto = load_network(CNN)
    new_net, new_proto = load_network(res.model)
    x, y = split.confirm.x, split.confirm.y
    before = run_tensors(proto, net.input_name, x, [net.logits_name])[0].argmax(1) == y
    after = run_tensors(new_proto, new_net.input_name, x, [new_net.logits_name])[0].argmax(1) == y
    assert record["drop_on_confirm"] == pytest.approx(paired_drop(before, after, 0.9)["drop"], abs=1e-3)
    off = optimize(CNN, CAL, eval_data=EVAL, measure_latency=False, max_accuracy_drop=2.0, confirm=False)
    assert "confirmation" not in off.report["selection"]


def test_too_few_images_are_not_split_and_the_cli_warns(tmp_path):
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CAL), "--eval-data", str(EVAL),
                                    "--max-accuracy-drop", "0.5", "--no-latency", "-o", str(out), "--report",
                                    str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    record = report["selection"]["confirmation"]
    # 450 images cannot promise half a point (1,312 could): all of them choose, nothing is confirmed, it is said
    assert record["too_small"] and not record["confirmed"] and record["confirm_samples"] == 0
    assert record["choose_samples"] == 450 and record["images_needed"] == 1312
    assert report["accuracy_before"] - report["accuracy_after"] <= 0.5 + 1e-9  # met on all 450, as without
    assert ("warning: the 450 evaluation images are too few to promise the 0.5-point budget on new data at 90%"
            in " ".join(res.stderr.split()))
    assert "not confirmed: 450 evaluation images are too few" in " ".join(res.stdout.split()) and out.exists()
    alone = optimize(CNN, CAL, eval_data=EVAL, max_accuracy_drop=0.5, measure_latency=False, confirm=False)
    assert alone.report["params_after"] == report["params_after"]  # the same choice as without confirmation


def test_an_unconfirmed_budget_on_ample_data_exits_1_and_writes_nothing(tmp_path, monkeypatch):
    def refuse(self, scores, chosen):
        chosen.confirmation = {"budget": self.budget, "confirm_samples": 5000, "confidence": 0.9,
                               "drop_on_confirm": 2.0, "interval": [1.5, 2.5]}
        return None
    monkeypatch.setattr(Confirmer, "confirm", refuse)
    out = tmp_path / "o.onnx"
    res = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CAL), "--eval-data", str(EVAL),
                                    "--no-latency", "-o", str(out)])
    assert res.exit_code == 1 and not out.exists()
    assert "no removal kept the accuracy drop within 1 points on the 5,000 confirmation images" in res.output
    with pytest.raises(BudgetError, match="--no-confirm"):
        optimize(CNN, CAL, eval_data=EVAL, measure_latency=False)


def test_a_model_changed_after_confirmation_is_measured_again_and_warned_about():
    from onnxcrit.report import confirmation_warning

    net, _ = load_network(MLP)
    scores, chosen = ladder(net, [1, 5])
    fake = FakeConfirmer(net, 1000, 1.0, lambda removed: 30 if removed > 5 else 0)
    sel = fake.confirm(scores, chosen)
    assert sel.confirmation["confirmed"]
    fake.recheck(sel, {i: s.copy() for i, s in sel.scales.items()})  # the same model: nothing to measure
    assert sel.confirmation["confirmed"] and fake.tested == [1, 5]
    changed = {i: np.where(np.arange(len(s)) < 8, 0.0, 1.0) for i, s in sel.scales.items()}  # 8 units out
    fake.recheck(sel, changed)
    record = sel.confirmation
    assert not record["confirmed"] and not record["too_small"] and record["drop_on_confirm"] == pytest.approx(3.0)
    warning = confirmation_warning({"selection": {"confirmation": record}})
    assert warning.startswith("warning: the written model is not confirmed") and "--round-to 1" in warning


def test_search_picks_its_setting_on_the_choose_half_and_confirms_that_one():
    res = optimize(CNN, CAL, eval_data=EVAL, max_accuracy_drop=2.0, search=True, measure_latency=False)
    attempts = res.report["selection"]["attempts"]
    record = res.report["selection"]["confirmation"]
    assert len(attempts) == 9 and record["confirm_samples"] == 225
    # the setting kept is the one removing the most within the budget on the choose half (its own candidates)
    best = [min((t["params_after"] for t in a["tried"] if t["drop"] <= 2.0 + 1e-9), default=None) for a in attempts]
    winner = best.index(min(b for b in best if b is not None))
    options = res.report["options"]
    assert (attempts[winner]["num_samples"], attempts[winner]["margin"]) == (options["num_samples"],
                                                                             options["margin"])
    # and what is written is a rung of that setting's ladder, confirmed (or said not to be)
    assert record["ladder"] and res.report["params_after"] >= min(b for b in best if b is not None)
