"""Host-side offload clients: a blocking one (tests, the serial relay of ``tinyhost offload relay``) and an asyncio
one (the throughput benchmark's simulated devices). Both speak exactly what a board speaks (wire.py, auth.py)."""

import asyncio
import os
import socket
import time
from dataclasses import dataclass

from ..errors import DeviceError, ProtocolError, TransportError
from . import auth, wire
from .aiotimeout import timeout


class OffloadRefused(DeviceError):
    """The server answered with an error status. ``status`` is the wire status code."""

    def __init__(self, status, message, hint=None):
        super().__init__(f"offload server refused: {wire.status_name(status)}: {message}", hint)
        self.status = status


@dataclass(frozen=True)
class Exchange:
    reply: wire.Reply
    total_us: int           # send to reply decoded, host clock


class _Session:
    """What both clients share: HELLO/WELCOME checks, MACs, sequence numbers."""

    def __init__(self, device_id, key):
        self.device_id = auth.check_device_id(device_id)
        self.key = key
        self.session = None
        self.seq = 0
        self.nonce = None

    def hello_frame(self):
        self.nonce = os.urandom(wire.NONCE_BYTES)
        self.seq += 1
        return wire.encode_hello(self.seq, self.device_id, self.nonce)

    def take_welcome(self, frame_bytes):
        frame = wire.decode_frame(frame_bytes)
        if frame.kind == wire.KIND_REPLY:
            reply = wire.decode_reply(frame.body)
            raise OffloadRefused(reply.status, reply.message)
        if frame.kind != wire.KIND_WELCOME:
            raise ProtocolError(f"expected WELCOME, got frame kind {frame.kind}")
        welcome = wire.decode_welcome(frame.body)
        if welcome.status != wire.OK:
            raise OffloadRefused(welcome.status, welcome.message,
                                 hint="add the device to the server's token file (tinyhost offload keygen)")
        if self.key is not None:
            if not welcome.auth:
                raise OffloadRefused(wire.AUTH_FAILED, "server does not authenticate but this device has a key",
                                     hint="start the server with --token-file")
            self.session = auth.session_key(self.key, self.nonce, welcome.nonce)
            if not auth.macs_equal(auth.welcome_proof(self.session), welcome.proof):
                raise OffloadRefused(wire.AUTH_FAILED, "server proof does not match: it does not know our key")
        return welcome

    def request_frame(self, model_id, tensor, want=wire.WANT_DEFAULT):
        self.seq += 1
        mac_fn = auth.frame_mac(self.session) if self.session is not None else None
        return self.seq, wire.encode_request(self.seq, wire.Request(model_id, want, tensor), mac_fn)

    def split_frame(self, request):
        self.seq += 1
        mac_fn = auth.frame_mac(self.session) if self.session is not None else None
        return self.seq, wire.encode_split(self.seq, request, mac_fn)

    def take_reply(self, frame_bytes, seq):
        frame = wire.decode_frame(frame_bytes)
        if frame.kind != wire.KIND_REPLY:
            raise ProtocolError(f"expected REPLY, got frame kind {frame.kind}")
        if frame.seq not in (seq, 0):
            raise ProtocolError(f"reply for sequence {frame.seq}, expected {seq}")
        reply = wire.decode_reply(frame.body)
        if self.session is not None:
            # An answer must be signed; an unsigned error (the server refusing a broken frame) is believed, as it
            # can only make the device fall back to local inference.
            if frame.mac:
                if not auth.macs_equal(auth.frame_mac(self.session)(frame.signed), frame.mac):
                    raise ProtocolError("reply MAC does not match")
            elif reply.ok:
                raise ProtocolError("answer is not signed")
        return reply


