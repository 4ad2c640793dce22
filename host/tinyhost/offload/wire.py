"""Offload wire format: a pure codec for the compact binary frames between a board and ``tinyhost serve``.

No I/O here. The same layout is implemented for MicroPython in ``device/tinyfw/offload/__init__.py``; the tests
run one against the other. docs/offload.md describes the layout byte by byte.

Every frame::

    header  <2sBBHII   magic b"TO", version, kind, flags, sequence number, body length      (14 bytes)
    body    kind-specific, body length bytes
    mac     32 bytes HMAC-SHA256 over header+body, present when flags & FLAG_MAC
    crc32   <I over header+body+mac (zlib/binascii CRC-32)

Bodies (little-endian):

* HELLO   (device -> server): device id (u8 length + ASCII), client nonce (16 bytes)
* WELCOME (server -> device): status u8, flags u8 (bit 0: authentication on), server nonce (16),
  proof (32: HMAC(session key, b"welcome"), zeros without authentication), max frame bytes u32, message
* REQUEST (device -> server): model id (u8 length + ASCII), want u8 (WANT_*), tensor
* SPLIT   (device -> server): model id (u8 length + ASCII), split point u16 (operators the board ran), tensor
  count u8, tensors (the live tensors at the split point, in the order tinyhost.split lists them)
* REPLY   (server -> device): status u8, source u8 (SOURCE_*), queue µs u32, compute µs u32, then a tensor when
  status is OK, else a message
* tensor: dtype u8 (DTYPES), ndim u8, dims u16 x ndim, scale f32, zero point i32, data length u32, data
* message: u16 length + UTF-8 text
"""

import struct
import zlib
from dataclasses import dataclass

from ..errors import ProtocolError

MAGIC = b"TO"
VERSION = 1
HEADER = struct.Struct("<2sBBHII")
HEADER_BYTES = HEADER.size            # 14
CRC_BYTES = 4
MAC_BYTES = 32
NONCE_BYTES = 16
MAX_NDIM = 8
MAX_ID_BYTES = 64
DEFAULT_MAX_FRAME_BYTES = 1 << 20
# The largest HELLO (longest device id, MAC flag set): all a peer that has not authenticated may send.
MAX_HELLO_BYTES = HEADER_BYTES + 1 + MAX_ID_BYTES + NONCE_BYTES + MAC_BYTES + CRC_BYTES

KIND_HELLO, KIND_WELCOME, KIND_REQUEST, KIND_REPLY, KIND_SPLIT = 1, 2, 3, 4, 5
KINDS = (KIND_HELLO, KIND_WELCOME, KIND_REQUEST, KIND_REPLY, KIND_SPLIT)
FLAG_MAC = 0x0001

WANT_DEFAULT, WANT_MODEL, WANT_REFERENCE = 0, 1, 2
SOURCE_MODEL, SOURCE_REFERENCE = 0, 1

# dtype code -> (name, item bytes, struct char)
DTYPES = {1: ("int8", 1, "b"), 2: ("uint8", 1, "B"), 3: ("int16", 2, "h"), 4: ("int32", 4, "i"),
          5: ("float32", 4, "f")}
DTYPE_CODES = {name: code for code, (name, _, _) in DTYPES.items()}

# Status codes carried by WELCOME and REPLY. The device module has the same numbers.
OK = 0
BAD_FRAME = 1          # garbage, bad magic, truncated or inconsistent body
BAD_CRC = 2
BAD_VERSION = 3
TOO_LARGE = 4          # frame larger than the server accepts
AUTH_REQUIRED = 5      # request before a successful HELLO
AUTH_FAILED = 6        # unknown device or bad MAC
REPLAYED = 7           # sequence number not increasing
UNKNOWN_MODEL = 8
BAD_SHAPE = 9
BAD_DTYPE = 10
BAD_SIZE = 11          # data length does not match shape x dtype
BAD_QUANT = 12         # scale / zero point differ from the model's
BUSY = 13              # server queue full
INTERNAL = 14          # the model failed on the server
NO_REFERENCE = 15      # reference answer asked for, none configured
UNAVAILABLE = 16       # a relay could not reach the server
BAD_SPLIT = 17         # no such split point, or not the tensors alive at it
STATUS_NAMES = {OK: "ok", BAD_FRAME: "bad-frame", BAD_CRC: "bad-crc", BAD_VERSION: "bad-version",
                TOO_LARGE: "too-large", AUTH_REQUIRED: "auth-required", AUTH_FAILED: "auth-failed",
                REPLAYED: "replayed", UNKNOWN_MODEL: "unknown-model", BAD_SHAPE: "bad-shape",
                BAD_DTYPE: "bad-dtype", BAD_SIZE: "bad-size", BAD_QUANT: "bad-quant", BUSY: "busy",
                INTERNAL: "internal", NO_REFERENCE: "no-reference", UNAVAILABLE: "unavailable",
                BAD_SPLIT: "bad-split"}
