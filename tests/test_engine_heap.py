"""The engine's memory diet on the MicroPython VM: load-time code dropped after load, and the esp32 heap target
(heapsize=112640, docs/engine.md "Memory"): with the runtime imported and the firmware precompiled as `tinyhost
flash` sends it, a model with its load plan beside it loads and runs with the heap locked during invoke."""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from engine_harness import helpers

HEAP_PROFILE = helpers.RUN_MODEL.parent / "heap_profile.py"
RUNTIME_HEAP = helpers.RUN_MODEL.parent / "runtime_heap.py"
ESP32_HEAP_BYTES = 112640
TARGET_MODELS = list(helpers.MLPERF_MODELS)


@pytest.mark.sim
def test_load_time_modules_are_dropped_after_load(tmp_path):
    model = tmp_path / "kws.tflite"
    shutil.copy(helpers.mlperf_path("kws_ref_model"), model)
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom tinyfw import engine\n"
        "m = engine.load(%r, weights='flash')\n"
        "print('LEFT', sorted(k for k in sys.modules if k.split('.')[-1] in "
        "('model_prepare', 'reader', 'op_prepare', 'arena_layout', 'quant', 'plan_write', 'plan_check', "
        "'arena_alloc', 'plan_read')))\n"
        % (str(helpers.DEVICE_DIR), str(model)))
    out = subprocess.run([helpers.micropython(), str(script)], capture_output=True, text=True, timeout=60)
    assert "LEFT []" in out.stdout, out.stdout + out.stderr


@pytest.fixture(scope="module")
def mpy_device(tmp_path_factory):
    return helpers.mpy_tree(tmp_path_factory.mktemp("mpy") / "device")


