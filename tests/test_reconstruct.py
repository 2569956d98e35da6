"""Reconstruction after removal: exact with nothing removed, written into the ONNX weights exactly as the
reconstructed IR network computes, and the same least squares as a plain numpy reference (MLP and CNN)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import onnxcrit
from onnxcrit.cli import main
from onnxcrit.errors import InputError
from onnxcrit.frontend import load_network, to_network
from onnxcrit.options import Options
from onnxcrit.reconstruct import METHODS, Reconstructor, reconstruct, unpruned_activations, weight_gains, write
from onnxcrit.rewrite import bias_compensation, remove_units
from onnxcrit.tolerance import assert_same
from onnxcrit.validate import check_rewrite, run_tensors

from .corpus import ROOT
from .onnx_builders import cnn, mlp, sample_inputs

FITTED = [m for m in METHODS if m != "none"]
MLP = ROOT / "models" / "digits_mlp.onnx"


def written_logits(model, net, x):
    return run_tensors(model, net.input_name, x, [net.logits_name], dtype=net.input_dtype)[0]


def assert_written_exactly(model, net, scales, x, method, keep=None):
    """Reconstruct, write, and check: the ONNX logits equal the reconstructed IR network's, the input model is
    untouched, and the written model passes check_rewrite against that network."""
    before = model.SerializeToString()
    recon = reconstruct(net, scales, x, method, keep=keep)
    new, new_net = write(model, net, recon)
    assert model.SerializeToString() == before, "write changed its input model"
    reference = recon.network(net)
    assert_same(written_logits(new, new_net, x), reference.forward(x, scales=recon.scales()), net.input_dtype)
    assert check_rewrite(model, new, reference, recon.scales(), [x]).ok
    for k, mask in recon.keep.items():
        assert new_net.layers[k].units == int(mask.sum())
    return recon, new, new_net


def random_selection(net, data, factors=True):
    scales = {}
    for k in net.scored_indices():
        units = net.layers[k].units
        keep = np.array(data.draw(st.lists(st.booleans(), min_size=units, max_size=units)))
        keep[data.draw(st.integers(0, units - 1))] = True
        f = np.array(data.draw(st.lists(st.floats(0.25, 2.0), min_size=units, max_size=units))) if factors \
            else np.ones(units)
        scales[k] = np.where(keep, f, 0.0)
    return scales


# written == reconstructed IR network, on every supported style -------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), hidden=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       style=st.sampled_from(["gemm", "gemm_t0", "gemm_alpha", "matmul", "matmul_rev", "matmul_2d"]),
       bn=st.booleans(), method=st.sampled_from(FITTED), data=st.data())
def test_random_mlps_are_written_as_reconstructed(seed, hidden, style, bn, method, data):
    model = mlp(widths=(7, *hidden, 4), style=style, seed=seed, bn=bn)
    net = to_network(model)
    x = sample_inputs(model, 12, seed=seed)
    assert_written_exactly(model, net, random_selection(net, data), x, method)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), channels=st.lists(st.integers(1, 5), min_size=1, max_size=2),
       pool=st.sampled_from(["max", "avg", "global", None]), bias=st.sampled_from(["input", "add", "none"]),
       bn=st.booleans(), flatten=st.sampled_from(["flatten", "reshape_const", "reshape_zero"]),
       dense=st.lists(st.integers(1, 6), min_size=0, max_size=1), kernel=st.sampled_from([1, 3]),
       method=st.sampled_from(FITTED), data=st.data())
def test_random_cnns_are_written_as_reconstructed(seed, channels, pool, bias, bn, flatten, dense, kernel, method,
                                                  data):
    model = cnn(channels=tuple(channels), pool=pool, bias=bias, bn=bn, flatten=flatten, dense=(*dense, 3),
                seed=seed, kernel=kernel, pad=kernel // 2)
    net = to_network(model)
    x = sample_inputs(model, 6, seed=seed)
    assert_written_exactly(model, net, random_selection(net, data), x, method)


@pytest.mark.parametrize("method", FITTED)
def test_cached_unpruned_activations_give_the_same_fit(method):
    model = cnn(channels=(3, 4), dense=(5, 3), seed=7)
    net = to_network(model)
    x = sample_inputs(model, 30, seed=7)
    scales = halves(net, 7)
    scales[net.scored_indices()[0]] = np.ones(3)  # the first change is in the second layer
    plain = reconstruct(net, scales, x, method).layers
    cached = reconstruct(net, scales, None, method, unpruned=unpruned_activations(net, x)).layers
    assert sorted(plain) == sorted(cached) and sorted(plain) == net.linear_indices()[2:]
    for n in plain:
        np.testing.assert_allclose(plain[n][0], cached[n][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(plain[n][1], cached[n][1], rtol=1e-12, atol=1e-12)


def test_units_kept_at_scale_zero_are_fitted_inputs():
    """select.round_up keeps some units in the graph at scale 0: lsq may give them weight; still exact."""
    model = cnn(channels=(4, 6), seed=3)
    net = to_network(model)
    x = sample_inputs(model, 20, seed=3)
    k = net.scored_indices()[0]
    scales = {k: np.array([1.0, 0.0, 0.0, 1.0])}
    keep = {k: np.array([True, True, False, True])}
    recon, _, new_net = assert_written_exactly(model, net, scales, x, "lsq", keep=keep)
    n = next(i for i in net.linear_indices() if i > k)
    assert np.abs(recon.layers[n][0][:, 1]).max() > 0 and new_net.layers[k].units == 3


# nothing removed: nothing changes ------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", [MLP, ROOT / "models" / "digits_cnn.onnx"], ids=lambda p: p.stem)
def test_reconstructing_the_unpruned_network_changes_nothing(path, method):
    net, model = load_network(path)
    x = np.load(str(path).replace(".onnx", "_calib.npz"))["x"]
    ones = {k: np.ones(net.layers[k].units) for k in net.scored_indices()}
    recon = reconstruct(net, ones, x, method)
    assert recon.layers == {}
    new, _ = write(model, net, recon)
    assert [t.SerializeToString() for t in new.graph.initializer] == \
        [t.SerializeToString() for t in model.graph.initializer]
    assert np.array_equal(written_logits(new, net, x), written_logits(model, net, x))


def test_the_fits_themselves_are_exact_on_the_unpruned_inputs():
    """Forced to fit (a factor of 1 + 1e-12 counts as a change), each method returns the layers unchanged."""
    net, _ = load_network(MLP)
    x = np.load(ROOT / "models" / "digits_mlp_calib.npz")["x"]
    k = net.scored_indices()[0]
    scales = {k: np.full(net.layers[k].units, 1.0 + 1e-12)}
    for method in ("bias", "scale", "lsq"):
        recon = reconstruct(net, scales, x, method)
        for n, (w, b) in recon.layers.items():
            np.testing.assert_allclose(w, net.layers[n].weight, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(b, net.layers[n].bias, rtol=1e-6, atol=1e-9)


# a plain numpy reference of the least squares --------------------------------------------------------------

def naive_design(layer, h):
    """Rows of the linear map built directly: flat inputs, or conv windows from a zero-padded copy."""
    if layer.kind == "dense":
        return h.reshape(len(h), -1)
    top, left, bottom, right = layer.pads
    padded = np.pad(h, ((0, 0), (0, 0), (top, bottom), (left, right)))
    kh, kw = layer.kernel
    win = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::layer.strides[0], ::layer.strides[1]]
    n, c, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


def naive_owner(net, n):
    """The upstream unit owning each feature of linear layer n (a channel owns its block / its windows)."""
    layer = net.layers[n]
    if layer.kind == "conv":
        return np.repeat(np.arange(layer.in_shape[0]), layer.kernel[0] * layer.kernel[1])
    prev = net.layers[max(i for i in net.linear_indices() if i < n)]
    return np.repeat(np.arange(prev.units), layer.in_shape[0] // prev.units)


def reference(net, scales, x, method, damp=1e-2):
    """Layer by layer: np.linalg.lstsq on the explicit design (bias column free, damping rows towards the selected
    weights) for lsq; for scale, one column per kept unit holding its whole contribution."""
    layers, out = list(net.layers), {}
    ref = cur = x.astype(np.float64)
    prev = None
    for i, layer in enumerate(net.layers):
        if layer.kind in ("dense", "conv") and prev is not None:
            owner = naive_owner(net, i)
            keep = scales[prev] > 0
            w = layer.weight.reshape(layer.units, -1) * scales[prev][owner]
            d_ref, d_cur = naive_design(layer, ref), naive_design(layer, cur)
            z = d_ref @ layer.weight.reshape(layer.units, -1).T + layer.bias
            kept = keep[owner]
            xs = d_cur[:, kept]
            ones = np.ones((len(xs), 1))
            if method == "lsq":
                xc = xs - xs.mean(axis=0)
                lam = damp * np.mean(np.sum(xc * xc, axis=0))
                a = np.vstack([np.hstack([xs, ones]), np.hstack([np.sqrt(lam) * np.eye(xs.shape[1]),
                                                                np.zeros((xs.shape[1], 1))])])
                rhs = np.vstack([z, np.sqrt(lam) * w[:, kept].T])
                sol = np.linalg.lstsq(a, rhs, rcond=None)[0]
                new = np.zeros_like(w)
                new[:, kept] = sol[:-1].T
                bias = sol[-1]
            else:  # scale
                units = np.flatnonzero(keep)
                rows = len(xs)
                # u[r, o, j]: unit j's contribution to output o on row r
                u = np.stack([d_cur[:, owner == j] @ w[:, owner == j].T for j in units], axis=2)
                uc = u - u.mean(axis=0)
                gram = np.einsum("roj,rol->jl", uc, uc)
                lam = damp * np.mean(np.diag(gram))
                design = np.concatenate([u.reshape(rows * layer.units, len(units)),
                                         np.tile(np.eye(layer.units), (rows, 1))], axis=1)
                design = np.vstack([design, np.hstack([np.sqrt(lam) * np.eye(len(units)),
                                                       np.zeros((len(units), layer.units))])])
                target = np.concatenate([z.reshape(-1), np.sqrt(lam) * np.ones(len(units))])
                sol = np.linalg.lstsq(design, target, rcond=None)[0]
                factor = np.zeros(net.layers[prev].units)
                factor[units] = sol[:len(units)]
                new, bias = w * factor[owner], sol[len(units):]
            out[i] = (new.reshape(layer.weight.shape), bias)
            layers[i] = replace(layer, weight=out[i][0], bias=bias)
            ref, cur = layer.forward(ref), layers[i].forward(cur)
        else:
            ref, cur = layer.forward(ref), layer.forward(cur)
        if i in scales:
            prev = i
            cur = cur * (scales[i] > 0).reshape((1, -1) + (1,) * (cur.ndim - 2))
    return out


def halves(net, seed):
    rng = np.random.default_rng(seed)
    scales = {}
    for k in net.scored_indices():
        units = net.layers[k].units
        s = rng.uniform(0.5, 1.5, units)
        s[rng.permutation(units)[:units // 2]] = 0.0
        scales[k] = s
    return scales


@pytest.mark.parametrize("method", ["lsq", "scale"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_least_squares_match_a_numpy_reference(kind, method):
    model = mlp(widths=(9, 16, 12, 4), seed=5) if kind == "mlp" else \
        cnn(channels=(3, 4), dense=(5, 3), seed=5, kernel=3, pad=1)
    net = to_network(model)
    # 6 images: fewer than the MLP's kept inputs (8 and 6), so only the damping makes the fit well posed
    x = sample_inputs(model, 6, seed=5).astype(np.float64)
    scales = halves(net, 5)
    got = reconstruct(net, scales, x, method).layers
    want = reference(net, scales, x, method)
    assert sorted(got) == sorted(want)
    for n in want:
        np.testing.assert_allclose(got[n][0], want[n][0], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(got[n][1], want[n][1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bias_is_the_mean_activation_compensation(kind):
    """With one layer pruned at full strength, the bias refit is rewrite.bias_compensation."""
    model = mlp(widths=(9, 8, 7, 4), seed=2) if kind == "mlp" else cnn(channels=(3, 4), dense=(5, 3), seed=2)
    net = to_network(model)
    x = sample_inputs(model, 30, seed=2)
    k = net.scored_indices()[-1]
    scales = {k: (np.arange(net.layers[k].units) % 2).astype(np.float64)}
    recon = reconstruct(net, scales, x, "bias")
    (n, (w, b)), = recon.layers.items()
    np.testing.assert_allclose(b - net.layers[n].bias, bias_compensation(net, x, scales)[n], atol=1e-10)


def test_merge_is_exact_for_proportional_units():
    """A removed unit whose incoming weights and bias are 2.5 times a kept unit's: merging loses nothing."""
    model = mlp(widths=(6, 5, 4, 3), seed=1)
    net = to_network(model)
    first = net.layers[0]
    first.weight[3], first.bias[3] = 2.5 * first.weight[1], 2.5 * first.bias[1]
    model, net = _as_onnx(net, model)
    x = sample_inputs(model, 20, seed=1)
    scales = {0: np.array([1.0, 1.0, 1.0, 0.0, 1.0]), net.scored_indices()[1]: np.ones(4)}
    recon, new, new_net = assert_written_exactly(model, net, scales, x, "merge")
    assert_same(written_logits(new, new_net, x), net.forward(x), net.input_dtype)


