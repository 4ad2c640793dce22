"""tinyhost infer / verify end to end on the virtual board: outputs equal TFLM's, verify finds 0 mismatches (and
exits 12 when the reference disagrees), provenance says the figures are virtual.

Runs the CLI in this process against one virtual board per module (its port passed with --port). The MLPerf Tiny
anomaly-detection model (ad01, the smallest) is read from ../shared/mlperf-tiny and skipped when absent.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tinyhost.cli import main

pytestmark = [pytest.mark.sim, pytest.mark.oracle]
oracle = pytest.importorskip("tinyhost.model.oracle")
if not oracle.available():
    pytest.skip("tflite-micro is not installed (pip install 'tinyhost[oracle]')", allow_module_level=True)

SIM_PROFILE = "esp32"          # the smallest heap of the ESP32 profiles (about 110 KB)
# Our own board rather than conftest's sim_board_module: a fast emulated line keeps the firmware and ad01 (277 KB)
# uploads to a few seconds (the link is not under test here).
SIM_BAUD = 1_000_000
MLPERF_DIR = Path(__file__).parents[2] / "shared" / "mlperf-tiny"
AD01 = MLPERF_DIR / "ad01_int8.tflite"


def tiny_model(path):
    """A small random-weight int8 model (conv, pool, fully connected, softmax) that loads in a moment."""
    from tinyhost.model.writer import small_classifier

    return small_classifier(path, (1, 12, 8, 1), 6, seed=11, conv_channels=4, pool=2)

@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from tinyhost.sim import VirtualBoard

    with VirtualBoard(board=SIM_PROFILE, state_dir=tmp_path_factory.mktemp("infer-sim"), baud=SIM_BAUD) as vb:
        yield vb


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny_conv.tflite")


def run_cli(capsys, board, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv[:1], "--port", board.port, "--board", SIM_PROFILE, "--baud", str(SIM_BAUD), *argv[1:]])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def skip_if_it_does_not_fit(code, err, what):
    """Exit 11 (DoesNotFit) is the firmware's to fix on this profile, not this command's: skip, saying why."""
    if code == 11:
        pytest.skip(f"{what} does not fit the virtual {SIM_PROFILE} yet: {err.strip()[-300:]}")


def tflm_outputs(model_path, rows):
    reference = oracle.TflmOracle(model_path)
    return np.stack([reference.run(row) for row in rows])


def check_round_trip(capsys, board, tmp_path, model_path, inputs, expected_shape):
    in_path, out_path, json_path = tmp_path / "in.npy", tmp_path / "out.npy", tmp_path / "run.json"
    np.save(in_path, inputs)
    code, out, err = run_cli(capsys, board, "infer", "--model", str(model_path), "--input", str(in_path),
                             "--output", str(out_path), "--json", str(json_path))
    skip_if_it_does_not_fit(code, err, model_path.name)
    assert code == 0, err
    got = np.load(out_path)
    assert got.shape == expected_shape
    expected = tflm_outputs(model_path, inputs).reshape(expected_shape)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    assert "[virtual board" in out and "median" in out
    record = json.loads(json_path.read_text())
    prov = record["provenance"]
    assert prov["virtual"] is True and prov["board"] == SIM_PROFILE
    assert prov["model_sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert prov["backend"]
    assert record["inferences"] == len(inputs) == len(record["times_us"])
    assert record["latency"]["min_us"] == min(record["times_us"]) > 0
    from tinyhost import boards, boardtime
    from tinyhost.model import board_fit, inspect
    report = inspect(model_path, board=SIM_PROFILE, tflm=False)      # the board's own time, estimated
    expected_bt = boardtime.estimate(report, boards.load(SIM_PROFILE), prov["backend"],
                                     board_fit(report, boards.load(SIM_PROFILE), True).weights)
    assert record["board_time"]["total_ns"] == expected_bt.total_ns and record["board_time"]["model"] == "bt-2"
    assert f"board time on the {SIM_PROFILE} (ESTIMATE of board-time model bt-2" in out
    return record


def test_infer_round_trip_equals_tflm(capsys, board, tmp_path, model_file):
    inputs = np.random.default_rng(2).integers(-128, 128, size=(4, 12, 8, 1), dtype=np.int8)
    check_round_trip(capsys, board, tmp_path, model_file, inputs, expected_shape=(4, 6))


def test_verify_reports_zero_mismatches(capsys, board, tmp_path, model_file):
    json_path = tmp_path / "verify.json"
    code, out, err = run_cli(capsys, board, "verify", "--model", str(model_file), "--samples", "4", "--seed", "3",
                             "--json", str(json_path))
    assert code == 0, err
    record = json.loads(json_path.read_text())
    assert record["ok"] is True and record["mismatches"] == 0 and record["max_abs_diff"] == 0
    assert [s["kind"] for s in record["samples"]][:3] == ["all -128", "all 127", "zeros"]
    assert len(record["samples"]) == 7 and all(s["elements"] == 6 for s in record["samples"])
    assert "0 mismatching elements" in out and "bit-exact with TFLM" in out


def test_verify_exits_12_when_the_reference_disagrees(capsys, board, tmp_path, model_file, monkeypatch):
    real_run = oracle.TflmOracle.run

    def off_by_one_on_the_zeros_input(self, x, index=0):
        y = real_run(self, x, index)
        if not np.asarray(x).any():
            y = y.copy()
            y.flat[0] = y.flat[0] - 1 if y.flat[0] > -128 else y.flat[0] + 1
        return y

    monkeypatch.setattr(oracle.TflmOracle, "run", off_by_one_on_the_zeros_input)
    json_path = tmp_path / "verify.json"
    code, out, err = run_cli(capsys, board, "verify", "--model", str(model_file), "--samples", "1",
                             "--json", str(json_path))
    assert code == 12, err
    assert "differ from TFLM's in 1 elements over 1 of 4 inputs" in err
    record = json.loads(json_path.read_text())        # the record is written before the error exit
    assert record["ok"] is False and record["mismatches"] == 1
    assert [s["kind"] for s in record["samples"] if not s["ok"]] == ["zeros"]


@pytest.fixture(scope="module")
def float_io_model(tmp_path_factory):
    """The tiny model between a QUANTIZE from float32 and a DEQUANTIZE to float32 (the TF converter's default)."""
    from tinyhost.model.writer import small_classifier

    return small_classifier(tmp_path_factory.mktemp("model") / "tiny_float_io.tflite", (1, 12, 8, 1), 6, seed=11,
                            conv_channels=4, pool=2, float32_io=True)


def test_float_io_model_infers_float32_equal_to_tflm(capsys, board, tmp_path, float_io_model):
    inputs = (np.random.default_rng(3).standard_normal((3, 12, 8, 1)) * 3).astype(np.float32)
    check_round_trip(capsys, board, tmp_path, float_io_model, inputs, expected_shape=(3, 6))


def test_float_io_model_verifies_bit_exact(capsys, board, tmp_path, float_io_model):
    json_path = tmp_path / "verify.json"
    code, out, err = run_cli(capsys, board, "verify", "--model", str(float_io_model), "--samples", "4",
                             "--json", str(json_path))
    assert code == 0, err
    record = json.loads(json_path.read_text())
    assert record["ok"] is True and record["mismatches"] == 0 and len(record["samples"]) == 7
    assert "bit-exact with TFLM" in out


def test_mlperf_ad01_infer_equals_tflm_and_verifies(capsys, board, tmp_path):
    if not AD01.is_file():
        pytest.skip(f"MLPerf Tiny models not found at {MLPERF_DIR}")
    inputs = np.random.default_rng(4).integers(-128, 128, size=(2, 640), dtype=np.int8)
    check_round_trip(capsys, board, tmp_path, AD01, inputs, expected_shape=(2, 640))
    code, out, err = run_cli(capsys, board, "verify", "--model", str(AD01), "--samples", "2")
    assert code == 0, err
    assert "0 mismatching elements" in out
