"""The layer kinds of the IR: plain dataclasses of numpy arrays with a numpy forward pass, and one registry
(`KINDS`) saying what the rest of the pipeline needs to know about each kind.

The IR is the one source of shapes. Every shape is per sample (no batch axis). Linear layers (`Dense`,
`Conv`) keep, for their output units and their input units, where their numbers live in the original ONNX
graph (`ParamRef`), so the rewrite can shrink the right tensors without re-deriving anything.

Weights are float64 with BatchNormalization and Gemm's alpha/beta already folded in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np


@dataclass(frozen=True)
class ParamRef:
    """A tensor of the original graph (initializer or Constant output) whose `axis` is indexed by units."""

    tensor: str
    axis: int


def _out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int,
              ceil_mode: bool = False) -> int:
    span = dilation * (kernel - 1) + 1
    room = size + pad_begin + pad_end - span
    if ceil_mode:
        out = -(-room // stride) + 1
        # ONNX/ORT: the last window must start inside the input or the left padding
        if (out - 1) * stride >= size + pad_begin:
            out -= 1
        return out
    return room // stride + 1


def patch_indices(height: int, width: int, kernel: Sequence[int], strides: Sequence[int],
                  pads: Sequence[int], dilations: Sequence[int], ceil_mode: bool = False) -> np.ndarray:
    """Flat spatial input index (h * width + w) of every window element, -1 where it falls on padding.

    Shape [out_h * out_w, kernel_h * kernel_w]; windows in row-major output order.
    pads are (top, left, bottom, right).
    """
    kh, kw = kernel
    sh, sw = strides
    pt, pl, pb, pr = pads
    dh, dw = dilations
    oh = _out_size(height, kh, sh, pt, pb, dh, ceil_mode)
    ow = _out_size(width, kw, sw, pl, pr, dw, ceil_mode)
    rows = (np.arange(oh) * sh - pt)[:, None] + np.arange(kh)[None, :] * dh  # [oh, kh]
    cols = (np.arange(ow) * sw - pl)[:, None] + np.arange(kw)[None, :] * dw  # [ow, kw]
    r = rows[:, None, :, None]
    c = cols[None, :, None, :]
    valid = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    flat = np.where(valid, r * width + c, -1)  # [oh, ow, kh, kw]
    return flat.reshape(oh * ow, kh * kw).astype(np.int64)


def _gather_patches(x: np.ndarray, idx: np.ndarray, fill: float) -> np.ndarray:
    """x [N, C, H, W] -> [N, C, P, K] with `fill` where idx == -1."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    padded = np.concatenate([flat, np.full((n, c, 1), fill, dtype=x.dtype)], axis=2)
    return padded[:, :, np.where(idx < 0, h * w, idx)]