def _as_onnx(net, model):
    """The model with the IR's first-layer weight and bias written back into its initializers."""
    from onnx import numpy_helper

    layer = net.layers[0]
    values = {layer.in_refs[0].tensor: layer.weight if layer.in_refs[0].axis == 1 else layer.weight.T,
              layer.out_refs[1].tensor: layer.bias}
    for init in model.graph.initializer:
        if init.name in values:
            init.CopyFrom(numpy_helper.from_array(values[init.name].astype(np.float32), init.name))
    return model, to_network(model)


def test_weight_gains_are_alpha_times_the_batchnorm_scale():
    model = mlp(widths=(6, 5, 4), style="gemm_alpha", bn=True, seed=4)
    net = to_network(model)
    gains = weight_gains(model, net)
    n = net.linear_indices()[1]
    assert set(gains) == {n} and np.all(gains[n] != 1.0)


# the pipeline ---------------------------------------------------------------------------------------------

def test_the_budget_search_selects_on_the_reconstructed_accuracy():
    data, evald = ROOT / "models" / "digits_mlp_calib.npz", ROOT / "models" / "digits_mlp_eval.npz"
    res = onnxcrit.optimize(MLP, data, eval_data=evald, reconstruct="lsq", measure_latency=False)
    rec = res.report["selection"]["reconstruct"]
    assert rec["method"] == rec["applied"] == "lsq" and rec["images"] == 100
    # the accuracy the search recorded for the written selection is the written (reconstructed) model's
    row = min(res.report["selection"]["attempts"][-1]["tried"], key=lambda r: (r["params_after"], r["removed_units"])
              if r["drop"] <= 1.0 + 1e-9 else (np.inf, 0))
    assert row["accuracy"] == pytest.approx(res.report["accuracy_after"], abs=1e-3)
    plain = onnxcrit.optimize(MLP, data, eval_data=evald, reconstruct="none", measure_latency=False)
    assert plain.report["selection"]["reconstruct"] == {"method": "none"}
    assert res.report["params_after"] < plain.report["params_after"]  # measured: 2,727 vs 4,902
    default = onnxcrit.optimize(MLP, data, eval_data=evald, measure_latency=False)  # full mode, a chain: lsq
    assert default.report["options"]["reconstruct"] == "lsq"
    assert default.report["params_after"] == res.report["params_after"]


