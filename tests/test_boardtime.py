"""The board-time model: exact figures for a small model, deterministic across processes, monotone in the work,
every real profile's coefficients with sources, and a different board time per board."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinyhost import boards, boardtime
from tinyhost.bench import energy, session
from tinyhost.bench.results import BenchResult, PerformanceResult
from tinyhost.boardtime import Coefficient
from tinyhost.errors import BoardProfileError
from tinyhost.model import inspect, writer
from tinyhost.paths import boards_dir

ROOT = Path(__file__).resolve().parent.parent
KWS = ROOT / "models" / "kws" / "kws.tflite"

# Round coefficients (cycles) for figures that can be checked by hand.
HAND = {"mac_conv_cycles": 10, "mac_dw_cycles": 9, "mac_fc_cycles": 8, "requant_cycles": 100,
        "copy_byte_cycles": 2, "elem_cycles": 5, "call_cycles": 1000, "step_cycles": 500, "invoke_cycles": 3000,
        "flash_byte_cycles": 3, "flash_read_cycles": 7000, "mapped_byte_cycles": 4, "ref_mac_cycles": 300,
        "ref_elem_cycles": 700}


def hand_profile(clock_mhz=100, **cycles):
    coeffs = {name: Coefficient(100 * value, "test") for name, value in {**HAND, **cycles}.items()}
    return dataclasses.replace(boards.load("esp32"), board_time_clock_mhz=clock_mhz, board_time=coeffs)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """CONV_2D 3x3/2 (8x8x1 -> 4x4x4) -> AVERAGE_POOL 2x2 -> RESHAPE -> FULLY_CONNECTED 4 -> SOFTMAX."""
    path = tmp_path_factory.mktemp("bt") / "small.tflite"
    return inspect(writer.small_classifier(path, (1, 8, 8, 1), 4, conv_channels=4), board="esp32", tflm=False)


def test_small_model_counts(small):
    ops = [(o.op, o.macs, o.filter_bytes, o.input_elements, o.output_elements, o.kernel_calls) for o in small.operators]
    assert ops == [("CONV_2D", 576, 36, 64, 64, 1), ("AVERAGE_POOL_2D", 64, 0, 64, 16, 1),
                   ("RESHAPE", 0, 0, 16, 16, 1), ("FULLY_CONNECTED", 64, 64, 16, 4, 1), ("SOFTMAX", 0, 0, 4, 4, 1)]


def test_streaming_kws_counts_the_kernels_the_engine_runs(tmp_path):
    """A pointwise CONV_2D runs as FULLY_CONNECTED (no patch, no filter copy); a depthwise window of (k, 1) runs
    four taps a step (k rounded up to a multiple of 4)."""
    path = tmp_path / "skws.tflite"
    path.write_bytes(writer.streaming_kws_like())
    ops = inspect(path, board="esp32", tflm=False).operators
    dw5, pw2 = ops[2], ops[3]
    assert (dw5.params["kernel"], dw5.output_elements) == ((5, 1), 24 * 128)
    assert boardtime.step_work(dw5, "viper", "ram", 32768)["mac_dw_cycles"] == 24 * 128 * 8
    assert pw2.params["runs_as"] == "FULLY_CONNECTED"
    work = boardtime.step_work(pw2, "viper", "ram", 32768)
    assert work["mac_fc_cycles"] == pw2.macs == 24 * 128 * 128 and "mac_conv_cycles" not in work
    assert work["copy_byte_cycles"] == pw2.input_elements == 24 * 128


def test_small_model_exact_figures(small):
    # cycles by hand at 100 MHz (10 ns a cycle):
    # CONV: step 500 + call 1000 + 576 MACs x 10 + 64 outputs x 100 + (576/4 patch + 36 filter) bytes x 2 = 14020
    # POOL: 500 + 1000 + 64 elements x 5 = 1820; RESHAPE: no step (aliased); FC: 500 + 1000 + 64 x 8 + 4 x 100 + 16 x 2
    # = 2444
    # SOFTMAX: 500 + 1000 + 4 x 5 = 1520; invoke 3000
    bt = boardtime.estimate(small, hand_profile(), "viper", "ram")
    assert [s.ns for s in bt.steps] == [140200, 18200, 0, 24440, 15200]
    assert bt.overhead_ns == 30000 and bt.total_ns == 228040 and bt.total_us == 228.04
    assert bt.model == boardtime.BOARD_TIME_MODEL == "bt-2"
    # streamed: + filter bytes x 3 + one read of 7000 for CONV (36 B) and FC (64 B)
    assert boardtime.estimate(small, hand_profile(), "viper", "streamed").total_ns == 228040 + 71080 + 71920
    # mapped: + filter bytes x 4
    assert boardtime.estimate(small, hand_profile(), "viper", "mapped").total_ns == 228040 + 1440 + 2560
    # reference: step + call + 300 a MAC + 700 per output (MAC ops) or input element (the others)
    ref = boardtime.estimate(small, hand_profile(), "ref", "ram")
    assert [s.ns for s in ref.steps] == [(1500 + 576 * 300 + 64 * 700) * 10, (1500 + 64 * 300 + 64 * 700) * 10,
                                         0, (1500 + 64 * 300 + 4 * 700) * 10, (1500 + 4 * 700) * 10]


def test_rounding_is_integer_and_half_up(small):
    # 1 cycle at 3 MHz = 333.33 ns; 2 cycles = 666.67 ns -> 667
    profile = hand_profile(clock_mhz=3, **{**{name: 0 for name in HAND}, "invoke_cycles": 2})
    assert boardtime.estimate(small, profile).total_ns == 667


def test_monotone_in_macs_clock_and_weights(small, tmp_path):
    bigger = inspect(writer.small_classifier(tmp_path / "big.tflite", (1, 8, 8, 1), 4, conv_channels=8),
                     board="esp32", tflm=False)
    assert bigger.macs > small.macs
    for name in ("esp32", "esp32s3", "nano33ble"):
        profile = boards.load(name)
        base = boardtime.estimate(small, profile).total_ns
        assert boardtime.estimate(bigger, profile).total_ns > base
        slower = dataclasses.replace(profile, board_time_clock_mhz=profile.board_time_clock_mhz // 2)
        assert boardtime.estimate(small, slower).total_ns > base
        assert boardtime.estimate(small, profile, weights="streamed").total_ns >= base
        assert boardtime.estimate(small, profile, weights="mapped").total_ns >= base
        assert boardtime.estimate(small, profile, backend="ref").total_ns > base


def test_row_bands_are_kernel_calls(tmp_path):
    path = tmp_path / "vww.tflite"
    path.write_bytes(writer.vww_like())
    r = inspect(path, board="esp32", tflm=False)
    banded = [o for o in r.operators if "row_band" in o.params]
    assert banded
    for o in banded:
        rows = r.tensors[o.outputs[0]].shape[1]
        assert o.kernel_calls == -(-rows // o.params["row_band"]) > 1


_PRINT = ("import json, sys; sys.path.insert(0, {host!r}); from tinyhost import boards, boardtime; "
          "from tinyhost.model import inspect; r = inspect({kws!r}, tflm=False); "
          "print(json.dumps([[s.ns for s in boardtime.estimate(r, boards.load(n), b, w).steps] "
          "for n in ('esp32', 'esp32s3', 'nano33ble') for b in ('viper', 'ref') for w in ('ram', 'streamed')]))")


def test_two_processes_give_identical_estimates():
    code = _PRINT.format(host=str(ROOT / "host"), kws=str(KWS))
    env = dict(os.environ, PYTHONHASHSEED="1")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    env["PYTHONHASHSEED"] = "2"
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert first == second and len(json.loads(first)) == 12


def test_three_boards_three_board_times_for_kws():
    fits = {f.board: f for f in inspect(KWS, tflm=False).fits}
    times = [fits[b].board_time.total_ns for b in ("sim", "sim:esp32s3", "sim:nano33ble")]
    assert len(set(times)) == 3
    assert fits["sim:nano33ble"].board_time.total_ns > 2 * fits["sim:esp32s3"].board_time.total_ns  # 64 vs 160 MHz
    nano = boards.load("nano33ble")
    assert fits["sim:nano33ble"].energy_uj == pytest.approx(
        nano.power["active"].current_ma * nano.supply_v * fits["sim:nano33ble"].board_time.total_us / 1000)


def test_every_real_profile_has_every_coefficient_with_a_source():
    for board in boards.load_all():
        assert set(board.board_time) == set(boardtime.COEFFICIENTS), board.name
        assert board.board_time_core and board.board_time_clock_source.strip()
        assert 0 < board.board_time_clock_mhz <= board.clock_mhz
        for name, c in board.board_time.items():
            assert c.source.strip() and c.centicycles >= 0, (board.name, name)


@pytest.fixture
def board_dir(tmp_path):
    for path in boards_dir().glob("*.toml"):
        (tmp_path / path.name).write_text(path.read_text())
    return tmp_path


@pytest.mark.parametrize("edit, field", [
    (lambda t: t.replace("[board_time.flash_read_cycles]\ncycles = 24000\n", "[board_time.flash_read_cycles]\n"),
     "board_time.flash_read_cycles"),
    (lambda t: t.replace("cycles = 24000\nsource = \"", "cycles = 24000\nsource = \"\"\nold = \""),
     "board_time.flash_read_cycles"),
    (lambda t: t.replace("cycles = 24000\n", "cycles = 24000.125\n"), "board_time.flash_read_cycles.cycles"),
    (lambda t: t.split("\n[board_time]")[0], "board_time"),
    (lambda t: t.replace("clock_mhz = 160\n", ""), "board_time.clock_mhz"),
    (lambda t: re.sub(r'clock_source = ".*"', 'clock_source = " "', t, count=1), "board_time.clock_source"),
])
def test_profile_without_a_coefficient_or_its_source_is_refused(board_dir, edit, field):
    path = board_dir / "esp32.toml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(BoardProfileError) as err:
        boards.load("esp32", board_dir)
    assert f"'{field}'" in str(err.value)


def test_bench_reports_board_time_and_energy_from_it(small):
    profile = boards.load("esp32s3")
    bt = boardtime.estimate(small, profile)
    perf = PerformanceResult(window_s=1, min_inferences=1, windows=[], median_inferences_per_s=400.0,
                             median_latency_us=2500.0, min_inferences_per_s=400.0, max_inferences_per_s=400.0,
                             spread_pct=0.0)
    session.add_board_time(perf, bt)
    assert perf.board_time_us == bt.total_us and perf.board_time_model == "bt-2"
    assert perf.board_inferences_per_s == pytest.approx(1e6 / bt.total_us)
    assert perf.median_latency_us == 2500.0                 # the host's time stays beside it
    e = energy.estimate(profile, 2500.0, virtual=True, board_time=bt)
    assert e.uj_per_inference == pytest.approx(45.0 * 3.3 * bt.total_us / 1000)
    assert e.inputs["host_latency_us"] == 2500.0 and "bt-2" in e.note
    from tinyhost.board import Provenance
    back = BenchResult.from_json(BenchResult(Provenance("esp32s3", True), performance=perf).to_json())
    assert back.performance.board_time_us == bt.total_us and back.performance.board_time["steps"]


def test_validation_table_in_docs_is_current():
    sys.path.insert(0, str(ROOT))
    from benchmarks import board_time_validation as v
    if any(model_ms is None for _, model_ms, _, _ in v.rows()):
        pytest.skip("the MLPerf Tiny reference models (../shared/mlperf-tiny) are not here")
    doc = (ROOT / "docs" / "board-time.md").read_text()
    table = v.table()
    assert table in doc, "regenerate it: python -m benchmarks.board_time_validation --write"
    assert table.count("| person detection |") == 4


# --- calibration ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def micro_rows(tmp_path_factory):
    """Every calibration model's work counts (weights where the esp32 keeps them) and its report."""
    from tinyhost import calibrate
    from tinyhost.model import board_fit

    profile, out = boards.load("esp32"), []
    d = tmp_path_factory.mktemp("cal")
    for name, data in calibrate.micro_models():
        path = d / f"{name}.tflite"
        path.write_bytes(data)
        report = inspect(path, board="esp32", tflm=False)
        weights = board_fit(report, profile, True).weights
        out.append((calibrate.work(report, weights), report, weights))
    return out


