"""Models with float32 input and output (TensorFlow's converter's default: QUANTIZE -> int8 operators ->
DEQUANTIZE) run bit-exact with TFLM: the float32 bits of every output equal the tflite-micro interpreter's.

QUANTIZE's rounding is checked where it is easiest to get wrong: values exactly half a step between two codes
(TFLM rounds half away from zero), the float32 neighbours of those, and 0.49999997 (which a float32 port turns into
1.0 when it adds 0.5 before truncating). The kernels also run on a model of a port whose floats are float32 (an
ESP32): numpy float32 scalars stand in for MicroPython's single-precision floats.
"""

from array import array

import numpy as np
import pytest

from engine_harness import helpers

pytestmark = pytest.mark.oracle

oracle = pytest.importorskip("tinyhost.model.oracle")
if not oracle.available():
    pytest.skip("tflite-micro is not installed", allow_module_level=True)

from tinyhost.model import engine_module, writer  # noqa: E402

engine = engine_module()
from tinyfw.engine import kernels_ref  # noqa: E402  (imported by engine_module's path)

# (scale, zero point) of the int8 tensor between QUANTIZE and DEQUANTIZE
QUANT_PARAMS = [(0.5, 3), (0.0123, -7), (1.0, 0), (1.0 / 3, 127), (2.5e-4, -128)]


def _round_trip_model(scale, zero_point, n):
    """float32 -> QUANTIZE -> int8 -> DEQUANTIZE -> float32."""
    b = writer.ModelBuilder(description="quantize round trip")
    x = b.tensor("x", (1, n), "float32")
    q = b.tensor("q", (1, n), "int8", scale, zero_point)
    y = b.tensor("y", (1, n), "float32")
    b.op("QUANTIZE", [x], [q])
    b.op("DEQUANTIZE", [q], [y])
    b.inputs, b.outputs = [x], [y]
    return b.build()


def _hard_inputs(scale, zero_point, n, seed=0):
    """n float32 values: exact half steps for every code and beyond the range, their float32 neighbours,
    0.49999997 steps, signed zeros, then random values over 1.5 times the representable range."""
    s = np.float32(scale)
    k = np.arange(-140 - zero_point, 141 - zero_point, dtype=np.float64)
    ties = ((k + 0.5) * np.float64(s)).astype(np.float32)
    special = np.array([0.0, -0.0, 0.49999997 * s, -0.49999997 * s, 0.5 * s, -0.5 * s, 1.5 * s, -1.5 * s],
                       dtype=np.float32)
    values = np.concatenate([special, ties, np.nextafter(ties, np.float32(np.inf)),
                             np.nextafter(ties, np.float32(-np.inf))])
    lo, hi = (-128 - zero_point) * 1.5 * s, (127 - zero_point) * 1.5 * s
    rng = np.random.default_rng(seed)
    values = np.concatenate([values, rng.uniform(lo, hi, n).astype(np.float32)])[:n]
    return values.reshape(1, n)


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _engine_run(m, xs):
    rows = []
    for x in xs:
        m.input_buffer(0)[:] = np.ascontiguousarray(x, dtype=np.float32).tobytes()
        m.invoke()
        rows.append(np.frombuffer(bytes(m.output_buffer(0)), dtype=np.float32).copy())
    return np.stack(rows)


def _assert_same_bits(got, want, what):
    bad = _bits(got).reshape(-1) != _bits(want).reshape(-1)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} float32 outputs differ from TFLM, e.g. "
                           f"{got.reshape(-1)[bad][:3]} for TFLM's {want.reshape(-1)[bad][:3]}")


@pytest.mark.parametrize("scale,zero_point", QUANT_PARAMS)
def test_quantize_and_dequantize_match_tflm_bit_for_bit(scale, zero_point, tmp_path):
    n = 1024
    path = tmp_path / "round_trip.tflite"
    path.write_bytes(_round_trip_model(scale, zero_point, n))
    xs = _hard_inputs(scale, zero_point, n)[None]
    want = helpers.tflm_outputs(path, xs)
    assert len(np.unique(want)) > 200, "degenerate test: too few distinct codes"
    for backend in ("ref", "numpy"):
        _assert_same_bits(_engine_run(engine.load(str(path), backend=backend), xs), want, f"{backend} kernels")