@dataclass
class Dense:
    """y = W x + b on a flat input. weight [units, inputs]."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    in_shape: tuple[int, ...]
    out_refs: tuple[ParamRef, ...] = ()
    in_refs: tuple[ParamRef, ...] = ()
    nodes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # the tensors it reads (default: the previous layer's output)
    output: str = ""  # the tensor it writes (default: a name made from its position)
    kind = "dense"

    @property
    def units(self) -> int:
        return int(self.weight.shape[0])

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.units,)

    per_column = 1  # weights per (unit, input column) pair
    positions = 1  # output positions per unit
    depthwise = False

    def column_l1(self) -> np.ndarray:
        """L1 norm of the weights reading each input column."""
        return np.abs(self.weight).sum(axis=0)

    @property
    def params(self) -> int:
        return int(self.weight.size + self.bias.size)

    @property
    def macs(self) -> int:
        return int(self.weight.size)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias


@dataclass
class Conv:
    """2-D convolution. weight [units, in_channels / group, kh, kw]; pads (top, left, bottom, right).

    group == in_channels == units is a depthwise convolution: channel c in, channel c out."""

    name: str
    weight: np.ndarray
    bias: np.ndarray
    in_shape: tuple[int, int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    out_refs: tuple[ParamRef, ...] = ()
    in_refs: tuple[ParamRef, ...] = ()
    nodes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # the tensors it reads (default: the previous layer's output)
    output: str = ""  # the tensor it writes (default: a name made from its position)
    group: int = 1
    kind = "conv"

    @property
    def depthwise(self) -> bool:
        return self.group > 1 and self.group == self.in_shape[0] == self.units

    @property
    def units(self) -> int:
        return int(self.weight.shape[0])

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    @property
    def out_hw(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        return (_out_size(h, self.kernel[0], self.strides[0], self.pads[0], self.pads[2], self.dilations[0]),
                _out_size(w, self.kernel[1], self.strides[1], self.pads[1], self.pads[3], self.dilations[1]))

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.units, *self.out_hw)

    def column_l1(self) -> np.ndarray:
        """L1 norm of the weights reading each input channel (a depthwise conv reads channel c with row c)."""
        w = np.abs(self.weight)
        if self.depthwise:
            return w.reshape(self.units, -1).sum(axis=1)
        if self.group == 1:
            return w.sum(axis=(0, 2, 3))
        g = self.group  # output o reads the channels of its group
        return w.reshape(g, self.units // g, *w.shape[1:]).sum(axis=(1, 3, 4)).reshape(-1)

    @property
    def per_column(self) -> int:
        """Weights per (unit, input channel) pair: the kernel's elements."""
        return int(np.prod(self.weight.shape[2:]))

    @property
    def positions(self) -> int:
        """Output positions per unit."""
        return int(np.prod(self.out_hw))

    @property
    def params(self) -> int:
        return int(self.weight.size + self.bias.size)

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        return int(self.weight.size * oh * ow)

    def patches(self) -> np.ndarray:
        """Window indices, see `patch_indices`."""
        _, h, w = self.in_shape
        return patch_indices(h, w, self.kernel, self.strides, self.pads, self.dilations)

    def forward(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        cols = _gather_patches(x, self.patches(), 0.0)  # [N, C, P, K]
        if self.group == 1:
            w = self.weight.reshape(self.units, self.weight.shape[1], -1)  # [O, C, K]
            y = np.einsum("ncpk,ock->nop", cols, w, optimize=True)
        else:
            g = self.group
            cols = cols.reshape(n, g, cols.shape[1] // g, *cols.shape[2:])  # [N, G, C/G, P, K]
            w = self.weight.reshape(g, self.units // g, self.weight.shape[1], -1)  # [G, O/G, C/G, K]
            y = np.einsum("ngcpk,gock->ngop", cols, w, optimize=True).reshape(n, self.units, -1)
        y = y + self.bias[None, :, None]
        return y.reshape(n, *self.out_shape)


@dataclass
class Relu:
    name: str
    in_shape: tuple[int, ...]
    nodes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # the tensors it reads (default: the previous layer's output)
    output: str = ""  # the tensor it writes (default: a name made from its position)
    kind = "relu"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.in_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0.0)


@dataclass
class MaxPool:
    name: str
    in_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    nodes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # the tensors it reads (default: the previous layer's output)
    output: str = ""  # the tensor it writes (default: a name made from its position)
    kind = "maxpool"

    def patches(self) -> np.ndarray:
        _, h, w = self.in_shape
        return patch_indices(h, w, self.kernel, self.strides, self.pads, self.dilations, self.ceil_mode)

    @property
    def out_hw(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        return (_out_size(h, self.kernel[0], self.strides[0], self.pads[0], self.pads[2], self.dilations[0],
                          self.ceil_mode),
                _out_size(w, self.kernel[1], self.strides[1], self.pads[1], self.pads[3], self.dilations[1],
                          self.ceil_mode))

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.in_shape[0], *self.out_hw)

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = _gather_patches(x, self.patches(), -np.inf).max(axis=3)
        return y.reshape(x.shape[0], *self.out_shape)


@dataclass
class AvgPool:
    """Average pooling; GlobalAveragePool is an AvgPool whose kernel is the whole map."""

    name: str
    in_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    count_include_pad: bool = False
    nodes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # the tensors it reads (default: the previous layer's output)
    output: str = ""  # the tensor it writes (default: a name made from its position)
    kind = "avgpool"

    def patches(self) -> np.ndarray:
        _, h, w = self.in_shape
        return patch_indices(h, w, self.kernel, self.strides, self.pads, (1, 1))

    @property
    def out_hw(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        return (_out_size(h, self.kernel[0], self.strides[0], self.pads[0], self.pads[2], 1),
                _out_size(w, self.kernel[1], self.strides[1], self.pads[1], self.pads[3], 1))

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (self.in_shape[0], *self.out_hw)

    def window_weights(self) -> np.ndarray:
        """[P, K] weight of each window element in the average (0 on padding unless counted)."""
        idx = self.patches()
        if self.count_include_pad:
            return np.full(idx.shape, 1.0 / idx.shape[1])
        valid = (idx >= 0).astype(np.float64)
        return valid / valid.sum(axis=1, keepdims=True)

    def forward(self, x: np.ndarray) -> np.ndarray:
        cols = _gather_patches(x, self.patches(), 0.0)
        y = np.einsum("ncpk,pk->ncp", cols, self.window_weights())
        return y.reshape(x.shape[0], *self.out_shape)


@dataclass
class Reshape:
    """A row-major reshape (Flatten, Reshape, Squeeze, Unsqueeze, layout-free Transpose).

    shape_node names (by its output tensor) the original Reshape node whose constant target shape spells out
    sizes, so it must change when units are removed upstream (None when it does not depend on unit counts, e.g. Flatten or [0, -1]).
    """

    name: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    shape_node: str | None = None
    nodes: tuple[str, ...] = ()
    # the target when the graph computes it from the input's shape (Keras 3's flatten), batch entry 0
    computed_target: tuple[int, ...] | None = None
    inputs: tuple[str, ...] = ()  # the tensors it reads (default: the previous layer's output)
    output: str = ""  # the tensor it writes (default: a name made from its position)
    kind = "reshape"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], *self.out_shape)


@dataclass
class Affine:
    """x * scale + shift with constant arrays broadcast over the per-sample shape: input normalisation written
    as Sub/Div/Mul/Add nodes before the first linear layer. Kept in the graph as it is; the IR computes it."""

    name: str
    in_shape: tuple[int, ...]
    scale: np.ndarray  # broadcastable to in_shape, float64
    shift: np.ndarray
    nodes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # the tensors it reads (default: the previous layer's output)
    output: str = ""  # the tensor it writes (default: a name made from its position)
    kind = "affine"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.in_shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale + self.shift


@dataclass
class Transpose:
    """A per-sample axis permutation before the first linear layer (an NHWC input turned NCHW)."""

    name: str
    in_shape: tuple[int, ...]
    perm: tuple[int, ...]  # per-sample axes, the batch axis excluded
    nodes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()  # the tensors it reads (default: the previous layer's output)
    output: str = ""  # the tensor it writes (default: a name made from its position)
    kind = "transpose"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.in_shape[p] for p in self.perm)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.transpose(0, *(p + 1 for p in self.perm))


