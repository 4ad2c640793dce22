# tinyfw.offload.frames: the offload wire format (host/tinyhost/offload/wire.py, docs/offload.md) on the board,
# HMAC-SHA256 from hashlib.sha256, and Offloader, the remote half of predict(). Frame buffers are allocated once
# per Offloader; a request only writes into them.
import os
import struct
import time

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

try:
    from time import ticks_us, ticks_ms, ticks_diff, ticks_add
except ImportError:                     # CPython, for host-side tools that import this module
    def ticks_us():
        return time.perf_counter_ns() // 1000

    def ticks_ms():
        return time.perf_counter_ns() // 1000000

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b

try:
    from binascii import crc32 as _crc32
except ImportError:
    _crc32 = None

try:
    from binascii import unhexlify
except ImportError:
    unhexlify = bytes.fromhex

import hashlib

from .links import StreamLink, TcpLink

CONFIG_PATH = "/offload.json"
MAGIC = b"TO"
VERSION = const(1)
HEADER = "<2sBBHII"
HEADER_BYTES = const(14)
MAC_BYTES = const(32)
NONCE_BYTES = const(16)
KIND_HELLO = const(1)
KIND_WELCOME = const(2)
KIND_REQUEST = const(3)
KIND_REPLY = const(4)
FLAG_MAC = const(1)
WANTS = {"default": 0, "model": 1, "reference": 2}
DTYPES = {"int8": (1, 1, "b"), "uint8": (2, 1, "B"), "int16": (3, 2, "h"), "int32": (4, 4, "i"),
          "float32": (5, 4, "f")}
# Wire status codes (same numbers as wire.py); negative codes are this side's own failures.
OK = const(0)
AUTH_REQUIRED = const(5)
AUTH_FAILED = const(6)
E_TIMEOUT = const(-1)        # no answer within timeout_ms
E_LINK = const(-2)           # connection refused, reset or closed
E_FRAME = const(-3)          # the answer is not a valid frame (CRC, layout, MAC, size)
E_DOWN = const(-4)           # skipped: the server failed recently (waiting retry_after_ms)
E_CONFIG = const(-5)         # the config file is unusable
SESSION_LABEL = b"tinyhost-offload-v1"

DEFAULTS = {"mode": "off", "server": "", "transport": "tcp", "model_id": "", "device_id": "", "key": "",
            "threshold": 0.8, "timeout_ms": 1000, "retries": 1, "retry_after_ms": 2000, "want": "default",
            "config_check_ms": 1000}
MODES = ("off", "on", "auto")


class OffloadError(Exception):
    # A remote prediction failed; .code is a wire status (> 0) or one of the E_* codes.
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _crc32_soft(data, crc=0):
    # CRC-32 (IEEE, as zlib) for ports built without binascii.crc32; slower, same result.
    crc = ~crc & 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
    return ~crc & 0xFFFFFFFF


crc32 = _crc32 if _crc32 is not None else _crc32_soft


class Hmac:
    # HMAC-SHA256 (RFC 2104) with hashlib.sha256; the padded key blocks are computed once per key.
    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        self.inner = bytes(b ^ 0x36 for b in key)
        self.outer = bytes(b ^ 0x5C for b in key)

    def digest(self, data, data2=None):
        h = hashlib.sha256(self.inner)
        h.update(data)
        if data2 is not None:
            h.update(data2)
        o = hashlib.sha256(self.outer)
        o.update(h.digest())
        return o.digest()


def _nonce():
    try:
        return os.urandom(NONCE_BYTES)
    except (AttributeError, NotImplementedError, OSError):
        import random
        return bytes(random.getrandbits(8) for _ in range(NONCE_BYTES))


