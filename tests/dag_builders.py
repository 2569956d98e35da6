"""Random small branching ONNX graphs (residual Add, Concat on channels, depthwise and grouped convs), written
node by node with onnx.helper: float32, opset 17, a symbolic batch axis, seeded numpy weights.

`random_cnn(seed, blocks, ...)` builds a stem Conv + Relu, then the blocks named in `blocks` (see BLOCKS), then
a head; `random_mlp(seed, ...)` builds a dense residual MLP. Every conv/dense layer may write its bias the way
exporters do: as the op's input, as a separate `Add` of a [1, C, 1, 1] (or [C]) constant, or not at all with a
`BatchNormalization` node left in the graph (not folded). Sizes are tiny (8x8 inputs, 2-8 channels) so one
model runs in milliseconds. Used by tests/test_dag.py, whose hypothesis strategies draw the arguments.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
BLOCKS = ("basic", "down1", "down2", "fire", "dwsep", "plain", "maxpool")
BIASES = ("input", "add", "bn", "none")
# also "muladd": no bias, then Mul and Add of [1, C, 1, 1] constants (tf2onnx's unfolded BatchNorm after a
# DepthwiseConv2D); not drawn by default (BIASES) while the IR refuses a constant Mul between layers


class DagBuilder:
    """Nodes with explicit inputs (not a chain); every tensor's per-sample shape is tracked in `shapes`."""

    def __init__(self, input_shape, seed=0, bias="input", input_name="input", batch="batch"):
        self.rng = np.random.default_rng(seed)
        self.bias = bias  # "input" | "add" | "bn" | "none" | "mixed" (drawn per layer)
        self.nodes, self.inits = [], []
        self.count = 0
        self.input = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, *input_shape])
        self.shapes = {input_name: tuple(input_shape)}
        self.x = input_name

    # plumbing ------------------------------------------------------------------------------------------
    def name(self, prefix):
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, array, prefix="w"):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type, inputs, shape, prefix=None, **attrs):
        name = self.name(prefix or op_type.lower())
        out = name + "_out"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        self.shapes[out] = tuple(shape)
        return out

    def weights(self, *shape):
        fan_in = int(np.prod(shape[1:]))
        return (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def small(self, n, scale=0.1):
        return (scale * self.rng.standard_normal(n)).astype(np.float32)

    def bias_style(self):
        if self.bias == "mixed":
            return BIASES[int(self.rng.integers(len(BIASES)))]
        return self.bias

    # layers ------------------------------------------------------------------------------------------------
    def conv(self, x, cout, kernel=3, stride=1, group=1, bias=None):
        c, h, w = self.shapes[x]
        assert c % group == 0 and cout % group == 0
        bias = bias or self.bias_style()
        pad = kernel // 2
        oh, ow = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
        inputs = [x, self.const(self.weights(cout, c // group, kernel, kernel))]
        if bias == "input":
            inputs.append(self.const(self.small(cout), "b"))
        y = self.op("Conv", inputs, (cout, oh, ow), kernel_shape=[kernel, kernel], strides=[stride, stride],
                    pads=[pad] * 4, group=group)
        if bias == "add":
            b = self.const(self.small(cout).reshape(1, cout, 1, 1), "b")
            y = self.op("Add", [y, b] if self.rng.random() < 0.5 else [b, y], (cout, oh, ow))
        elif bias == "bn":
            y = self.batchnorm(y)
        elif bias == "muladd":
            scale = self.rng.uniform(0.5, 1.5, (1, cout, 1, 1)).astype(np.float32)
            y = self.op("Mul", [y, self.const(scale, "bn_mul")], (cout, oh, ow))
            y = self.op("Add", [y, self.const(self.small(cout).reshape(1, cout, 1, 1), "bn_add")], (cout, oh, ow))
        return y

    def batchnorm(self, x):
        c = self.shapes[x][0]
        scale = self.rng.uniform(0.5, 1.5, c).astype(np.float32)
        beta = self.small(c, 0.2)
        mean = self.small(c, 0.2)
        var = self.rng.uniform(0.5, 2.0, c).astype(np.float32)
        return self.op("BatchNormalization", [x, *(self.const(a, "bn") for a in (scale, beta, mean, var))],
                       self.shapes[x], epsilon=1e-5)

    def dense(self, x, units, style="gemm", bias=None):
        (n_in,) = self.shapes[x]
        bias = bias or self.bias_style()
        w = self.weights(units, n_in)
        if style == "gemm" and bias != "add":
            inputs = [x, self.const(w)] + ([self.const(self.small(units), "b")] if bias == "input" else [])
            y = self.op("Gemm", inputs, (units,), transB=1)
        else:  # MatMul (x @ W [in, out]), bias as an Add
            y = self.op("MatMul", [x, self.const(w.T.copy())], (units,))
            if bias in ("input", "add"):
                b = self.const(self.small(units), "b")
                y = self.op("Add", [y, b] if self.rng.random() < 0.5 else [b, y], (units,))
        if bias == "bn":
            y = self.batchnorm(y)
        return y

    def relu(self, x):
        return self.op("Relu", [x], self.shapes[x])

    def add(self, a, b):
        assert self.shapes[a] == self.shapes[b], (self.shapes[a], self.shapes[b])
        ins = [a, b] if self.rng.random() < 0.5 else [b, a]  # exporters write either order
        return self.op("Add", ins, self.shapes[a])

    def concat(self, xs):
        shapes = [self.shapes[x] for x in xs]
        assert all(s[1:] == shapes[0][1:] for s in shapes)
        return self.op("Concat", xs, (sum(s[0] for s in shapes), *shapes[0][1:]), axis=1)

    def maxpool(self, x, k=2, s=2):
        c, h, w = self.shapes[x]
        return self.op("MaxPool", [x], (c, (h - k) // s + 1, (w - k) // s + 1), kernel_shape=[k, k],
                       strides=[s, s])

    def gap(self, x):
        return self.op("GlobalAveragePool", [x], (self.shapes[x][0], 1, 1))

    def flatten(self, x):
        return self.op("Flatten", [x], (int(np.prod(self.shapes[x])),), axis=1)

    # blocks ------------------------------------------------------------------------------------------------
    def channels(self):
        return int(self.rng.integers(2, 9))

    def block(self, kind, x):
        c, h, w = self.shapes[x]
        if kind == "basic":  # conv-relu-conv, + identity, relu
            y = self.relu(self.conv(x, c))
            return self.relu(self.add(self.conv(y, c), x))
        if kind in ("down1", "down2"):  # conv 1x1 (stride 1 or 2) shortcut
            stride = 2 if kind == "down2" and min(h, w) >= 2 else 1
            cout = self.channels()
            y = self.relu(self.conv(x, cout, stride=stride))
            y = self.conv(y, cout)
            short = self.conv(x, cout, kernel=1, stride=stride)
            return self.relu(self.add(y, short))
        if kind == "fire":  # squeeze 1x1 -> [expand 1x1, expand 3x3] -> Concat
            q = self.relu(self.conv(x, int(self.rng.integers(2, 5)), kernel=1))
            e1 = self.relu(self.conv(q, int(self.rng.integers(2, 5)), kernel=1))
            e3 = self.relu(self.conv(q, int(self.rng.integers(2, 5)), kernel=3))
            return self.concat([e1, e3] if self.rng.random() < 0.8 else [e3, e1])
        if kind == "dwsep":  # depthwise 3x3 (group = C) + relu, pointwise 1x1 + relu
            y = self.relu(self.conv(x, c, kernel=3, group=c))
            return self.relu(self.conv(y, self.channels(), kernel=1))
        if kind == "plain":
            return self.relu(self.conv(x, self.channels()))
        if kind == "maxpool":
            return self.maxpool(x) if min(h, w) >= 2 else x
        raise ValueError(kind)

    def model(self, y, producer="onnxcrit-tests"):
        first = self.input.type.tensor_type.shape.dim[0]
        out = helper.make_tensor_value_info(y, TensorProto.FLOAT, [first.dim_param or first.dim_value,
                                                                    *self.shapes[y]])
        graph = helper.make_graph(self.nodes, "dag", [self.input], [out], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def random_cnn(seed=0, blocks=("basic",), head="gap", in_channels=1, bias="input", classes=3,
               stem=None) -> onnx.ModelProto:
    """Stem conv + relu, then `blocks` (names from BLOCKS), then the head: "gap" (GlobalAveragePool, Flatten,
    Gemm) or "dense" (Flatten, Gemm, Relu, Gemm). bias: one of BIASES or "mixed" (drawn per layer)."""
    g = DagBuilder((in_channels, 8, 8), seed=seed, bias=bias)
    x = g.relu(g.conv(g.x, stem or g.channels()))
    for kind in blocks:
        x = g.block(kind, x)
    if head == "gap":
        y = g.dense(g.flatten(g.gap(x)), classes, bias="input")
    elif head == "dense":
        h = g.relu(g.dense(g.flatten(x), int(g.rng.integers(2, 7))))
        y = g.dense(h, classes, bias="input")
    else:
        raise ValueError(head)
    return g.model(y)


def random_mlp(seed=0, blocks=1, width=None, inputs=7, bias="input", style="gemm", classes=3) -> onnx.ModelProto:
    """Dense residual MLP: dense + relu = h, `blocks` x [h = relu(dense(relu(dense(h))) + h)], dense logits."""
    g = DagBuilder((inputs,), seed=seed, bias=bias)
    width = width or int(g.rng.integers(2, 9))
    h = g.relu(g.dense(g.x, width, style=style))
    for _ in range(blocks):
        y = g.relu(g.dense(h, int(g.rng.integers(2, 9)), style=style))
        h = g.relu(g.add(g.dense(y, width, style=style), h))
    return g.model(g.dense(h, classes, style=style, bias="input"))


def grouped_cnn(seed=0) -> onnx.ModelProto:
    """A conv net with one grouped (group=2, not depthwise) conv in the middle:
    conv a (1->4) relu, conv b (4->6) relu, conv g (6->6, group 2) relu, conv c (6->4) relu, flatten-free head
    (GlobalAveragePool, Flatten, Gemm). Node names: conv_a, conv_b, conv_g, conv_c, fc."""
    g = DagBuilder((1, 8, 8), seed=seed)
    names = iter(["conv_a", "conv_b", "conv_g", "conv_c"])
    x = g.x
    for cout, group in ((4, 1), (6, 1), (6, 2), (4, 1)):
        x = g.relu(g.conv(x, cout, group=group))
        # name the conv node after its role (the Relu's input)
        conv = next(n for n in g.nodes if n.output[0] == g.nodes[-1].input[0])
        conv.name = next(names)
    y = g.dense(g.flatten(g.gap(x)), 3)
    g.nodes[-1].name = "fc"
    return g.model(y)


def concat_depthwise_cnn(seed=0) -> onnx.ModelProto:
    """A fire module whose Concat feeds a depthwise conv: the depthwise conv's channels belong to two groups
    (expand 1x1's first, expand 3x3's after them). Nodes: stem, squeeze, e1 (3 ch), e3 (2 ch), cat, dw
    (group 5), pw, fc."""
    g = DagBuilder((1, 8, 8), seed=seed)
    x = g.relu(g.conv(g.x, 4, bias="input"))
    q = g.relu(g.conv(x, 3, kernel=1, bias="input"))
    e1 = g.relu(g.conv(q, 3, kernel=1, bias="input"))
    e3 = g.relu(g.conv(q, 2, kernel=3, bias="input"))
    cat = g.concat([e1, e3])
    y = g.relu(g.conv(cat, 5, group=5, bias="input"))
    y = g.relu(g.conv(y, 4, kernel=1, bias="input"))
    y = g.dense(g.flatten(g.gap(y)), 3, bias="input")
    names = iter(["stem", "squeeze", "e1", "e3", "cat", "dw", "pw", "fc"])
    for node in g.nodes:
        if node.op_type in ("Conv", "Concat", "Gemm"):
            node.name = next(names)
    return g.model(y)


def sample_inputs(model: onnx.ModelProto, n=4, seed=0) -> np.ndarray:
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    return np.random.default_rng(seed).standard_normal((n, *dims)).astype(np.float32)