def test_the_default_reconstruction_is_lsq_in_decoupled_mode_and_none_with_bias_compensation():
    data, evald = ROOT / "models" / "digits_mlp_calib.npz", ROOT / "models" / "digits_mlp_eval.npz"
    res = onnxcrit.optimize(MLP, data, eval_data=evald, measure_latency=False, compensation=True)
    assert res.report["options"]["reconstruct"] == "none"
    assert res.report["selection"]["reconstruct"] == {"method": "none"}
    res = onnxcrit.optimize(MLP, data, eval_data=evald, measure_latency=False, mode="decoupled")
    assert res.report["mode"] == "decoupled" and res.report["options"]["reconstruct"] == "lsq"
    assert res.report["selection"]["reconstruct"]["applied"] == "lsq"


def test_auto_keeps_the_most_accurate_method():
    net, model = load_network(MLP)
    calib, evald = np.load(ROOT / "models" / "digits_mlp_calib.npz"), np.load(ROOT / "models" / "digits_mlp_eval.npz")

    def measure(m, network):
        return float(np.mean(written_logits(m, network, evald["x"]).argmax(1) == evald["y"]) * 100)

    builder = Reconstructor(model, net, "auto", calib["x"], measure=measure)
    scales = halves(net, 0)
    built = builder.build(scales)
    assert set(built.candidates) == set(METHODS)
    assert built.accuracy == max(built.candidates.values())
    assert built.method == next(m for m in METHODS if built.candidates[m] == built.accuracy)
    assert builder.build(scales) is built  # remembered
    ref_net, ref_scales = builder.reference(scales)
    assert check_rewrite(model, built.model, ref_net, ref_scales, [evald["x"]]).ok
    plain, _ = remove_units(model, net, scales)
    assert built.candidates["none"] == measure(plain, to_network(plain))


