"""The models the project ships (models/kws, models/vww) against the tflite-micro interpreter, element by element.

VWW's plan runs eight convolutions in row bands over their dying input (docs/engine.md, "Row bands"): these tests
are what shows that writing over the input gives TFLM's bytes, on the host's numpy kernels and on the device
kernels in the MicroPython VM (heap locked during invoke)."""
import numpy as np
import pytest

from engine_harness import helpers

pytestmark = pytest.mark.oracle

oracle = pytest.importorskip("tinyhost.model.oracle")
if not oracle.available():
    pytest.skip("tflite-micro is not installed", allow_module_level=True)

from tinyhost.model import engine_module  # noqa: E402

engine = engine_module()

SHIPPED = {name: helpers.REPO / "models" / name / f"{name}.tflite" for name in ("kws", "vww")}
VM_INPUTS = {"viper": 3, "ref": 1}


_expected = helpers.tflm_outputs
_assert_same = helpers.assert_same_as_tflm


def _testset_inputs(name, shape, n):
    """Up to n real samples of the model's test set as int8 inputs (the MLPerf Tiny layout in models/NAME/testset)."""
    folder = helpers.REPO / "models" / name / "testset"
    files = sorted(p for p in folder.glob("*.bin"))[:n] if folder.is_dir() else []
    xs = []
    for p in files:
        raw = np.fromfile(p, dtype=np.uint8 if name == "vww" else np.int8)
        if raw.size != int(np.prod(shape)):
            continue
        xs.append((raw.astype(np.int16) - 128).astype(np.int8) if name == "vww" else raw)
    return [x.reshape(shape) for x in xs]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_matches_tflm_on_100_inputs(name):
    path = SHIPPED[name]
    m = engine.load(str(path), backend="numpy")
    real = _testset_inputs(name, m.inputs[0].shape, 20)
    xs = real + list(helpers.inputs_for(m.inputs[0].shape, 100 - len(real), seed=23))
    want = _expected(path, xs)
    got = np.stack([helpers.engine_output(m, x) for x in xs])
    assert len(np.unique(want, axis=0)) > 1, "degenerate test: TFLM gives one output for every input"
    _assert_same(got, want, f"{name} (numpy kernels, {len(real)} test-set samples + random)")
    if name == "vww":
        assert m.stats()["row_band_ops"] > 0


@pytest.mark.sim
@pytest.mark.parametrize("backend", helpers.VM_BACKENDS)
def test_vww_with_row_bands_in_the_vm_matches_tflm(backend, tmp_path):
    path = SHIPPED["vww"]
    m = engine.load(str(path), backend="numpy")
    xs = helpers.inputs_for(m.inputs[0].shape, VM_INPUTS[backend], seed=29)
    out, stats = helpers.run_on_vm(path, backend, xs, tmp_path)
    got = np.frombuffer(out, dtype=np.int8).reshape(len(xs), -1)
    _assert_same(got, _expected(path, xs), f"vww ({backend} kernels, MicroPython VM)")
    assert stats["row_band_ops"] > 0
    assert stats["invoke_allocation_free"], "invoke() allocated with micropython.heap_lock() held"
    assert stats["planned_arena_bytes"] == m.stats()["planned_arena_bytes"] <= 40000


@pytest.fixture(scope="module")
def mpy_device(tmp_path_factory):
    return helpers.mpy_tree(tmp_path_factory.mktemp("mpy") / "device")


@pytest.mark.sim
@pytest.mark.skipif("viper" not in helpers.VM_BACKENDS, reason="this MicroPython has no viper emitter")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_as_on_the_esp32_matches_tflm_on_100_inputs(name, tmp_path, mpy_device):
    """What the board runs: viper kernels in the VM with the esp32 profile's heap (112,640 B), the firmware as
    `tinyhost flash` sends it (.mpy), the model with its load plan; VWW then reads weights, per-channel data and
    the convolutions' parameters from flash at invoke."""
    path = helpers.with_plan(SHIPPED[name], tmp_path)
    m = engine.load(str(path), backend="numpy")
    real = _testset_inputs(name, m.inputs[0].shape, 20)
    xs = np.stack(real + list(helpers.inputs_for(m.inputs[0].shape, 100 - len(real), seed=31)))
    out, stats = helpers.run_on_vm(path, "viper", xs, tmp_path, heap_bytes=112640, device_dir=mpy_device)
    got = np.frombuffer(out, dtype=np.int8).reshape(len(xs), -1)
    _assert_same(got, _expected(path, xs), f"{name} (viper kernels, esp32 heap, {len(real)} test-set samples + "
                                           "random)")
    assert stats["plan"] == "file" and stats["invoke_allocation_free"]
    if name == "vww":
        assert stats["weights_mode"] == "flash" and stats["channel_data"] == "flash, into the arena"
