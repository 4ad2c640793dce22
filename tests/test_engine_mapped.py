"""Weights read in place from a memory-mapped model file (MicroPython ROMFS), as TFLM reads them from flash.

The VM mounts a ROMFS image built by mpremote's VfsRomWriter at /rom (tests/engine_harness/run_model.py); the image
is read into the heap first, and the VM's heap is the esp32 profile's plus the image, so the engine has the esp32's
heap beside it (the image stands for the flash partition, which a board maps into its address space)."""

import numpy as np
import pytest

from engine_harness import helpers

ESP32_HEAP_BYTES = 112640


@pytest.fixture(scope="module")
def mpy_device(tmp_path_factory):
    return helpers.mpy_tree(tmp_path_factory.mktemp("mpy") / "device")


@pytest.mark.sim
@pytest.mark.parametrize("name", ["ad01_int8", "vww"])
def test_weights_are_read_in_place_from_romfs_on_the_esp32_heap(name, tmp_path, mpy_device):
    from tinyhost.model.plan import read_header
    from tinyhost.romfs import write_image

    src = helpers.REPO / "models" / "vww" / "vww.tflite" if name == "vww" else helpers.mlperf_path(name)
    model = helpers.with_plan(src, tmp_path)
    image = write_image([model, model.with_suffix(".plan")], tmp_path / "rom.img")
    header = read_header(model.with_suffix(".plan").read_bytes())
    xs = helpers.inputs_for(_input_shape(model), 20, seed=11)
    out, stats = helpers.run_on_vm(model, "viper", xs, tmp_path, heap_bytes=ESP32_HEAP_BYTES,
                                   device_dir=mpy_device, romfs_image=image)
    # in RAM: at most the per-channel constants (and the softmax tables), none of the filters
    assert stats["weights_mode"] == "mapped", stats
    assert stats["weights_ram_bytes"] <= header.channel_data_bytes + 2048 < header.filter_bytes, stats
    assert stats["invoke_allocation_free"]
    # the load takes the arena, steps and channel data only (AD's 270 KB of weights and VWW's 300 KB are more
    # than the whole heap)
    assert stats["heap_before"] - stats["heap_after_load"] < 64 * 1024, stats
    got = np.frombuffer(out, dtype=np.int8).reshape(len(xs), -1)
    helpers.assert_same_as_tflm(got, helpers.tflm_outputs(model, xs), f"{name} with weights mapped from ROMFS")


def _input_shape(model):
    from tinyhost.model import engine_module

    return engine_module().load(str(model), backend="numpy").inputs[0].shape


def test_mapped_weights_need_a_mapped_file_and_a_raw_byte_backend(tmp_path):
    from tinyhost.model import engine_module

    model = helpers.with_plan(helpers.REPO / "models" / "kws" / "kws.tflite", tmp_path)
    with pytest.raises(ValueError, match="ROMFS"):
        engine_module().load(str(model), backend="numpy", weights="mapped")
