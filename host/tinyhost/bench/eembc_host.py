"""``tinyhost bench --dut eembc``: drive any firmware that speaks the MLPerf Tiny / EEMBC text protocol.

Transport: a serial port (``serial.serial_for_url``, so ``loop://``/``socket://`` work in tests). Protocol (as the
MLPerf Tiny runner speaks it, mlcommons/tiny benchmark/runner): each command is text ending in ``%``; the DUT
answers lines ending in ``\\n`` and finishes every reply with a line holding ``m-ready``; ``e-[...]`` lines are
errors. Input goes as ``db load N`` then ``db HEX`` commands of at most 31 bytes, one reply each; ``infer N W``
answers ``m-lap-us-T`` before and after the N inferences (the device's clock) and ``m-results-[f,...]``.

:class:`EembcDut` is the protocol client; :class:`EembcTarget` adapts it to the runner, so a run produces the
same result dataclasses as with tinyfw's own protocol.
"""

import logging
import math
import re
import time
from dataclasses import dataclass

from ..errors import BoardNotResponding, DeviceError, ProtocolError, TransportError
from .runner import ItemOutcome
from . import metrics

log = logging.getLogger(__name__)

MAX_DB_BYTES = 31                   # bytes per `db` command, as the MLPerf Tiny runner sends them
_NAME = re.compile(r"^m-name-dut-\[([^\]]+)\]$")
_PROFILE = re.compile(r"^m-(profile|model)-\[([^\]]+)\]$")
_LAP = re.compile(r"^m-lap-us-(\d+)$")
_RESULTS = re.compile(r"^m-results-\[([^\]]*)\]$")


@dataclass
class EembcInference:
    iterations: int
    warmups: int
    start_us: int
    end_us: int
    results: list

    @property
    def elapsed_us(self):
        return self.end_us - self.start_us