class Offloader:
    # Remote inference for one model's input/output (TensorInfo-like: shape dtype scale zero_point nbytes).
    # predict_into(data, info) -> memoryview of the output (valid until the next call); raises OffloadError.
    def __init__(self, config, in_info, out_info, link=None):
        self.cfg = config
        self.in_info, self.out_info = in_info, out_info
        self.link = link or self._make_link(config)
        self.seq = 0
        self.session = None
        self.key = Hmac(unhexlify(config["key"])) if config["key"] else None
        self.requests = 0
        self.reconnects = 0
        mid = config["model_id"].encode()
        shape = tuple(in_info.shape)
        code = DTYPES[in_info.dtype][0]
        head = struct.pack("<B", len(mid)) + mid + struct.pack("<BBB", WANTS[config["want"]], code, len(shape))
        head += struct.pack("<%dH" % len(shape), *shape) + struct.pack("<fiI", in_info.scale, in_info.zero_point,
                                                                        in_info.nbytes)
        self.body_len = len(head) + in_info.nbytes
        self.data_off = HEADER_BYTES + len(head)
        mac = MAC_BYTES if self.key else 0
        self.tx = bytearray(HEADER_BYTES + self.body_len + mac + 4)
        self.tx_mv = memoryview(self.tx)
        struct.pack_into(HEADER, self.tx, 0, MAGIC, VERSION, KIND_REQUEST, FLAG_MAC if mac else 0, 0,
                         self.body_len)
        self.tx[HEADER_BYTES:self.data_off] = head
        ndim_out = len(tuple(out_info.shape))
        # reply: header, status/source/queue/compute (10), tensor head (2 + 2*ndim + 12), data | message, mac, crc
        self.rx = bytearray(HEADER_BYTES + 10 + max(14 + 2 * ndim_out + out_info.nbytes, 2 + 512) + MAC_BYTES + 4)
        self.rx_mv = memoryview(self.rx)

    @staticmethod
    def _make_link(cfg):
        if cfg["transport"] == "serial":
            return StreamLink(cfg["timeout_ms"])
        return TcpLink(cfg["server"], cfg["timeout_ms"])

    def close(self):
        self.link.close()
        self.session = None

    def _frame_end(self, n_signed, mac_key):
        # Append the MAC (if any) and the CRC to tx[:n_signed]; returns the frame length.
        end = n_signed
        if mac_key is not None:
            self.tx[end:end + MAC_BYTES] = mac_key.digest(self.tx_mv[:end])
            end += MAC_BYTES
        struct.pack_into("<I", self.tx, end, crc32(self.tx_mv[:end]))
        return end + 4

    def _read_frame(self):
        # Read one frame into rx; returns (kind, seq, body memoryview, total). Checks CRC and (session) MAC.
        rx, mv = self.rx, self.rx_mv
        self.link.recv_into(mv[:HEADER_BYTES])
        t = ticks_us()
        magic, version, kind, flags, seq, body_len = struct.unpack_from(HEADER, rx, 0)
        if magic != MAGIC or version != VERSION:
            raise OffloadError(E_FRAME, "not an offload frame")
        total = HEADER_BYTES + body_len + (MAC_BYTES if flags & FLAG_MAC else 0) + 4
        if total > len(rx):
            raise OffloadError(E_FRAME, "answer of %d bytes is larger than expected" % total)
        self.link.recv_into(mv[HEADER_BYTES:total])
        self._t_header = t
        if crc32(mv[:total - 4]) != struct.unpack_from("<I", rx, total - 4)[0]:
            raise OffloadError(E_FRAME, "CRC mismatch in the answer")
        end = HEADER_BYTES + body_len
        self._signed = bool(flags & FLAG_MAC)
        if self._signed and self.session is not None:
            if self.session.digest(mv[:end]) != bytes(mv[end:end + MAC_BYTES]):
                raise OffloadError(E_FRAME, "answer MAC does not match")
        return kind, seq, mv[HEADER_BYTES:end], total

    def connect(self):
        # Open the link and run HELLO/WELCOME; with a key, check the server's proof and derive the session key.
        self.close()
        self.link.open()
        dev = self.cfg["device_id"].encode()
        nonce = _nonce()
        self.seq += 1
        body = struct.pack("<B", len(dev)) + dev + nonce
        hello = bytearray(struct.pack(HEADER, MAGIC, VERSION, KIND_HELLO, 0, self.seq, len(body)) + body + bytes(4))
        struct.pack_into("<I", hello, len(hello) - 4, crc32(memoryview(hello)[:-4]))
        self.link.send(hello)
        kind, _, body, _ = self._read_frame()
        if kind == KIND_REPLY:
            raise OffloadError(body[0], "server refused the session: %s" % bytes(body[12:]).decode())
        if kind != KIND_WELCOME:
            raise OffloadError(E_FRAME, "expected WELCOME")
        status, auth = body[0], body[1] & 1
        if status != OK:
            ln = struct.unpack_from("<H", body, 54)[0]
            raise OffloadError(status, "server refused the session: %s" % bytes(body[56:56 + ln]).decode())
        if self.key is not None:
            if not auth:
                raise OffloadError(AUTH_FAILED, "server does not authenticate, but this board has a key")
            session = Hmac(self.key.digest(SESSION_LABEL + nonce + bytes(body[2:18])))
            if session.digest(b"welcome") != bytes(body[18:50]):
                raise OffloadError(AUTH_FAILED, "server proof does not match: wrong server or key")
            self.session = session
        else:
            self.session = None
        self.reconnects += 1

    def predict_into(self, data, info):
        if len(data) != self.in_info.nbytes:
            raise ValueError("input is %d bytes, the model takes %d" % (len(data), self.in_info.nbytes))
        if not self.link.is_open():
            self.connect()
        t0 = ticks_us()
        self.seq += 1
        self.requests += 1
        struct.pack_into("<I", self.tx, 6, self.seq)
        self.tx[self.data_off:self.data_off + len(data)] = data
        n = self._frame_end(HEADER_BYTES + self.body_len, self.session)
        t1 = ticks_us()
        self.link.send(self.tx_mv[:n])
        t2 = ticks_us()
        kind, seq, body, info.reply_bytes = self._read_frame()
        info.request_bytes = n
        t4 = ticks_us()
        t3 = self._t_header
        if kind != KIND_REPLY or seq not in (self.seq, 0):
            raise OffloadError(E_FRAME, "answer is not the reply to request %d" % self.seq)
        status, source, queue_us, compute_us = struct.unpack_from("<BBII", body, 0)
        info.server_queue_us, info.server_compute_us = queue_us, compute_us
        if status != OK:
            ln = struct.unpack_from("<H", body, 10)[0]
            raise OffloadError(status, bytes(body[12:12 + ln]).decode())
        if self.session is not None and not self._signed:
            raise OffloadError(E_FRAME, "answer is not signed")
        out = self.out_info
        code, ndim = body[10], body[11]
        off = 12 + 2 * ndim
        nbytes = struct.unpack_from("<I", body, off + 8)[0]
        if code != DTYPES[out.dtype][0] or nbytes != out.nbytes or off + 12 + nbytes != len(body):
            raise OffloadError(E_FRAME, "answer tensor does not match the model's output")
        result = body[off + 12:off + 12 + nbytes]
        t5 = ticks_us()
        info.source = "reference" if source == 1 else "model"
        info.serialise_us = ticks_diff(t1, t0)
        info.send_us = ticks_diff(t2, t1)
        info.wait_us = ticks_diff(t3, t2)
        info.receive_us = ticks_diff(t4, t3)
        info.parse_us = ticks_diff(t5, t4)
        return result