def test_calibration_models_separate_every_fitted_coefficient(micro_rows):
    import numpy as np
    from tinyhost import calibrate

    names = calibrate.FITTED + ("flash_byte_cycles", "flash_read_cycles")
    a = np.array([[w.get(n, 0) for n in names] for w, _, _ in micro_rows], dtype=float)
    assert np.linalg.matrix_rank(a) == len(names)
    assert {w for _, _, w in micro_rows} == {"ram", "streamed"}


def test_fit_recovers_the_coefficients_that_made_the_times(micro_rows):
    from tinyhost import calibrate

    profile = boards.load("nano33ble")
    names = calibrate.FITTED + ("flash_byte_cycles", "flash_read_cycles")
    rows = [(w, boardtime.estimate(r, profile, "viper", weights).total_ns * profile.board_time_clock_mhz / 1000)
            for w, r, weights in micro_rows]
    fixed = {n: profile.board_time[n].cycles for n in boardtime.COEFFICIENTS if n not in names}
    fitted = calibrate.fit(rows, fixed, names=names)
    for name in names:
        assert fitted[name] == pytest.approx(profile.board_time[name].cycles, rel=0.01, abs=0.05), name


def test_calibration_file_round_trip_and_use(tmp_path, small):
    from tinyhost import calibrate

    profile = boards.load("esp32")
    coeffs = {n: round(profile.board_time[n].cycles * 2, 2) for n in boardtime.COEFFICIENTS}
    cal = calibrate.Calibration("esp32", False, "xtensa-lx6", 160, coeffs,
                                {n: "test fit" for n in boardtime.COEFFICIENTS}, date="2026-01-01T00:00:00Z",
                                samples=[calibrate.Sample("conv1x1-16", 100.0, 20, 101.0)], fitted=("call_cycles",))
    path = tmp_path / "cal.toml"
    calibrate.write(cal, path)
    used, meta = calibrate.load(path, profile)
    assert meta["board"] == "esp32" and meta["schema"] == calibrate.SCHEMA
    assert {n: c.cycles for n, c in used.board_time.items()} == coeffs
    doubled = boardtime.estimate(small, used).total_ns
    assert doubled == pytest.approx(2 * boardtime.estimate(small, profile).total_ns, abs=len(small.operators) + 1)


