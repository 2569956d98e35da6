"""The order the budgets remove units in across layers (select.removal_order) and the costs it weighs.

What is pinned: a unit's cost is exactly what removing it alone saves (parameters and MACs, chains and branching
graphs); the default order compares a unit with its own layer (multiplying one layer's scores by a constant does
not change it, which the raw-score order fails); units scored 0 go first, among them the relatively weakest by
magnitude; and the budget search, its confirmation and the rounding walk one and the same order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcrit import select
from onnxcrit.confirm import Confirmer
from onnxcrit.data import Dataset
from onnxcrit.frontend import load_network, to_network

from .onnx_builders import cnn, mlp, sample_inputs

ROOT = Path(__file__).resolve().parents[1]


def _all_kept(net):
    return {g.key: np.ones(g.units, dtype=bool) for g in net.deps.prunable()}


@pytest.mark.parametrize("source", ["mlp", "cnn", "digits_cnn", "keras3_resnet", "torch_dynamo_mobilenet_dwsep"])
@pytest.mark.parametrize("size", ["params", "macs"])
def test_unit_cost_is_what_removing_the_unit_alone_saves(source, size):
    if source == "mlp":
        net = to_network(mlp())
    elif source == "cnn":
        net = to_network(cnn(pool="max"))
    elif source == "digits_cnn":
        net, _ = load_network(ROOT / "models" / "digits_cnn.onnx")
    else:
        net, _ = load_network(ROOT / "tests" / "data" / "branching" / f"{source}.onnx")
    count = select.params_after if size == "params" else select.macs_after
    full = _all_kept(net)
    before = count(net, full)
    costs = select.unit_costs(net, size)
    assert sorted(costs) == sorted(full)
    for key, cost in costs.items():
        for unit in range(min(len(cost), 4)):
            keep = {k: v.copy() for k, v in full.items()}
            keep[key][unit] = False
            assert cost[unit] == before - count(net, keep), (key, unit)
        assert np.all(cost > 0)


def _scores_with_zeros(net, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for i in net.scored_indices():
        s = rng.uniform(0.05, 1, net.layers[i].units)
        s[rng.random(len(s)) < 0.3] = 0.0
        out[i] = s
    return out


def test_default_order_compares_a_unit_with_its_own_layer():
    """Multiplying one layer's scores by 1000 (an L1 norm over a wider fan-in, say) leaves the order as it was;
    the raw-score order moves that layer's units to the end."""
    net = to_network(mlp(widths=(12, 10, 8, 6, 5)))
    scores = _scores_with_zeros(net)
    first = net.scored_indices()[0]
    louder = {i: s * (1000.0 if i == first else 1.0) for i, s in scores.items()}
    assert select.removal_order(net, louder) == select.removal_order(net, scores)
    assert select.removal_order(net, louder, "score") != select.removal_order(net, scores, "score")


def test_default_order_removes_zero_scores_first_weakest_relative_magnitude_first():
    net = to_network(mlp(widths=(12, 10, 8, 6, 5)))
    scores = _scores_with_zeros(net, 1)
    order = select.removal_order(net, scores)
    zeros = sum(int(np.sum(s == 0)) for s in scores.values())
    assert all(scores[i][u] == 0 for i, u in order[:zeros])
    assert all(scores[i][u] > 0 for i, u in order[zeros:])
    mags, costs = select.magnitude(net), select.unit_costs(net)
    mean_cost = np.mean(np.concatenate(list(costs.values())))
    weight = {i: (costs[i] / mean_cost) ** select.cost_power(select.ORDER) for i in costs}
    rel = [mags[i][u] / np.mean(mags[i]) / weight[i][u] for i, u in order[:zeros]]
    assert rel == sorted(rel)


def test_default_order_ranks_by_score_relative_to_the_layer_mean():
    net = to_network(mlp(widths=(12, 10, 8, 6, 5)))
    scores = _scores_with_zeros(net, 2)
    order = select.removal_order(net, scores)
    costs = select.unit_costs(net)
    mean_cost = np.mean(np.concatenate(list(costs.values())))
    key = [scores[i][u] / np.mean(scores[i]) / (costs[i][u] / mean_cost) ** select.cost_power(select.ORDER) for i, u in order]
    nonzero = [k for k in key if k > 0]
    assert nonzero == sorted(nonzero)


def test_budget_search_confirmation_and_size_budget_walk_the_order_they_were_given():
    model = mlp(widths=(12, 10, 8, 6, 5))
    net = to_network(model)
    scores = _scores_with_zeros(net, 3)
    x = sample_inputs(model, n=600, seed=3)
    y = net.predict(x)
    for rule in ("score", select.ORDER):
        order = select.removal_order(net, scores, rule)
        chosen, _ = select.by_accuracy(net, scores, x, y, 100.0, rescale=False, ladder=4, order=rule)
        assert chosen.order == rule
        count = max(r["removed_units"] for r in chosen.tried if r["drop"] <= 100.0)
        keep = select.keep_first_removed(scores, order, count)
        assert all(np.array_equal(chosen.scales[i] > 0, keep[i]) for i in keep)
        # the confirmation rebuilds its rungs from the same order: with every rung within a 100-point budget,
        # the largest rung is the search's pick
        conf = Confirmer(None, net, Dataset(x, y, "test"), 0, 100.0, 0.0,
                         rewrite=lambda proto, n, scales, **kw: (None, n))
        conf.correct = lambda scales, built=None: (np.ones(len(conf.split.confirm.y), dtype=bool)
                                                   if scales is None else
                                                   net.forward(conf.split.confirm.x, scales=scales).argmax(1)
                                                   == conf.split.confirm.y)
        confirmed = conf.confirm(scores, chosen)
        assert confirmed is not None and confirmed.order == rule
        assert all(np.array_equal(confirmed.scales[i] > 0, keep[i]) for i in keep)
        sel, _ = select.by_params(net, scores, 0.6, rescale=False, order=rule)
        assert sel.order == rule
        walked = {i: np.ones(len(s), dtype=bool) for i, s in scores.items()}
        for i, u in order:
            if select.params_after(net, walked) <= 0.6 * net.params:
                break
            if walked[i].sum() > 1:
                walked[i][u] = False
        assert all(np.array_equal(sel.scales[i] > 0, walked[i]) for i in walked)