Layer = Union[Dense, Conv, Relu, MaxPool, AvgPool, Reshape, Affine, Transpose]
# layers that may only stand before the first linear layer: they see constants in the MIP, own no units
INPUT_STAGE_KINDS = ("affine", "transpose")
LINEAR_KINDS = ("dense", "conv")


@dataclass
class Add:
    """The element-wise sum of two or more activations of one shape (a residual connection)."""

    name: str
    in_shape: tuple[int, ...]
    nodes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    output: str = ""
    kind = "add"

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.in_shape

    def forward(self, *xs: np.ndarray) -> np.ndarray:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@dataclass
class Concat:
    """Activations joined along the channel axis (per-sample axis 0); `sizes` are the inputs' channel counts."""

    name: str
    in_shapes: tuple[tuple[int, ...], ...]
    nodes: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    output: str = ""
    kind = "concat"

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.in_shapes[0]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(shape[0]) for shape in self.in_shapes)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return (sum(self.sizes), *self.in_shapes[0][1:])

    def forward(self, *xs: np.ndarray) -> np.ndarray:
        return np.concatenate(xs, axis=1)


Layer = Union[Dense, Conv, Relu, MaxPool, AvgPool, Reshape, Affine, Transpose, Add, Concat]


@dataclass(frozen=True)
class Kind:
    """What the pipeline needs to know about a layer kind besides its forward pass.

    linear: an affine map with weights (Dense, Conv): its output channels are new units and its input
    channels are columns it reads. per_channel: channel c out depends on channel c in only (ReLU, pooling).
    merge: several activations in. monotone: `forward` is monotone in each element, so interval bounds are the
    images of the two ends. positively_homogeneous: f(a x) = a f(x) for a positive per-channel factor a, so a
    kept unit's score can be folded into the weights that read it. input_stage: only before the first linear
    layer (it sees constants in the MIP and owns no units).
    """

    linear: bool = False
    activation: bool = False  # the ReLU: where a group's score applies in the MIP
    per_channel: bool = False
    merge: bool = False
    monotone: bool = True
    positively_homogeneous: bool = True
    input_stage: bool = False


KINDS: dict[str, Kind] = {
    "dense": Kind(linear=True, monotone=False, positively_homogeneous=False),
    "conv": Kind(linear=True, monotone=False, positively_homogeneous=False),
    "relu": Kind(per_channel=True, activation=True),
    "maxpool": Kind(per_channel=True),
    "avgpool": Kind(per_channel=True),
    "reshape": Kind(),
    "add": Kind(merge=True),
    "concat": Kind(merge=True),
    "affine": Kind(input_stage=True, positively_homogeneous=False),
    "transpose": Kind(input_stage=True),
}
# the kinds' names, for code that must name them (the registry says the rest)
INPUT_STAGE_KINDS = tuple(k for k, v in KINDS.items() if v.input_stage)
LINEAR_KINDS = tuple(k for k, v in KINDS.items() if v.linear)


def kind_of(layer) -> Kind:
    return KINDS[layer.kind]
