"""Baseline: score the prunable units of an onnxcrit IR network with Torch-Pruning's magnitude importance.

The IR is rebuilt as an equivalent float32 torch `nn.Sequential` (`ir_to_torch`), Torch-Pruning traces it
(`tp.DependencyGraph().build_dependency`), and for every layer in `net.scored_indices()` the group of its output
channels (`DG.get_pruning_group(module, tp.prune_{linear,conv}_out_channels, idxs=all)`) is scored with
`tp.importance.GroupMagnitudeImportance` (alias `MagnitudeImportance`, Torch-Pruning 1.6.1) at its defaults:
    p=2, group_reduction="mean", normalizer="mean", bias=False,
    target_types=[_ConvNd, Linear, _BatchNorm, LayerNorm].
So the score of unit u is mean over the group's weight tensors of sum |w|^p over u's slice (its outgoing
weight row/filter and the next layer's input column(s) -- a conv->Flatten->Linear column block of H*W columns
is summed into one channel), then divided by the mean over the layer's units. Biases are not counted (bias=False).
The output layer is never scored. Usage: python -m benchmarks.tp_importance (self-test; needs the bench extra).
"""
from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict

import numpy as np

from onnxcrit import load_network

from .common import ROOT


def available() -> tuple[bool, str]:
    """(True, installed version) if torch_pruning imports, else (False, the error)."""
    try:
        import torch_pruning as tp
    except Exception as exc:  # ImportError, or a torch incompatibility raised at import time
        return False, f"{type(exc).__name__}: {exc}"
    try:
        from importlib.metadata import version
        return True, version("torch-pruning")  # tp.__version__ still says 1.6.0 in the 1.6.1 wheel
    except Exception:
        return True, getattr(tp, "__version__", "unknown")


def _sym_pads(layer) -> tuple[int, int]:
    pt, pl, pb, pr = layer.pads
    if (pt, pl) != (pb, pr):
        raise NotImplementedError(f"{layer.name}: asymmetric pads {layer.pads} on a {layer.kind} are not mapped")
    return pt, pl


def ir_to_torch(net):
    """Equivalent float32 nn.Sequential; the module of IR layer i is named f"l{i}"."""
    import torch
    from torch import nn

    mods = OrderedDict()
    for i, layer in enumerate(net.layers):
        if layer.kind == "dense":
            m = nn.Linear(layer.weight.shape[1], layer.units)
        elif layer.kind == "conv":
            pt, pl, pb, pr = layer.pads
            if (pt, pl) != (pb, pr):  # zero padding commutes, so pad explicitly and convolve unpadded
                mods[f"l{i}_pad"] = nn.ZeroPad2d((pl, pr, pt, pb))
                pt = pl = 0
            m = nn.Conv2d(layer.weight.shape[1], layer.units, layer.kernel, stride=layer.strides,
                          padding=(pt, pl), dilation=layer.dilations)
        elif layer.kind == "relu":
            m = nn.ReLU()
        elif layer.kind in ("maxpool", "avgpool"):
            pads = _sym_pads(layer)
            if any(2 * p > k for p, k in zip(pads, layer.kernel)):
                raise NotImplementedError(f"{layer.name}: torch pooling needs pad <= kernel/2, got {layer.pads}")
            if layer.kind == "maxpool":
                m = nn.MaxPool2d(layer.kernel, layer.strides, pads, layer.dilations, ceil_mode=layer.ceil_mode)
            else:
                m = nn.AvgPool2d(layer.kernel, layer.strides, pads, count_include_pad=layer.count_include_pad)
        elif layer.kind == "reshape":
            if len(layer.out_shape) == 1:
                m = nn.Flatten()
            elif tuple(layer.out_shape) == tuple(layer.in_shape):
                m = nn.Identity()
            else:
                raise NotImplementedError(f"{layer.name}: reshape {layer.in_shape} -> {layer.out_shape} not mapped")
        else:
            raise NotImplementedError(f"{getattr(layer, 'name', i)}: layer kind {layer.kind!r} not mapped")
        if layer.kind in ("dense", "conv"):
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(np.asarray(layer.weight, dtype=np.float32)))
                m.bias.copy_(torch.from_numpy(np.asarray(layer.bias, dtype=np.float32)))
        mods[f"l{i}"] = m
    return nn.Sequential(mods).float().eval()


def torch_pruning_scores(net, p: int = 2) -> dict[int, np.ndarray]:
    """{position in net.scored_indices(): Torch-Pruning group magnitude importance per unit (float64)}."""
    import torch
    import torch_pruning as tp

    model = ir_to_torch(net)
    example = torch.randn(1, *net.input_shape)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    imp = tp.importance.GroupMagnitudeImportance(p=p)  # defaults: group_reduction="mean", normalizer="mean"
    scores = {}
    for i in net.scored_indices():
        layer, module = net.layers[i], model.get_submodule(f"l{i}")
        fn = tp.prune_linear_out_channels if layer.kind == "dense" else tp.prune_conv_out_channels
        group = dg.get_pruning_group(module, fn, idxs=list(range(layer.units)))
        s = imp(group)
        if s is None or s.numel() != layer.units:
            raise RuntimeError(f"{layer.name}: Torch-Pruning returned no per-unit importance")
        scores[i] = s.detach().cpu().double().numpy()
    return scores


def _reference(net, i: int, p: int) -> np.ndarray:
    """The same score by hand for a chain: (own rows + next linear layer's input columns) / 2, / mean."""
    w = net.layers[i].weight
    nxt = net.layers[next(j for j in net.linear_indices() if j > i)].weight
    cols = np.abs(nxt.reshape(nxt.shape[0], w.shape[0], -1).astype(np.float32)) ** p  # flatten: C-major
    s = (np.abs(w.reshape(w.shape[0], -1).astype(np.float32)) ** p).sum(1) + cols.sum(axis=(0, 2))
    return s / s.mean()


if __name__ == "__main__":
    ok, info = available()
    print(f"torch_pruning available: {ok} ({info})")
    if not ok:
        sys.exit(1)
    import torch

    paths = [os.path.join(ROOT, "models", "digits_mlp.onnx"), os.path.join(ROOT, "models", "digits_cnn.onnx"),
             os.path.expanduser("~/.cache/onnxcrit/bench_scores_lenet5_mnist.onnx")]
    rng = np.random.default_rng(0)
    for path in [q for q in paths if os.path.exists(q)]:
        net, _ = load_network(path)
        x = rng.standard_normal((64, *net.input_shape)).astype(np.float32)
        with torch.no_grad():
            y = ir_to_torch(net)(torch.from_numpy(x)).numpy()
        err = float(np.abs(y - net.forward(x)).max())
        assert err < 1e-4, f"{path}: ir_to_torch differs by {err}"
        t0 = time.perf_counter()
        scores = torch_pruning_scores(net)
        dt = time.perf_counter() - t0
        ref_err = max(float(np.abs(scores[i] - _reference(net, i, 2)).max()) for i in scores)
        print(f"{os.path.basename(path)}: torch max|diff|={err:.2e}, scored {sorted(scores)} "
              f"shapes {[scores[i].shape for i in sorted(scores)]} in {dt * 1000:.1f} ms, "
              f"max|diff| vs hand formula {ref_err:.2e}")