# After these the server closes the connection: the byte stream or the session cannot be trusted any more.
FATAL_STATUSES = frozenset({BAD_FRAME, BAD_VERSION, TOO_LARGE, AUTH_FAILED})

_TENSOR_HEAD = struct.Struct("<BB")


def max_split_bytes(tensors):
    """The largest well-formed SPLIT frame carrying ``tensors`` (anything with shape and nbytes; longest model
    id, MAC)."""
    return HEADER_BYTES + 1 + MAX_ID_BYTES + 3 + sum(tensor_bytes(len(t.shape), t.nbytes) for t in tensors) \
        + MAC_BYTES + CRC_BYTES


def max_request_bytes(nbytes):
    """The largest well-formed REQUEST frame whose tensor holds ``nbytes`` of data (longest model id, most
    dimensions, MAC): what an authenticated device needs to send for a model with that input size."""
    return HEADER_BYTES + 1 + MAX_ID_BYTES + 1 + 2 + 2 * MAX_NDIM + 12 + nbytes + MAC_BYTES + CRC_BYTES

_TENSOR_QUANT = struct.Struct("<fiI")
_REPLY_HEAD = struct.Struct("<BBII")
_WELCOME_HEAD = struct.Struct("<BB")


class WireError(ProtocolError):
    """A frame or body does not follow the offload wire format. ``status`` is the status code to answer with."""

    default_hint = "check that the board and `tinyhost serve` run the same tinyhost version"

    def __init__(self, message, status=BAD_FRAME, hint=None):
        super().__init__(message, hint)
        self.status = status


@dataclass(frozen=True)
class Tensor:
    dtype: str              # "int8" | "uint8" | "int16" | "int32" | "float32"
    shape: tuple
    scale: float
    zero_point: int
    data: bytes


@dataclass(frozen=True)
class Frame:
    kind: int
    flags: int
    seq: int
    body: bytes
    mac: bytes              # b"" without FLAG_MAC
    signed: bytes           # header + body: what the MAC covers


@dataclass(frozen=True)
class Hello:
    device_id: str
    nonce: bytes


@dataclass(frozen=True)
class Welcome:
    status: int
    auth: bool
    nonce: bytes
    proof: bytes
    max_frame_bytes: int
    message: str = ""


@dataclass(frozen=True)
class Request:
    model_id: str
    want: int
    tensor: Tensor


@dataclass(frozen=True)
class SplitRequest:
    model_id: str
    k: int                  # operators [0, k) ran on the board; the server runs [k, n)
    tensors: tuple          # of Tensor


@dataclass(frozen=True)
class Reply:
    status: int
    source: int
    queue_us: int
    compute_us: int
    tensor: Tensor = None
    message: str = ""

    @property
    def ok(self):
        return self.status == OK


def status_name(status):
    return STATUS_NAMES.get(status, f"status-{status}")


# ---- frames -------------------------------------------------------------------------------------------------

def encode_frame(kind, seq, body, mac_fn=None):
    """Header + body (+ MAC from ``mac_fn(header_and_body)``) + CRC32, as bytes."""
    flags = FLAG_MAC if mac_fn is not None else 0
    signed = HEADER.pack(MAGIC, VERSION, kind, flags, seq & 0xFFFFFFFF, len(body)) + body
    mac = mac_fn(signed) if mac_fn is not None else b""
    if len(mac) != (MAC_BYTES if mac_fn is not None else 0):
        raise ValueError("mac_fn must return 32 bytes")
    frame = signed + mac
    return frame + struct.pack("<I", zlib.crc32(frame))


def parse_header(header, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES):
    """Check a 14-byte header; returns (kind, flags, seq, body_len, total_frame_bytes). Raises WireError."""
    if len(header) != HEADER_BYTES:
        raise WireError(f"header is {len(header)} bytes, expected {HEADER_BYTES}")
    magic, version, kind, flags, seq, body_len = HEADER.unpack(header)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise WireError(f"wire version {version}, this side speaks {VERSION}", status=BAD_VERSION)
    if kind not in KINDS:
        raise WireError(f"unknown frame kind {kind}")
    if flags & ~FLAG_MAC:
        raise WireError(f"unknown flags 0x{flags:04x}")
    total = HEADER_BYTES + body_len + (MAC_BYTES if flags & FLAG_MAC else 0) + CRC_BYTES
    if total > max_frame_bytes:
        raise WireError(f"frame of {total} bytes exceeds the limit of {max_frame_bytes}", status=TOO_LARGE)
    return kind, flags, seq, body_len, total


