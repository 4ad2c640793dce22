"""Benchmark of the virtual board's serial line (a measurement, not a test): ``python -m tinyhost.sim.linebench``.

Prints, for a 1-byte echo through the VM: the round trip straight on a pty (no relay), through the virtual board
at the given baud, the ideal line time of the two bytes, and the relay's overhead = relay - direct - line time.
Then the time of a bulk transfer each way as a multiple of its ideal line time (1.00 = exactly the line rate).
"""

import argparse
import os
import pty
import statistics
import subprocess
import sys
import tempfile
import time
import tty

import serial

from .board import VirtualBoard
from .vm import _LAUNCHER

ECHO = ("import sys, micropython\nmicropython.kbd_intr(-1)\nr = sys.stdin.buffer\nw = sys.stdout.buffer\n"
        "b = bytearray(1)\nwhile True:\n r.readinto(b)\n w.write(b)\n")


def _round_trips_us(write, read_one, count):
    times_us = []
    for i in range(count):
        byte = bytes([65 + i % 26])
        start = time.perf_counter()
        write(byte)
        got = read_one()
        times_us.append((time.perf_counter() - start) * 1e6)
        if got != byte:
            raise RuntimeError(f"echo returned {got!r} for {byte!r}")
    return times_us


def _read_until(ser, marker):
    """Like Serial.read_until, but reading what is there at once (pyserial's reads one byte per call)."""
    data = b""
    while not data.endswith(marker):
        chunk = ser.read(max(1, ser.in_waiting))
        if not chunk:
            raise RuntimeError(f"timed out waiting for {marker!r}")
        data += chunk
    return data


def direct_echo_us(count):
    master, slave = pty.openpty()
    tty.setraw(slave)
    vm = subprocess.Popen([sys.executable, "-c", _LAUNCHER, "-c", ECHO], stdin=slave, stdout=slave, stderr=slave,
                          start_new_session=True)
    os.close(slave)
    try:
        time.sleep(0.3)
        return _round_trips_us(lambda b: os.write(master, b), lambda: os.read(master, 1), count)
    finally:
        vm.kill()
        vm.wait()
        os.close(master)


def relay_measurements(baud, count, bulk_bytes):
    with tempfile.TemporaryDirectory() as state_dir, VirtualBoard(board="esp32", state_dir=state_dir,
                                                                  baud=baud) as vb:
        ser = serial.Serial(vb.port, timeout=10)
        try:
            ser.write(b"\r\x03\x03\x01")
            ser.read_until(b"raw REPL; CTRL-B to exit\r\n>")
            ser.write(b"print('%d')\x04" % bulk_bytes)
            ser.read_until(b"\x04>")
            start = time.perf_counter()
            ser.write(b"import sys\nsys.stdout.write('z' * %d)\x04" % bulk_bytes)
            _read_until(ser, b"\x04>")
            bulk_s = time.perf_counter() - start
            ser.write(b"import sys, micropython\nmicropython.kbd_intr(-1)\nbuf = bytearray(4096)\nleft = %d\n"
                      b"while left:\n left -= sys.stdin.buffer.readinto(buf, min(left, 4096))\n"
                      b"micropython.kbd_intr(3)\nprint('got')\x04" % bulk_bytes)
            _read_until(ser, b"OK")
            start = time.perf_counter()
            ser.write(bytes(range(256)) * (bulk_bytes // 256) + bytes(bulk_bytes % 256))
            _read_until(ser, b"\x04>")
            upload_s = time.perf_counter() - start
            ser.write(ECHO.encode() + b"\x04")
            ser.read_until(b"OK")
            time.sleep(0.2)
            ser.reset_input_buffer()
            echo = _round_trips_us(ser.write, lambda: ser.read(1), count)
        finally:
            ser.close()
    return echo, bulk_s, upload_s


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tinyhost.sim.linebench", description=__doc__)
    parser.add_argument("--baud", type=int, default=921600)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--bulk-bytes", type=int, default=46080)
    args = parser.parse_args(argv)
    line_us = 2 * 10 / args.baud * 1e6
    direct = direct_echo_us(args.count)
    relay, bulk_s, upload_s = relay_measurements(args.baud, args.count, args.bulk_bytes)
    direct_med, relay_med = statistics.median(direct), statistics.median(relay)
    print(f"1-byte echo, median of {args.count}: direct pty {direct_med:.0f} us, virtual board at {args.baud} baud "
          f"{relay_med:.0f} us (line time {line_us:.1f} us) -> relay overhead {relay_med - direct_med - line_us:.0f} "
          f"us; p90 relay {statistics.quantiles(relay, n=10)[-1]:.0f} us")
    # Line time of everything on the wire while the clock ran: the payload plus the command / raw REPL replies.
    command_bytes = len(b"import sys\nsys.stdout.write('z' * %d)\x04" % args.bulk_bytes)
    download_ideal_s = (command_bytes + len(b"OK") + args.bulk_bytes + len(b"\x04\x04>")) * 10 / args.baud
    upload_ideal_s = (args.bulk_bytes + len(b"got\n\x04\x04>")) * 10 / args.baud
    print(f"bulk board->host {args.bulk_bytes} bytes: {bulk_s:.3f} s, ideal line time {download_ideal_s:.3f} s, "
          f"ratio {bulk_s / download_ideal_s:.3f}")
    print(f"bulk host->board {args.bulk_bytes} bytes: {upload_s:.3f} s, ideal line time {upload_ideal_s:.3f} s, "
          f"ratio {upload_s / upload_ideal_s:.3f}")


if __name__ == "__main__":
    main()
