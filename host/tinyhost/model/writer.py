"""Write small int8 ``.tflite`` files (float32 input and output optional): synthetic test models and a random-weight VWW-architecture model.

Uses the flatbuffer schema module that ships with ``tflite-micro`` (``pip install 'tinyhost[oracle]'``); the
engine itself never needs it.
"""

from dataclasses import dataclass, field

import numpy as np
from pathlib import Path

from ..errors import UsageError

_ACT = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
_PAD = {"SAME": 0, "VALID": 1}
_TYPES = {"float32": 0, "int32": 2, "int8": 9, "int16": 7, "uint8": 3}


def _schema():
    try:
        import flatbuffers
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
    except ImportError:
        raise UsageError("writing .tflite files needs the tflite-micro package",
                         hint="pip install 'tinyhost[oracle]'") from None
    return flatbuffers, fb


@dataclass
class _Tensor:
    name: str
    shape: tuple
    dtype: str
    scale: object = None          # float or list of floats
    zero_point: object = 0
    qdim: int = 0
    data: bytes = b""


@dataclass
class ModelBuilder:
    """Collects tensors and operators, then ``build()`` returns the .tflite bytes."""

    tensors: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    description: str = "tinyhost synthetic model"
    version: int = 3

    def tensor(self, name, shape, dtype="int8", scale=None, zero_point=0, qdim=0, data=None):
        if data is not None:
            data = np.ascontiguousarray(data).tobytes()
        self.tensors.append(_Tensor(name, tuple(int(d) for d in shape), dtype, scale, zero_point, qdim, data or b""))
        return len(self.tensors) - 1

    def const(self, name, array, scale=None, zero_point=0, qdim=0):
        array = np.asarray(array)
        dtype = {np.dtype(np.int8): "int8", np.dtype(np.int32): "int32", np.dtype(np.float32): "float32"}[array.dtype]
        return self.tensor(name, array.shape, dtype, scale, zero_point, qdim, array)

    def op(self, name, inputs, outputs, **options):
        self.ops.append((name, list(inputs), list(outputs), options))

    def build(self):
        flatbuffers, fb = _schema()
        model = fb.ModelT()
        model.version = self.version
        model.description = self.description
        model.buffers = [fb.BufferT()]           # buffer 0: the empty sentinel
        sub = fb.SubGraphT()
        sub.tensors = []
        for t in self.tensors:
            tt = fb.TensorT()
            tt.name = t.name
            tt.shape = list(t.shape)
            tt.type = _TYPES[t.dtype]
            if t.data:
                buf = fb.BufferT()
                buf.data = list(t.data)
                model.buffers.append(buf)
                tt.buffer = len(model.buffers) - 1
            else:
                tt.buffer = 0
            if t.scale is not None:
                q = fb.QuantizationParametersT()
                scales = list(t.scale) if isinstance(t.scale, (list, tuple, np.ndarray)) else [t.scale]
                zps = list(t.zero_point) if isinstance(t.zero_point, (list, tuple, np.ndarray)) else [t.zero_point]
                if len(zps) == 1 and len(scales) > 1:
                    zps = zps * len(scales)
                q.scale = [float(s) for s in scales]
                q.zeroPoint = [int(z) for z in zps]
                q.quantizedDimension = t.qdim
                tt.quantization = q
            sub.tensors.append(tt)
        codes = []
        sub.operators = []
        for name, ins, outs, options in self.ops:
            code = getattr(fb.BuiltinOperator, name)
            if code not in codes:
                codes.append(code)
            o = fb.OperatorT()
            o.opcodeIndex = codes.index(code)
            o.inputs = ins
            o.outputs = outs
            opt_name = {"CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
                        "AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions",
                        "FULLY_CONNECTED": "FullyConnectedOptions", "SOFTMAX": "SoftmaxOptions",
                        "ADD": "AddOptions", "RESHAPE": "ReshapeOptions"}.get(name)
            if opt_name:
                opt = getattr(fb, opt_name + "T")()
                for key, value in options.items():
                    if key == "fusedActivationFunction":
                        value = _ACT[value]
                    elif key == "padding":
                        value = _PAD[value]
                    setattr(opt, key, value)
                o.builtinOptionsType = getattr(fb.BuiltinOptions, opt_name)
                o.builtinOptions = opt
            sub.operators.append(o)
        model.operatorCodes = []
        for code in codes:
            oc = fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = 1
            model.operatorCodes.append(oc)
        sub.inputs = list(self.inputs)
        sub.outputs = list(self.outputs)
        sub.name = "main"
        model.subgraphs = [sub]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


# ---------------------------------------------------------------------------------------------------------------
# Random int8 layers with sensible scales (outputs neither all saturated nor all zero-point).

def _out_scale(in_scale, w_scale, fan_in):
    return float(np.float32(in_scale * w_scale * np.sqrt(fan_in) * 60.0))


