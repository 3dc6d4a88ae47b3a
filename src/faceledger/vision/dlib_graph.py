"""dlib's ResNet face descriptor, run by ONNX Runtime instead of dlib.

``dlib_face_recognition_resnet_model_v1.dat`` is read from dlib's own serialisation format
(the checked bytes, no dlib needed) and rewritten as an in-memory ONNX graph of the same
network (``dlib/tools/python/src/face_recognition.cpp``'s ``anet_type``), which ONNX
Runtime's CPU kernels run. The descriptors match dlib's to < 1e-6
(``tests/test_dlib_graph.py`` compares them on LFW chips with dlib's own
``face_recognition_model_v1``) and take ~4 ms a chip on one core, against ~11-13 ms for the
same graph on OpenCV's dnn, ~16 ms for dlib compiled against OpenBLAS and ~90 ms for the
prebuilt ``dlib-bin`` wheel that faceledger installs (``benchmarks/bench_dlib_runtime.py``):
so no compiler and no BLAS build are needed.

dlib's format, as far as this network uses it: integers are a control byte (low 4 bits:
byte count, bit 7: sign) and that many little-endian bytes; a float is an integer mantissa
and exponent; a bool is ``'0'``/``'1'``; a string its length and bytes; a tensor a version,
four dimensions and raw little-endian float32. A network is written from its loss layer
down: each layer's version first, top to bottom, then the input layer, then each layer's
parameters bottom to top. The reader follows the known architecture and checks every
version string, shape and hyperparameter on the way, and that it ends at the last byte.
"""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from faceledger import errors

INPUT_SIZE = 150
DESCRIPTOR_DIM = 128

# ---------------------------------------------------------------------------------------
# The architecture, top (the loss's input) to bottom (the first convolution), as dlib's
# template nesting writes it. ("con", filters, kernel, stride); ("tag"|"skip"|"add", id).

Layer = tuple[Any, ...]


def _block(filters: int, stride: int) -> list[Layer]:
    return [("affine",), ("con", filters, 3, 1), ("relu",), ("affine",),
            ("con", filters, 3, stride)]


def _ares(filters: int) -> list[Layer]:
    return [("relu",), ("add", 1), *_block(filters, 1), ("tag", 1)]


def _ares_down(filters: int) -> list[Layer]:
    return [("relu",), ("add", 2), ("avg_pool",), ("skip", 1), ("tag", 2),
            *_block(filters, 2), ("tag", 1)]


def resnet_architecture() -> list[Layer]:
    """``anet_type``, top to bottom: fc 128, global average, then levels of 256, 128, 64
    and 32 filters over a 7x7/2 convolution and a 3x3/2 max pool of the 150x150 input."""
    layers: list[Layer] = [("fc", DESCRIPTOR_DIM), ("avg_all",)]
    layers += _ares_down(256)
    layers += _ares(256) + _ares(256) + _ares_down(256)
    layers += _ares(128) + _ares(128) + _ares_down(128)
    layers += _ares(64) + _ares(64) + _ares(64) + _ares_down(64)
    layers += _ares(32) + _ares(32) + _ares(32)
    layers += [("max_pool",), ("relu",), ("affine",), ("con", 32, 7, 2)]
    return layers


