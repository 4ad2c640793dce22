"""Read what a .tflite file contains (operators, I/O tensors, parameter count) without TensorFlow.

Uses the flatbuffer schema module that ships with the ``tflite-micro`` package.
"""

import contextlib
import os

import numpy as np


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (TFLM logs failed allocations from C++) for the duration."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema_fb
    return schema_fb


def _model(blob):
    schema_fb = _schema()
    return schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(bytearray(blob), 0))


def _op_names():
    ops = _schema().BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


def operators(blob):
    """Operator names in execution order, e.g. ``["CONV_2D", "DEPTHWISE_CONV_2D", ...]``."""
    model = _model(blob)
    names = _op_names()
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return [names.get(codes[op.opcodeIndex], f"op{codes[op.opcodeIndex]}")
            for op in model.subgraphs[0].operators]


_TYPES = {0: "float32", 2: "int32", 3: "uint8", 7: "int16", 9: "int8"}


def _tensor_info(model, t):
    q = t.quantization
    scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
    zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
    name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
    return {"name": name, "shape": tuple(int(d) for d in t.shape), "dtype": _TYPES.get(t.type, str(t.type)),
            "scale": scale, "zero_point": zp}


def io_tensors(blob):
    """{"inputs": [...], "outputs": [...]} with name, shape, dtype, scale, zero_point of each."""
    model = _model(blob)
    g = model.subgraphs[0]
    return {"inputs": [_tensor_info(model, g.tensors[i]) for i in g.inputs],
            "outputs": [_tensor_info(model, g.tensors[i]) for i in g.outputs]}


def parameter_count(blob):
    """Number of weight and bias values (elements of constant tensors)."""
    model = _model(blob)
    g = model.subgraphs[0]
    total = 0
    for t in g.tensors:
        buf = model.buffers[t.buffer]
        if buf is not None and buf.data is not None and len(buf.data):
            total += int(np.prod(t.shape)) if t.shape is not None and len(t.shape) else 1
    return total


def macs(blob):
    """Multiply-accumulates of one inference, counted for CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED."""
    model = _model(blob)
    g = model.subgraphs[0]
    names = _op_names()
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    total = 0
    for op in g.operators:
        name = names.get(codes[op.opcodeIndex])
        out = g.tensors[op.outputs[0]].shape
        w = g.tensors[op.inputs[1]].shape if len(op.inputs) > 1 else None
        if name == "CONV_2D":            # weights (out_ch, kh, kw, in_ch); output (1, h, w, out_ch)
            total += int(np.prod(out)) * int(w[1] * w[2] * w[3])
        elif name == "DEPTHWISE_CONV_2D":  # weights (1, kh, kw, ch)
            total += int(np.prod(out)) * int(w[1] * w[2])
        elif name == "FULLY_CONNECTED":  # weights (out, in)
            total += int(np.prod(out)) * int(w[1])
    return total


def tflm_min_arena_bytes(blob, step=256, high=1 << 22):
    """Smallest tensor arena (bytes, rounded up to ``step``) with which TFLM's interpreter runs the model."""
    from tflite_micro.python.tflite_micro import runtime

    def fits(size):
        try:
            with quiet_stderr():
                interp = runtime.Interpreter.from_bytes(bytes(blob), arena_size=size)
        except (RuntimeError, ValueError):
            return False
        return interp is not None

    if not fits(high):
        raise RuntimeError(f"model does not run in TFLM even with a {high}-byte arena")
    low = 0
    while high - low > step:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid
    return high
