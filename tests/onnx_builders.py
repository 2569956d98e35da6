"""Hand-built ONNX graphs (onnx.helper) in every style the front end supports, with seeded random weights.

Used by the front-end, bounds, formulation and rewrite tests, including hypothesis property tests.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Appends nodes to a chain, naming everything uniquely."""

    def __init__(self, input_shape, seed=0, opset=17, input_name="input", batch="batch"):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes, self.inits = [], []
        self.count = 0
        self.input = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, *input_shape])
        self.tensor = input_name
        self.shape = tuple(input_shape)

    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, array, prefix="w"):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, prefix=None, **attrs):
        name = self.name(prefix or op.lower())
        out = name + "_out"
        self.nodes.append(helper.make_node(op, [self.tensor, *inputs], [out], name=name, **attrs))
        self.tensor = out
        return out

    def weights(self, *shape):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    # layers -------------------------------------------------------------------------------------
    def dense(self, units, style="gemm", bias=True):
        n_in = self.shape[0]
        w = self.weights(units, n_in)  # [out, in]
        b = (0.1 * self.rng.standard_normal(units)).astype(np.float32)
        if style == "gemm":
            inputs = [self.const(w)] + ([self.const(b, "b")] if bias else [])
            self.node("Gemm", inputs, transB=1)
        elif style == "gemm_t0":
            inputs = [self.const(w.T.copy())] + ([self.const(b[None, :], "b")] if bias else [])
            self.node("Gemm", inputs, transB=0)
        elif style == "gemm_alpha":
            inputs = [self.const(w / 2)] + ([self.const(b / 4, "b")] if bias else [])
            self.node("Gemm", inputs, transB=1, alpha=2.0, beta=4.0)
        elif style in ("matmul", "matmul_rev", "matmul_2d"):
            self.node("MatMul", [self.const(w.T.copy())])
            if bias:
                bias_arr = b[None, :] if style == "matmul_2d" else b
                bname = self.const(bias_arr, "b")
                name = self.name("add")
                ins = [bname, self.tensor] if style == "matmul_rev" else [self.tensor, bname]
                self.nodes.append(helper.make_node("Add", ins, [name + "_out"], name=name))
                self.tensor = name + "_out"
        else:
            raise ValueError(style)
        self.shape = (units,)

    def conv(self, channels, kernel=3, stride=1, pad=1, dilation=1, bias="input", auto_pad=None):
        c, h, w_ = self.shape
        w = self.weights(channels, c, kernel, kernel)
        b = (0.1 * self.rng.standard_normal(channels)).astype(np.float32)
        attrs = dict(kernel_shape=[kernel, kernel], strides=[stride, stride], dilations=[dilation, dilation])
        if auto_pad:
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = [pad, pad, pad, pad]
        inputs = [self.const(w)] + ([self.const(b, "b")] if bias == "input" else [])
        self.node("Conv", inputs, **attrs)
        if bias == "add":
            self.node("Add", [self.const(b.reshape(1, channels, 1, 1), "b")])
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            oh, ow = -(-h // stride), -(-w_ // stride)
        else:
            p = 0 if auto_pad == "VALID" else pad
            span = dilation * (kernel - 1) + 1
            oh, ow = (h + 2 * p - span) // stride + 1, (w_ + 2 * p - span) // stride + 1
        self.shape = (channels, oh, ow)

    def batchnorm(self):
        c = self.shape[0]
        scale = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = (0.2 * self.rng.standard_normal(c)).astype(np.float32)
        mean = (0.2 * self.rng.standard_normal(c)).astype(np.float32)
        var = self.rng.uniform(0.5, 2.0, c).astype(np.float32)
        self.node("BatchNormalization", [self.const(a, "bn") for a in (scale, beta, mean, var)], epsilon=1e-5)

    def relu(self):
        self.node("Relu", [])

    def maxpool(self, k=2, s=2):
        c, h, w = self.shape
        self.node("MaxPool", [], kernel_shape=[k, k], strides=[s, s])
        self.shape = (c, (h - k) // s + 1, (w - k) // s + 1)

    def avgpool(self, k=2, s=2):
        c, h, w = self.shape
        self.node("AveragePool", [], kernel_shape=[k, k], strides=[s, s])
        self.shape = (c, (h - k) // s + 1, (w - k) // s + 1)

    def global_avgpool(self):
        self.node("GlobalAveragePool", [])
        self.shape = (self.shape[0], 1, 1)

    def flatten(self, style="flatten"):
        size = int(np.prod(self.shape))
        if style == "flatten":
            self.node("Flatten", [], axis=1)
        elif style == "reshape_const":
            self.node("Reshape", [self.const(np.array([-1, size], dtype=np.int64), "shape")])
        elif style == "reshape_zero":
            self.node("Reshape", [self.const(np.array([0, -1], dtype=np.int64), "shape")])
        elif style == "reshape_attr":  # opset 1-4 form: the target shape is an attribute
            self.node("Reshape", [], shape=[-1, size])
        else:
            raise ValueError(style)
        self.shape = (size,)

    def dropout(self):
        self.node("Dropout", [])

    def identity(self):
        self.node("Identity", [])

    def tail(self, op):
        if op == "softmax":
            self.node("Softmax", [], axis=1)
        elif op == "logsoftmax":
            self.node("LogSoftmax", [], axis=1)
        elif op == "argmax":
            self.node("ArgMax", [], axis=1, keepdims=0)
        else:
            raise ValueError(op)

    def model(self, output_name="output", opset=None):
        out = helper.make_tensor_value_info(self.tensor, TensorProto.UNDEFINED, None)
        graph = helper.make_graph(self.nodes, "net", [self.input], [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset or self.opset)],
                                  producer_name="onnxcrit-tests")
        model.ir_version = min(model.ir_version, 8)
        model = onnx.shape_inference.infer_shapes(model)
        return model


def mlp(widths=(12, 10, 8, 5), style="gemm", seed=0, relu=True, dropout=False, bn=False, tail=None):
    """widths[0] inputs, then hidden widths, the last is the class count."""
    g = GraphBuilder((widths[0],), seed=seed)
    for i, units in enumerate(widths[1:]):
        g.dense(units, style=style)
        last = i == len(widths) - 2
        if not last:
            if bn:
                g.batchnorm()
            if relu:
                g.relu()
            if dropout:
                g.dropout()
    if tail:
        g.tail(tail)
    return g.model()


def cnn(in_shape=(1, 8, 8), channels=(3, 4), pool="max", bias="input", bn=False, flatten="flatten",
        dense=(6, 5), seed=0, opset=17, kernel=3, pad=1):
    """Conv blocks (conv [bn] relu [pool]) then flatten and dense layers; the last dense is the output."""
    g = GraphBuilder(in_shape, seed=seed, opset=opset)
    for c in channels:
        g.conv(c, kernel=kernel, pad=pad, bias="none" if bn else bias)
        if bn:
            g.batchnorm()
        g.relu()
        if pool == "max" and min(g.shape[1:]) >= 2:
            g.maxpool()
        elif pool == "avg" and min(g.shape[1:]) >= 2:
            g.avgpool()
    if pool == "global":
        g.global_avgpool()
    g.flatten(flatten)
    for i, units in enumerate(dense):
        g.dense(units)
        if i < len(dense) - 1:
            g.relu()
    return g.model(opset=opset)


def sample_inputs(model: onnx.ModelProto, n=4, seed=0) -> np.ndarray:
    """Random inputs shaped like the model's input."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).standard_normal((n, *dims)).astype(np.float32)


# published-file patterns (what other exporters write) ------------------------------------------------------

def _finish(g: GraphBuilder, opset: int, out_shape=None, producer="onnxcrit-tests") -> onnx.ModelProto:
    """Like GraphBuilder.model, with a declared output shape (fixed-batch exporters declare [1, classes])."""
    if out_shape is None:
        first = g.input.type.tensor_type.shape.dim[0]
        out_shape = [first.dim_value or first.dim_param, *g.shape]
    out = helper.make_tensor_value_info(g.tensor, TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(g.nodes, "net", [g.input], [out], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer)
    model.ir_version = 4 if opset <= 9 else min(model.ir_version, 8)
    onnx.checker.check_model(model)
    return model


def _raw(g: GraphBuilder, op, inputs, outputs=1, **attrs):
    """A node whose inputs are given in full (not chained from g.tensor); returns its output name(s)."""
    name = g.name(op.lower())
    outs = [f"{name}_out{i}" if outputs > 1 else f"{name}_out" for i in range(outputs)]
    g.nodes.append(helper.make_node(op, list(inputs), outs, name=name, **attrs))
    return outs if outputs > 1 else outs[0]


def normalised_cnn(seed=0, per_channel=True, identity=False, batch="batch"):
    """(x - mean) / std on the input (torch: Sub, Div with [1, C, 1, 1] constants), then a padded conv net."""
    g = GraphBuilder((3, 8, 8), seed=seed, batch=batch)
    shape = (1, 3, 1, 1) if per_channel else ()
    mean = np.zeros(shape, np.float32) if identity else g.rng.uniform(0.2, 0.6, shape).astype(np.float32)
    std = np.ones(shape, np.float32) if identity else g.rng.uniform(0.2, 0.4, shape).astype(np.float32)
    g.node("Sub", [g.const(mean, "mean")])
    g.node("Div", [g.const(std, "std")])
    g.conv(4, pad=1)
    g.relu()
    g.maxpool()
    g.flatten()
    g.dense(6)
    g.relu()
    g.dense(5)
    return _finish(g, 13)


def rescaled_mlp(seed=0):
    """Keras Rescaling as tf2onnx writes it: Mul by a scale, then Add an offset, before the first MatMul."""
    g = GraphBuilder((12,), seed=seed, input_name="dense_input")
    g.node("Mul", [g.const(np.array(1 / 255, np.float32), "scale")])
    g.node("Add", [g.const(np.array(-0.5, np.float32), "offset")])
    for units, last in ((10, False), (8, False), (5, True)):
        g.dense(units, style="matmul")
        if not last:
            g.relu()
    return _finish(g, 13)


def nhwc_cnn(seed=0, batch="unk__6", softmax=True, channels=2):
    """tf2onnx's keras CNN: NHWC input, Transpose [0,3,1,2], conv blocks, Transpose [0,2,3,1] before the
    Reshape that feeds the first MatMul (Keras flattens in NHWC order)."""
    g = GraphBuilder((8, 8, channels), seed=seed, input_name="input_1", batch=batch)
    g.node("Transpose", [], perm=[0, 3, 1, 2])
    g.shape = (channels, 8, 8)
    g.conv(4, pad=1)
    g.relu()
    g.maxpool()
    g.conv(3, pad=0)
    g.relu()
    c, h, w = g.shape
    g.node("Transpose", [], perm=[0, 2, 3, 1])
    g.node("Reshape", [g.const(np.array([-1, c * h * w], np.int64), "const_fold_opt")])
    g.shape = (c * h * w,)
    g.dense(6, style="matmul")
    g.relu()
    g.dense(5, style="matmul")
    if softmax:
        g.tail("softmax")
    return _finish(g, 13, [batch, 5])


def cntk_cnn(seed=0):
    """The ONNX model zoo's mnist-8 shape (CNTK, opset 8): fixed batch 1, weights produced by Reshape nodes from
    initializers of another shape, SAME_UPPER conv, bias as an Add of [C, 1, 1], a fixed [1, N] Reshape."""
    g = GraphBuilder((1, 8, 8), seed=seed, input_name="Input3", batch=1)
    w1 = g.weights(4, 1, 3, 3)
    w1_flat = _raw(g, "Reshape", [g.const(w1.reshape(-1), "Parameter5"),
                                  g.const(np.array([4, 1, 3, 3], np.int64), "shape")])
    g.node("Conv", [w1_flat], kernel_shape=[3, 3], strides=[1, 1], auto_pad="SAME_UPPER")
    g.node("Add", [g.const((0.1 * g.rng.standard_normal((4, 1, 1))).astype(np.float32), "Parameter6")])
    g.relu()
    g.node("MaxPool", [], kernel_shape=[2, 2], strides=[2, 2])
    g.node("Reshape", [g.const(np.array([1, 64], np.int64), "shape")])
    w2 = g.weights(64, 10)
    w2_in = _raw(g, "Reshape", [g.const(w2.reshape(4, 4, 4, 10), "Parameter193"),
                                g.const(np.array([64, 10], np.int64), "shape")])
    g.node("MatMul", [w2_in])
    g.node("Add", [g.const((0.1 * g.rng.standard_normal((1, 10))).astype(np.float32), "Parameter194")])
    g.relu()
    w3 = g.weights(10, 5)
    g.node("MatMul", [g.const(w3, "Parameter195")])
    return _finish(g, 8, [1, 5], producer="CNTK")


def torch04_cnn(seed=0, opset=9):
    """torch 0.4's x.view(x.size(0), -1) on a fixed batch of 1: Shape -> Gather -> Unsqueeze -> Concat ->
    Reshape, with a zero Pad before an AveragePool and another before a Conv."""
    g = GraphBuilder((1, 8, 8), seed=seed, input_name="0", batch=1)
    g.conv(4, pad=0)
    g.relu()
    pad_attr = opset < 11
    pads = [0, 0, 1, 1, 0, 0, 1, 1]
    if pad_attr:
        g.node("Pad", [], pads=pads, mode="constant", value=0.0)
    else:
        g.node("Pad", [g.const(np.array(pads, np.int64), "pads")], mode="constant")
    g.node("AveragePool", [], kernel_shape=[2, 2], strides=[2, 2])
    g.shape = (4, 4, 4)
    if pad_attr:
        g.node("Pad", [], pads=pads, mode="constant", value=0.0)
    else:
        g.node("Pad", [g.const(np.array(pads, np.int64), "pads")], mode="constant")
    g.shape = (4, 6, 6)
    g.conv(3, pad=0)
    g.relu()
    act = g.tensor
    shape = _raw(g, "Shape", [act])
    first = _raw(g, "Gather", [shape, g.const(np.array(0, np.int64), "index")], axis=0)
    unsq = _raw(g, "Unsqueeze", [first], axes=[0]) if opset < 13 else \
        _raw(g, "Unsqueeze", [first, g.const(np.array([0], np.int64), "axes")])
    target = _raw(g, "Concat", [unsq, g.const(np.array([-1], np.int64), "minus1")], axis=0)
    g.tensor = _raw(g, "Reshape", [act, target])
    g.shape = (3 * 4 * 4,)
    g.dense(6)
    g.relu()
    g.dense(5)
    return _finish(g, opset, [1, 5], producer="pytorch")


def conv_head_cnn(seed=0, head="gap"):
    """An all-convolutional classifier: the logits are a Conv's channels, average-pooled (GlobalAveragePool
    then Flatten) or read from a 1x1 map (Reshape)."""
    g = GraphBuilder((1, 8, 8), seed=seed)
    g.conv(4, pad=1)
    g.relu()
    g.maxpool()
    g.conv(6, pad=1)
    g.relu()
    if head == "gap":
        g.conv(5, kernel=1, pad=0)
        g.global_avgpool()
        g.flatten()
    else:
        g.maxpool()
        g.conv(5, kernel=2, pad=0)
        g.node("Reshape", [g.const(np.array([-1, 5], np.int64), "shape")])
        g.shape = (5,)
    return _finish(g, 13)


def relu_logits_mlp(seed=0, softmax=True):
    """An MLP whose output layer is followed by a Relu (and a Softmax)."""
    g = GraphBuilder((12,), seed=seed)
    for units, last in ((10, False), (8, False), (5, True)):
        g.dense(units)
        g.relu()
    if softmax:
        g.tail("softmax")
    return _finish(g, 13)


PUBLISHED_PATTERNS = {
    "normalised_cnn": normalised_cnn,
    "normalised_identity": lambda: normalised_cnn(identity=True, per_channel=False),
    "rescaled_mlp": rescaled_mlp,
    "nhwc_cnn": nhwc_cnn,
    "nhwc_cnn_batch1": lambda: nhwc_cnn(batch=1),
    "cntk_cnn": cntk_cnn,
    "torch04_cnn_opset9": torch04_cnn,
    "torch04_cnn_opset11": lambda: torch04_cnn(opset=11),
    "conv_head_gap": conv_head_cnn,
    "conv_head_reshape": lambda: conv_head_cnn(head="reshape"),
    "relu_logits_mlp": relu_logits_mlp,
}