def test_a_calibration_file_without_a_coefficient_is_refused(tmp_path):
    from tinyhost import calibrate

    profile = boards.load("esp32")
    cal = calibrate.Calibration("esp32", True, "xtensa-lx6", 160,
                                {n: 1.0 for n in boardtime.COEFFICIENTS}, {n: "x" for n in boardtime.COEFFICIENTS})
    text = calibrate.to_toml(cal).replace("[board_time.elem_cycles]\ncycles = 1.00\n", "[board_time.elem_cycles]\n")
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(BoardProfileError, match="'board_time.elem_cycles'"):
        calibrate.load(tmp_path / "bad.toml", profile)
    (tmp_path / "other.toml").write_text("[calibration]\nschema = \"something-else\"\n")
    with pytest.raises(BoardProfileError, match="not a tinyhost-calibration/1 file"):
        calibrate.load(tmp_path / "other.toml", profile)


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TINYHOST_SLOW") != "1", reason="about 2 minutes: set TINYHOST_SLOW=1")
def test_calibrate_on_the_virtual_board_predicts_kws(tmp_path):
    """Calibrated on the micro-benchmarks alone, the estimate of KWS (not among them) is within 30 % of the
    virtual board's measured time: the model's work counts hold on the one processor we can time here."""
    from tinyhost import board, calibrate

    with board.connect("sim", state_dir=tmp_path / "sim") as b:
        b.sync_firmware()
        cal = calibrate.calibrate(b, repeats=30)
        info = b.load(KWS, backend="viper")
        measured = calibrate.interquartile_mean(b.dev.invoke(n=60, warmup=3).times_us)
    profile = cal.profile(boards.load("sim"))
    report = inspect(KWS, board="sim", tflm=False)
    weights = {"flash": "streamed"}.get(info.raw.get("weights_mode"), info.raw.get("weights_mode"))
    estimate_us = boardtime.estimate(report, profile, "viper", weights).total_us
    assert abs(estimate_us - measured) / measured < 0.30, (estimate_us, measured)


