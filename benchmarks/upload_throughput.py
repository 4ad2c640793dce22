"""Upload throughput to the virtual board: tinyhost's client against ``mpremote fs cp``.

For each baud rate a fresh virtual ESP32 is started at that line rate; a random file (default 300 KB, the size of
a small model) is uploaded once with ``Device.put_file`` and once with ``mpremote connect PORT fs cp``, on the same
emulated link. Printed per run: bytes, seconds, bytes/s, % of the line rate (baud / 10 bytes/s: 8N1) and the
ratio ours / mpremote. Target: tinyhost >= 80 % of the line rate.

    nice -n 19 python -m benchmarks.upload_throughput [--bauds 115200,921600] [--kbytes 300] [--no-mpremote]

"put" is Device.put_file alone (begin, data, sha256 check on the board, rename); "open+put" adds Device.open
(probing the board, entering the raw REPL, sending the runtime when it is not flashed). mpremote's time is its
whole command, start-up included, as a user sees it. Every figure is measured in this run on this machine.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_PERCENT = 80.0


def _line_rate(baud):
    return baud / 10.0


def measure_ours(b, data):
    t0 = time.monotonic()
    dev = b.open()
    t_open = time.monotonic() - t0
    try:
        result = dev.put_file(data, "/bench.bin")
        if dev.file_hash("/bench.bin") is None:
            raise RuntimeError("the uploaded file is missing")
        dev.remove("/bench.bin")
        stats = dev.stats()
    finally:
        b.close()
    return result.seconds, t_open + result.seconds, stats.get("host_frames_retried", 0), dev.started_via


def measure_mpremote(b, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.bin"
        path.write_bytes(data)
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "mpremote", "connect", b.port, "fs", "cp", str(path),
                              ":bench.bin"], capture_output=True, timeout=3600)
        seconds = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"mpremote failed: {out.stderr.decode(errors='replace')[-300:]}")
    return seconds


def run(bauds, nbytes, with_mpremote):
    from tinyhost.board import connect

    data = os.urandom(nbytes)
    rows = []
    for baud in bauds:
        # a new state folder: a virtual ESP32 with empty flash; "open+put" times the connection too
        with tempfile.TemporaryDirectory() as state, \
                connect("sim:esp32", baud=baud, state_dir=state, open_device=False) as b:
            put_s, open_put_s, retried, started = measure_ours(b, data)
            mp_s = measure_mpremote(b, data) if with_mpremote else None
        rows.append((baud, put_s, open_put_s, mp_s, retried, started))
    return rows


def report(rows, nbytes):
    print(f"upload of {nbytes} random bytes to a virtual ESP32 (MicroPython unix VM behind an emulated UART)")
    head = f"{'baud':>7}  {'tool':<31} {'bytes':>7} {'seconds':>8} {'bytes/s':>8} {'% line':>7}"
    print(head)
    print("-" * len(head))
    for baud, put_s, open_put_s, mp_s, retried, started in rows:
        line = _line_rate(baud)
        cases = [("tinyhost put", put_s), (f"tinyhost open+put ({started})", open_put_s)]
        if mp_s is not None:
            cases.append(("mpremote fs cp", mp_s))
        for name, seconds in cases:
            rate = nbytes / seconds
            print(f"{baud:>7}  {name:<31} {nbytes:>7} {seconds:>8.2f} {rate:>8.0f} {100 * rate / line:>6.1f}%")
        verdict = "meets" if 100 * nbytes / put_s / line >= TARGET_PERCENT else "MISSES"
        extra = f", ours/mpremote {mp_s / put_s:.1f}x faster (put), {mp_s / open_put_s:.1f}x (open+put)" \
            if mp_s is not None else ""
        print(f"{'':>7}  -> tinyhost put {verdict} the {TARGET_PERCENT:.0f} % target; frames retried {retried}"
              f"{extra}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bauds", default="115200,921600", help="comma-separated baud rates")
    parser.add_argument("--kbytes", type=int, default=300, help="file size in KB (1000 bytes)")
    parser.add_argument("--no-mpremote", action="store_true", help="skip the (slow) mpremote runs")
    args = parser.parse_args(argv)
    bauds = [int(b) for b in args.bauds.split(",") if b]
    nbytes = args.kbytes * 1000
    report(run(bauds, nbytes, not args.no_mpremote), nbytes)


if __name__ == "__main__":
    main()