@pytest.mark.parametrize("scale,zero_point", QUANT_PARAMS)
def test_float32_port_gives_the_same_bits(scale, zero_point):
    """The reference float kernels with float32 arithmetic throughout (an ESP32's MicroPython) equal TFLM."""
    n = 1024
    xs = _hard_inputs(scale, zero_point, n, seed=1)
    want = oracle.TflmOracle(_round_trip_model(scale, zero_point, n)).run(xs).reshape(-1)
    s32 = np.float32(scale)
    q = array("b", bytes(n))
    kernels_ref.quantize_float(q, xs.tobytes(), n, s32, zero_point, np.zeros(1, np.float32))
    out = bytearray(4 * n)
    kernels_ref.dequantize(out, q, n, s32, zero_point)
    _assert_same_bits(np.frombuffer(out, dtype=np.float32), want, "float32 arithmetic")


def test_quantize_rounds_just_below_one_half_down_in_float32():
    """0.49999997 + 0.5 is 1.0 in float32: rounding must not add 0.5."""
    q = array("b", bytes(2))
    x = np.array([0.49999997, -0.49999997], dtype=np.float32)
    kernels_ref.quantize_float(q, x.tobytes(), 2, np.float32(1.0), 0, np.zeros(1, np.float32))
    assert list(q) == [0, 0]


def _classifier(tmp_path):
    return writer.small_classifier(tmp_path / "float_io.tflite", (1, 12, 10, 2), 6, seed=4, conv_channels=6,
                                   float32_io=True)


def _float_inputs(m, n, seed):
    rng = np.random.default_rng(seed)
    shape = m.inputs[0].shape
    return np.stack([np.zeros(shape, np.float32)]
                    + [(rng.standard_normal(shape) * 4).astype(np.float32) for _ in range(n - 1)])


def test_float_io_classifier_matches_tflm(tmp_path):
    path = _classifier(tmp_path)
    m = engine.load(str(path), backend="ref")
    assert [t.dtype for t in m.inputs + m.outputs] == ["float32", "float32"]
    assert m.inputs[0].nbytes == 4 * 12 * 10 * 2 and len(m.input_buffer(0)) == m.inputs[0].nbytes
    xs = _float_inputs(m, 12, seed=5)
    want = helpers.tflm_outputs(path, xs)
    assert len(np.unique(want, axis=0)) > 1, "degenerate test: TFLM gives one output for every input"
    _assert_same_bits(_engine_run(m, xs), want, "ref kernels, CPython")


@pytest.mark.sim
@pytest.mark.parametrize("backend", helpers.VM_BACKENDS)
def test_float_io_on_the_micropython_vm(backend, tmp_path):
    path = _classifier(tmp_path)
    m = engine.load(str(path), backend="ref")
    xs = _float_inputs(m, 4, seed=6)
    out, stats = helpers.run_on_vm(path, backend, xs, tmp_path)
    got = np.frombuffer(out, dtype=np.float32).reshape(len(xs), -1)
    _assert_same_bits(got, helpers.tflm_outputs(path, xs), f"{backend} kernels, MicroPython VM")
    assert stats["backend"] == backend


@pytest.mark.sim
def test_quantize_round_trip_on_the_micropython_vm(tmp_path):
    scale, zero_point, n = 0.0123, -7, 1024
    path = tmp_path / "round_trip.tflite"
    path.write_bytes(_round_trip_model(scale, zero_point, n))
    xs = _hard_inputs(scale, zero_point, n, seed=2)[None]
    out, _ = helpers.run_on_vm(path, "ref", xs, tmp_path)
    _assert_same_bits(np.frombuffer(out, dtype=np.float32), helpers.tflm_outputs(path, xs), "MicroPython VM")