class OffloadClient:
    """Blocking client over one persistent TCP connection (TCP_NODELAY)."""

    def __init__(self, host, port, device_id="host", key=None, timeout_s=5.0):
        self.address = (host, port)
        self.timeout_s = timeout_s
        self._s = _Session(device_id, key)
        self.sock = None

    def connect(self):
        try:
            self.sock = socket.create_connection(self.address, timeout=self.timeout_s)
        except OSError as e:
            raise TransportError(f"cannot connect to the offload server {self.address[0]}:{self.address[1]}: {e}",
                                 hint="start it with `tinyhost serve`, or check --server") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.welcome = self._s.take_welcome(self.exchange_raw(self._s.hello_frame()))
        return self

    def exchange_raw(self, frame):
        """Send one frame, return the next whole frame from the server (bytes). For relays."""
        try:
            self.sock.sendall(frame)
            return read_frame(self.sock.recv_into, self.welcome_limit())
        except socket.timeout:
            raise TransportError(f"offload server did not answer within {self.timeout_s} s") from None
        except OSError as e:
            raise TransportError(f"offload connection failed: {e}") from None

    def welcome_limit(self):
        w = getattr(self, "welcome", None)
        return max(w.max_frame_bytes, wire.DEFAULT_MAX_FRAME_BYTES) if w else wire.DEFAULT_MAX_FRAME_BYTES

    def infer(self, model_id, tensor, want=wire.WANT_DEFAULT, check=True):
        return self._exchange(*self._s.request_frame(model_id, tensor, want), check)

    def infer_split(self, request, check=True):
        """The tail of a model from a split point: ``request`` a wire.SplitRequest."""
        return self._exchange(*self._s.split_frame(request), check)

    def _exchange(self, seq, frame, check):
        t0 = time.perf_counter_ns()
        reply = self._s.take_reply(self.exchange_raw(frame), seq)
        total_us = (time.perf_counter_ns() - t0) // 1000
        if check and not reply.ok:
            raise OffloadRefused(reply.status, reply.message)
        return Exchange(reply, total_us)

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()


def read_frame(recv_into, max_frame_bytes=wire.DEFAULT_MAX_FRAME_BYTES):
    """Read exactly one frame with ``recv_into(memoryview) -> n`` (a socket's); bytes. Raises on EOF."""
    header = bytearray(wire.HEADER_BYTES)
    _read_exact(recv_into, memoryview(header))
    _, _, _, _, total = wire.parse_header(bytes(header), max_frame_bytes)
    frame = bytearray(total)
    frame[:wire.HEADER_BYTES] = header
    _read_exact(recv_into, memoryview(frame)[wire.HEADER_BYTES:])
    return bytes(frame)


def _read_exact(recv_into, view):
    got = 0
    while got < len(view):
        n = recv_into(view[got:])
        if not n:
            raise TransportError("offload server closed the connection")
        got += n


class AsyncOffloadClient:
    """asyncio client: one simulated device on one connection."""

    def __init__(self, host, port, device_id="host", key=None, timeout_s=10.0):
        self.address = (host, port)
        self.timeout_s = timeout_s
        self._s = _Session(device_id, key)
        self.reader = self.writer = None

    async def connect(self):
        async with timeout(self.timeout_s):
            self.reader, self.writer = await asyncio.open_connection(*self.address)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.welcome = self._s.take_welcome(await self._exchange(self._s.hello_frame()))
        return self

    async def _exchange(self, frame):
        self.writer.write(frame)
        async with timeout(self.timeout_s):
            header = await self.reader.readexactly(wire.HEADER_BYTES)
            _, _, _, _, total = wire.parse_header(header)
            return header + await self.reader.readexactly(total - wire.HEADER_BYTES)

    async def infer(self, model_id, tensor, want=wire.WANT_DEFAULT, check=True):
        seq, frame = self._s.request_frame(model_id, tensor, want)
        t0 = time.perf_counter_ns()
        reply = self._s.take_reply(await self._exchange(frame), seq)
        total_us = (time.perf_counter_ns() - t0) // 1000
        if check and not reply.ok:
            raise OffloadRefused(reply.status, reply.message)
        return Exchange(reply, total_us)

    async def close(self):
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
