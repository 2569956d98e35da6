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
