"""What the official MLPerf Tiny runner (mlcommons/tiny benchmark/runner) meets when it drives our firmware: a board
that has just booted (main.py starts the runtime), the model at /models/model.tflite and nothing loaded, only text
commands on the port. With the shipped VWW model on the DEFAULT virtual board (esp32 profile, 112,640-byte heap),
`name`, `profile`, `db load` + 892 `db` commands and `infer 1 0` must all work, and the result must be the host
engine's. (Before the fix, `name` imported tinyfw.eembc first and `profile` then answered
`e-[... does not fit in RAM ...]`.)"""

import shutil

import numpy as np
import pytest

pytestmark = [pytest.mark.sim, pytest.mark.serial]     # see the Makefile's test target
SIM_BAUD = 1_000_000          # a fast emulated line keeps the 305 KB model upload and 55 KB of hex short
VWW_BYTES = 96 * 96 * 3


@pytest.fixture(scope="module")
def booted_vww_board(tmp_path_factory):
    """A virtual esp32 with the firmware and models/vww as /models/model.tflite, restarted as a board is powered
    up before a runner opens its port (the runtime started by main.py, no model loaded)."""
    from tinyhost import flash
    from tinyhost.client import Device
    from tinyhost.sim import VirtualBoard

    from engine_harness import helpers

    staged = tmp_path_factory.mktemp("model") / "model.tflite"
    shutil.copyfile(helpers.REPO / "models/vww/vww.tflite", staged)
    state = tmp_path_factory.mktemp("eembc-runner-sim")
    with VirtualBoard(board="esp32", state_dir=state, baud=SIM_BAUD) as vb:
        with Device.open(vb.port, baud=SIM_BAUD) as dev:
            flash.flash_items(dev, flash.firmware_items() + [flash.model_item(staged)], vb.board)
    with VirtualBoard(board="esp32", state_dir=state, baud=SIM_BAUD) as vb:
        yield vb, staged


def test_runner_flow_with_vww_on_the_default_virtual_esp32(booted_vww_board):
    from tinyhost.bench import datasets
    from tinyhost.bench.eembc_host import EembcDut
    from tinyhost.model import engine_module

    from engine_harness import helpers

    vb, model = booted_vww_board
    ds = datasets.load(helpers.REPO / "models/vww/testset", "vww01")
    item = ds.items[-1]
    raw = ds.read(item)
    assert len(raw) == VWW_BYTES

    with EembcDut(vb.port, baud=SIM_BAUD, timeout_s=30.0) as dut:
        # the runner's order: name (its first command), then profile
        assert dut.sync() == "tinyhost"
        assert dut.profile() == ("tinyhost MLPerf Tiny DUT 1.0", "vww01")
        dut.load(raw)                          # db load 27648, then db commands of 31 bytes, one reply each
        run = dut.infer(1, 0, timeout_s=60.0)

    m = engine_module().load(str(model), backend="numpy")
    x = datasets.to_model_input(raw, ds.sample_dtype, m.inputs[0])
    m.input_buffer(0)[:] = np.frombuffer(x, dtype=np.int8)
    m.invoke()
    out = m.outputs[0]
    q = np.frombuffer(bytes(m.output_buffer(0)), dtype=np.int8).astype(np.int64)
    assert run.results == [float("%.5f" % ((v - out.zero_point) * out.scale)) for v in q]
    assert run.end_us > run.start_us
