"""Bad models are refused at load with a ModelError that names the problem (host and device), never later."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine_harness import helpers
from tinyhost.model import engine_module, writer

engine = engine_module()
from tinyfw.engine import reader, model_prepare, op_prepare as engine_ops  # noqa: E402


def _conv_model(**overrides):
    rng = np.random.default_rng(0)
    b = writer.ModelBuilder(version=overrides.get("version", 3))
    dtype = overrides.get("dtype", "int8")
    q = None if dtype == "float32" else overrides.get("scale", 0.05)
    x = b.tensor("x", (1, 4, 4, 2), dtype, q, 0)
    if dtype == "float32":
        w = b.const("w", rng.standard_normal((3, 1, 1, 2)).astype(np.float32))
    else:
        w = b.const("w", rng.integers(-5, 5, (3, 1, 1, 2), dtype=np.int8), 0.02)
    y = b.tensor("y", (1, 4, 4, 3), dtype, None if dtype == "float32" else 0.1, 0)
    b.op(overrides.get("op", "CONV_2D"), [x, w], [y], padding="SAME", strideW=1, strideH=1)
    b.inputs, b.outputs = [x], [y]
    return b.build()


def _load(tmp_path, data, **kw):
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    return engine.load(str(path), backend="ref", **kw)


def test_a_valid_model_loads(tmp_path):
    assert _load(tmp_path, _conv_model()).stats()["ops"] == 1


@pytest.mark.parametrize("cut", [0, 3, 8, 16, 100, -200, -1])
def test_truncated_model(tmp_path, cut):
    data = _conv_model()
    with pytest.raises(engine.ModelError, match="model"):
        _load(tmp_path, data[:cut])


def test_wrong_identifier(tmp_path):
    data = bytearray(_conv_model())
    data[4:8] = b"XYZ1"
    with pytest.raises(engine.ModelError, match="file identifier"):
        _load(tmp_path, bytes(data))


def test_wrong_schema_version(tmp_path):
    with pytest.raises(engine.ModelError, match="schema version 2"):
        _load(tmp_path, _conv_model(version=2))


def test_float_model_is_refused_naming_the_tensor(tmp_path):
    with pytest.raises(engine.ModelError, match=r"operator 0 \(CONV_2D\) input .*'x'.* float32"):
        _load(tmp_path, _conv_model(dtype="float32"))


def test_zero_scale(tmp_path):
    with pytest.raises(engine.ModelError, match="'x'.*scale 0 is zero"):
        _load(tmp_path, _conv_model(scale=0.0))


def test_unsupported_operator_is_named(tmp_path):
    with pytest.raises(engine.ModelError, match="operator 0 \\(MUL\\)"):
        _load(tmp_path, _conv_model(op="MUL"))


def test_arena_too_small(tmp_path):
    with pytest.raises(engine.ModelError, match="arena too small: the model needs 80 bytes"):
        _load(tmp_path, _conv_model(), arena_bytes=64)


def test_unknown_backend_is_an_error_not_a_fallback(tmp_path):
    (tmp_path / "m.tflite").write_bytes(_conv_model())
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        engine.load(str(tmp_path / "m.tflite"), backend="cuda")


@pytest.mark.parametrize("depth, ok", [(4095, True), (4096, False)])
def test_softmax_deeper_than_int32_sums_allow_is_refused_at_load(tmp_path, depth, ok):
    b, L = writer.start(np.random.default_rng(1), (1, depth))
    L.softmax()
    data = writer.finish(b, L)
    if ok:
        assert _load(tmp_path, data).outputs[0].shape == (1, depth)
    else:
        with pytest.raises(engine.ModelError, match="SOFTMAX.*4096 values a row; at most 4095"):
            _load(tmp_path, data)


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(OSError):
        engine.load(str(tmp_path / "absent.tflite"))


@pytest.mark.sim
def test_device_refuses_a_truncated_model(tmp_path):
    path = tmp_path / "cut.tflite"
    path.write_bytes(helpers.mlperf_path("kws_ref_model").read_bytes()[:30000])
    import subprocess
    proc = subprocess.run([helpers.micropython(), str(helpers.RUN_MODEL), str(helpers.DEVICE_DIR), str(path),
                           "ref", str(path), str(tmp_path / "o.bin")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "LOAD_ERROR ModelError corrupt or truncated model" in proc.stdout


def test_the_heap_running_out_while_a_name_is_read_is_not_a_corrupt_model(monkeypatch):
    """On a board the heap can run out while the reader decodes a name: that is a MemoryError (the load says the
    model does not fit), not "not valid UTF-8" (it made a good model look corrupt once a failed load had left the
    heap in pieces). A name that is not UTF-8 is still a ModelError."""
    import io

    def no_memory(*args):
        raise MemoryError("memory allocation failed, allocating 97 bytes")

    data = _conv_model()
    monkeypatch.setattr(reader, "str", no_memory, raising=False)
    with pytest.raises(MemoryError):
        reader.read_model(io.BytesIO(data), len(data))
    monkeypatch.undo()
    bad = data.replace(b"tinyhost synthetic", b"tiny\xffost synthetic")      # the model's description
    assert bad != data
    with pytest.raises(engine.ModelError, match="model description is not valid UTF-8"):
        reader.read_model(io.BytesIO(bad), len(bad))


def _parse(data):
    import io
    md = reader.read_model(io.BytesIO(data), len(data))
    specs = engine_ops.prepare(md)
    model_prepare.arena_layout_of(md, specs)


_KWS = None


def _kws():
    global _KWS
    if _KWS is None:
        _KWS = helpers.mlperf_path("kws_ref_model").read_bytes()
    return _KWS


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_reader_only_raises_model_error(data):
    model = bytearray(_kws())
    mode = data.draw(st.sampled_from(["truncate", "flip", "flip_header"]))
    if mode == "truncate":
        model = model[:data.draw(st.integers(0, len(model) - 1))]
    else:
        hi = 4096 if mode == "flip_header" else len(model) - 1
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, hi))
            model[pos] ^= 1 << data.draw(st.integers(0, 7))
    try:
        _parse(bytes(model))
    except engine.ModelError:
        pass
