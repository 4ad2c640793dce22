"""Bit-exactness of the on-device engine with TFLM (the tflite-micro interpreter) on the same host.

Every model (MLPerf Tiny KWS, IC, AD from ../shared and synthetic models covering strides, dilation, padding,
depth multipliers, fused activations, per-tensor/per-channel quantisation, pooling, ADD, SOFTMAX):
- 100 inputs through the engine with the host's numpy kernels (same reader, quantisation and planner as the
  device), compared element by element with TFLM;
- a few inputs through the reference kernels under CPython (the same file the device imports);
- a few inputs through the real MicroPython VM for every device backend, with the heap locked during invoke().
The 100-input sweep through the reference kernels themselves is @slow (runs with TINYHOST_SLOW=1).
"""

import os

import numpy as np
import pytest

from engine_harness import helpers, synthetic

pytestmark = pytest.mark.oracle

oracle = pytest.importorskip("tinyhost.model.oracle")
if not oracle.available():
    pytest.skip("tflite-micro is not installed", allow_module_level=True)

from tinyhost.model import engine_module  # noqa: E402

engine = engine_module()

MODELS = list(helpers.MLPERF_MODELS) + list(synthetic.SYNTHETIC)
# inputs through the CPython reference kernels in the default run (the slow test does 100 for all)
REF_INPUTS = {"kws_ref_model": 3, "pretrainedResnet_quant": 2, "ad01_int8": 20, "streaming_kws": 3}
# inputs through the MicroPython VM per backend in the default run
VM_INPUTS = {"kws_ref_model": 2, "pretrainedResnet_quant": 1, "ad01_int8": 6}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return helpers.write_synthetic(tmp_path_factory.mktemp("synthetic"))


_expected = helpers.tflm_outputs
_assert_same = helpers.assert_same_as_tflm


@pytest.mark.parametrize("name", MODELS)
def test_engine_matches_tflm_on_100_inputs(name, model_files):
    path = helpers.model_path(name, model_files)
    m = engine.load(str(path), backend="numpy")
    xs = helpers.inputs_for(m.inputs[0].shape, 100, seed=7)
    want = _expected(path, xs)
    got = np.stack([helpers.engine_output(m, x) for x in xs])
    assert len(np.unique(want, axis=0)) > 1, "degenerate test: TFLM gives one output for every input"
    _assert_same(got, want, f"{name} (numpy kernels)")


@pytest.mark.parametrize("name", MODELS)
def test_reference_kernels_match_tflm(name, model_files):
    path = helpers.model_path(name, model_files)
    m = engine.load(str(path), backend="ref")
    xs = helpers.inputs_for(m.inputs[0].shape, REF_INPUTS.get(name, 10), seed=11)
    got = np.stack([helpers.engine_output(m, x) for x in xs])
    _assert_same(got, _expected(path, xs), f"{name} (ref kernels, CPython)")


@pytest.mark.sim
@pytest.mark.parametrize("backend", helpers.VM_BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_device_vm_matches_tflm_with_heap_locked(name, backend, model_files, tmp_path):
    path = helpers.model_path(name, model_files)
    m = engine.load(str(path), backend="numpy")
    xs = helpers.inputs_for(m.inputs[0].shape, VM_INPUTS.get(name, 4), seed=13)
    out, stats = helpers.run_on_vm(path, backend, xs, tmp_path)
    got = np.frombuffer(out, dtype=np.int8).reshape(len(xs), -1)
    _assert_same(got, _expected(path, xs), f"{name} ({backend} kernels, MicroPython VM)")
    assert stats["backend"] == backend
    assert stats["invoke_allocation_free"], "invoke() allocated with micropython.heap_lock() held"
    assert stats["arena_bytes"] == m.arena_bytes


@pytest.mark.sim
@pytest.mark.skipif("viper" not in helpers.VM_BACKENDS, reason="this MicroPython has no viper emitter")
@pytest.mark.parametrize("name", MODELS)
def test_fast_backend_in_the_vm_matches_tflm_on_100_inputs(name, model_files, tmp_path):
    """The device's fast kernels (viper) in the real MicroPython VM, 100 inputs per model in one VM process."""
    path = helpers.model_path(name, model_files)
    m = engine.load(str(path), backend="numpy")
    xs = helpers.inputs_for(m.inputs[0].shape, 100, seed=19)
    out, stats = helpers.run_on_vm(path, "viper", xs, tmp_path)
    got = np.frombuffer(out, dtype=np.int8).reshape(len(xs), -1)
    _assert_same(got, _expected(path, xs), f"{name} (viper kernels, MicroPython VM, 100 inputs)")
    assert stats["backend"] == "viper" and stats["invoke_allocation_free"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TINYHOST_SLOW") != "1", reason="about 5 minutes: set TINYHOST_SLOW=1")
@pytest.mark.parametrize("name", MODELS)
def test_reference_kernels_match_tflm_on_100_inputs(name, model_files):
    path = helpers.model_path(name, model_files)
    m = engine.load(str(path), backend="ref")
    xs = helpers.inputs_for(m.inputs[0].shape, 100, seed=17)
    got = np.stack([helpers.engine_output(m, x) for x in xs])
    _assert_same(got, _expected(path, xs), f"{name} (ref kernels, 100 inputs)")


def test_weights_streamed_from_flash_give_the_same_outputs(model_files):
    path = helpers.mlperf_path("kws_ref_model")
    in_ram = engine.load(str(path), backend="ref", weights="ram")
    streamed = engine.load(str(path), backend="ref", weights="flash", scratch_bytes=1000)
    assert streamed.stats()["weights_mode"] == "flash"
    assert streamed.stats()["weights_ram_bytes"] < in_ram.stats()["weights_ram_bytes"]
    x = helpers.inputs_for(in_ram.inputs[0].shape, 7)[6]
    np.testing.assert_array_equal(helpers.engine_output(streamed, x), helpers.engine_output(in_ram, x))
    streamed.close()
