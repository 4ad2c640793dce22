"""Serial relay: offload for boards without Wi-Fi (Nano 33 BLE). The board writes offload frames to its serial
console (``transport: serial`` in /offload.json); the host forwards each to ``tinyhost serve`` over one persistent
TCP connection per board and writes the server's answer back. The relay is transparent: HELLO, MACs and sequence
numbers pass through untouched, so the board authenticates to the server exactly as over TCP.

Two ways in:

* ``relay_stream(port, relay)``: the relay owns the port (``tinyhost offload relay``); bytes that are not offload
  frames are the board's printed text and go to ``on_text``.
* ``OffloadRelay.handle_frame(frame)``: for a host client that owns the port and meets an offload frame (it starts
  with ``wire.MAGIC``) among its own frames; it writes the returned bytes back to the board.
"""

import logging
import socket
import time

from ..errors import TransportError
from . import wire
from .client import read_frame

log = logging.getLogger(__name__)


class OffloadRelay:
    def __init__(self, host, port, timeout_s=5.0, max_frame_bytes=wire.DEFAULT_MAX_FRAME_BYTES):
        self.address = (host, port)
        self.timeout_s = timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.sock = None
        self.frames_relayed = 0
        self.frames_failed = 0

    def _connect(self):
        self.sock = socket.create_connection(self.address, timeout=self.timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_frame(self, frame):
        """The server's answer to one complete offload frame from the board (bytes). Never raises for network
        trouble: the board gets an UNAVAILABLE reply and falls back to local inference."""
        seq = int.from_bytes(frame[6:10], "little") if len(frame) >= wire.HEADER_BYTES else 0
        for attempt in range(2):             # one reconnect when the kept connection turns out dead
            try:
                if self.sock is None:
                    self._connect()
                self.sock.sendall(frame)
                reply = read_frame(self.sock.recv_into, self.max_frame_bytes)
                self.frames_relayed += 1
                return reply
            except (OSError, TransportError, wire.WireError) as e:
                log.warning("relay to %s:%d failed: %s", *self.address, e)
                self.close()
                if isinstance(e, socket.timeout):
                    break
        self.frames_failed += 1
        return wire.error_reply(seq, wire.UNAVAILABLE, "relay cannot reach the offload server")

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def relay_stream(port, relay, on_text=None, max_seconds=None, idle_flush_s=0.2, should_stop=None):
    """Relay offload frames on ``port`` (a pyserial-like object: ``read(n)`` with a timeout, ``write``) until
    ``max_seconds`` pass, ``should_stop()`` is true, or the port closes. Returns the number of frames relayed."""
    scanner = wire.FrameScanner(relay.max_frame_bytes)
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    last_data = time.monotonic()
    relayed = 0
    while deadline is None or time.monotonic() < deadline:
        if should_stop is not None and should_stop():
            break
        try:
            data = port.read(max(1, getattr(port, "in_waiting", 0) or 1))
        except OSError as e:
            raise TransportError(f"serial port failed while relaying: {e}") from None
        now = time.monotonic()
        if not data:
            if scanner.buf and now - last_data > idle_flush_s and on_text is not None:
                on_text(bytes(scanner.buf))       # a stalled partial "frame" was text after all
                scanner.buf.clear()
            continue
        last_data = now
        for kind, chunk in scanner.feed(data):
            if kind == "text":
                if on_text is not None:
                    on_text(chunk)
            else:
                port.write(relay.handle_frame(chunk))
                relayed += 1
    return relayed
