"""The CLI's documented exit codes (docs/cli.md) for the failures a user meets first."""

import os
import pty
import subprocess
import sys

import pytest
import serial

from tinyhost import errors

TINYHOST = [sys.executable, "-m", "tinyhost.cli"]


def run_cli(*args, timeout=60):
    return subprocess.run(TINYHOST + list(args), capture_output=True, text=True, timeout=timeout)


def assert_error(result, error_class, *words):
    assert result.returncode == error_class.exit_code, result.stderr
    assert result.stderr.startswith("tinyhost: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr


def test_no_board_found_exits_4():
    from tinyhost.ports import detect_ports
    if any("esp32" in p.boards for p in detect_ports()):
        pytest.skip("a real ESP32 is plugged in")
    result = run_cli("info", "--board", "esp32")
    assert_error(result, errors.BoardNotFound, "esp32", "--port")


def test_missing_port_is_a_transport_error():
    result = run_cli("info", "--port", "/dev/ttyUSB-no-such-port")
    assert_error(result, errors.TransportError, "/dev/ttyUSB-no-such-port")


def test_port_busy_exits_6(sim_board):
    with serial.Serial(sim_board.port, exclusive=True):
        result = run_cli("info", "--port", sim_board.port)
    assert_error(result, errors.PortBusy, sim_board.port)


def test_board_not_answering_exits_7():
    master, slave = pty.openpty()       # a port where nothing ever answers
    try:
        result = run_cli("info", "--port", os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)
    assert_error(result, errors.BoardNotResponding)


def test_model_too_big_for_flash_exits_11_before_connecting(tmp_path):
    big = tmp_path / "huge.tflite"
    big.write_bytes(bytes(3 * 1024 * 1024))          # the sim (esp32) filesystem holds 2 MiB
    result = run_cli("flash", "--board", "sim", "--state-dir", str(tmp_path / "state"), "--model", str(big))
    assert_error(result, errors.DoesNotFit, str(3 * 1024 * 1024), "2097152")
    assert not (tmp_path / "state").exists()          # no virtual board was even started


def test_corrupt_model_is_refused_before_flashing_exits_10(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3" + bytes(200))
    result = run_cli("flash", "--board", "sim", "--state-dir", str(tmp_path / "state"), "--model", str(bad))
    assert_error(result, errors.ModelError)
    assert not (tmp_path / "state").exists()


def test_unknown_board_exits_2():
    assert_error(run_cli("info", "--board", "arduino-uno"), errors.UsageError, "esp32")


def test_a_hostile_name_in_an_error_reaches_the_terminal_inert(tmp_path):
    """A file name with an escape sequence and a newline, quoted in an error on a terminal: shown escaped, so it
    can neither clear the screen nor fake a line of output."""
    master, slave = pty.openpty()
    name = str(tmp_path / "x\x1b[2Jy\nfake line.tflite")
    proc = subprocess.run(TINYHOST + ["model", "inspect", name], stdin=subprocess.DEVNULL, stdout=slave,
                          stderr=slave, timeout=60)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:                    # the pty's other end is closed: all read
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.returncode == errors.UsageError.exit_code, out
    assert b"\x1b" not in out and b"\nfake line" not in out.replace(b"\r\n", b"\n"), out
    assert b"x\\x1b[2Jy\\x0afake line.tflite" in out, out