def _profile(model, device_dir, heap_bytes=ESP32_HEAP_BYTES):
    cmd = [helpers.micropython(), "-X", f"heapsize={heap_bytes}", str(HEAP_PROFILE), str(model), str(device_dir),
           "--runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), proc.stdout
    return None, proc.stdout + proc.stderr


@pytest.mark.sim
@pytest.mark.parametrize("name", TARGET_MODELS)
def test_model_with_plan_loads_and_runs_with_runtime_in_esp32_heap(name, tmp_path, mpy_device):
    from tinyhost.model import engine_module

    model = helpers.with_plan(helpers.mlperf_path(name), tmp_path)
    result, text = _profile(model, mpy_device)
    assert result is not None and result["ok"], text[-1500:]
    assert result["stats"]["plan"] == "file"
    assert result["invoke_allocation_free"]
    m = engine_module().load(str(model), backend="numpy")
    x = np.array([(i * 7) % 256 - 128 for i in range(m.inputs[0].nbytes)], dtype=np.int8)
    assert bytes(result["output"]) == helpers.engine_output(m, x).tobytes()


# AD's 270 KB of weights are streamed on the esp32 heap. With the runtime imported ~90 KB are free at load, so the
# per-channel data stays in RAM and the work area grows (arena_alloc.STREAM_RESERVE) while arena_alloc.KEEP_FREE stays
# free: the first FULLY_CONNECTED (640 -> 128) reads at least 25 output channels x 640 B per block, not 8 (82 kernel
# calls and reads per inference become 14).
@pytest.mark.sim
def test_streamed_weights_take_large_blocks_when_the_heap_has_room(tmp_path, mpy_device):
    from tinyhost.model import engine_module

    eng = engine_module()
    from tinyfw.engine import arena_alloc
    model = helpers.with_plan(helpers.mlperf_path("ad01_int8"), tmp_path)
    result, text = _profile(model, mpy_device)
    assert result is not None and result["ok"], text[-1500:]
    assert result["stats"]["weights_mode"] == "flash" and result["invoke_allocation_free"]
    assert 25 * 640 <= result["stats"]["scratch_bytes"] <= eng.STREAM_SCRATCH_BYTES, result["stats"]
    assert result["stats"]["channel_data"] == "ram", result["stats"]
    assert result["free_after"] >= arena_alloc.KEEP_FREE, result


# The shipped VWW model (MobileNetV1 0.25, 96x96x3, 312,752 bytes: more than the heap) with its weights streamed
# from the file and row bands: arena 39,168 B of activations (+ work-area floors and a 4 KB reserve), per-channel
# data streamed into the arena's end; the engine alone peaks at ~87 KB of the 64-bit VM's 111 KB (docs/engine.md,
# Memory). With the running runtime beside it: test_shipped_model_loads_through_the_running_runtime below.
@pytest.mark.sim
def test_vww_runs_with_weights_streamed_in_esp32_heap(tmp_path, mpy_device):
    from tinyhost.model import engine_module

    model = helpers.with_plan(helpers.REPO / "models" / "vww" / "vww.tflite", tmp_path)
    proc = subprocess.run([helpers.micropython(), "-X", f"heapsize={ESP32_HEAP_BYTES}", str(HEAP_PROFILE),
                           str(model), str(mpy_device)], capture_output=True, text=True, timeout=120)
    result = next((json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
                   if line.startswith("RESULT ")), None)
    assert result is not None and result["ok"], proc.stdout[-1500:] + proc.stderr[-500:]
    assert result["stats"]["weights_mode"] == "flash" and result["invoke_allocation_free"]
    assert result["stats"]["channel_data"] == "flash, into the arena" and result["stats"]["row_band_ops"] > 0
    m = engine_module().load(str(model), backend="numpy")
    x = np.array([(i * 7) % 256 - 128 for i in range(m.inputs[0].nbytes)], dtype=np.int8)
    assert bytes(result["output"]) == helpers.engine_output(m, x).tobytes()


# The shipped models through the RUNNING runtime (tests/engine_harness/runtime_heap.py: HELLO, INFO, LIST, HASH,
# then LOAD, SET_INPUT in frames, INVOKE with the heap locked, GET_OUTPUT, UNLOAD, LOAD again, all through the
# runtime's own dispatcher) in the virtual esp32's heap, the firmware precompiled as `tinyhost flash` sends it.
# This is what `tinyhost bench --board sim --model vww` needs; for VWW the convolutions' parameters and
# per-channel data are read from the plan file at invoke, not kept in RAM (docs/engine.md, Memory).
@pytest.mark.sim
@pytest.mark.parametrize("name", ["kws", "vww"])
def test_shipped_model_loads_through_the_running_runtime_in_esp32_heap(name, tmp_path, mpy_device):
    from tinyhost.model import engine_module

    # Paths as short as a board's (/models/kws.tflite, /tinyfw/...): MicroPython keeps every module's path and the
    # model's name for good, so a long temporary folder (pytest's, one per worker) would take heap a board keeps.
    with tempfile.TemporaryDirectory(prefix="th", dir="/tmp") as short:
        shutil.copytree(mpy_device, Path(short) / "d")
        model = helpers.with_plan(helpers.REPO / "models" / name / f"{name}.tflite", Path(short))
        proc = subprocess.run([helpers.micropython(), "-X", f"heapsize={ESP32_HEAP_BYTES}", str(RUNTIME_HEAP),
                               model.name, "d"], cwd=short, capture_output=True, text=True, timeout=120)
        m = engine_module().load(str(model), backend="numpy")
    result = next((json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
                   if line.startswith("RESULT ")), None)
    assert result is not None and result["ok"], proc.stdout[-2000:] + proc.stderr[-500:]
    assert result["invoke_allocation_free"]
    used = {name: u for name, u, _free in result["stages"]}
    # UNLOAD gives the arena and the steps back: the second LOAD ends where the first did (no leak, room for it).
    # What it may add: the names MicroPython keeps for good (micropython.qstr_info() counts them) of the modules
    # first imported by the first LOAD and SET_INPUT, and the harness's records (~100 B a stage).
    assert used["LOAD again"] <= used["LOAD"] + 2048, result["stages"]
    x = np.frombuffer(bytes((i * 7) % 256 for i in range(m.inputs[0].nbytes)), dtype=np.int8)
    assert bytes(result["output"]) == helpers.engine_output(m, x).tobytes()


@pytest.mark.sim
def test_load_retries_lean_when_the_build_runs_out_of_heap(tmp_path):
    """The arena decision only estimates what the step build needs beside the arena. When the build runs out
    (simulated: a MemoryError at its last stage, the first time), the load is retried once with the lean
    choices (weights streamed, no work reserve) and the model still gives TFLM's outputs."""
    model = helpers.with_plan(helpers.mlperf_path("ad01_int8"), tmp_path)
    xs = helpers.inputs_for((1, 640), 5, seed=4)
    (tmp_path / "x.bin").write_bytes(np.ascontiguousarray(xs, dtype=np.int8).tobytes())
    script = tmp_path / "retry.py"
    script.write_text(
        "import sys, json\nsys.path.insert(0, %r)\nfrom tinyfw import engine\n"
        "seen = []\n"
        "def trace(name):\n"
        "    seen.append(name)\n"
        "    if name == 'steps built' and seen.count(name) == 1:\n"
        "        raise MemoryError('simulated: the build ran out of heap')\n"
        "engine.trace = trace\n"
        "m = engine.load(%r)\n"
        "data = open(%r, 'rb').read()\n"
        "outs = []\n"
        "for i in range(5):\n"
        "    m.input_buffer(0)[:] = data[640 * i:640 * (i + 1)]\n"
        "    m.invoke()\n"
        "    outs.append(list(bytes(m.output_buffer(0))))\n"
        "print('RESULT ' + json.dumps({'seen': seen, 'stats': m.stats(), 'outs': outs}))\n"
        % (str(helpers.DEVICE_DIR), str(model), str(tmp_path / "x.bin")))
    proc = subprocess.run([helpers.micropython(), str(script)], capture_output=True, text=True, timeout=120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, proc.stdout + proc.stderr
    res = json.loads(line[len("RESULT "):])
    assert res["seen"].count("build out of memory: lean retry") == 1
    assert res["stats"]["weights_mode"] == "flash"         # 4 MiB heap: RAM at first, streamed in the retry
    got = np.array(res["outs"], dtype=np.uint8).astype(np.int8)
    helpers.assert_same_as_tflm(got, helpers.tflm_outputs(model, xs), "ad01 after a lean retry")


# A LOAD that fails through the running runtime on the virtual esp32's heap: the runtime answers with what is
# wrong with the model, not "does not fit in RAM", and the next LOAD of a good model finds its heap as before.
# Models without a plan beside them take the engine's full path, which reads and checks them with the reader
# alone before the rest of the loader (which does not fit beside the runtime on this heap) is imported.
_BAD_MODELS = {                    # name -> (bytes from the shipped kws model, what the error says)
    "cut.tflite": (lambda kws: kws[:30000], "corrupt or truncated model"),
    "corrupt.tflite": (lambda kws: kws[:40906] + b"\x40" + kws[40907:], "refers to buffer 4194315"),
    "empty.tflite": (lambda kws: b"", "not a .tflite model: the file has only 0 bytes"),
    "random.tflite": (lambda kws: np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes(),
                      "not a .tflite model: file identifier is"),
    "float32.tflite": (lambda kws: (helpers.REPO / "models" / "kws" / "variants" / "kws_float32.tflite").read_bytes(),
                       r"operator 0 \(CONV_2D\) input tensor 0 .* is float32, expected int8"),
}


@pytest.mark.sim
def test_a_failed_load_names_the_fault_and_leaves_the_heap_to_the_next(tmp_path, mpy_device):
    import re

    from tinyhost.model import writer

    good = helpers.with_plan(helpers.REPO / "models" / "kws" / "kws.tflite", tmp_path)
    kws = good.read_bytes()
    for name, (make, _) in _BAD_MODELS.items():
        (tmp_path / name).write_bytes(make(kws))
    writer.small_classifier(tmp_path / "noplan.tflite", (1, 4, 4, 1), 2)      # valid, no plan beside it
    names = list(_BAD_MODELS) + ["noplan.tflite"]
    script = helpers.RUN_MODEL.parent / "load_after_failure.py"
    proc = subprocess.run([helpers.micropython(), "-X", f"heapsize={ESP32_HEAP_BYTES}", str(script), str(mpy_device),
                           str(good)] + [str(tmp_path / n) for n in names],
                          capture_output=True, text=True, timeout=180)
    results = next((json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
                    if line.startswith("RESULT ")), None)
    assert results is not None, proc.stdout[-2000:] + proc.stderr[-1000:]
    by_name = {r["model"].rsplit("/", 1)[-1]: r for r in results}
    for name, (_, reason) in _BAD_MODELS.items():
        r = by_name[name]
        assert r["error"] and re.search(reason, r["error"]), (name, r["error"])
        assert "does not fit" not in r["error"], (name, r["error"])
        assert r["good_error"] is None, (name, r["good_error"])
    # a valid model without a plan: the reader finds nothing wrong, the rest of the loader needs more heap than
    # is free beside the runtime, and the error says so (its plan, put there by `tinyhost flash`, is the way)
    assert "no usable load plan beside it (absent)" in by_name["noplan.tflite"]["error"]
    assert "tinyhost flash --model" in by_name["noplan.tflite"]["error"]