def decode_frame(frame, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES):
    """Decode one complete frame (bytes-like of exactly its length). Raises WireError."""
    frame = bytes(frame)
    kind, flags, seq, body_len, total = parse_header(frame[:HEADER_BYTES], max_frame_bytes)
    if len(frame) != total:
        raise WireError(f"frame is {len(frame)} bytes, its header says {total}")
    (crc,) = struct.unpack_from("<I", frame, total - CRC_BYTES)
    if zlib.crc32(frame[:total - CRC_BYTES]) != crc:
        raise WireError("CRC32 mismatch", status=BAD_CRC)
    end = HEADER_BYTES + body_len
    mac = frame[end:total - CRC_BYTES]
    return Frame(kind, flags, seq, frame[HEADER_BYTES:end], mac, frame[:end])


# ---- bodies -------------------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise WireError(f"body truncated: wanted {n} bytes at offset {self.pos} of {len(self.data)}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, st):
        return st.unpack(self.take(st.size))

    def short_text(self, what):
        (n,) = self.unpack(_U8)
        raw = self.take(n)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise WireError(f"{what} is not ASCII") from None

    def message(self):
        (n,) = self.unpack(_U16)
        return self.take(n).decode("utf-8", "replace")

    def end(self):
        if self.pos != len(self.data):
            raise WireError(f"{len(self.data) - self.pos} unexpected bytes after the body")


_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _short_text(text, what):
    raw = text.encode("ascii")
    if not raw or len(raw) > MAX_ID_BYTES:
        raise ValueError(f"{what} must be 1..{MAX_ID_BYTES} ASCII characters, got {text!r}")
    return _U8.pack(len(raw)) + raw


def _message(text):
    raw = text.encode("utf-8")[:0xFFFF]
    return _U16.pack(len(raw)) + raw


def encode_tensor(t):
    if t.dtype not in DTYPE_CODES:
        raise ValueError(f"dtype {t.dtype!r} is not one of {', '.join(DTYPE_CODES)}")
    if len(t.shape) > MAX_NDIM or any(not 0 <= d <= 0xFFFF for d in t.shape):
        raise ValueError(f"shape {t.shape} has more than {MAX_NDIM} dims or a dim outside 0..65535")
    return (_TENSOR_HEAD.pack(DTYPE_CODES[t.dtype], len(t.shape))
            + struct.pack(f"<{len(t.shape)}H", *t.shape)
            + _TENSOR_QUANT.pack(t.scale, t.zero_point, len(t.data)) + bytes(t.data))


def _read_tensor(r):
    code, ndim = r.unpack(_TENSOR_HEAD)
    if code not in DTYPES:
        raise WireError(f"unknown dtype code {code}", status=BAD_DTYPE)
    if ndim > MAX_NDIM:
        raise WireError(f"tensor has {ndim} dims, at most {MAX_NDIM} allowed", status=BAD_SHAPE)
    shape = struct.unpack(f"<{ndim}H", r.take(2 * ndim))
    scale, zero_point, nbytes = r.unpack(_TENSOR_QUANT)
    data = r.take(nbytes)
    return Tensor(DTYPES[code][0], tuple(shape), scale, zero_point, data)


def encode_hello(seq, device_id, nonce):
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    return encode_frame(KIND_HELLO, seq, _short_text(device_id, "device id") + nonce)


def decode_hello(body):
    r = _Reader(body)
    device_id = r.short_text("device id")
    nonce = r.take(NONCE_BYTES)
    r.end()
    return Hello(device_id, nonce)


def encode_welcome(seq, status, auth, nonce, proof, max_frame_bytes, message=""):
    body = (_WELCOME_HEAD.pack(status, 1 if auth else 0) + nonce + proof + _U32.pack(max_frame_bytes)
            + _message(message))
    return encode_frame(KIND_WELCOME, seq, body)


def decode_welcome(body):
    r = _Reader(body)
    status, flags = r.unpack(_WELCOME_HEAD)
    nonce = r.take(NONCE_BYTES)
    proof = r.take(MAC_BYTES)
    (max_frame_bytes,) = r.unpack(_U32)
    message = r.message()
    r.end()
    return Welcome(status, bool(flags & 1), nonce, proof, max_frame_bytes, message)


def encode_request(seq, request, mac_fn=None):
    body = _short_text(request.model_id, "model id") + _U8.pack(request.want) + encode_tensor(request.tensor)
    return encode_frame(KIND_REQUEST, seq, body, mac_fn)


def decode_request(body):
    r = _Reader(body)
    model_id = r.short_text("model id")
    (want,) = r.unpack(_U8)
    if want not in (WANT_DEFAULT, WANT_MODEL, WANT_REFERENCE):
        raise WireError(f"unknown 'want' value {want}")
    tensor = _read_tensor(r)
    r.end()
    return Request(model_id, want, tensor)


