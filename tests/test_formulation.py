"""The OAMIP formulation: with every score fixed to 1 the MIP is the network (its logits equal the IR forward
pass on the calibration images), the unit counting, and what the scores mean."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxcrit.bounds import interval_bounds
from onnxcrit.formulation import build_problem
from onnxcrit.formulation.conv import conv_matrix
from onnxcrit.formulation.pool import avgpool_matrix
from onnxcrit.frontend import load_network
from onnxcrit.ir import AvgPool, Conv, Dense, MaxPool, Network, Relu, Reshape
from onnxcrit.solve import solve

MODELS = Path(__file__).resolve().parent.parent / "models"


def dense_net(rng, sizes=(6, 8, 5, 3)) -> Network:
    layers, shape = [], (sizes[0],)
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(f"fc{k}", rng.normal(size=(b, a)), rng.normal(size=b) * 0.5, shape))
        shape = (b,)
        if k < len(sizes) - 2:
            layers.append(Relu(f"relu{k}", shape))
    return Network(layers, "x", (sizes[0],))


def conv_net(rng, pool_kind="max", channels=(1, 3, 4), hw=8, pad=1, stride=1, classes=3) -> Network:
    """conv - relu - pool - conv - relu - pool - flatten - dense - relu - dense."""
    layers, shape = [], (channels[0], hw, hw)
    for k, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        conv = Conv(f"conv{k}", rng.normal(size=(cout, cin, 3, 3)), rng.normal(size=cout) * 0.3, shape,
                    strides=(stride, stride), pads=(pad,) * 4)
        layers += [conv, Relu(f"relu{k}", conv.out_shape)]
        pool_cls = MaxPool if (pool_kind == "max" or (pool_kind == "mixed" and k == 0)) else AvgPool
        pool = pool_cls(f"pool{k}", conv.out_shape, (2, 2), (2, 2))
        layers.append(pool)
        shape = pool.out_shape
    flat = int(np.prod(shape))
    layers.append(Reshape("flatten", shape, (flat,)))
    layers += [Dense("fc0", rng.normal(size=(6, flat)), rng.normal(size=6) * 0.3, (flat,)), Relu("relu_fc", (6,)),
               Dense("out", rng.normal(size=(classes, 6)), rng.normal(size=classes) * 0.3, (6,))]
    return Network(layers, "x", (channels[0], hw, hw))


def fixed_logits(net, x, *, eps=1e-5, isolate=False):
    """Logits of the MIP whose scores are all fixed to 1, solved exactly (binaries kept binary)."""
    y = net.predict(x)
    form = build_problem(net, x, y, eps=eps)
    res = solve(form.with_scores_fixed(1.0), solver="highs", time_limit=60, isolate=isolate)
    assert res.status == "optimal", res.message
    return form, form.logits_at(res.x)


def test_self_check_dense():
    rng = np.random.default_rng(0)
    net = dense_net(rng)
    x = rng.normal(size=(7, 6))
    form, logits = fixed_logits(net, x, isolate=True)  # once through the real child process
    np.testing.assert_allclose(logits, net.forward(x), atol=1e-4)
    assert set(form.score_cols) == set(net.scored_indices())  # the output layer is not scored


@pytest.mark.parametrize("pool_kind", ["max", "avg", "mixed"])
def test_self_check_conv_with_pooling(pool_kind):
    rng = np.random.default_rng(1)
    net = conv_net(rng, pool_kind)
    x = rng.normal(size=(4, 1, 8, 8))
    form, logits = fixed_logits(net, x, eps=1e-3)  # a larger eps: unstable units and open max windows too
    np.testing.assert_allclose(logits, net.forward(x), atol=1e-4)
    if pool_kind == "max":
        assert form.binaries.get("maxpool", 0) > 0 and form.binaries.get("relu", 0) > 0


def test_self_check_exported_cnn():
    """A real torch export: conv/relu/maxpool/flatten/gemm with padding."""
    net, _ = load_network(MODELS / "digits_cnn.onnx")
    x = np.load(MODELS / "digits_cnn_calib.npz")["x"][:10]
    _, logits = fixed_logits(net, x)
    np.testing.assert_allclose(logits, net.forward(x), atol=1e-4)


def test_reference_point_is_the_network_and_feasible():
    rng = np.random.default_rng(2)
    net = conv_net(rng, "mixed", pad=0, stride=1, hw=10)
    x = rng.normal(size=(3, 1, 10, 10))
    form = build_problem(net, x, net.predict(x), eps=1e-3)
    assert max(form.deviation.values()) < 1e-9
    worst, where = form.milp.violation(form.reference)
    assert worst < 1e-7, where


def test_sparse_matrices_match_the_ir():
    rng = np.random.default_rng(3)
    conv = Conv("c", rng.normal(size=(4, 2, 3, 3)), rng.normal(size=4), (2, 7, 6), strides=(2, 1), pads=(1, 0, 2, 1),
                dilations=(1, 2))
    x = rng.normal(size=(2, 2, 7, 6))
    got = np.stack([conv_matrix(conv) @ xi.reshape(-1) for xi in x]) + np.repeat(conv.bias, np.prod(conv.out_hw))
    np.testing.assert_allclose(got, conv.forward(x).reshape(2, -1), atol=1e-12)
    pool = AvgPool("p", (2, 7, 6), (3, 2), (2, 2), pads=(1, 1, 1, 0), count_include_pad=False)
    got = np.stack([avgpool_matrix(pool) @ xi.reshape(-1) for xi in x])
    np.testing.assert_allclose(got, pool.forward(x).reshape(2, -1), atol=1e-12)


def test_unit_counting_and_binaries():
    """Off units get nothing, on units no binary, straddling units exactly one binary each."""
    w1 = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    b1 = np.array([0.0, -0.5, 0.0, 0.0])
    net = Network([Dense("fc", w1, b1, (2,)), Relu("r", (4,)),
                   Dense("out", np.ones((2, 4)) * np.array([[1.0], [-1.0]]), np.zeros(2), (4,))], "x", (2,))
    # a = [x0, -x0 - 0.5, x1, 0]: on, off, straddling (x1 = 0), off (exact zero, no weights)
    x = np.array([[1.0, 0.0], [2.0, 0.0]])
    form = build_problem(net, x, np.array([0, 0]), eps=1e-3)
    assert form.unit_stats[0] == {"off": 4, "on": 2, "unstable": 2}
    assert form.binaries == {"relu": 2}
    assert form.milp.num_integer == 2
    relaxed = build_problem(net, x, np.array([0, 0]), eps=1e-3, relax=True)
    assert relaxed.milp.num_integer == 0 and relaxed.milp.num_cols == form.milp.num_cols


def test_first_layer_has_no_input_variables():
    """With a tiny eps the inputs are constants: a dense net without unstable units is an LP over scores and
    loss variables only."""
    net, _ = load_network(MODELS / "digits_mlp.onnx")
    d = np.load(MODELS / "digits_mlp_calib.npz")
    form = build_problem(net, d["x"][:10], d["y"][:10])
    assert form.milp.num_integer == 0
    assert set(form.columns) <= {"score", "loss", "substitute", "relu", "binary"}
    assert form.columns["score"] == 64 + 32 and form.columns["loss"] == 10


def test_useless_unit_scores_zero_and_useful_one_stays():
    """A hidden unit with no outgoing weight costs sparsity and buys nothing: score 0."""
    w1 = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w2 = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # unit 2 feeds nothing
    net = Network([Dense("fc", w1, np.zeros(3), (2,)), Relu("r", (3,)), Dense("out", w2, np.zeros(2), (3,))],
                  "x", (2,))
    x = np.array([[1.0, 0.1], [0.1, 1.0]])
    y = np.array([0, 1])
    form = build_problem(net, x, y, lam=5.0, margin=1.0)
    res = solve(form.milp, time_limit=30, isolate=False)
    s = form.scores(res.x)[0]
    assert s[2] < 1e-6
    assert s[0] > 0.3 and s[1] > 0.3  # each is needed for one image's margin


def test_losses_and_sparsity_variants_build_and_agree_at_reference():
    rng = np.random.default_rng(4)
    net = dense_net(rng)
    x = rng.normal(size=(5, 6))
    y = net.predict(x)
    for loss in ("hinge", "lse"):
        for sparsity in ("mean", "paper"):
            form = build_problem(net, x, y, loss=loss, sparsity=sparsity)
            worst, where = form.milp.violation(form.reference)
            assert worst < 1e-7, (loss, sparsity, where)
    with pytest.raises(ValueError):
        build_problem(net, x, y, loss="softmax")


def test_lse_planes_are_exact_at_the_original_logits():
    from scipy.special import logsumexp

    from onnxcrit.formulation.loss import lse_planes

    rng = np.random.default_rng(5)
    z0 = rng.normal(size=(4, 5)) * 3
    y = np.array([0, 1, 2, 3])
    g, b = lse_planes(z0, y)
    f = logsumexp(z0, axis=1) - z0[np.arange(4), y]
    at_z0 = np.einsum("npc,nc->np", g, z0) + b
    np.testing.assert_allclose(at_z0.max(axis=1), f, atol=1e-12)  # tight at z0
    z = rng.normal(size=(4, 5)) * 3  # and below the convex function elsewhere
    f_z = logsumexp(z, axis=1) - z[np.arange(4), y]
    assert np.all(np.einsum("npc,nc->np", g, z) + b <= f_z[:, None] + 1e-12)


@st.composite
def small_networks(draw):
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        sizes = tuple(draw(st.lists(st.integers(1, 6), min_size=3, max_size=4)))
        net = dense_net(rng, sizes)
        x = rng.normal(size=(draw(st.integers(1, 4)), sizes[0]))
    else:
        pool = draw(st.sampled_from(["max", "avg", "mixed"]))
        net = conv_net(rng, pool, channels=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), 2),
                       hw=10, pad=draw(st.integers(0, 1)), classes=draw(st.integers(2, 4)))
        x = rng.normal(size=(draw(st.integers(1, 3)), net.input_shape[0], 10, 10))
    eps = draw(st.sampled_from([1e-5, 1e-3, 1e-2]))
    return net, x, eps


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_networks())
def test_property_scores_one_reproduce_the_network(case):
    net, x, eps = case
    _, logits = fixed_logits(net, x, eps=eps)
    np.testing.assert_allclose(logits, net.forward(x), atol=1e-4)


def test_bounds_contain_reference_values():
    """The bounds the builders rely on hold the forward values (sanity of the input to the formulation)."""
    rng = np.random.default_rng(6)
    net = conv_net(rng, "max")
    x = rng.normal(size=(3, 1, 8, 8))
    b = interval_bounds(net, x, 1e-5)
    for lo, hi, act in zip(b.lower, b.upper, net.activations(x)):
        assert np.all(lo <= act + 1e-12) and np.all(act <= hi + 1e-12)
