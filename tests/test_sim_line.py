"""The virtual board's serial line: UART timing and seeded fault injection (unit tests of Line, then end to end)."""

import time

import pytest
import serial

from tinyhost.sim import VirtualBoard
from tinyhost.sim.line import Line

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"


# -- Line, no I/O ------------------------------------------------------------------------------------------------------

def test_bytes_arrive_at_the_uart_rate():
    line = Line(100_000)                    # 10 000 bytes/s: 100 us a byte, released in 1 ms (10-byte) slices
    assert line.slice_bytes == 10
    line.push(bytes(100), now_s=0.0)
    assert line.arrived(0.00095) == 9
    assert line.take(0.00095) == b""        # a slice is not complete yet
    assert line.due_s() == pytest.approx(0.001)
    assert len(line.take(0.001)) == 10
    assert len(line.take(0.0099)) == 89     # all that has arrived, in one piece
    assert line.take(0.00999) == b""
    assert len(line.take(0.01)) == 1        # the last byte arrives at 10 ms, not before
    assert len(line) == 0 and line.due_s() is None


def test_the_last_byte_is_not_held_for_a_slice():
    line = Line(100_000)
    line.push(b"abc", now_s=1.0)
    assert line.due_s() == pytest.approx(1.0003)
    assert line.take(1.00029) == b""
    assert line.take(1.0003) == b"abc"


def test_writes_queue_behind_bytes_in_flight_and_an_idle_line_starts_fresh():
    line = Line(100_000)
    line.push(bytes(10), now_s=0.0)
    line.push(bytes(10), now_s=0.0005)      # the wire is busy until 1 ms
    assert line.take(0.0009) == b""
    assert len(line.take(0.0019)) == 19     # everything that has arrived is handed over
    assert line.take(0.00199) == b"" and line.take(0.002) == bytes(1)
    line.push(b"x", now_s=5.0)              # after a pause it takes one byte time again
    assert line.take(5.00009) == b"" and line.take(5.0001) == b"x"


def test_no_faults_leave_data_alone():
    line = Line(115200, seed=1)
    data = bytes(range(256)) * 40
    assert line.damage(data) == data


def test_corruption_changes_bytes_but_not_the_length_and_repeats_with_the_seed():
    data = bytes(range(256)) * 40
    first = Line(115200, corrupt_rate=0.01, seed=7).damage(data)
    again = Line(115200, corrupt_rate=0.01, seed=7).damage(data)
    other = Line(115200, corrupt_rate=0.01, seed=8).damage(data)
    assert len(first) == len(data) and first != data
    assert first == again and first != other
    changed = sum(a != b for a, b in zip(first, data))
    assert 50 <= changed <= 160              # about 1 % of 10 240 bytes (fixed seed: the count is fixed)


def test_drops_remove_bytes_in_both_directions_independently():
    data = bytes(range(256)) * 40
    to_board = Line(115200, drop_rate=0.05, seed=3, name="to-board")
    from_board = Line(115200, drop_rate=0.05, seed=3, name="from-board")
    a, b = to_board.damage(data), from_board.damage(data)
    assert 300 <= len(data) - len(a) <= 750 and a != b
    assert to_board.bytes_dropped == len(data) - len(a)


def test_faults_split_over_writes_are_the_same_as_in_one_write():
    data = bytes(range(256)) * 8
    whole = Line(115200, drop_rate=0.02, corrupt_rate=0.02, seed=5).damage(data)
    pieces = Line(115200, drop_rate=0.02, corrupt_rate=0.02, seed=5)
    assert b"".join(pieces.damage(data[i:i + 100]) for i in range(0, len(data), 100)) == whole


def test_bad_rates_are_refused():
    with pytest.raises(ValueError):
        Line(115200, drop_rate=1.5)
    with pytest.raises(ValueError):
        Line(0)


# -- end to end, through the VM ----------------------------------------------------------------------------------

