"""`search`: several (calibration images, margin) settings under one accuracy budget and one deadline."""
from __future__ import annotations

import json

import numpy as np

import pytest
from click.testing import CliRunner

from onnxcrit import optimize
from onnxcrit.api import SEARCH_GRID, Progress
from onnxcrit.cli import main
from onnxcrit.errors import InputError

from .corpus import ROOT

CNN, CAL, EVAL = (ROOT / "models" / f for f in ("digits_cnn.onnx", "digits_cnn_calib.npz", "digits_cnn_eval.npz"))


class Notes(Progress):
    def __init__(self):
        self.notes = []

    def note(self, message):
        self.notes.append(message)


def test_search_keeps_the_setting_that_removes_the_most_within_the_budget():
    progress = Notes()
    res = optimize(CNN, CAL, eval_data=EVAL, max_accuracy_drop=0.5, search=True, measure_latency=False,
                   progress=progress)
    attempts = res.report["selection"]["attempts"]
    assert [(a["num_samples"], a["margin"]) for a in attempts] == list(SEARCH_GRID)
    # each setting's best candidate within the budget, recomputed from what it tried
    best = [min((t["params_after"] for t in a["tried"] if t["drop"] <= 0.5 + 1e-9), default=None) for a in attempts]
    winner = min(b for b in best if b is not None)
    assert res.report["params_after"] == winner
    first = best.index(winner)  # ties go to the cheaper (earlier) setting
    options = res.report["options"]
    assert (options["num_samples"], options["margin"], options["search"]) == (*SEARCH_GRID[first], True)
    assert res.report["accuracy_before"] - res.report["accuracy_after"] <= 0.5 + 1e-9
    assert any("removes the most within the budget" in n for n in progress.notes)
    # the search can only do better than its first setting alone, which is the default run
    alone = optimize(CNN, CAL, eval_data=EVAL, max_accuracy_drop=0.5, measure_latency=False)
    assert res.report["params_after"] <= alone.report["params_after"]
    kept = {i: s > 0 for i, s in res.scales.items()}
    assert sum(int(k.sum()) for k in kept.values()) == sum(
        row["units_after"] for row in res.report["layers"] if row["scored"])


def test_search_shares_one_deadline(monkeypatch):
    import time

    from onnxcrit import scoring

    real = scoring.compute_scores

    def slow(*args, **kwargs):  # every setting costs at least 0.5 s, whatever the machine's speed
        result = real(*args, **kwargs)
        time.sleep(0.5)
        return result

    monkeypatch.setattr(scoring, "compute_scores", slow)
    progress = Notes()
    limit = 2.0  # room for four settings at most, not nine
    res = optimize(CNN, CAL, eval_data=EVAL, search=True, time_limit=limit, measure_latency=False,
                   progress=progress)
    attempts = res.report["selection"]["attempts"]
    assert 1 <= len(attempts) <= 4
    assert any(n.startswith(f"search stopped at the time limit after {len(attempts)} of 9") for n in progress.notes)
    assert res.report["timings"]["solve"] <= limit + 0.5  # each solve got only what was left of the limit


def test_search_skips_settings_the_data_cannot_feed():
    data = np.load(CAL)
    x, y = data["x"], data["y"].copy()
    progress = Notes()
    res = optimize(CNN, (x[:60], y[:60]), eval_data=EVAL, search=True, measure_latency=False, progress=progress)
    assert [a["num_samples"] for a in res.report["selection"]["attempts"]] == [10] * 3 + [50] * 3
    y[:3] = (y[:3] + 1) % 10  # three images the model now gets wrong: 100 correct ones are not there
    progress = Notes()
    res = optimize(CNN, (x, y), eval_data=EVAL, search=True, measure_latency=False, progress=progress)
    assert [a["num_samples"] for a in res.report["selection"]["attempts"]] == [10] * 3 + [50] * 3
    skipped = [n for n in progress.notes if "skipped" in n]
    assert len(skipped) == 3 and all("100 images" in n and "correctly classified" in n for n in skipped)


@pytest.mark.parametrize("options", [dict(), dict(eval_data=EVAL, threshold=0.1), dict(eval_data=EVAL,
                                                                                       target_params=0.5)])
def test_search_needs_an_accuracy_budget(options):
    with pytest.raises(InputError):
        optimize(CNN, CAL, search=True, measure_latency=False, **options)


def test_cli_search(tmp_path):
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CAL), "--eval-data", str(EVAL), "--search",
                                       "--no-latency", "-q", "-o", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["options"]["search"] is True and len(data["selection"]["attempts"]) == len(SEARCH_GRID)
    result = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CAL), "--search", "-o",
                                       str(tmp_path / "p.onnx")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "accuracy budget" in result.output and not (tmp_path / "p.onnx").exists()