def test_options_and_flag():
    with pytest.raises(InputError, match="unknown reconstruction 'ols'"):
        Options(reconstruct="ols")
    with pytest.raises(InputError, match="exclude each other"):
        Options(reconstruct="lsq", compensation=True)
    assert Options().reconstruct is None  # lsq, none with bias compensation (api._resolve_reconstruct)
    with pytest.raises(InputError, match="give --eval-data"):
        onnxcrit.optimize(MLP, ROOT / "models" / "digits_mlp_calib.npz", reconstruct="auto", measure_latency=False)
    res = CliRunner().invoke(main, ["optimize", "--help"])
    assert "--reconstruct" in res.output and "lsq" in res.output


# branching graphs: every reader of a pruned group refitted, in topological order ---------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), blocks=st.lists(st.sampled_from(["basic", "down1", "down2", "fire", "dwsep",
                                                                        "plain", "maxpool"]), min_size=1, max_size=3),
       head=st.sampled_from(["gap", "dense"]), bias=st.sampled_from(["input", "add", "bn", "mixed"]),
       method=st.sampled_from(["none", "bias", "scale", "lsq"]), data=st.data())
def test_random_dags_are_written_as_reconstructed(seed, blocks, head, bias, method, data):
    from .dag_builders import random_cnn, sample_inputs as dag_inputs

    model = random_cnn(seed=seed, blocks=tuple(blocks), head=head, bias=bias)
    net, model = load_network(model)
    if not net.scored_indices():
        return
    x = dag_inputs(model, n=24, seed=seed)
    assert_written_exactly(model, net, random_selection(net, data), x, method)