class EembcDut:
    """One DUT on a serial port: ``port`` is a path/URL, or an open transport (tinyhost.transport.SerialTransport
    or anything with write(bytes), read_some(timeout_s), drain() and close())."""

    def __init__(self, port, baud=115200, timeout_s=5.0):
        from ..transport import SerialTransport

        self.baud = baud
        self.timeout_s = timeout_s
        self.bytes_sent = 0
        if isinstance(port, str):
            self.port_name = port
            self._link = SerialTransport.open(port, baud)
        else:
            self.port_name = getattr(port, "port", "") or ""
            self._link = port
        self._pending = b""

    def close(self):
        self._link.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- lines ---------------------------------------------------------------------------------------------------

    def _read_line(self, deadline):
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pending += self._link.read_some(min(left, 0.5))
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("ascii", "replace").strip("\r\0 ")

    def _write(self, payload):
        self._link.write(payload)
        self.bytes_sent += len(payload)

    def command(self, text, timeout_s=None, on_line=None):
        """Send ``text%`` and return the reply lines up to and including the ``m-ready`` one.

        ``timeout_s`` bounds the silence between two lines. ``e-[...]`` lines raise DeviceError once the reply
        is complete (so the next command starts in step)."""
        self._write((text + "%").encode("ascii"))
        wait = self.timeout_s if timeout_s is None else timeout_s
        lines, error = [], None
        while True:
            line = self._read_line(time.monotonic() + wait)
            if line is None:
                raise BoardNotResponding(f"no reply to '{text[:40]}' within {wait:.1f} s from {self.port_name}")
            if not line:
                continue
            lines.append(line)
            if on_line:
                on_line(line)
            if line.startswith("e-["):
                error = error or line
            if "m-ready" in line:
                break
        if error:
            raise DeviceError(f"the DUT answered '{text[:40]}' with {error}",
                              hint="check the command against the DUT's `help`")
        return lines

    def sync(self, attempts=3, timeout_s=None):
        """Get in step with the DUT: drop stale output (a boot banner, half a reply) and return its name.

        Sends ``name`` and skips every line until the m-name-dut line and the m-ready after it. A board that
        answers as MicroPython's REPL instead (its firmware's main.py starts the DUT at boot, and a tool that
        used the REPL since -- tinyhost's own commands included -- left it stopped) is soft-reset once from its
        friendly REPL, which runs main.py again, as at power-up."""
        wait = self.timeout_s if timeout_s is None else timeout_s
        rebooted = False
        for attempt in range(attempts):
            if attempt and not rebooted and self.at_micropython_repl():
                log.info("%s answers as MicroPython's REPL: soft-resetting the board so that main.py starts its "
                         "DUT", self.port_name)
                self.soft_reset_from_repl()
                rebooted = True
            self._drain()
            self._write(b"%name%")               # a lone '%' ends whatever half command the DUT holds
            name = None
            deadline = time.monotonic() + wait
            while True:
                line = self._read_line(deadline)
                if line is None:
                    break
                m = _NAME.match(line)
                if m:
                    name = m.group(1)
                elif name and "m-ready" in line:
                    self._drain()                # the reply to the lone '%' may still be on its way
                    return name
        if rebooted or self.at_micropython_repl():
            raise BoardNotResponding(f"{self.port_name} answers as MicroPython's REPL, and no MLPerf Tiny DUT "
                                     f"started when the board was soft-reset (its main.py does not start one)",
                                     hint="`tinyhost flash` puts tinyfw's main.py on the board: it starts the "
                                          "runtime, which answers a runner's commands, at every reset")
        raise BoardNotResponding(f"no MLPerf Tiny DUT answers `name` on {self.port_name}",
                                 hint="check the port and the baud rate; reset the board")

    def at_micropython_repl(self):
        """True when the port answers CR, Ctrl-B with MicroPython's friendly REPL prompt (Ctrl-B leaves the raw
        REPL; a DUT takes both bytes as the end of a command)."""
        self._drain()
        self._write(b"\r\x02")
        seen = b""
        deadline = time.monotonic() + min(self.timeout_s, 1.0)
        while time.monotonic() < deadline and b">>> " not in seen and b"raw REPL" not in seen:
            seen += self._link.read_some(0.1)
        self._pending = b""
        return b">>> " in seen or b"raw REPL" in seen

    def soft_reset_from_repl(self, boot_s=5.0):
        """Ctrl-C, Ctrl-B (to the friendly REPL), Ctrl-D: MicroPython soft-resets and runs boot.py and main.py;
        returns once the board has been quiet for half a second (or after ``boot_s``)."""
        self._write(b"\x03\x03\x02\x04")
        said = self._link.drain(quiet_s=0.5, limit_s=boot_s) or b""
        log.debug("%s after a soft reset: %r", self.port_name, said[-600:])
        self._pending = b""

    def _drain(self):
        dropped = self._pending + (self._link.drain(quiet_s=0.1, limit_s=2.0) or b"")
        if dropped:
            log.debug("%s: dropped %r", self.port_name, dropped[-400:])
        self._pending = b""

    # -- commands ------------------------------------------------------------------------------------------------

    def name(self):
        for line in self.command("name"):
            m = _NAME.match(line)
            if m:
                return m.group(1)
        raise ProtocolError("the DUT did not answer `name` with m-name-dut-[...]",
                            hint="is this an MLPerf Tiny / EEMBC firmware? check the port and baud rate")

    def profile(self):
        """``(profile, model)``: the firmware's profile string and its benchmark id (kws01, vww01, ic01, ad01)."""
        found = {}
        for line in self.command("profile"):
            m = _PROFILE.match(line)
            if m:
                found[m.group(1)] = m.group(2)
        return found.get("profile", ""), found.get("model", "")

    def load(self, data, chunk_bytes=MAX_DB_BYTES):
        if not data:
            raise ValueError("no data to load")
        lines = self.command(f"db load {len(data)}")
        if not any(f"Expecting {len(data)} bytes" in line for line in lines):
            raise ProtocolError(f"the DUT did not accept {len(data)} bytes: {lines}",
                                hint="the input may be larger than the firmware's buffer")
        done = False
        for start in range(0, len(data), chunk_bytes):
            lines = self.command("db " + bytes(data[start:start + chunk_bytes]).hex())
            done = any("m-load-done" in line for line in lines)
        if not done:
            raise ProtocolError("the DUT did not say m-load-done after the last byte",
                                hint="the firmware lost bytes; lower the baud rate or check the cable")

    def infer(self, iterations, warmups, timeout_s=None):
        laps, results = [], None
        for line in self.command(f"infer {iterations} {warmups}", timeout_s=timeout_s):
            m = _LAP.match(line)
            if m:
                laps.append(int(m.group(1)))
                continue
            m = _RESULTS.match(line)
            if m:
                results = [float(x) for x in m.group(1).split(",") if x.strip()]
        if len(laps) < 2 or results is None:
            raise ProtocolError(f"`infer {iterations} {warmups}` gave {len(laps)} m-lap-us lines and "
                                f"{'no' if results is None else ''} m-results",
                                hint="the firmware does not follow the MLPerf Tiny protocol")
        # first lap = start, last lap = end, as the MLPerf Tiny runner reads them
        return EembcInference(iterations, warmups, laps[0], laps[-1], results)

    def timestamp(self):
        for line in self.command("timestamp"):
            m = _LAP.match(line)
            if m:
                return int(m.group(1))
        return None


