"""Weights read in place from a memory-mapped model file (MicroPython ROMFS), as TFLM reads them from flash.

The VM mounts a ROMFS image built by mpremote's VfsRomWriter at /rom (tests/engine_harness/romfs_run.py); the image
is read into the heap first, and the VM's heap is the esp32 profile's plus the image, so the firmware has the
esp32's heap beside it (the image stands for the flash partition, which a board maps into its address space)."""

import json
import subprocess

import numpy as np
import pytest

from engine_harness import helpers

ESP32_HEAP_BYTES = 112640
ROMFS_RUN = helpers.RUN_MODEL.parent / "romfs_run.py"


@pytest.fixture(scope="module")
def mpy_device(tmp_path_factory):
    return helpers.mpy_tree(tmp_path_factory.mktemp("mpy") / "device")


def _romfs_image(model, tmp_path):
    from mpremote.romfs import VfsRomWriter

    w = VfsRomWriter()
    for f in (model, model.with_suffix(".plan")):
        w.mkfile(f.name, f.read_bytes())
    image = tmp_path / "rom.img"
    image.write_bytes(w.finalise())
    return image


def _run(model, tmp_path, device_dir, n_inputs):
    image = _romfs_image(model, tmp_path)
    heap = ESP32_HEAP_BYTES + ((image.stat().st_size + 15) // 16) * 16 + 64
    proc = subprocess.run([helpers.micropython(), "-X", f"heapsize={heap}", str(ROMFS_RUN), str(image), model.name,
                           str(device_dir), str(n_inputs)], capture_output=True, text=True, timeout=120)
    result = next((json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
                   if line.startswith("RESULT ")), None)
    assert result is not None, proc.stdout[-1500:] + proc.stderr[-1500:]
    result["outputs"] = [bytes.fromhex(line[4:]) for line in proc.stdout.splitlines() if line.startswith("OUT ")]
    assert len(result["outputs"]) == n_inputs, proc.stdout[-1500:]
    return result


@pytest.mark.sim
@pytest.mark.parametrize("name", ["ad01_int8", "vww"])
def test_weights_are_read_in_place_from_romfs_on_the_esp32_heap(name, tmp_path, mpy_device):
    from tinyhost.model import engine_module

    src = helpers.REPO / "models" / "vww" / "vww.tflite" if name == "vww" else helpers.mlperf_path(name)
    model = helpers.with_plan(src, tmp_path)
    result = _run(model, tmp_path, mpy_device, 3)
    from tinyhost.model.plan import read_header

    stats = result["stats"]
    header = read_header(model.with_suffix(".plan").read_bytes())
    # in RAM: at most the per-channel constants (and the softmax tables), none of the filters
    assert stats["weights_mode"] == "mapped", stats
    assert stats["weights_ram_bytes"] <= header.channel_data_bytes + 2048 < header.filter_bytes, stats
    assert result["invoke_allocation_free"]
    # no weight blocks in the arena: the load takes the arena, steps and channel data only (AD's 270 KB of weights
    # and VWW's 300 KB are more than the whole heap)
    assert result["free_before"] - result["free_after"] < 64 * 1024, result
    m = engine_module().load(str(model), backend="numpy")
    for i, got in enumerate(result["outputs"]):
        x = np.array([(j * 7 + i * 13) % 256 - 128 for j in range(m.inputs[0].nbytes)], dtype=np.int8)
        assert got == helpers.engine_output(m, x).tobytes(), f"input {i}"


def test_mapped_weights_need_a_mapped_file_and_a_raw_byte_backend(tmp_path):
    from tinyhost.model import engine_module

    model = helpers.with_plan(helpers.REPO / "models" / "kws" / "kws.tflite", tmp_path)
    with pytest.raises(ValueError, match="ROMFS"):
        engine_module().load(str(model), backend="numpy", weights="mapped")
