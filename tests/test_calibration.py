"""Choosing calibration images, and the scoring stage that uses them (compute_scores; its scores cut by the
threshold rule, keep_by_threshold and to_scales)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcrit import scoring
from onnxcrit.calibration import choose_calibration
from onnxcrit.errors import InputError, SolveError
from onnxcrit.frontend import load_network
from onnxcrit.scoring import compute_scores
from onnxcrit.select import keep_by_threshold, to_scales
from onnxcrit.solve import SolveResult

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def mlp():
    net, _ = load_network(MODELS / "digits_mlp.onnx")
    d = np.load(MODELS / "digits_mlp_calib.npz")
    return net, d["x"], d["y"]


def test_balanced_correct_and_deterministic(mlp):
    net, x, y = mlp
    idx, skipped = choose_calibration(net, x, y, 10, seed=0)
    assert len(idx) == 10 and np.all(np.diff(idx) > 0)
    assert sorted(y[idx].tolist()) == list(range(10))  # one per class
    assert np.all(net.predict(x[idx]) == y[idx])
    again, _ = choose_calibration(net, x, y, 10, seed=0)
    np.testing.assert_array_equal(idx, again)
    other, _ = choose_calibration(net, x, y, 10, seed=1)
    assert not np.array_equal(idx, other)
    assert skipped == []  # the example model gets its whole calibration file right


def test_uneven_request_spreads_over_classes(mlp):
    net, x, y = mlp
    idx, _ = choose_calibration(net, x, y, 25, seed=0)
    counts = np.bincount(y[idx], minlength=10)
    assert len(idx) == 25 and counts.min() == 2 and counts.max() == 3 and (counts == 3).sum() == 5


def test_misclassified_images_are_skipped_and_reported(mlp):
    net, x, y = mlp
    y = y.copy()
    wrong = np.flatnonzero(y == 3)[:9]  # relabel 9 of the 10 images of class 3 as class 4
    y[wrong] = 4
    idx, skipped = choose_calibration(net, x, y, 10, seed=0)
    assert not set(idx) & set(wrong)
    assert np.all(net.predict(x[idx]) == y[idx])
    reported = [s for s in skipped if s.startswith("image ")]
    assert reported and all("misclassified as 3" in s for s in reported)
    assert all(int(s.split()[1]) in set(wrong) for s in reported)


def test_class_short_of_correct_images_hands_its_share_on(mlp):
    net, x, y = mlp
    y = y.copy()
    y[np.flatnonzero(y == 3)[1:]] = 4  # class 3 keeps a single image
    idx, skipped = choose_calibration(net, x, y, 20, seed=0)
    assert len(idx) == 20 and (y[idx] == 3).sum() == 1
    assert any(s.startswith("class 3: only 1") for s in skipped)


def test_user_errors(mlp):
    net, x, y = mlp
    idx, skipped = choose_calibration(net, x[y != 3], y[y != 3], 9, seed=0)  # e.g. a class subset of a data set
    assert "class 3: no images in the data" in skipped and len(idx) == 9
    with pytest.raises(InputError, match="no image of class 3"):
        choose_calibration(net, x[y != 3], y[y != 3], 9, seed=0, require_all_classes=True)
    y_all_wrong = np.where(y == 2, 7, y)
    y_all_wrong[y == 7] = 2  # classes 2 and 7 swapped: every image of both is misclassified
    with pytest.raises(InputError, match="no correctly classified image of class"):
        choose_calibration(net, x, y_all_wrong, 10)
    with pytest.raises(InputError, match="requested"):
        choose_calibration(net, x, y, 101)
    with pytest.raises(InputError):
        choose_calibration(net, x, y, 0)
    with pytest.raises(InputError):
        choose_calibration(net, x[:, :10], y, 10)
    with pytest.raises(InputError):
        choose_calibration(net, x, y + 5, 10)


def test_compute_scores_record(mlp):
    net, x, y = mlp
    res = compute_scores(net, x, y)
    assert res.status == "optimal" and res.ok
    assert set(res.scores) == set(net.scored_indices())
    for i, s in res.scores.items():
        assert s.shape == (net.layers[i].units,) and np.all((s >= 0) & (s <= 1))
    assert res.variables > 0 and res.constraints > 0 and res.nonzeros > 0 and res.binaries == 0
    assert res.build_seconds > 0 and res.solve_seconds > 0
    assert res.objective == pytest.approx(res.bound, rel=1e-6) and res.gap < 1e-6
    assert len(res.calibration_indices) == 10
    assert set(res.unit_stats) == set(net.scored_indices())
    again = compute_scores(net, x, y)  # determinism
    for i in res.scores:
        np.testing.assert_array_equal(res.scores[i], again.scores[i])


def test_scores_prune_and_keep_accuracy_on_the_calibration_images(mlp):
    net, x, y = mlp
    res = compute_scores(net, x, y, relax=True)
    scales = to_scales(res.scores, keep_by_threshold(net, res.scores, 0.1), rescale=True)
    removed = sum(int((s == 0).sum()) for s in scales.values())
    assert removed > 0
    xs, ys = x[res.calibration_indices], y[res.calibration_indices]
    # what the MIP modelled: the pruned network still classifies its calibration images
    assert np.mean(net.forward(xs, scales=scales).argmax(axis=1) == ys) >= 0.9


def test_masks_never_empty_a_layer(mlp):
    net, _, _ = mlp
    scores = {i: np.full(net.layers[i].units, 0.01) for i in net.scored_indices()}
    scores[0][5] = 0.05
    notes = []
    masks = to_scales(scores, keep_by_threshold(net, scores, 0.1, notes=notes), rescale=False)
    assert masks[0].sum() == 1 and masks[0][5] == 1
    assert len(notes) == len(scores)
    one = {0: np.array([0.5, 0.05, 1.0])}
    np.testing.assert_allclose(to_scales(one, keep_by_threshold(net, one, 0.1), rescale=True)[0], [0.5, 0.0, 1.0])
    mean = {0: np.array([0.2, 0.4, 0.9])}
    np.testing.assert_array_equal(to_scales(mean, keep_by_threshold(net, mean, None, mean_rule=True), False)[0],
                                  [0.0, 0.0, 1.0])


def test_failures_raise_solve_error_with_the_record(mlp, monkeypatch):
    net, x, y = mlp
    with pytest.raises(SolveError, match="no solution") as err:
        compute_scores(net, x, y, time_limit=0.01)
    record = err.value.result  # the build itself may use up so short a limit (on a slow machine): it says so
    assert record.status == "no_solution"
    assert record.variables > 0 or "build" in record.message
    infeasible = SolveResult("infeasible", None, None, None, None, 0.1, "highs", "Infeasible")
    monkeypatch.setattr(scoring, "solve", lambda *a, **k: infeasible)
    res = compute_scores(net, x, y, raise_on_failure=False)
    assert res.status == "infeasible" and res.scores == {}
    assert "infeasible" in res.message and "eps" in res.message and "\n" not in res.message


def test_bad_options(mlp):
    net, x, y = mlp
    for kwargs in (dict(loss="softmax"), dict(sparsity="l1"), dict(solver="gurobi"), dict(lam=-1),
                   dict(time_limit=0), dict(threads=0), dict(eps=-1), dict(stable_on="maybe")):
        with pytest.raises(InputError):
            compute_scores(net, x, y, **kwargs)