def test_bench_board_time_uses_a_calibration_file(tmp_path):
    """bench on a virtual board: the estimate with the profile's coefficients, or with a calibration file's."""
    from types import SimpleNamespace

    from tinyhost import calibrate
    from tinyhost.board import Provenance

    profile = boards.load("esp32s3")
    prov = Provenance("esp32s3", True, backend="viper", model_path=str(KWS))
    b = SimpleNamespace(provenance=prov, profile=profile)
    opts = session.BenchOptions(model=str(KWS))
    plain = session._board_time(b, opts)
    weights = plain.weights
    assert plain.total_ns == boardtime.estimate(inspect(KWS, board="esp32s3", tflm=False), profile, "viper",
                                                weights).total_ns
    coeffs = {n: round(profile.board_time[n].cycles / 2, 2) for n in boardtime.COEFFICIENTS}
    cal = calibrate.Calibration("esp32s3", False, "xtensa-lx7", 160, coeffs,
                                {n: "test" for n in boardtime.COEFFICIENTS})
    calibrate.write(cal, tmp_path / "cal.toml")
    opts.calibration = str(tmp_path / "cal.toml")
    halved = session._board_time(b, opts)
    assert halved.total_ns == pytest.approx(plain.total_ns / 2, rel=0.001)
    assert session._board_time(b, session.BenchOptions(model="kws", dut="eembc")) is None
