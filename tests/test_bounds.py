"""Interval bounds contain the forward pass of every point in the input box."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from onnxcrit.bounds import interval_bounds
from onnxcrit.frontend import to_network

from .onnx_builders import cnn, mlp, sample_inputs


def _assert_contains(net, x, eps, seed):
    x = x.astype(np.float64)  # float32 + eps would round outside the box
    bounds = interval_bounds(net, x, eps)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        points = x + rng.uniform(-eps, eps, size=x.shape)
        acts = net.activations(points)
        for k, a in enumerate(acts):
            assert np.all(bounds.lower[k] <= a + 1e-9), f"layer {k} below its lower bound"
            assert np.all(a <= bounds.upper[k] + 1e-9), f"layer {k} above its upper bound"
    # corners of the box are the extreme cases for the first layer
    for sign in (-1.0, 1.0):
        a = net.activations(x + sign * eps)[0]
        assert np.all((bounds.lower[0] <= a + 1e-9) & (a <= bounds.upper[0] + 1e-9))
    return bounds


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), hidden=st.lists(st.integers(1, 10), min_size=1, max_size=3),
       eps=st.sampled_from([1e-5, 1e-2, 0.3]))
def test_mlp_bounds_contain_forward(seed, hidden, eps):
    model = mlp(widths=(6, *hidden, 3), seed=seed)
    _assert_contains(to_network(model), sample_inputs(model, 3, seed), eps, seed)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), pool=st.sampled_from(["max", "avg", "global", None]), bn=st.booleans(),
       eps=st.sampled_from([1e-5, 1e-2, 0.3]))
def test_cnn_bounds_contain_forward(seed, pool, bn, eps):
    model = cnn(pool=pool, bn=bn, seed=seed)
    _assert_contains(to_network(model), sample_inputs(model, 3, seed), eps, seed)


def test_bounds_are_tight_for_tiny_eps():
    model = cnn(pool="max")
    net = to_network(model)
    x = sample_inputs(model, 4)
    bounds = interval_bounds(net, x, 1e-7)
    acts = net.activations(x)
    for k, a in enumerate(acts):
        assert np.max(bounds.upper[k] - bounds.lower[k]) < 1e-4
        np.testing.assert_allclose((bounds.upper[k] + bounds.lower[k]) / 2, a, atol=1e-5)


def test_zero_eps_gives_the_forward_pass():
    model = mlp()
    net = to_network(model)
    x = sample_inputs(model, 5)
    bounds = interval_bounds(net, x, 0.0)
    np.testing.assert_allclose(bounds.lower[-1], net.forward(x), atol=1e-12)
    np.testing.assert_allclose(bounds.upper[-1], net.forward(x), atol=1e-12)
