"""`tinyhost bench --dut eembc` against tinyhost's own firmware on the virtual board, as a user meets it: the board
was just flashed (tinyhost's commands leave it at MicroPython's REPL, so the runtime that answers a runner's text
commands is not running), first without a model the firmware loads by itself, then with `flash --boot-model`."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tinyhost.cli import cli

pytestmark = [pytest.mark.sim, pytest.mark.slow]
SIM_BAUD = 1_000_000
REPO = Path(__file__).resolve().parents[1]
KWS = REPO / "models" / "kws" / "kws.tflite"


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    from test_offload_support import need_vm_and_shipped_kws
    from tinyhost.sim import VirtualBoard

    need_vm_and_shipped_kws()
    with VirtualBoard(board="esp32", state_dir=tmp_path_factory.mktemp("eembc-tinyfw"), baud=SIM_BAUD) as vb:
        r = _run("flash", "--port", vb.port, "--baud", SIM_BAUD, "--model", KWS)
        assert r.exit_code == 0, r.output
        yield vb


def _bench(board, tmp_path):
    return _run("bench", "--port", board.port, "--baud", SIM_BAUD, "--dut", "eembc", "--model", KWS,
                "--dataset", REPO / "models" / "kws" / "testset", "--mode", "accuracy", "--limit", 2,
                "--journal", tmp_path / "journal.jsonl", "--json", tmp_path / "result.json")


def test_a_board_without_a_boot_model_is_told_how_to_name_one(board, tmp_path):
    from tinyhost.errors import DeviceError

    r = _bench(board, tmp_path)
    assert isinstance(r.exception, DeviceError), r.output
    assert "has no model" in r.exception.message and "--boot-model" in r.exception.hint


def test_flash_boot_model_is_what_the_runner_gets_and_info_shows_it(board, tmp_path):
    r = _run("flash", "--port", board.port, "--baud", SIM_BAUD, "--boot-model", "kws")
    assert r.exit_code == 0, r.output
    assert "boot model: /models/kws.tflite" in r.output
    r = _run("info", "--port", board.port, "--baud", SIM_BAUD, "--json", "-")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["boot_model"] == "/models/kws.tflite"
    r = _bench(board, tmp_path)
    assert r.exit_code == 0, r.output
    prov = json.loads((tmp_path / "result.json").read_text())["provenance"]
    assert (prov["dut"], prov["dut_name"], prov["benchmark"]) == ("eembc", "tinyhost", "kws01")
    r = _run("flash", "--port", board.port, "--baud", SIM_BAUD, "--boot-model", "none")
    assert r.exit_code == 0 and "boot model: none" in r.output, r.output
    r = _run("info", "--port", board.port, "--baud", SIM_BAUD, "--json", "-")
    assert json.loads(r.stdout)["boot_model"] == ""


def test_flash_mlperf_model_is_the_benchmark_the_firmware_names_to_a_runner(board):
    from tinyhost.bench.eembc_host import EembcDut

    def named():
        with EembcDut(board.port, baud=SIM_BAUD) as dut:
            dut.sync()
            return dut.profile()[1]

    r = _run("flash", "--port", board.port, "--baud", SIM_BAUD, "--boot-model", "kws", "--mlperf-model", "sww01")
    assert r.exit_code == 0 and "MLPerf Tiny benchmark named to a runner: sww01" in r.output, r.output
    assert named() == "sww01"               # the runner then runs its streaming wakeword test
    r = _run("flash", "--port", board.port, "--baud", SIM_BAUD, "--mlperf-model", "auto")
    assert r.exit_code == 0, r.output
    assert named() == "kws01"               # the boot model's, by its input size
