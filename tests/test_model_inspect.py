"""`tinyhost model inspect` and the planner's arena against TFLM's."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine_harness import helpers
from tinyhost.cli import main
from tinyhost.errors import UsageError
from tinyhost.model import engine_module, inspect, oracle, writer

engine = engine_module()
from tinyfw.engine import arena_layout  # noqa: E402


def test_inspect_kws():
    r = inspect(helpers.mlperf_path("kws_ref_model"), tflm=oracle.available())
    assert [op.op for op in r.operators][:3] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"]
    assert len(r.operators) == 13
    assert r.macs == 2664768
    assert r.operators[0].params["kernel"] == (10, 4) and r.operators[0].params["stride"] == (2, 2)
    assert r.arena_bytes == 16000
    assert r.tensors[r.inputs[0]].shape == (1, 49, 10, 1)
    assert {f.board for f in r.fits} >= {"esp32", "nano33ble"}
    assert all(f.fits for f in r.fits)


@pytest.mark.skipif(not oracle.available(), reason="tflite-micro is not installed")
@pytest.mark.parametrize("name", helpers.MLPERF_MODELS + ("vww_like",))
def test_arena_within_10_percent_of_tflm(name, tmp_path):
    if name == "vww_like":
        path = tmp_path / "vww.tflite"
        path.write_bytes(writer.vww_like())
    else:
        path = helpers.mlperf_path(name)
    ours = inspect(path, tflm=False).arena_bytes
    tflm = oracle.tflm_arena(path).head_bytes
    assert ours <= 1.10 * tflm, f"{name}: our arena {ours} B vs TFLM's non-persistent arena {tflm} B"


def test_float_io_buffers_count_in_the_peak_ram(tmp_path):
    """float32 graph inputs and outputs are buffers of their own beside the arena: 4 bytes an element."""
    int8 = inspect(writer.small_classifier(tmp_path / "q.tflite", (1, 16, 16, 2), 5, conv_channels=3), tflm=False)
    f32 = inspect(writer.small_classifier(tmp_path / "f.tflite", (1, 16, 16, 2), 5, conv_channels=3,
                                          float32_io=True), tflm=False)
    assert [f32.tensors[i].dtype for i in f32.inputs + f32.outputs] == ["float32", "float32"]
    extra = 4 * (16 * 16 * 2 + 5) + 2 * 200        # the two float buffers, two more operators' bookkeeping
    assert f32.peak_ram_weights_in_ram_bytes - int8.peak_ram_weights_in_ram_bytes >= extra
    assert f32.peak_ram_weights_streamed_bytes - int8.peak_ram_weights_streamed_bytes >= extra - 400


def test_model_larger_than_the_boards_flash(tmp_path):
    r = inspect(helpers.mlperf_path("ad01_int8"), board="nano33ble", tflm=False)
    from tinyhost.boards import load
    small = load("nano33ble")
    import dataclasses
    tiny = dataclasses.replace(small, fs_bytes=100_000, romfs_bytes=0)     # no partition: models are files
    from tinyhost.model import board_fit
    fit = board_fit(r, tiny)
    assert not fit.fits
    assert any("larger than the board's filesystem" in reason for reason in fit.reasons)


def test_romfs_board_verdict_checks_the_partition_and_counts_no_weights_in_ram():
    import dataclasses

    from tinyhost.boards import load
    from tinyhost.model import board_fit

    r = inspect(helpers.mlperf_path("ad01_int8"), board="esp32-romfs", tflm=False)
    fit = r.fits[0]
    assert fit.fits and fit.weights == "mapped"
    assert fit.peak_ram_bytes == r.peak_ram_weights_streamed_bytes
    small = board_fit(r, dataclasses.replace(load("esp32-romfs"), romfs_bytes=200_000))
    assert not small.fits and "ROMFS partition (200000 B)" in small.reasons[0]


def test_virtual_board_verdict_counts_the_64_bit_vm_firmware():
    # IC's 49,152 B arena leaves room on a 32-bit ESP32 but not beside the firmware on the 64-bit VM, where LOAD
    # through the running runtime fails (docs/engine.md); KWS fits both
    ic = helpers.mlperf_path("pretrainedResnet_quant")
    assert inspect(ic, board="esp32", tflm=False).fits[0].fits
    sim = inspect(ic, board="sim", tflm=False).fits[0]
    assert not sim.fits and "free for models" in sim.reasons[0]
    assert inspect(helpers.mlperf_path("kws_ref_model"), board="sim", tflm=False).fits[0].fits


def test_virtual_romfs_board_verdict_counts_the_firmware_code_running_in_place():
    # `--board` takes what bench and flash take. With the firmware package in the ROMFS partition IC loads on the
    # virtual esp32's heap (tests/test_sim_romfs.py, benchmarks/engine_latency.py --board esp32-romfs); without
    # the partition it does not (above)
    ic = helpers.mlperf_path("pretrainedResnet_quant")
    fit = inspect(ic, board="sim:esp32-romfs", tflm=False).fits[0]
    assert fit.fits and fit.board == "sim:esp32-romfs" and fit.weights == "mapped"
    assert inspect(ic, board="sim", tflm=False).fits[0].weights == "streamed"
    every = {f.board: f.fits for f in inspect(ic, tflm=False).fits}     # real boards, then virtual ones
    assert every["esp32"] and not every["sim"] and every["sim:esp32-romfs"] and "sim:esp32" not in every
    with pytest.raises(UsageError, match="unknown board"):
        inspect(ic, board="sim:esp33", tflm=False)


def test_cli_inspect_writes_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        main(["model", "inspect", str(helpers.mlperf_path("ad01_int8")), "--board", "esp32", "--json", str(out)])
    assert e.value.code == 0
    report = json.loads(out.read_text())
    assert report["macs"] == sum(op["macs"] for op in report["operators"])
    assert report["fits"][0]["board"] == "esp32"
    printed = capsys.readouterr().out
    assert "FULLY_CONNECTED" in printed
    # one latency and energy estimate per board, from the board-time model, labelled as estimates
    fit = report["fits"][0]
    assert fit["board_time"]["model"] == "bt-2" and fit["board_time"]["backend"] == "viper"
    row = next(line for line in printed.splitlines() if line.startswith("esp32 "))
    assert f"{fit['board_time']['total_us'] / 1000:,.1f} ms" in row and f"{fit['energy_uj'] / 1000:,.2f} mJ" in row
    assert "estimates of the board-time model bt-2" in printed and "not measurements" in printed


def test_cli_bad_model_exit_code(tmp_path, capsys):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x10\x00\x00\x00TFL3" + b"\xff" * 40)
    with pytest.raises(SystemExit) as e:
        main(["model", "inspect", str(bad)])
    assert e.value.code == 10
    assert "tinyhost: " in capsys.readouterr().err


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=25))
def test_planner_never_overlaps_live_buffers(bufs):
    sizes = [b[0] for b in bufs]
    first = [min(b[1], b[2]) for b in bufs]
    last = [max(b[1], b[2]) for b in bufs]
    offsets, arena = arena_layout.plan(sizes, first, last)
    assert arena_layout.check(sizes, first, last, offsets)
    assert all(o % arena_layout.ALIGN == 0 for o in offsets)
    assert arena >= max(o + s for o, s in zip(offsets, sizes))
    assert arena <= sum(-(-s // 16) * 16 for s in sizes)


def test_cli_inspect_takes_a_model_name(capsys):
    # `--model` takes a shipped name everywhere; `model inspect` too (the labs inspect `kws` by name)
    with pytest.raises(SystemExit) as e:
        main(["model", "inspect", "kws", "--board", "esp32"])
    assert e.value.code == 0
    assert "kws.tflite: 50160 bytes, 12 operators" in capsys.readouterr().out


def test_cli_inspect_unknown_name_lists_the_names(capsys):
    with pytest.raises(SystemExit) as e:
        main(["model", "inspect", "no-such-model"])
    assert e.value.code == 2
    assert "kws" in capsys.readouterr().err
