"""Choosing the port: explicit, detected by the board profile's USB VID:PID, or a clear error."""

import pytest

from tinyhost.errors import BoardNotFound, UsageError
from tinyhost.ports import DetectedPort, find_port, open_target

CP2102 = DetectedPort("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP2102 USB to UART", ("esp32", "esp32s3"))
NANO = DetectedPort("/dev/ttyACM0", 0x2341, 0x805A, "Nano 33 BLE", ("nano33ble",))
MOUSE = DetectedPort("/dev/ttyACM1", 0x046D, 0xC52B, "Unifying receiver", ())


def test_single_match_is_chosen():
    assert find_port("nano33ble", [CP2102, NANO, MOUSE]) == "/dev/ttyACM0"
    assert find_port("esp32", [CP2102, NANO]) == "/dev/ttyUSB0"


def test_no_match_lists_what_was_found():
    with pytest.raises(BoardNotFound) as err:
        find_port("esp32", [NANO, MOUSE])
    assert "/dev/ttyACM0" in str(err.value) and "046D:C52B" in str(err.value)
    assert err.value.exit_code == BoardNotFound.exit_code


def test_no_ports_at_all_says_none():
    with pytest.raises(BoardNotFound, match="none"):
        find_port("esp32", [])


def test_two_matches_ask_for_port():
    other = DetectedPort("/dev/ttyUSB1", 0x1A86, 0x7523, "CH340", ("esp32", "esp32s3"))
    with pytest.raises(UsageError, match="--port"):
        find_port("esp32", [CP2102, other])


def test_explicit_port_wins_and_selects_profile():
    with open_target(board_name="nano33ble", port="/dev/ttyACM7") as target:
        assert target.port == "/dev/ttyACM7" and target.board.name == "nano33ble" and not target.virtual


def test_neither_board_nor_port_is_a_usage_error():
    with pytest.raises(UsageError):
        with open_target():
            pass


def test_board_spec_names_real_and_virtual_boards():
    from tinyhost.boards import from_spec

    assert [(p.name, v) for p, v in (from_spec("esp32"), from_spec("sim"), from_spec("sim:esp32s3"))] == [
        ("esp32", False), ("sim", True), ("esp32s3", True)]
    with pytest.raises(UsageError):
        from_spec("sim:sim")
    with pytest.raises(UsageError):
        from_spec("sim:arduino-uno")
