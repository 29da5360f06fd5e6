"""Import a .tflite model as a real torch.nn.Module, then export it as TorchScript.

The flatbuffer is read with the `tflite` package. Constant sub-graphs (DEQUANTIZE of fp16
weights, DENSIFY of sparse weights) are folded at import time, and every remaining operator
becomes a torch layer (Conv2d, ConvTranspose2d, PReLU, pooling) or a torch function call in a
torch.fx graph. The result is an ordinary GraphModule whose generated `forward` reads like
hand-written PyTorch; nothing interprets the TFLite graph at run time.

Layout: TFLite is NHWC. Inside the module every 4-D tensor is NCHW (what torch's kernels
want); the module's inputs and outputs keep the TFLite shapes, so it is a drop-in for the
original. The batch dimension is free (TFLite's is fixed at 1), which Triton's dynamic
batching needs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tflite
import torch
import torch.nn.functional as F
from tflite.BuiltinOperator import BuiltinOperator
from torch import fx, nn

_OP_NAMES = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
_NUMPY_DTYPES = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    7: np.int16,
    9: np.int8,
}
# TFLite's fused activation codes (ActivationFunctionType).
_ACT_NONE, _ACT_RELU, _ACT_RELU_N1_TO_1, _ACT_RELU6, _ACT_TANH = 0, 1, 2, 3, 4
# tflite.Padding and the custom ops' TfLitePadding differ: SAME is 0 in one, 1 in the other.
_PADDING_SAME = 0
_CUSTOM_PADDING_SAME = 1
# NHWC axis -> NCHW axis for 4-D tensors.
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


class UnsupportedOperator(NotImplementedError):
    pass


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: type


@dataclass
class Operator:
    index: int
    kind: str  # BuiltinOperator name, or "CUSTOM:<code>"
    inputs: list[int]  # -1 marks an omitted optional input
    outputs: list[int]
    raw: tflite.Operator = field(repr=False)

    def options(self, cls: type) -> object:
        table = self.raw.BuiltinOptions()
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts


class TFLiteGraph:
    """The first subgraph of a .tflite file, with constant tensors resolved to numpy."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.model = tflite.Model.GetRootAsModel(data, 0)
        subgraph = self.model.Subgraphs(0)
        self.tensors = [self._read_tensor(subgraph.Tensors(i)) for i in range(subgraph.TensorsLength())]
        self.inputs = list(subgraph.InputsAsNumpy())
        self.outputs = list(subgraph.OutputsAsNumpy())
        self.constants: dict[int, np.ndarray] = {}
        for i in range(subgraph.TensorsLength()):
            value = self._read_buffer(subgraph.Tensors(i))
            if value is not None:
                self.constants[i] = value
        self._raw_tensors = [subgraph.Tensors(i) for i in range(subgraph.TensorsLength())]
        operators = [self._read_operator(subgraph.Operators(i), i) for i in range(subgraph.OperatorsLength())]
        self.operators = self._fold_constants(operators)

    @classmethod
    def from_file(cls, path: Path) -> TFLiteGraph:
        return cls(Path(path).read_bytes())

    def _read_tensor(self, t: tflite.Tensor) -> Tensor:
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        return Tensor(t.Name().decode(), shape, _NUMPY_DTYPES.get(t.Type(), np.float32))

    def _read_buffer(self, t: tflite.Tensor) -> np.ndarray | None:
        buffer = self.model.Buffers(t.Buffer())
        if buffer.Offset() > 1:  # large models keep buffers after the flatbuffer
            raw = self._data[buffer.Offset() : buffer.Offset() + buffer.Size()]
        elif buffer.DataLength():
            raw = buffer.DataAsNumpy().tobytes()
        else:
            return None
        values = np.frombuffer(raw, dtype=_NUMPY_DTYPES[t.Type()])
        if t.Sparsity() is not None:
            return values  # still sparse: DENSIFY expands it
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        return values.reshape(shape)

    def _read_operator(self, op: tflite.Operator, index: int) -> Operator:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        kind = _OP_NAMES[builtin]
        if kind == "CUSTOM":
            kind = "CUSTOM:" + code.CustomCode().decode()
        return Operator(index, kind, [int(i) for i in op.InputsAsNumpy()], [int(i) for i in op.OutputsAsNumpy()], op)

    def _fold_constants(self, operators: list[Operator]) -> list[Operator]:
        """Evaluate DEQUANTIZE and DENSIFY on constant weights; return the remaining ops."""
        remaining = []
        for op in operators:
            if op.kind == "DENSIFY" and op.inputs[0] in self.constants:
                self.constants[op.outputs[0]] = self._densify(op.inputs[0])
            elif op.kind == "DEQUANTIZE" and op.inputs[0] in self.constants:
                self.constants[op.outputs[0]] = self._dequantize(op.inputs[0])
            else:
                remaining.append(op)
        return remaining

    def _dequantize(self, index: int) -> np.ndarray:
        value = self.constants[index]
        if value.dtype == np.float16:
            return value.astype(np.float32)
        quant = self._raw_tensors[index].Quantization()
        scale = quant.ScaleAsNumpy().astype(np.float32)
        zero_point = quant.ZeroPointAsNumpy().astype(np.float32)
        axis_shape = [1] * value.ndim
        if scale.size > 1:
            axis_shape[quant.QuantizedDimension()] = scale.size
        return (value.astype(np.float32) - zero_point.reshape(axis_shape)) * scale.reshape(axis_shape)

    def _densify(self, index: int) -> np.ndarray:
        """Expand a sparse tensor (TFLite's SparsityParameters) into a dense array.

        Levels are walked in traversal order, breadth first and vectorised: each level maps
        every partial path (`position`) to its children, in the same order in which the
        stored values are laid out, so the leaves line up one-to-one with the values.
        """
        values = self.constants[index]
        sparsity = self._raw_tensors[index].Sparsity()
        dense_shape = self.tensors[index].shape
        rank = len(dense_shape)
        order = list(sparsity.TraversalOrderAsNumpy())
        block_map = list(sparsity.BlockMapAsNumpy()) if sparsity.BlockMapLength() else []
        block_size = {int(block_map[b]): sparsity.DimMetadata(rank + b).DenseSize() for b in range(len(block_map))}

        position = np.zeros(1, dtype=np.int64)
        coords: list[np.ndarray] = []
        for level in range(len(order)):
            meta = sparsity.DimMetadata(level)
            if meta.Format() == 0:  # DENSE
                size = meta.DenseSize()
                position = (position[:, None] * size + np.arange(size)).ravel()
                coords = [np.repeat(c, size) for c in coords]
                coords.append(np.tile(np.arange(size), len(position) // size))
            else:  # SPARSE_CSR
                segments = _union_vector(meta.ArraySegmentsType(), meta.ArraySegments())
                indices = _union_vector(meta.ArrayIndicesType(), meta.ArrayIndices())
                starts, ends = segments[position], segments[position + 1]
                counts = ends - starts
                position = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
                coords = [np.repeat(c, counts) for c in coords]
                coords.append(indices[position])
        dense = np.zeros(dense_shape, dtype=values.dtype)
        full = []
        for dim in range(rank):
            c = coords[order.index(dim)]
            if dim in block_size:
                c = c * block_size[dim] + coords[rank + block_map.index(dim)]
            full.append(c)
        dense[tuple(full)] = values[: len(full[0])]
        return dense


def _union_vector(kind: int, table: object) -> np.ndarray:
    vector_cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}[kind]
    vector = vector_cls()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy().astype(np.int64)


# --------------------------------------------------------------------------- layers


class LegacyResizeBilinear(nn.Module):
    """TFLite RESIZE_BILINEAR with neither align_corners nor half_pixel_centers.

    Source coordinate = destination * (in / out), no half-pixel shift; torch has no such mode,
    so the sample indices and weights are precomputed for the static sizes.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        for axis, (n_in, n_out) in zip("yx", zip(in_hw, out_hw, strict=True), strict=True):
            src = np.arange(n_out) * (n_in / n_out)
            lo = np.floor(src).astype(np.int64)
            hi = np.minimum(lo + 1, n_in - 1)
            self.register_buffer(f"{axis}0", torch.from_numpy(lo))
            self.register_buffer(f"{axis}1", torch.from_numpy(hi))
            self.register_buffer(f"w{axis}", torch.from_numpy((src - lo).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wy = self.wy.view(1, 1, -1, 1)
        rows = x.index_select(2, self.y0) * (1 - wy) + x.index_select(2, self.y1) * wy
        return rows.index_select(3, self.x0) * (1 - self.wx) + rows.index_select(3, self.x1) * self.wx


class DepthToSpace(nn.Module):
    """TFLite DEPTH_TO_SPACE on NCHW data (its channel order is (block_y, block_x, c),
    unlike torch's pixel_shuffle, which expects (c, block_y, block_x))."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        b = self.block
        x = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return x.reshape(n, c // (b * b), h * b, w * b)


class SameAvgPool2d(nn.Module):
    """Average pooling with TFLite SAME padding: padded cells are left out of the mean."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], pads: list[int], in_hw: tuple[int, int]):
        super().__init__()
        self.kernel, self.stride, self.pads = kernel, stride, pads
        ones = F.pad(torch.ones(1, 1, *in_hw), pads)
        counts = F.avg_pool2d(ones, kernel, stride) * (kernel[0] * kernel[1])
        self.register_buffer("scale", (kernel[0] * kernel[1]) / counts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(x, self.pads), self.kernel, self.stride) * self.scale


# --------------------------------------------------------------------------- graph builder


def _same_pads(in_size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite SAME padding: the odd pixel goes after (bottom/right), unlike torch's symmetric."""
    out_size = math.ceil(in_size / stride)
    effective = (kernel - 1) * dilation + 1
    total = max((out_size - 1) * stride + effective - in_size, 0)
    return total // 2, total - total // 2


class _Builder:
    def __init__(self, graph: TFLiteGraph) -> None:
        self.g = graph
        self.root = nn.Module()
        self.fx = fx.Graph()
        self.values: dict[int, fx.Node] = {}

    # helpers ---------------------------------------------------------------
    def shape(self, index: int) -> tuple[int, ...]:
        return self.g.tensors[index].shape

    def const(self, index: int) -> np.ndarray:
        return self.g.constants[index]

    def add_module(self, op: Operator, suffix: str, module: nn.Module) -> str:
        name = f"op{op.index:03d}_{suffix}"
        self.root.add_module(name, module)
        return name

    def value(self, index: int) -> fx.Node:
        """The torch value of a tensor; constants become buffers in torch layout."""
        if index not in self.values:
            array = self.const(index).astype(np.float32)
            if array.ndim == 4:
                array = array.transpose(0, 3, 1, 2)
            name = f"const{index:04d}"
            self.root.register_buffer(name, torch.from_numpy(np.ascontiguousarray(array)))
            self.values[index] = self.fx.get_attr(name)
        return self.values[index]

    def broadcast_operand(self, index: int, other: int) -> fx.Node:
        """A constant vector of channels, broadcast against a 4-D NCHW tensor."""
        is_channel_vector = index in self.g.constants and self.const(index).ndim < 4
        if index not in self.values and is_channel_vector and len(self.shape(other)) == 4:
            channels = self.const(index).astype(np.float32).reshape(-1)
            name = f"const{index:04d}"
            self.root.register_buffer(name, torch.from_numpy(channels.reshape(1, -1, 1, 1).copy()))
            self.values[index] = self.fx.get_attr(name)
        return self.value(index)

    def call(self, fn: Callable, *args: object, **kwargs: object) -> fx.Node:
        return self.fx.call_function(fn, args, kwargs)

    def activation(self, node: fx.Node, code: int) -> fx.Node:
        """A fused activation. `node` is always the fresh output of the op that fused it, so
        the activation may overwrite it in place (one allocation less per layer)."""
        if code == _ACT_NONE:
            return node
        if code == _ACT_RELU:
            return self.call(torch.relu_, node)
        if code == _ACT_RELU6:
            return self.call(torch.clamp_, node, 0.0, 6.0)
        if code == _ACT_RELU_N1_TO_1:
            return self.call(torch.clamp_, node, -1.0, 1.0)
        if code == _ACT_TANH:
            return self.call(torch.tanh_, node)
        raise UnsupportedOperator(f"fused activation {code}")

    def pad_same(
        self,
        x: fx.Node,
        op: Operator,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        dilation: tuple[int, int] = (1, 1),
        value: float = 0.0,
    ) -> tuple[fx.Node, tuple[int, int]]:
        """Apply TFLite SAME padding: symmetric pads go to the layer, the asymmetric rest to F.pad."""
        _, h, w, _ = self.shape(op.inputs[0])
        top, bottom = _same_pads(h, kernel[0], stride[0], dilation[0])
        left, right = _same_pads(w, kernel[1], stride[1], dilation[1])
        if top == bottom and left == right and value == 0.0:
            return x, (top, left)
        return self.call(F.pad, x, [left, right, top, bottom], "constant", value), (0, 0)

    # converters ------------------------------------------------------------
    def convert(self, op: Operator) -> fx.Node:
        kind = op.kind.replace(":", "_").lower()
        method = getattr(self, f"op_{kind}", None)
        if method is None:
            raise UnsupportedOperator(f"TFLite operator {op.kind} (op #{op.index}) is not supported")
        return method(op)

    def op_conv_2d(self, op: Operator) -> fx.Node:
        o = op.options(tflite.Conv2DOptions)
        weight = self.const(op.inputs[1]).transpose(0, 3, 1, 2)  # OHWI -> OIHW
        bias = self.const(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        return self._conv(
            op,
            weight,
            bias,
            groups=1,
            stride=(o.StrideH(), o.StrideW()),
            dilation=(o.DilationHFactor(), o.DilationWFactor()),
            padding=o.Padding(),
            act=o.FusedActivationFunction(),
        )

    def op_depthwise_conv_2d(self, op: Operator) -> fx.Node:
        o = op.options(tflite.DepthwiseConv2DOptions)
        weight = self.const(op.inputs[1])  # 1, kh, kw, in * multiplier
        weight = weight.transpose(3, 0, 1, 2)  # -> out, 1, kh, kw
        bias = self.const(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        return self._conv(
            op,
            weight,
            bias,
            groups=self.shape(op.inputs[0])[3],
            stride=(o.StrideH(), o.StrideW()),
            dilation=(o.DilationHFactor(), o.DilationWFactor()),
            padding=o.Padding(),
            act=o.FusedActivationFunction(),
        )

    def _conv(
        self,
        op: Operator,
        weight: np.ndarray,
        bias: np.ndarray | None,
        groups: int,
        stride: tuple[int, int],
        dilation: tuple[int, int],
        padding: int,
        act: int,
    ) -> fx.Node:
        out_ch, in_per_group, kh, kw = weight.shape
        x = self.value(op.inputs[0])
        pads = (0, 0)
        if padding == _PADDING_SAME:
            x, pads = self.pad_same(x, op, (kh, kw), stride, dilation)
        conv = nn.Conv2d(in_per_group * groups, out_ch, (kh, kw), stride, pads, dilation, groups, bias is not None)
        conv.weight.data = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
        if bias is not None:
            conv.bias.data = torch.from_numpy(bias.astype(np.float32))
        name = self.add_module(op, "conv", conv)
        return self.activation(self.fx.call_module(name, (x,)), act)

    def op_custom_convolution2dtransposebias(self, op: Operator) -> fx.Node:
        # MediaPipe's custom op; its options are a raw TfLiteTransposeConvParams struct.
        padding, stride_w, stride_h = np.frombuffer(op.raw.CustomOptionsAsNumpy().tobytes()[:12], dtype=np.int32)
        weight = self.const(op.inputs[1])  # out, kh, kw, in
        out_ch, kh, kw, in_ch = weight.shape
        deconv = nn.ConvTranspose2d(in_ch, out_ch, (kh, kw), (int(stride_h), int(stride_w)), bias=True)
        deconv.weight.data = torch.from_numpy(np.ascontiguousarray(weight.transpose(3, 0, 1, 2), dtype=np.float32))
        deconv.bias.data = torch.from_numpy(self.const(op.inputs[2]).astype(np.float32))
        node = self.fx.call_module(self.add_module(op, "deconv", deconv), (self.value(op.inputs[0]),))
        _, out_h, out_w, _ = self.shape(op.outputs[0])
        _, in_h, in_w, _ = self.shape(op.inputs[0])
        full_h, full_w = (in_h - 1) * stride_h + kh, (in_w - 1) * stride_w + kw
        if padding == _CUSTOM_PADDING_SAME and (full_h, full_w) != (out_h, out_w):
            top = max((in_h - 1) * stride_h + kh - out_h, 0) // 2
            left = max((in_w - 1) * stride_w + kw - out_w, 0) // 2
            node = self.call(torch.narrow, self.call(torch.narrow, node, 2, top, out_h), 3, left, out_w)
        return node

    def _pool(self, op: Operator, is_max: bool) -> fx.Node:
        o = op.options(tflite.Pool2DOptions)
        kernel, stride = (o.FilterHeight(), o.FilterWidth()), (o.StrideH(), o.StrideW())
        x = self.value(op.inputs[0])
        if is_max:
            pads = (0, 0)
            if o.Padding() == _PADDING_SAME:
                x, pads = self.pad_same(x, op, kernel, stride, value=-math.inf)
            node = self.fx.call_module(self.add_module(op, "maxpool", nn.MaxPool2d(kernel, stride, pads)), (x,))
        elif o.Padding() == _PADDING_SAME:
            _, h, w, _ = self.shape(op.inputs[0])
            pads = [*_same_pads(w, kernel[1], stride[1]), *_same_pads(h, kernel[0], stride[0])]
            node = self.fx.call_module(
                self.add_module(op, "avgpool", SameAvgPool2d(kernel, stride, pads, (h, w))), (x,)
            )
        else:
            node = self.fx.call_module(self.add_module(op, "avgpool", nn.AvgPool2d(kernel, stride)), (x,))
        return self.activation(node, o.FusedActivationFunction())

    def op_max_pool_2d(self, op: Operator) -> fx.Node:
        return self._pool(op, is_max=True)

    def op_average_pool_2d(self, op: Operator) -> fx.Node:
        return self._pool(op, is_max=False)

    def _binary(self, op: Operator, fn: Callable, options_cls: type) -> fx.Node:
        a, b = op.inputs[:2]
        node = self.call(fn, self.broadcast_operand(a, b), self.broadcast_operand(b, a))
        return self.activation(node, op.options(options_cls).FusedActivationFunction())

    def op_add(self, op: Operator) -> fx.Node:
        return self._binary(op, torch.add, tflite.AddOptions)

    def op_mul(self, op: Operator) -> fx.Node:
        return self._binary(op, torch.mul, tflite.MulOptions)

    def op_sub(self, op: Operator) -> fx.Node:
        return self._binary(op, torch.sub, tflite.SubOptions)

    def op_pad(self, op: Operator) -> fx.Node:
        (n0, n1), (h0, h1), (w0, w1), (c0, c1) = self.const(op.inputs[1]).tolist()
        if n0 or n1:
            raise UnsupportedOperator("PAD along the batch dimension")
        return self.call(F.pad, self.value(op.inputs[0]), [w0, w1, h0, h1, c0, c1])

    def op_resize_bilinear(self, op: Operator) -> fx.Node:
        o = op.options(tflite.ResizeBilinearOptions)
        out_hw = tuple(int(v) for v in self.const(op.inputs[1]))
        x = self.value(op.inputs[0])
        if o.HalfPixelCenters() or o.AlignCorners():
            # half_pixel_centers is torch's align_corners=False; TFLite's align_corners is torch's.
            return self.call(F.interpolate, x, size=list(out_hw), mode="bilinear", align_corners=bool(o.AlignCorners()))
        in_hw = self.shape(op.inputs[0])[1:3]
        return self.fx.call_module(self.add_module(op, "resize", LegacyResizeBilinear(in_hw, out_hw)), (x,))

    def op_depth_to_space(self, op: Operator) -> fx.Node:
        block = op.options(tflite.DepthToSpaceOptions).BlockSize()
        return self.fx.call_module(self.add_module(op, "d2s", DepthToSpace(block)), (self.value(op.inputs[0]),))

    def op_reshape(self, op: Operator) -> fx.Node:
        x = self.value(op.inputs[0])
        if len(self.shape(op.inputs[0])) == 4:
            x = self.fx.call_method("permute", (x, 0, 2, 3, 1))  # reshape follows NHWC order
        out_shape = self.shape(op.outputs[0])
        node = self.fx.call_method("reshape", (x, (-1, *out_shape[1:])))
        if len(out_shape) == 4:
            node = self.fx.call_method("permute", (node, 0, 3, 1, 2))
        return node

    def op_concatenation(self, op: Operator) -> fx.Node:
        o = op.options(tflite.ConcatenationOptions)
        rank = len(self.shape(op.outputs[0]))
        axis = o.Axis() % rank
        if rank == 4:
            axis = _NHWC_TO_NCHW_AXIS[axis]
        node = self.call(torch.cat, [self.value(i) for i in op.inputs], axis)
        return self.activation(node, o.FusedActivationFunction())

    def op_logistic(self, op: Operator) -> fx.Node:
        return self.call(torch.sigmoid, self.value(op.inputs[0]))

    def op_relu(self, op: Operator) -> fx.Node:
        return self.call(F.relu, self.value(op.inputs[0]))

    def op_relu6(self, op: Operator) -> fx.Node:
        return self.call(F.relu6, self.value(op.inputs[0]))

    def op_tanh(self, op: Operator) -> fx.Node:
        return self.call(torch.tanh, self.value(op.inputs[0]))

    def op_hard_swish(self, op: Operator) -> fx.Node:
        return self.call(F.hardswish, self.value(op.inputs[0]))

    def op_prelu(self, op: Operator) -> fx.Node:
        alpha = self.const(op.inputs[1]).astype(np.float32).reshape(-1)
        prelu = nn.PReLU(alpha.size)
        prelu.weight.data = torch.from_numpy(alpha.copy())
        return self.fx.call_module(self.add_module(op, "prelu", prelu), (self.value(op.inputs[0]),))

    # graph -----------------------------------------------------------------
    def build(self, input_names: list[str], output_names: list[str]) -> fx.GraphModule:
        for index, name in zip(self.g.inputs, input_names, strict=True):
            node = self.fx.placeholder(name)
            if len(self.shape(index)) == 4:
                node = self.fx.call_method("permute", (node, 0, 3, 1, 2))
            self.values[index] = node
        for op in self.g.operators:
            self.values[op.outputs[0]] = self.convert(op)
        outputs = []
        for index in self.g.outputs:
            node = self.value(index)
            if len(self.shape(index)) == 4:
                node = self.fx.call_method("permute", (node, 0, 2, 3, 1))
            outputs.append(self.fx.call_method("contiguous", (node,)))
        if len(output_names) != len(outputs):
            raise ValueError(f"model has {len(outputs)} outputs, {len(output_names)} names given")
        self.fx.output(tuple(outputs))
        module = fx.GraphModule(self.root, self.fx, class_name="TFLiteModel")
        return module.eval()


def import_tflite(data: bytes, input_names: list[str], output_names: list[str]) -> fx.GraphModule:
    """Rebuild a .tflite model as a torch module. Inputs and outputs keep TFLite's NHWC shapes."""
    return _Builder(TFLiteGraph(data)).build(input_names, output_names)


def export_torchscript(module: nn.Module, path: Path) -> torch.jit.ScriptModule:
    """Script and freeze the module (weights become constants), then save it to `path`.

    Device-specific rewrites (torch.jit.optimize_for_inference, mkldnn) are left to the
    loader, so the same file runs on Triton's GPU and on a laptop CPU.
    """
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.compile, but Triton's libtorch backend
        # serves TorchScript; fx's generated module also trips a harmless annotation warning.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The TorchScript type system")
        scripted = torch.jit.freeze(torch.jit.script(module.eval()))
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted.save(str(path))
    return scripted