def _weights(rng, shape, per_channel, axis):
    w = rng.integers(-127, 128, size=shape, dtype=np.int8)
    n = shape[axis]
    if per_channel:
        scales = (rng.uniform(0.5, 2.0, size=n) * 0.01).astype(np.float32)
        return w, [float(s) for s in scales], float(scales.mean())
    s = float(np.float32(rng.uniform(0.005, 0.02)))
    return w, s, s


class RandomLayers:
    """Chains random int8 layers on a ModelBuilder; each call returns the new activation tensor index."""

    def __init__(self, rng, builder, x, scale, zero_point):
        self.rng = rng
        self.b = builder
        self.x = x
        self.scale = scale
        self.zp = zero_point
        self.n = 0

    def _shape(self):
        return self.b.tensors[self.x].shape

    def _act(self, shape, scale, activation):
        zp = -128 if activation in ("RELU", "RELU6") else int(self.rng.integers(-20, 21))
        self.n += 1
        return self.b.tensor(f"act{self.n}", shape, "int8", scale, zp), zp

    def conv(self, filters, k=3, stride=1, padding="SAME", dilation=1, activation="RELU6", per_channel=True,
             depthwise=False, depth_multiplier=1, bias=True):
        n, h, w, c = self._shape()
        kh, kw = (k, k) if isinstance(k, int) else k
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
        if depthwise:
            filters = c * depth_multiplier
            wt, ws, wmean = _weights(self.rng, (1, kh, kw, filters), per_channel, 3)
            fan_in = kh * kw
        else:
            wt, ws, wmean = _weights(self.rng, (filters, kh, kw, c), per_channel, 0)
            fan_in = kh * kw * c
        eh, ew = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        if padding == "SAME":
            oh, ow = -(-h // sh), -(-w // sw)
        else:
            oh, ow = (h - eh) // sh + 1, (w - ew) // sw + 1
        wq = self.b.const(f"w{self.n}", wt, ws, 0, 3 if depthwise else 0)
        ins = [self.x, wq]
        if bias:
            bscale = [self.scale * s for s in ws] if isinstance(ws, list) else self.scale * ws
            bt = self.rng.integers(-2000, 2000, size=filters, dtype=np.int32)
            ins.append(self.b.const(f"b{self.n}", bt, bscale, 0))
        out_scale = _out_scale(self.scale, wmean, fan_in)
        y, zp = self._act((n, oh, ow, filters), out_scale, activation)
        if depthwise:
            self.b.op("DEPTHWISE_CONV_2D", ins, [y], padding=padding, strideW=sw, strideH=sh,
                      depthMultiplier=depth_multiplier, fusedActivationFunction=activation,
                      dilationWFactor=dw, dilationHFactor=dh)
        else:
            self.b.op("CONV_2D", ins, [y], padding=padding, strideW=sw, strideH=sh,
                      fusedActivationFunction=activation, dilationWFactor=dw, dilationHFactor=dh)
        self.x, self.scale, self.zp = y, out_scale, zp
        return y

    def pool(self, kind="AVERAGE_POOL_2D", k=2, stride=2, padding="VALID", activation="NONE"):
        n, h, w, c = self._shape()
        if padding == "SAME":
            oh, ow = -(-h // stride), -(-w // stride)
        else:
            oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
        self.n += 1
        y = self.b.tensor(f"pool{self.n}", (n, oh, ow, c), "int8", self.scale, self.zp)
        self.b.op(kind, [self.x], [y], padding=padding, strideW=stride, strideH=stride, filterWidth=k,
                  filterHeight=k, fusedActivationFunction=activation)
        self.x = y
        return y

    def reshape(self, shape):
        self.n += 1
        y = self.b.tensor(f"reshape{self.n}", shape, "int8", self.scale, self.zp)
        shape_t = self.b.const(f"shape{self.n}", np.array(shape, dtype=np.int32))
        self.b.op("RESHAPE", [self.x, shape_t], [y], newShape=list(shape))
        self.x = y
        return y

    def fc(self, units, activation="NONE", per_channel=False, filter_zero_point=0):
        shape = self._shape()
        depth = int(np.prod(shape[1:]))
        wt, ws, wmean = _weights(self.rng, (units, depth), per_channel, 0)
        wq = self.b.const(f"w{self.n}", wt, ws, filter_zero_point, 0)
        bscale = [self.scale * s for s in ws] if isinstance(ws, list) else self.scale * ws
        bq = self.b.const(f"b{self.n}", self.rng.integers(-2000, 2000, size=units, dtype=np.int32), bscale, 0)
        out_scale = _out_scale(self.scale, wmean, depth)
        y, zp = self._act((shape[0], units), out_scale, activation)
        self.b.op("FULLY_CONNECTED", [self.x, wq, bq], [y], fusedActivationFunction=activation)
        self.x, self.scale, self.zp = y, out_scale, zp
        return y

    def add(self, other, other_scale, other_zp, activation="NONE"):
        shape = self._shape()
        out_scale = float(max(self.scale, other_scale) * 1.5)
        y, zp = self._act(shape, out_scale, activation)
        self.b.op("ADD", [self.x, other], [y], fusedActivationFunction=activation)
        self.x, self.scale, self.zp = y, out_scale, zp
        return y

    def softmax(self, beta=1.0):
        shape = self._shape()
        self.n += 1
        y = self.b.tensor(f"softmax{self.n}", shape, "int8", 1.0 / 256, -128)
        self.b.op("SOFTMAX", [self.x], [y], beta=beta)
        self.x, self.scale, self.zp = y, 1.0 / 256, -128
        return y


def start(rng, shape, scale=0.05, zero_point=-3, description="tinyhost synthetic model"):
    """A ModelBuilder with one int8 input, and a RandomLayers chain on it."""
    b = ModelBuilder(description=description)
    x = b.tensor("input", shape, "int8", scale, zero_point)
    b.inputs = [x]
    return b, RandomLayers(rng, b, x, scale, zero_point)


def finish(b, layers):
    b.outputs = [layers.x]
    return b.build()


def float_io(b, L):
    """Give the model on ``b`` float32 input and output, as TensorFlow's converter does by default: its int8
    input becomes the output of a QUANTIZE from a new float32 graph input, and a DEQUANTIZE turns the last
    activation (``L.x``) into the float32 graph output. Call after the layers, instead of :func:`finish`."""
    x = b.inputs[0]
    q = b.tensors[x]
    name, q.name = q.name, q.name + "_int8"
    xf = b.tensor(name, q.shape, "float32")
    b.op("QUANTIZE", [xf], [x])
    b.ops.insert(0, b.ops.pop())
    y = b.tensor("output", b.tensors[L.x].shape, "float32")
    b.op("DEQUANTIZE", [L.x], [y])
    b.inputs, b.outputs = [xf], [y]
    return b.build()


def small_classifier(path, input_shape, classes, seed=0, conv_channels=None, pool=2, float32_io=False):
    """Write a small random-weight int8 classifier to ``path`` and return ``path``: [CONV_2D 3x3/2 RELU with
    ``conv_channels``] -> AVERAGE_POOL_2D ``pool``x``pool`` -> RESHAPE -> FULLY_CONNECTED ``classes`` -> SOFTMAX
    (``float32_io``: between a QUANTIZE from a float32 input and a DEQUANTIZE to a float32 output).
    Quick on the VM: for tests and benchmarks where the link or the runtime, not the model, is under test."""
    b, L = start(np.random.default_rng(seed), tuple(input_shape))
    if conv_channels:
        L.conv(conv_channels, k=3, stride=2, padding="SAME", activation="RELU")
    L.pool("AVERAGE_POOL_2D", k=pool, stride=pool, padding="VALID")
    n, h, w, c = L._shape()
    L.reshape((1, h * w * c))
    L.fc(classes)
    L.softmax()
    Path(path).write_bytes(float_io(b, L) if float32_io else finish(b, L))
    return path


def vww_like(seed=0, alpha=0.25, size=96, classes=2):
    """MobileNetV1 (alpha 0.25, 96x96x3) with random int8 weights: the architecture of MLPerf Tiny's VWW model."""
    rng = np.random.default_rng(seed)
    b, L = start(rng, (1, size, size, 3), scale=1.0 / 128, zero_point=-1,
                 description="random-weight MobileNetV1 0.25 96x96 (VWW architecture)")
    ch = lambda n: max(8, int(n * alpha))   # noqa: E731
    L.conv(ch(32), k=3, stride=2)
    for filters, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                            (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)):
        L.conv(0, k=3, stride=stride, depthwise=True)
        L.conv(ch(filters), k=1)
    n, h, w, c = L._shape()
    L.pool("AVERAGE_POOL_2D", k=h, stride=1)
    L.reshape((1, c))
    L.fc(classes)
    L.softmax()
    return finish(b, L)


def streaming_kws_like(seed=0, bands=40, frames=30, channels=128, classes=3):
    """A streaming keyword-spotting model with random int8 weights: a ``frames`` x ``bands`` window of features
    (input 1 x frames x 1 x bands) through four depthwise convolutions over time, kernels (3,1), (5,1), (10,1) and
    (15,1), VALID, each followed by a 1x1 CONV_2D of ``channels`` filters (RELU), then a per-tensor
    FULLY_CONNECTED of ``classes`` units and SOFTMAX. Defaults: 0.84 MMAC in ten small operators, the shape of
    models run every hop of an audio stream, where per-operator overhead counts."""
    rng = np.random.default_rng(seed)
    b, L = start(rng, (1, frames, 1, bands), scale=1.0 / 64, zero_point=-5,
                 description="random-weight streaming KWS (depthwise-separable over time)")
    for k in (3, 5, 10, 15):
        L.conv(0, k=(k, 1), padding="VALID", depthwise=True, activation="RELU")
        L.conv(channels, k=1, activation="RELU")
    L.fc(classes, per_channel=False)
    L.softmax()
    return finish(b, L)