# ---------------------------------------------------------------------------------------
# Reading dlib's format


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self._data):
            raise ValueError("the file ends early")
        out = self._data[self.pos:self.pos + n]
        self.pos += n
        return out

    def read_int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise ValueError(f"bad integer control byte {control:#x} at {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def read_bool(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise ValueError(f"bad bool {ch!r} at {self.pos - 1}")
        return ch == b"1"

    def read_str(self) -> str:
        return self._take(self.read_int()).decode("ascii")

    def read_float(self) -> float:
        mantissa, exponent = self.read_int(), self.read_int()
        if exponent >= 32000:  # dlib's markers for inf and nan
            raise ValueError("a non-finite float")
        return float(np.ldexp(np.float64(mantissa), exponent))

    def read_tensor(self) -> NDArray[np.float32]:
        if self.read_int() != 2:
            raise ValueError("unknown tensor version")
        shape = tuple(self.read_int() for _ in range(4))
        count = int(np.prod(shape))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias_shape(self) -> tuple[int, ...]:
        if self.read_int() != 1:
            raise ValueError("unknown alias_tensor version")
        return tuple(self.read_int() for _ in range(4))

    def expect(self, *versions: str) -> str:
        got = self.read_str()
        if got not in versions:
            raise ValueError(f"expected {' or '.join(versions)}, found {got!r}")
        return got

    @property
    def remaining(self) -> int:
        return len(self._data) - self.pos


@dataclass(frozen=True, slots=True)
class ParsedLayer:
    """One layer, bottom-up order. ``params``: conv ``w`` (out, in, kh, kw) and ``b``;
    affine ``gamma``/``beta`` (channels,); fc ``w`` (in, out); pools' ``kernel``,
    ``stride`` and ``pad`` (0 for the global average)."""

    kind: str
    ident: int = 0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ParsedNet:
    channel_means: tuple[float, float, float]  # subtracted from R, G, B; then / 256
    layers: list[ParsedLayer]


def _con(r: _Reader, spec: Layer) -> dict[str, Any]:
    version = r.expect("con_4", "con_5", "con_6")
    params = r.read_tensor()
    filters, kh, kw = r.read_int(), r.read_int(), r.read_int()
    stride = (r.read_int(), r.read_int())
    pad = (r.read_int(), r.read_int())
    w_shape, _ = r.alias_shape(), r.alias_shape()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        r.read_float()
    use_bias = r.read_bool() if version in ("con_5", "con_6") else True
    if version == "con_6" and r.read_bool():
        raise ValueError("a fused relu in a convolution")
    _, want_filters, want_k, want_stride = spec
    want_pad = want_k // 2 if want_stride == 1 else 0
    if (filters, kh, kw, stride, pad) != (want_filters, want_k, want_k,
                                          (want_stride,) * 2, (want_pad,) * 2):
        raise ValueError(f"convolution {filters}x{kh}x{kw}/{stride} pad {pad}, "
                         f"expected {spec}")
    flat = params.ravel()
    n_w = int(np.prod(w_shape))
    if w_shape[0] != filters or flat.size < n_w + (filters if use_bias else 0):
        raise ValueError("convolution parameters of the wrong size")
    bias = flat[n_w:n_w + filters] if use_bias else np.zeros(filters, np.float32)
    return {"w": flat[:n_w].reshape(w_shape), "b": bias, "stride": stride, "pad": pad}


def _affine(r: _Reader) -> dict[str, Any]:
    version = r.expect("affine_", "affine_2")
    params = r.read_tensor()
    gamma_shape, _ = r.alias_shape(), r.alias_shape()
    r.read_int()  # mode: per channel (CONV_MODE) for every affine layer of this network
    if version == "affine_2" and r.read_bool():
        raise ValueError("a disabled affine layer")
    n = int(np.prod(gamma_shape))
    flat = params.ravel()
    if flat.size != 2 * n:
        raise ValueError("affine parameters of the wrong size")
    return {"gamma": flat[:n], "beta": flat[n:]}


def _pool(r: _Reader, version: str) -> dict[str, Any]:
    r.expect(version)
    kernel = (r.read_int(), r.read_int())
    stride = (r.read_int(), r.read_int())
    pad = (r.read_int(), r.read_int())
    return {"kernel": kernel, "stride": stride, "pad": pad}


def _fc(r: _Reader, outputs: int) -> dict[str, Any]:
    version = r.expect("fc_2", "fc_3")
    n_out, n_in = r.read_int(), r.read_int()
    params = r.read_tensor()
    r.alias_shape()
    r.alias_shape()
    r.read_int()  # bias mode: fc_no_bias
    for _ in range(4):
        r.read_float()
    if version == "fc_3":
        r.read_bool()
    if n_out != outputs or params.size < n_in * n_out:
        raise ValueError(f"fc of {n_in}->{n_out}, expected ->{outputs}")
    return {"w": params.ravel()[:n_in * n_out].reshape(n_in, n_out)}


def _details(r: _Reader, spec: Layer) -> dict[str, Any]:
    kind = spec[0]
    if kind == "con":
        return _con(r, spec)
    if kind == "affine":
        return _affine(r)
    if kind == "relu":
        if r.expect("relu_", "relu_2") == "relu_2" and r.read_bool():
            raise ValueError("a disabled relu")
        return {}
    if kind == "max_pool":
        return _pool(r, "max_pool_2")
    if kind in ("avg_pool", "avg_all"):
        return _pool(r, "avg_pool_2")
    if kind == "add":
        r.expect("add_prev_")
        return {}
    if kind == "fc":
        return _fc(r, spec[1])
    raise ValueError(f"unknown layer {kind}")


def parse_resnet(data: bytes) -> ParsedNet:
    """The layers and weights of dlib's ResNet descriptor from the bytes of its ``.dat``.
    Raises ``ModelIntegrityError`` if the bytes are not that network."""
    try:
        return _parse(_Reader(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.ModelIntegrityError(
            f"not dlib's ResNet face descriptor: {exc}") from exc


def _parse(r: _Reader) -> ParsedNet:
    if r.read_int() != 1:
        raise ValueError("unknown loss layer version")
    if r.expect("loss_metric_", "loss_metric_2") == "loss_metric_2":
        r.read_float()  # margin
        r.read_float()  # distance threshold
    top_down = resnet_architecture()
    versions = [r.read_int() for _ in top_down]
    r.expect("input_rgb_image_sized")
    means = (r.read_float(), r.read_float(), r.read_float())
    if (r.read_int(), r.read_int()) != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError("not a 150x150 input")
    layers: list[ParsedLayer] = []
    bottom = len(top_down) - 1
    for depth in range(bottom, -1, -1):
        spec, version = top_down[depth], versions[depth]
        if spec[0] in ("tag", "skip"):
            if version != 1:
                raise ValueError(f"unknown {spec[0]} layer version {version}")
            layers.append(ParsedLayer(spec[0], spec[1]))
            continue
        params = _details(r, spec)
        for _ in range(3):  # setup called, gradient stale, output disabled
            r.read_bool()
        r.read_tensor()  # x_grad
        r.read_tensor()  # cached output
        if depth == bottom:  # the add_layer over the input: versions 2-3
            r.read_tensor()  # grad_final
            if version >= 3:
                r.read_int()  # sample expansion factor
        elif version == 2:
            r.read_tensor()  # params_grad
        layers.append(ParsedLayer(spec[0], spec[1] if spec[0] == "add" else 0, params))
    if r.remaining:
        raise ValueError(f"{r.remaining} bytes left after the network")
    return ParsedNet(means, layers)


# ---------------------------------------------------------------------------------------
# Writing the same network as ONNX (protobuf by hand: a handful of message types)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    payload = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _attr_ints(name: str, values: tuple[int, ...] | list[int]) -> bytes:
    # AttributeProto: name 1, ints 8, type 20 (INTS = 7)
    return _field(1, name) + b"".join(_field(8, v) for v in values) + _field(20, 7)


def _node(op: str, inputs: list[str], output: str, attrs: list[bytes] | None = None) -> bytes:
    # NodeProto: input 1, output 2, op_type 4, attribute 5
    return (b"".join(_field(1, i) for i in inputs) + _field(2, output) + _field(4, op)
            + b"".join(_field(5, a) for a in attrs or []))


def _initializer(name: str, array: NDArray[Any]) -> bytes:
    # TensorProto: dims 1, data_type 2 (FLOAT 1, INT64 7), name 8, raw_data 9
    kind = {np.dtype(np.float32): 1, np.dtype(np.int64): 7}[array.dtype]
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return (b"".join(_field(1, d) for d in array.shape) + _field(2, kind) + _field(8, name)
            + _field(9, raw))


def _value_info(name: str, dims: list[int | str]) -> bytes:
    # ValueInfoProto{name 1, type 2: TypeProto{tensor_type 1: {elem_type 1, shape 2:
    # TensorShapeProto{dim 1: {dim_value 1 | dim_param 2}}}}}
    shape = b"".join(_field(1, _field(2, d) if isinstance(d, str) else _field(1, d))
                     for d in dims)
    return _field(1, name) + _field(2, _field(1, _field(1, 1) + _field(2, shape)))


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []
        self._count = 0

    def name(self) -> str:
        self._count += 1
        return f"t{self._count}"

    def op(self, op: str, inputs: list[str], attrs: list[bytes] | None = None) -> str:
        out = self.name()
        self.nodes.append(_node(op, inputs, out, attrs))
        return out

    def const(self, array: NDArray[Any]) -> str:
        name = self.name()
        self.inits.append(_initializer(name, array))
        return name


def _pool_attrs(p: dict[str, Any]) -> list[bytes]:
    (py, px) = p["pad"]
    return [_attr_ints("kernel_shape", p["kernel"]), _attr_ints("strides", p["stride"]),
            _attr_ints("pads", [py, px, py, px])]


def _out_side(side: int, kernel: int, stride: int, pad: int) -> int:
    return (side + 2 * pad - kernel) // stride + 1


def onnx_model(net: ParsedNet) -> bytes:
    """An ONNX model (opset 13) of ``net``: input ``input`` (n, 3, 150, 150) float32, RGB,
    already ``(pixel - channel mean) / 256``; output ``output`` (n, 128), dlib's raw
    descriptor. dlib's ``add_prev`` adds tensors of different shapes as if the smaller were
    zero-padded at its end (channels, rows, columns): written here as ``Pad``."""
    g = _Graph()
    cur = "input"
    shape: tuple[int, ...] = (3, INPUT_SIZE, INPUT_SIZE)
    tags: dict[int, tuple[str, tuple[int, ...]]] = {}
    for layer in net.layers:
        p = layer.params
        if layer.kind == "con":
            (py, px), (sy, sx) = p["pad"], p["stride"]
            kh = p["w"].shape[2]
            cur = g.op("Conv", [cur, g.const(p["w"]), g.const(p["b"])],
                       [_attr_ints("kernel_shape", p["w"].shape[2:]),
                        _attr_ints("strides", [sy, sx]), _attr_ints("pads", [py, px, py, px])])
            side = _out_side(shape[1], kh, sy, py)
            shape = (p["w"].shape[0], side, side)
        elif layer.kind == "affine":
            cur = g.op("Mul", [cur, g.const(p["gamma"].reshape(1, -1, 1, 1))])
            cur = g.op("Add", [cur, g.const(p["beta"].reshape(1, -1, 1, 1))])
        elif layer.kind == "relu":
            cur = g.op("Relu", [cur])
        elif layer.kind in ("max_pool", "avg_pool"):
            cur = g.op("MaxPool" if layer.kind == "max_pool" else "AveragePool", [cur],
                       _pool_attrs(p))
            side = _out_side(shape[1], p["kernel"][0], p["stride"][0], p["pad"][0])
            shape = (shape[0], side, side)
        elif layer.kind == "avg_all":
            cur = g.op("GlobalAveragePool", [cur])
            cur = g.op("Reshape", [cur, g.const(np.array([-1, shape[0]], np.int64))])
            shape = (shape[0],)
        elif layer.kind == "fc":
            cur = g.op("MatMul", [cur, g.const(p["w"])])
        elif layer.kind == "tag":
            tags[layer.ident] = (cur, shape)
        elif layer.kind == "skip":
            cur, shape = tags[layer.ident]
        elif layer.kind == "add":
            other, other_shape = tags[layer.ident]
            full = tuple(max(a, b) for a, b in zip(shape, other_shape, strict=True))

            def padded(name: str, have: tuple[int, ...], full: tuple[int, ...] = full) -> str:
                if have == full:
                    return name
                ends = [0] + [f - h for f, h in zip(full, have, strict=True)]
                return g.op("Pad", [name, g.const(np.array([0, 0, 0, 0, *ends], np.int64))])

            cur = g.op("Add", [padded(cur, shape), padded(other, other_shape)])
            shape = full
    g.nodes.append(_node("Identity", [cur], "output"))
    graph = (b"".join(_field(1, n) for n in g.nodes) + _field(2, "dlib_resnet_v1")
             + b"".join(_field(5, t) for t in g.inits)
             + _field(11, _value_info("input", ["n", 3, INPUT_SIZE, INPUT_SIZE]))
             + _field(12, _value_info("output", ["n", DESCRIPTOR_DIM])))
    # ModelProto: ir_version 1, graph 7, opset_import 8 {domain 1, version 2}
    return _field(1, 8) + _field(8, _field(1, "") + _field(2, 13)) + _field(7, graph)


def _give_back_freed_memory() -> None:
    """Building the graph makes transient copies of the 22 MB of weights (~100 MB at the
    peak); freed, glibc keeps them in its heap, and ONNX Runtime's own allocations do not
    reuse them: measured, a pipeline held 64 MiB more until ``malloc_trim`` returned the
    pages. A no-op where the C library has no ``malloc_trim``."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


class DlibResNetNet:
    """The network on ONNX Runtime: ``descriptors`` of 150x150 RGB uint8 chips, as dlib's
    ``face_recognition_model_v1.compute_face_descriptor`` would return them. ``threads``:
    ONNX Runtime's threads for one call (0: one per core); they sleep between calls
    instead of spinning, so an idle server or a waiting worker costs no CPU."""

    def __init__(self, model: bytes, threads: int = 0) -> None:
        from faceledger.vision.onnx_runtime import onnxruntime as load

        onnxruntime = load()
        net = parse_resnet(model)
        self._means = np.asarray(net.channel_means, dtype=np.float32)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(0, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: it raises them anyway
        graph = onnx_model(net)
        del net
        self._session: Any = onnxruntime.InferenceSession(
            graph, options, providers=["CPUExecutionProvider"])
        del graph
        _give_back_freed_memory()

    def descriptors(self, chips: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
        batch = np.stack(chips).astype(np.float32)
        if batch.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"chips must be {INPUT_SIZE}x{INPUT_SIZE} RGB, "
                             f"got {batch.shape[1:]}")
        blob = np.ascontiguousarray(((batch - self._means) / 256.0).transpose(0, 3, 1, 2))
        out = np.asarray(self._session.run(None, {"input": blob})[0], dtype=np.float32)
        return out.reshape(len(chips), DESCRIPTOR_DIM)