class EembcTarget:
    """The runner's view of an EEMBC DUT. ``latency_samples`` single ``infer 1 0`` commands per input give the
    per-inference latency distribution (the protocol times only whole windows)."""

    def __init__(self, dut, benchmark, reopen=None, latency_samples=10):
        self.dut = dut
        self.benchmark = benchmark
        self.anomaly = benchmark == "ad01"
        self._reopen = reopen
        self.latency_samples = latency_samples
        self._latency_estimate_us = None

    def _timeout(self, iterations):
        if self._latency_estimate_us is None:
            return max(self.dut.timeout_s, 60.0)
        return self.dut.timeout_s + 3.0 * iterations * self._latency_estimate_us / 1e6

    def window(self, data, warmups, min_inferences, window_us, on_timing=None):
        self.dut.load(data)
        first = self.dut.infer(1, warmups, timeout_s=self._timeout(1 + warmups))
        self._latency_estimate_us = max(1, first.elapsed_us)
        n = max(min_inferences, math.ceil(window_us * 1.02 / self._latency_estimate_us))
        while True:
            run = self.dut.infer(n, 0, timeout_s=self._timeout(n))
            self._latency_estimate_us = max(1, run.elapsed_us / n)
            if run.elapsed_us >= window_us:
                break
            n = max(n + 1, math.ceil(n * window_us * 1.05 / max(1, run.elapsed_us)))
        times = []
        for seq in range(self.latency_samples):
            t = self.dut.infer(1, 0, timeout_s=self._timeout(1)).elapsed_us
            times.append(t)
            if on_timing:
                on_timing(seq, t)
        return n, run.elapsed_us, times

    def infer_item(self, raw, sample_dtype):
        self.dut.load(raw)
        run = self.dut.infer(1, 0, timeout_s=self._timeout(1))
        self._latency_estimate_us = max(1, run.elapsed_us)
        if self.anomaly:
            if not run.results:
                raise ProtocolError("the DUT's m-results is empty", hint="an ad01 DUT reports its anomaly score")
            return ItemOutcome([], run.results[0], -1, run.elapsed_us, len(raw))
        best = metrics.argmax(run.results)
        return ItemOutcome(list(run.results), run.results[best], best, run.elapsed_us, len(raw))

    def model_lost(self):
        return False

    def recover(self):
        if self._reopen is None:
            raise TransportError("the EEMBC DUT stopped answering", hint="reset the board and run with --resume")
        self.dut.close()
        self.dut = self._reopen()
        self.dut.sync()

    def memory(self, model_bytes):
        from .results import MemoryResult

        return MemoryResult(model_bytes=model_bytes,
                            source="EEMBC DUT: the protocol reports no memory figures; model file size only")

    def close(self):
        self.dut.close()