@pytest.mark.parametrize("method", ["none", "bias", "scale", "lsq"])
@pytest.mark.parametrize("name", ["torch_legacy_resnet8", "torch_legacy_mobilenet_dwsep", "keras3_fire"])
def test_reconstructing_an_unpruned_dag_changes_nothing_and_lsq_repairs_a_pruned_one(name, method):
    path = ROOT / "tests" / "data" / "branching" / f"{name}.onnx"
    net, model = load_network(path)
    x = np.load(str(path).replace(".onnx", "_calib.npz"))["x"]
    ones = {k: np.ones(net.layers[k].units) for k in net.scored_indices()}
    assert reconstruct(net, ones, x, method).layers == {}
    if method != "lsq":
        return
    cut = {k: (np.arange(net.layers[k].units) % 3 != 0).astype(float) for k in net.scored_indices()}
    recon, new, new_net = assert_written_exactly(model, net, cut, x, "lsq")
    full = net.forward(x)
    fitted = recon.network(net).forward(x, scales=recon.scales())
    assert np.abs(fitted - full).mean() < 0.5 * np.abs(net.forward(x, scales=cut) - full).mean()


def test_merge_needs_a_chain():
    net, model = load_network(ROOT / "tests" / "data" / "branching" / "torch_legacy_resnet8.onnx")
    cut = {k: (np.arange(net.layers[k].units) % 3 != 0).astype(float) for k in net.scored_indices()}
    with pytest.raises(onnxcrit.errors.UnsupportedModelError, match="merge.*needs a chain"):
        reconstruct(net, cut, None, "merge")
