"""The int32 accumulator past its range: every engine backend wraps around as TFLM's C arithmetic does.

The first convolution of the shipped kws model with two biases set to the ends of the int32 range (channel 0:
-2^31, channel 1: 2^31 - 1), found with the engine's reader, so that any input with a negative (channel 0) or a
positive (channel 1) sum of products takes that channel's accumulator out of the int32 range. TFLM's reference
kernels add in int32 and wrap; a backend that adds in wider integers requantises another number and answers
differently."""

from array import array
from pathlib import Path

import numpy as np
import pytest

oracle = pytest.importorskip("tinyhost.model.oracle")
if not oracle.available():
    pytest.skip("needs the tflite-micro package", allow_module_level=True)

from tinyhost.model import engine_module  # noqa: E402

engine = engine_module()
KWS = Path(__file__).resolve().parents[1] / "models" / "kws" / "kws.tflite"


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory):
    import io
    import struct

    from tinyfw.engine import reader

    data = bytearray(KWS.read_bytes())
    md = reader.read_model(io.BytesIO(bytes(data)), len(data))
    conv = next(op for op in md.ops if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    bias = md.tensors[conv.inputs[2]]
    assert bias.dtype == "int32" and bias.is_const and bias.elements >= 2
    struct.pack_into("<ii", data, bias.data_pos, -(1 << 31), (1 << 31) - 1)
    path = tmp_path_factory.mktemp("ovf") / "kws_bias_overflow.tflite"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("backend", ["ref", "numpy"])
def test_accumulator_overflow_wraps_as_in_tflm(overflowing_model, backend):
    tflm = oracle.TflmOracle(overflowing_model)
    rng = np.random.default_rng(0)
    xs = [np.full(490, -128, np.int8), np.full(490, 127, np.int8), np.zeros(490, np.int8)]
    xs += [rng.integers(-128, 128, 490, dtype=np.int8) for _ in range(3)]
    m = engine.load(str(overflowing_model), backend=backend)
    for i, x in enumerate(xs):
        want = tflm.run(x).reshape(-1)
        m.input_buffer(0)[:] = array("b", x.tobytes())
        m.invoke()
        got = np.frombuffer(bytes(m.output_buffer(0)), np.int8)
        assert got.tolist() == want.tolist(), f"{backend}, input {i}"
