"""The board-time model of the MFCC front end: its work counts are what the kernels do, its figures exact and the
same in every process, and `tinyhost model inspect` reports them for a model whose front end is known."""

import dataclasses
import json
import os
import subprocess
import sys
from array import array
from pathlib import Path

import numpy as np
import pytest

from tinyhost import boards, boardtime
from tinyhost.boardtime import Coefficient
from tinyhost.features.mfcc import KWS, MLPERF_KWS01

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "device"))

from tinyfw import mfcc as device_mfcc, mfcc_ref  # noqa: E402

FE_TERMS = [n for n in boardtime.COEFFICIENTS if n.startswith("fe_")]


@pytest.mark.parametrize("config", [KWS, MLPERF_KWS01], ids=["kws", "kws01"])
def test_the_counts_are_what_the_reference_kernels_do(config, monkeypatch):
    """One frame run with counters on the reference kernels' multiplies, square roots and bit lengths."""
    calls = {"mul30": 0, "isqrt_round": 0, "bit_length": 0}
    for name in calls:
        real = getattr(mfcc_ref, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)
        monkeypatch.setattr(mfcc_ref, name, counted)
    fe = boardtime.device_front_end(config)
    x = np.random.default_rng(1).integers(-3000, 3000, config.window_samples).astype("<i2")
    fe.frame(array("h", x.tobytes()), 0, bytearray(config.mfcc_count), 0)
    work = boardtime.front_end_work(config)
    n_half = config.fft_size // 2
    assert work["fe_butterfly_cycles"] + work["fe_trivial_butterfly_cycles"] == n_half // 2 * (n_half.bit_length() - 1)
    # four multiplies a butterfly with a twiddle, four a bin (the real-FFT split), one a DCT MAC
    assert calls["mul30"] == 4 * work["fe_butterfly_cycles"] + 4 * work["fe_bin_cycles"] + work["fe_dct_mac_cycles"]
    assert calls["isqrt_round"] == work["fe_bin_cycles"] == work["fe_mel_bin_cycles"]
    # a bit length a bin (its magnitude's shift), then one or two a band (energies are nonzero here)
    assert calls["bit_length"] == work["fe_bin_cycles"] + 2 * work["fe_log_cycles"]
    assert work["fe_sample_cycles"] == config.window_samples and work["fe_point_cycles"] == n_half
    assert work["fe_dct_mac_cycles"] == config.mel_bins * config.mfcc_count
    assert work["call_cycles"] == 6 and work["step_cycles"] == 1


def test_kws_counts():
    assert boardtime.front_end_work(KWS) == {
        "fe_sample_cycles": 640, "fe_point_cycles": 512, "fe_trivial_butterfly_cycles": 766,
        "fe_butterfly_cycles": 1538, "fe_twiddle_cycles": 494, "fe_bin_cycles": 254, "fe_mel_bin_cycles": 254,
        "fe_log_cycles": 40, "fe_dct_mac_cycles": 400, "fe_code_cycles": 10, "call_cycles": 6, "step_cycles": 1}


def test_exact_figure_with_round_coefficients():
    """Every front-end term 1 cycle, a call 1000, a step 500, at 100 MHz: 4,908 + 6,000 + 500 cycles = 114,080 ns."""
    coeffs = dict(boards.load("esp32").board_time)
    coeffs.update({n: Coefficient(100, "test") for n in FE_TERMS})
    coeffs.update(call_cycles=Coefficient(100_000, "test"), step_cycles=Coefficient(50_000, "test"))
    profile = dataclasses.replace(boards.load("esp32"), board_time_clock_mhz=100, board_time=coeffs)
    t = boardtime.front_end_estimate(KWS, profile)
    assert t.per_frame_ns == 114_080 and t.per_frame_us == 114.08
    assert t.hop_ms == 20.0 and t.hop_fraction == pytest.approx(114_080 / 20e6)
    assert t.ram_bytes == device_mfcc.Mfcc(1.0, 0, backend="ref").ram_bytes
    assert t.model == boardtime.BOARD_TIME_MODEL and t.kind == "estimate"


_PRINT = ("import json, sys; sys.path.insert(0, {host!r}); from tinyhost import boards, boardtime; "
          "from tinyhost.features.mfcc import KWS, MLPERF_KWS01; "
          "print(json.dumps([boardtime.front_end_estimate(c, boards.load(n)).per_frame_ns "
          "for n in ('esp32', 'esp32s3', 'nano33ble') for c in (KWS, MLPERF_KWS01)]))")


def test_two_processes_give_identical_front_end_estimates():
    code = _PRINT.format(host=str(ROOT / "host"))
    env = dict(os.environ, PYTHONHASHSEED="1")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    env["PYTHONHASHSEED"] = "2"
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert first == second and len(json.loads(first)) == 6


def test_each_board_has_its_front_end_time():
    t = {n: boardtime.front_end_estimate(KWS, boards.load(n)) for n in ("esp32", "esp32s3", "nano33ble")}
    assert t["esp32"].hop_fraction < 1                  # an ESP32 keeps up with 20 ms hops ...
    assert t["nano33ble"].per_frame_ns > 2 * t["esp32"].per_frame_ns   # ... the 64 MHz Cortex-M4 far slower
    assert t["esp32"].work == t["nano33ble"].work


KWS_MODEL = ROOT / "models" / "kws" / "kws.tflite"


def test_inspect_reports_the_front_end_of_a_model_that_has_one(tmp_path, capsys):
    from tinyhost.cli import main
    from tinyhost.model import inspect

    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as e:
        main(["model", "inspect", str(KWS_MODEL), "--board", "esp32", "--json", str(out)])
    assert e.value.code == 0
    report = json.loads(out.read_text())
    want = boardtime.front_end_estimate(KWS, boards.load("esp32"))
    assert report["front_end"] == {"model": "kws", "mfcc": dataclasses.asdict(KWS), "ram_bytes": want.ram_bytes}
    assert report["fits"][0]["front_end_time"]["per_frame_ns"] == want.per_frame_ns
    printed = capsys.readouterr().out
    assert f"{want.ram_bytes:,} B of RAM; per 20 ms hop (estimate, board-time model {boardtime.BOARD_TIME_MODEL}" in printed
    assert f"  esp32 {want.per_frame_us / 1000:,.1f} ms\n" in printed
    vww = inspect(ROOT / "models" / "vww" / "vww.tflite", board="esp32", tflm=False)
    assert vww.front_end is None and vww.fits[0].front_end_time is None