def _read_until(ser, marker, timeout_s=20.0):
    data = b""
    deadline = time.monotonic() + timeout_s
    while marker not in data:
        assert time.monotonic() < deadline, f"no {marker!r} in time; got {data[-200:]!r}"
        data += ser.read(max(1, ser.in_waiting))
    return data


def _raw_repl(ser):
    ser.write(b"\r\x03\x03\x01")
    _read_until(ser, RAW_PROMPT)
    time.sleep(0.05)
    ser.reset_input_buffer()


@pytest.mark.sim
def test_transfers_take_at_least_the_line_time(tmp_path):
    baud = 19200
    payload_bytes = 960                     # 0.5 s each way at 19200 baud
    with VirtualBoard(board="esp32", state_dir=tmp_path, baud=baud) as vb:
        ser = serial.Serial(vb.port, 115200, timeout=0.05)     # the port's own baud setting is ignored
        try:
            _raw_repl(ser)
            code = b"s = '" + b"u" * payload_bytes + b"'"
            start = time.monotonic()
            ser.write(code + b"\x04")
            _read_until(ser, b"OK")
            upload_s = time.monotonic() - start
            assert upload_s >= 0.9 * (len(code) + 1) * 10 / baud
            _read_until(ser, b"\x04>")
            start = time.monotonic()
            ser.write(b"print('d' * %d)\x04" % payload_bytes)
            reply = _read_until(ser, b"\x04>")
            round_trip_s = time.monotonic() - start
            assert b"d" * payload_bytes in reply
            assert round_trip_s >= 0.9 * (payload_bytes + 20) * 10 / baud
        finally:
            ser.close()


PAYLOAD = bytes(range(32, 127)) * 21        # 1995 printable bytes, no Ctrl-C among them


def _output_under_faults(ser, vb, drop_rate, corrupt_rate):
    """Have the board send PAYLOAD while the given faults are on; returns what arrived."""
    _raw_repl(ser)
    ser.write(b"import sys\nsys.stdin.buffer.read(1)\nsys.stdout.write(bytes(range(32, 127)) * 21)\x04")
    _read_until(ser, b"OK")
    vb.set_faults(drop_rate=drop_rate, corrupt_rate=corrupt_rate)
    ser.write(b"g" * 8)                     # the board starts on the first that arrives
    received = b""
    expected_bytes = len(PAYLOAD) + len(b"\x04\x04>")
    deadline = time.monotonic() + 20.0
    idle_since = time.monotonic()
    while len(received) < expected_bytes and time.monotonic() < deadline:
        chunk = ser.read(max(1, ser.in_waiting))
        received += chunk
        if chunk:
            idle_since = time.monotonic()
        elif received and time.monotonic() - idle_since > 1.0:
            break                           # bytes were lost: nothing more is coming
    vb.set_faults(0.0, 0.0)
    return received[:len(PAYLOAD)]


@pytest.mark.sim
def test_fault_injection_damages_only_while_on_and_repeats_with_the_seed(tmp_path):
    with VirtualBoard(board="esp32", state_dir=tmp_path, baud=921600, seed=11) as vb:
        ser = serial.Serial(vb.port, timeout=0.05)
        try:
            clean = _output_under_faults(ser, vb, 0.0, 0.0)
            corrupted = _output_under_faults(ser, vb, 0.0, 0.01)
            corrupted_again = _output_under_faults(ser, vb, 0.0, 0.01)
            dropped = _output_under_faults(ser, vb, 0.01, 0.0)
            clean_after = _output_under_faults(ser, vb, 0.0, 0.0)
        finally:
            ser.close()
    assert clean == PAYLOAD and clean_after == PAYLOAD
    assert len(corrupted) == len(PAYLOAD) and corrupted != PAYLOAD
    assert corrupted == corrupted_again     # set_faults restarts the seeded fault sequence
    assert len(dropped) < len(PAYLOAD)
