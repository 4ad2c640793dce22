"""Offload next to KWS on the default virtual ESP32 (esp32 profile, 112,640 B heap, runtime running): `offload on`
and INFER through a real TCP server work there, with the shipped KWS model and its load plan. When offload does
not fit next to a model, the board runs locally and says why: LOAD answers offload=off with offload_error="out of
memory: N bytes free", and STATS keeps the reason for `tinyhost offload status` (tested on the VM with a Predictor
that runs out of memory)."""

import json
from pathlib import Path

import pytest

from test_offload_support import run_vm

pytestmark = pytest.mark.sim
SIM_BAUD = 1_000_000
KWS = Path(__file__).parents[1] / "models" / "kws" / "kws.tflite"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from test_offload_support import need_vm_and_shipped_kws

    need_vm_and_shipped_kws()
    pytest.importorskip("tflite_micro")
    from tinyhost import flash
    from tinyhost.client import Device
    from tinyhost.sim import VirtualBoard

    vb = VirtualBoard(board="esp32", state_dir=tmp_path_factory.mktemp("offload-lowmem-sim"), baud=SIM_BAUD)
    vb.start()
    try:
        with Device.open(vb.port, baud=SIM_BAUD) as dev:
            flash.flash_items(dev, flash.with_plans(flash.firmware_items() + [flash.model_item(KWS)]), vb.board)
            dev.soft_reset()
        yield vb
    finally:
        vb.stop()


def test_offload_runs_next_to_kws_on_the_default_virtual_esp32(board):
    from tinyhost.client import Device
    from tinyhost.offload import board as offload_board
    from tinyhost.offload import models, server

    x = bytes((i * 7) % 256 for i in range(490))
    srv = server.OffloadServer({"kws": models.ModelEntry("kws", KWS)}, None, server.ServerConfig(port=0))
    with server.ServerThread(srv) as (host, port), Device.open(board.port, baud=SIM_BAUD) as dev:
        dev.soft_reset()
        m = dev.load_model("/models/kws.tflite")
        local = offload_board.infer_with_info(dev, x, m.outputs[0].nbytes)
        assert local.mode == "off" and local.record.source == "local"
        free_local = int(m.raw["heap_free_bytes"])
        dev.unload_model()                    # the file commands need the heap the model holds
        offload_board.configure(dev, mode="on", server=f"{host}:{port}", model_id="kws", device_id="sim-lowmem")
        dev.soft_reset()                      # a clean heap, as after a power cycle with /offload.json set
        m = dev.load_model("/models/kws.tflite")
        assert m.raw["offload"] == "on", m.raw.get("offload_error")
        free_offload = int(m.raw["heap_free_bytes"])
        remote = [offload_board.infer_with_info(dev, x, m.outputs[0].nbytes) for _ in range(3)]
        for r in remote:
            assert r.mode == "on" and r.record.source == "model" and r.record.offloaded and not r.record.fallback
            assert r.output == local.output   # the server's TFLM and the board's engine agree bit for bit
        assert srv.stats.requests_ok == 3
        stats = dev.stats()
        assert not str(stats.get("last_error") or "").startswith("offload"), stats
        print(f"heap free after LOAD: {free_local} B local, {free_offload} B with offload on "
              f"(offload costs {free_local - free_offload} B); after 3 offloaded INFERs: "
              f"{stats['heap_free_bytes']} B")
        dev.unload_model()
        offload_board.configure(dev, mode="off")
        dev.soft_reset()
        m = dev.load_model("/models/kws.tflite")
        assert m.raw["offload"] == "off" and "offload_error" not in m.raw



def test_a_command_that_offloaded_leaves_the_board_the_heap_it_had(board):
    """Each host command runs its own runtime; the Predictor (in tinyfw.cmd_model, holding the model) must not
    outlive it: INFO's free heap after a command that loaded KWS and offloaded is what it was before (within
    2.5 KB: what the first import of tinyfw.offload interns for good), and stays there."""
    from tinyhost.client import Device
    from tinyhost.offload import board as offload_board
    from tinyhost.offload import models, server

    def heap_free():
        with Device.open(board.port, baud=SIM_BAUD) as dev:
            return dev.info().heap_free_bytes

    x = bytes(490)
    srv = server.OffloadServer({"kws": models.ModelEntry("kws", KWS)}, None, server.ServerConfig(port=0))
    with server.ServerThread(srv) as (host, port):
        with Device.open(board.port, baud=SIM_BAUD) as dev:
            offload_board.configure(dev, mode="on", server=f"{host}:{port}", model_id="kws", device_id="sim-heap")
        try:
            before = heap_free()
            after = []
            for _ in range(3):
                with Device.open(board.port, baud=SIM_BAUD) as dev:
                    m = dev.load_model("/models/kws.tflite")
                    assert m.raw["offload"] == "on", m.raw.get("offload_error")
                    assert offload_board.infer_with_info(dev, x, m.outputs[0].nbytes).record.offloaded
                after.append(heap_free())
        finally:
            with Device.open(board.port, baud=SIM_BAUD) as dev:
                offload_board.configure(dev, mode="off")
    print(f"INFO heap free: {before} B before, {after} B after each command that offloaded")
    assert srv.stats.requests_ok == 3
    assert min(after) >= before - 2560, (before, after)
    assert after[-1] >= after[0] - 256, after          # nothing builds up from one command to the next

# tinyfw.cmd_model's offload glue on the VM with a stand-in runtime and model (KwsStandIn) and a firmware copy whose
# tinyfw.offload has a Predictor that runs out of memory.
GLUE = r'''
for name in [n for n in sys.modules if n.startswith("tinyfw")]:
    del sys.modules[name]
sys.path.insert(0, %(firmware)r)
import tinyfw.cmd_model as inf
class Rt:
    last_error = ""
rt = Rt()
rt.model = KwsStandIn()
inf._OFFLOAD_CONFIG = %(config)r
emit("p", inf._offload(rt, True) is None)
emit("why", inf._why)
emit("last_error", rt.last_error)
emit("dropped", [n for n in sys.modules if n.startswith("tinyfw.offload")])
emit("again", inf._offload(rt) is None)   # not tried again before the file changes or a model is loaded
'''


def test_offload_that_does_not_fit_leaves_the_board_local_and_says_why(tmp_path):
    import shutil

    from test_offload_support import DEVICE_DIR

    firmware = tmp_path / "device"
    shutil.copytree(DEVICE_DIR, firmware)
    (firmware / "tinyfw" / "offload" / "__init__.py").write_text(
        "class Predictor:\n    def __init__(self, model, config):\n        raise MemoryError\n")
    config = tmp_path / "offload.json"
    config.write_text(json.dumps({"mode": "on", "server": "127.0.0.1:9", "model_id": "kws", "device_id": "vm"}))
    r = run_vm(GLUE % {"firmware": str(firmware), "config": str(config)})
    assert r["p"] is True and r["again"] is True
    assert r["why"].startswith("out of memory: ") and r["why"].endswith(" bytes free")
    assert r["last_error"] == "offload is off: " + r["why"] + " next to the model; it runs locally"
    assert r["dropped"] == []                 # what the failed attempt allocated went back to the heap
