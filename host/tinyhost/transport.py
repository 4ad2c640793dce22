"""Moving bytes to and from a board: a serial port (or any pyserial URL: ``loop://``, ``socket://``, a pty path).

Only bytes here; frames are in :mod:`tinyhost.protocol`, the raw REPL in :mod:`tinyhost.rawrepl`. Every read has
a timeout; pyserial's exceptions become :mod:`tinyhost.errors` classes that say what is likely wrong.
"""

import errno
import logging
import time

import serial

from .errors import PortBusy, TransportError

log = logging.getLogger(__name__)

POLL_S = 0.02               # pyserial's read timeout; reads loop on it up to the caller's deadline
WRITE_TIMEOUT_S = 60.0


def _open_error(port, e):
    text = str(e)
    code = getattr(e, "errno", None)
    if "exclusively lock" in text or code in (errno.EBUSY, errno.EAGAIN):
        return PortBusy(f"{port} is in use by another program")
    if code == errno.ENOENT or "No such file" in text:
        return TransportError(f"no serial port {port}",
                              hint="check the path; `tinyhost boards` lists the ports it can see")
    if code == errno.EACCES or "Permission denied" in text:
        return TransportError(f"no permission to open {port}",
                              hint="add yourself to the port's group (often `dialout`) and log in again")
    return TransportError(f"cannot open {port}: {text}", hint="check the port path and the cable")


class SerialTransport:
    """An open serial link. Use :meth:`open`; a context manager; ``bytes_in``/``bytes_out`` count traffic."""

    def __init__(self, ser, port):
        self._ser = ser
        self.port = port
        self.baud = getattr(ser, "baudrate", 115200) or 115200
        self.bytes_in = 0
        self.bytes_out = 0

    @classmethod
    def open(cls, port, baud=115200, exclusive=True):
        # pyserial's RFC 2217 client (rfc2217://HOST:PORT: ser2net, a labgrid NetworkSerialPort) has no write
        # timeout; the socket's own send buffer bounds a write there
        write_timeout = None if str(port).startswith("rfc2217://") else WRITE_TIMEOUT_S
        try:
            ser = serial.serial_for_url(port, baudrate=baud, timeout=POLL_S, write_timeout=write_timeout,
                                        exclusive=exclusive)
        except serial.SerialException as e:
            raise _open_error(port, e) from None
        except (OSError, ValueError) as e:
            raise _open_error(port, e) from None
        log.debug("opened %s at %d baud", port, baud)
        return cls(ser, port)

    def wire_time_s(self, nbytes):
        return nbytes * 10.0 / self.baud

    def write(self, data):
        try:
            self._ser.write(data)
        except serial.SerialTimeoutException:
            raise TransportError(f"writing to {self.port} timed out after {WRITE_TIMEOUT_S:g} s",
                                 hint="the board stopped reading; reset it") from None
        except (serial.SerialException, OSError) as e:
            raise TransportError(f"writing to {self.port} failed: {e}",
                                 hint="the board was unplugged or reset; reconnect and retry") from None
        self.bytes_out += len(data)

    def read_some(self, timeout_s, max_bytes=1 << 20):
        """What has arrived (at least one byte), waiting up to ``timeout_s``; b"" when nothing came."""
        deadline = time.monotonic() + timeout_s
        ser = self._ser
        try:
            while True:
                waiting = ser.in_waiting
                if waiting:
                    data = ser.read(min(waiting, max_bytes))
                else:
                    data = ser.read(1)
                    if data:
                        more = ser.in_waiting
                        if more:
                            data += ser.read(min(more, max_bytes - 1))
                if data:
                    self.bytes_in += len(data)
                    return data
                if time.monotonic() >= deadline:
                    return b""
        except (serial.SerialException, OSError) as e:
            raise TransportError(f"reading from {self.port} failed: {e}",
                                 hint="the board was unplugged or reset; reconnect and retry") from None

    def read_available(self):
        """What has arrived already, without waiting (may be b"")."""
        try:
            waiting = self._ser.in_waiting
            data = self._ser.read(waiting) if waiting else b""
        except (serial.SerialException, OSError) as e:
            raise TransportError(f"reading from {self.port} failed: {e}",
                                 hint="the board was unplugged or reset; reconnect and retry") from None
        self.bytes_in += len(data)
        return data

    def read_until(self, marker, timeout_s):
        """Read until ``marker`` has arrived or ``timeout_s`` passed; returns all bytes read (check the end)."""
        deadline = time.monotonic() + timeout_s
        got = bytearray()
        while not got.endswith(marker):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            chunk = self.read_some(min(left, 0.2), max_bytes=1)
            got += chunk
        return bytes(got)

    def drain(self, quiet_s=0.05, limit_s=2.0):
        """Read and return whatever arrives until the line is quiet for ``quiet_s`` (at most ``limit_s``)."""
        deadline = time.monotonic() + limit_s
        got = bytearray()
        while time.monotonic() < deadline:
            chunk = self.read_some(quiet_s)
            if not chunk:
                break
            got += chunk
        return bytes(got)

    def close(self):
        try:
            self._ser.close()
        except (serial.SerialException, OSError):
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