def encode_split(seq, request, mac_fn=None):
    body = (_short_text(request.model_id, "model id") + _U16.pack(request.k) + _U8.pack(len(request.tensors))
            + b"".join(encode_tensor(t) for t in request.tensors))
    return encode_frame(KIND_SPLIT, seq, body, mac_fn)


def decode_split(body):
    r = _Reader(body)
    model_id = r.short_text("model id")
    (k,) = r.unpack(_U16)
    (count,) = r.unpack(_U8)
    tensors = tuple(_read_tensor(r) for _ in range(count))
    r.end()
    return SplitRequest(model_id, k, tensors)


def tensor_bytes(ndim, nbytes):
    """Bytes of an encoded tensor of ``ndim`` dimensions and ``nbytes`` of data."""
    return _TENSOR_HEAD.size + 2 * ndim + _TENSOR_QUANT.size + nbytes


def request_frame_bytes(model_id, tensors):
    """Bytes of a REQUEST frame without MAC carrying ``tensors[0]`` (anything with shape and nbytes)."""
    t = tensors[0]
    return HEADER_BYTES + 1 + len(model_id) + 1 + tensor_bytes(len(t.shape), t.nbytes) + CRC_BYTES


def split_frame_bytes(model_id, tensors):
    """Bytes of a SPLIT frame without MAC carrying ``tensors`` (anything with shape and nbytes)."""
    return (HEADER_BYTES + 1 + len(model_id) + 2 + 1 + sum(tensor_bytes(len(t.shape), t.nbytes) for t in tensors)
            + CRC_BYTES)


def reply_frame_bytes(tensor):
    """Bytes of an OK REPLY frame without MAC carrying ``tensor`` (anything with shape and nbytes)."""
    return HEADER_BYTES + _REPLY_HEAD.size + tensor_bytes(len(tensor.shape), tensor.nbytes) + CRC_BYTES


def encode_reply(seq, reply, mac_fn=None):
    body = _REPLY_HEAD.pack(reply.status, reply.source, min(reply.queue_us, 0xFFFFFFFF),
                            min(reply.compute_us, 0xFFFFFFFF))
    body += encode_tensor(reply.tensor) if reply.status == OK else _message(reply.message)
    return encode_frame(KIND_REPLY, seq, body, mac_fn)


def decode_reply(body):
    r = _Reader(body)
    status, source, queue_us, compute_us = r.unpack(_REPLY_HEAD)
    if status == OK:
        tensor, message = _read_tensor(r), ""
    else:
        tensor, message = None, r.message()
    r.end()
    return Reply(status, source, queue_us, compute_us, tensor, message)


def error_reply(seq, status, message, mac_fn=None):
    return encode_reply(seq, Reply(status, SOURCE_MODEL, 0, 0, None, message), mac_fn)


class FrameScanner:
    """Splits a byte stream that mixes text and offload frames (a serial link) into both, resynchronising after
    garbage: ``feed(data)`` returns a list of ("text", bytes) and ("frame", bytes) items in stream order.

    A candidate frame starts at b"TO" with a valid header; it counts as a frame only when its CRC matches, so
    text that happens to contain "TO" passes through as text. Memory is bounded by ``max_frame_bytes``.
    """

    def __init__(self, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES):
        self.max_frame_bytes = max_frame_bytes
        self.buf = bytearray()
        self.frames_dropped = 0

    def feed(self, data):
        self.buf += data
        out = []
        while self.buf:
            start = self.buf.find(MAGIC[:1])
            if start < 0:
                out.append(("text", bytes(self.buf)))
                self.buf.clear()
                break
            if start > 0:
                out.append(("text", bytes(self.buf[:start])))
                del self.buf[:start]
            if len(self.buf) < HEADER_BYTES:
                if not MAGIC.startswith(bytes(self.buf[:2])):
                    out.append(("text", bytes(self.buf[:1])))
                    del self.buf[:1]
                    continue
                break
            try:
                _, _, _, _, total = parse_header(bytes(self.buf[:HEADER_BYTES]), self.max_frame_bytes)
            except WireError:
                out.append(("text", bytes(self.buf[:1])))
                del self.buf[:1]
                continue
            if len(self.buf) < total:
                break
            candidate = bytes(self.buf[:total])
            (crc,) = struct.unpack_from("<I", candidate, total - CRC_BYTES)
            if zlib.crc32(candidate[:-CRC_BYTES]) != crc:
                self.frames_dropped += 1
                out.append(("text", bytes(self.buf[:1])))
                del self.buf[:1]
                continue
            out.append(("frame", candidate))
            del self.buf[:total]
        return _merge_text(out)


def _merge_text(items):
    merged = []
    for kind, data in items:
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + data)
        else:
            merged.append((kind, data))
    return merged
