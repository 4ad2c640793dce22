"""The tinyfw wire protocol, host side: frame codec and payload codecs. Pure functions, no I/O.

The same format is implemented for the device in ``device/tinyfw/frame.py``; docs/protocol.md is the
specification and tests/test_protocol*.py cross-check the two.

Frame (integers little-endian)::

    FE A7 | type u8 | flags u8 | seq u16 | length u16 | hcheck u16 | payload (length bytes) | crc u32

``hcheck`` is ``crc32(type..length) & 0xFFFF``: a damaged length is caught before it is believed. ``crc`` is the
CRC-32 of the payload continued from ``crc32(type..length)``, so it covers the header fields too.
"""

import enum
import re
import struct
import zlib
from dataclasses import dataclass

MAGIC = b"\xfe\xa7"
HEADER_BYTES = 10
TRAILER_BYTES = 4
OVERHEAD_BYTES = HEADER_BYTES + TRAILER_BYTES
PAYLOAD_LIMIT = 16384
PROTOCOL_VERSION = 1

FLAG_SYNC = 0x01        # start of a session: the device takes this seq as the next expected one
FLAG_STREAM = 0x02      # INVOKE: stream one EVENT frame per run
FLAG_INFO = 0x04        # INFER: the reply carries the info block (which path answered, each stage's time)
# The INFER reply's info block (docs/offload.md): source u8, flags u8, error i16, retries u8, mode u8, 2 pad bytes,
# confidence f32, then 11 u32: local, serialise, send, wait, receive, parse, server queue, server compute and total
# microseconds, request and reply bytes.
INFO_BLOCK = struct.Struct("<BBhBBxxf11I")
INFO_BYTES = INFO_BLOCK.size            # 56

_HEADER = struct.Struct("<2sBBHHH")


class T(enum.IntEnum):
    """Frame types. Requests go host -> device; replies and events (>= 0x80) device -> host."""
    HELLO = 0x01
    INFO = 0x02
    STATS = 0x03
    BYE = 0x04
    RESET = 0x05
    TIMES = 0x06
    LIST = 0x10
    HASH = 0x11
    REMOVE = 0x12
    RENAME = 0x13
    MKDIR = 0x14
    PUT_BEGIN = 0x15
    PUT_DATA = 0x16
    PUT_END = 0x17
    PUT_ABORT = 0x18
    GET = 0x19
    LOAD = 0x20
    SET_INPUT = 0x21
    INVOKE = 0x22
    GET_OUTPUT = 0x23
    INFER = 0x24
    UNLOAD = 0x25
    STREAM_START = 0x26
    AUDIO = 0x27
    STREAM_STOP = 0x28
    OK = 0x80
    ERR = 0x81
    ACK = 0x82
    NAK = 0x83
    EVENT = 0x84
    READY = 0x85


class ErrorCode(enum.IntEnum):
    """Codes in ERR replies."""
    UNKNOWN_COMMAND = 1
    BAD_ARGS = 2
    NOT_FOUND = 3
    EXISTS = 4
    NO_SPACE = 5
    IO = 6
    HASH_MISMATCH = 7
    NO_MODEL = 8
    MODEL = 9
    NO_MEMORY = 10
    STATE = 11
    NO_ENGINE = 12
    TOO_BIG = 13
    INTERNAL = 14


class NakReason(enum.IntEnum):
    BAD_HEADER = 1
    BAD_CRC = 2
    STALL = 3
    GAP = 4
    TOO_BIG = 5


@dataclass(frozen=True)
class Frame:
    ftype: int
    seq: int
    payload: bytes = b""
    flags: int = 0

    @property
    def name(self):
        try:
            return T(self.ftype).name
        except ValueError:
            return f"0x{self.ftype:02x}"


class Status(enum.Enum):
    FRAME = "frame"
    INCOMPLETE = "incomplete"       # a prefix of a frame (or of its magic): wait for more bytes
    BAD_HEADER = "bad header"       # header check failed: not a frame start after all
    TOO_BIG = "too big"             # header fine but the length is over the limit
    BAD_CRC = "bad crc"             # payload or trailer damaged
    NO_MAGIC = "no magic"           # the bytes at this position do not start a frame


def encode_frame(ftype, seq, payload=b"", flags=0):
    """The bytes of one frame."""
    payload = bytes(payload)
    if len(payload) > PAYLOAD_LIMIT:
        raise ValueError(f"payload of {len(payload)} bytes is over the {PAYLOAD_LIMIT}-byte frame limit")
    if not 0 <= seq <= 0xFFFF:
        raise ValueError(f"seq {seq} is not a u16")
    fields = struct.pack("<BBHH", int(ftype), flags, seq, len(payload))
    hc = zlib.crc32(fields)
    return MAGIC + fields + struct.pack("<H", hc & 0xFFFF) + payload + struct.pack("<I", zlib.crc32(payload, hc))


def decode_at(buf, start=0, max_payload=PAYLOAD_LIMIT):
    """Try to decode a frame starting exactly at ``buf[start]``.

    Returns ``(status, frame, end)``: ``frame`` is a :class:`Frame` only for ``Status.FRAME``; ``end`` is the index
    after the frame (FRAME) or after the header (BAD_CRC, TOO_BIG), else ``start``.
    """
    avail = len(buf) - start
    if avail < len(MAGIC):
        if avail <= 0 or bytes(buf[start:start + avail]) == MAGIC[:avail]:
            return Status.INCOMPLETE, None, start
        return Status.NO_MAGIC, None, start
    if bytes(buf[start:start + 2]) != MAGIC:
        return Status.NO_MAGIC, None, start
    if avail < HEADER_BYTES:
        return Status.INCOMPLETE, None, start
    _, ftype, flags, seq, n, check = _HEADER.unpack_from(buf, start)
    hc = zlib.crc32(bytes(buf[start + 2:start + 8]))
    if hc & 0xFFFF != check:
        return Status.BAD_HEADER, None, start
    if n > max_payload:
        return Status.TOO_BIG, None, start + HEADER_BYTES
    end = start + HEADER_BYTES + n + TRAILER_BYTES
    if len(buf) < end:
        return Status.INCOMPLETE, None, start
    payload = bytes(buf[start + HEADER_BYTES:start + HEADER_BYTES + n])
    (crc,) = struct.unpack_from("<I", buf, end - TRAILER_BYTES)
    if zlib.crc32(payload, hc) != crc:
        return Status.BAD_CRC, None, start + HEADER_BYTES
    return Status.FRAME, Frame(ftype, seq, payload, flags), end


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns the frames completed so far; bytes outside frames are text.

    After a bad frame it resumes scanning one byte after the bad frame's magic, so a frame that follows garbage
    (or a damaged frame) is still found. ``frames_bad`` counts frames rejected by header check, length or CRC.
    """

    def __init__(self, max_payload=PAYLOAD_LIMIT):
        self.max_payload = max_payload
        self._buf = bytearray()
        self.text = bytearray()        # non-frame bytes, oldest first; the caller drains it
        self.frames_bad = 0
        self.noise_bytes = 0           # bytes of damaged frames (valid header, bad CRC): neither frame nor text
        self._noise_end = 0            # in _buf: bytes before this belong to a damaged frame

    def _text(self, start, stop):
        """buf[start:stop] is outside any frame: text, except what lies inside a damaged frame's extent (its
        payload is binary, and could hold anything, the raw REPL's end marker included)."""
        cut = min(max(self._noise_end, start), stop)
        self.noise_bytes += cut - start
        self.text += self._buf[cut:stop]

    def feed(self, data):
        self._buf += data
        frames = []
        buf = self._buf
        pos = 0
        while True:
            at = buf.find(MAGIC[0], pos)
            if at < 0:
                self._text(pos, len(buf))
                pos = len(buf)
                break
            self._text(pos, at)
            status, frame, end = decode_at(buf, at, self.max_payload)
            if status is Status.INCOMPLETE:
                pos = at
                break
            if status is Status.FRAME:
                frames.append(frame)
                pos = end
                continue
            if status is Status.BAD_CRC:      # the header is sound, so the frame's extent is known
                n = _HEADER.unpack_from(buf, at)[4]
                self._noise_end = max(self._noise_end, at + HEADER_BYTES + n + TRAILER_BYTES)
            if status is not Status.NO_MAGIC:
                self.frames_bad += 1
            self._text(at, at + 1)
            pos = at + 1
        del buf[:pos]
        self._noise_end = max(0, self._noise_end - pos)
        return frames

    def pending(self):
        """Bytes held back as the possible beginning of a frame."""
        return bytes(self._buf)

    def discard_pending(self):
        """Give up on the frame begun in the pending bytes (they stopped arriving): scan on after its magic."""
        if self._buf:
            self.frames_bad += 1
            self._text(0, 1)
            rest = bytes(self._buf[1:])
            self._buf.clear()
            self._noise_end = max(0, self._noise_end - 1)
            return self.feed(rest)
        return []

    def take_text(self):
        text = bytes(self.text)
        self.text.clear()
        return text


# -- payloads -----------------------------------------------------------------------------------------------------

def _path(path):
    raw = str(path).encode()
    if not raw or b"\0" in raw:
        raise ValueError(f"bad remote path {path!r}")
    return raw


def parse_kv(payload):
    """``key=value`` lines (INFO, STATS, HELLO, LOAD replies) -> dict of str."""
    out = {}
    for line in bytes(payload).decode(errors="replace").split("\n"):
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def parse_error(payload):
    """ERR payload -> (code, message); code is an ErrorCode when known."""
    if len(payload) < 2:
        return 0, "(empty error reply)"
    (code,) = struct.unpack_from("<H", payload)
    message = bytes(payload[2:]).decode(errors="replace")
    try:
        code = ErrorCode(code)
    except ValueError:
        pass
    return code, message


def parse_nak(payload):
    """NAK payload -> (expected seq, reason)."""
    if len(payload) != 3:
        raise ValueError("NAK payload must be 3 bytes")
    expected, reason = struct.unpack("<HB", payload)
    return expected, reason


def parse_event(payload):
    """EVENT payload -> (index, value)."""
    return struct.unpack("<II", payload)


def pack_list(path, start=0):
    return struct.pack("<H", start) + _path(path)


_LIST_ESCAPE = re.compile(r"\\(.)")


def parse_list(payload):
    """LIST reply -> (more, [(name, size, is_dir)]). A name's newlines and backslashes come escaped (``\\n``,
    ``\\\\``), so that each entry is one line."""
    if not payload:
        raise ValueError("empty LIST reply")
    more = bool(payload[0])
    entries = []
    for line in bytes(payload[1:]).decode(errors="replace").split("\n"):
        if not line:
            continue
        kind, size, name = line.split(" ", 2)
        name = _LIST_ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), name)
        entries.append((name, int(size), kind == "d"))
    return more, entries


def parse_hash(payload):
    """HASH reply -> (sha256 hex, size)."""
    if len(payload) != 36:
        raise ValueError("HASH reply must be 36 bytes")
    return bytes(payload[:32]).hex(), struct.unpack_from("<I", payload, 32)[0]


def pack_rename(src, dst):
    return _path(src) + b"\0" + _path(dst)


def pack_put_begin(size, sha256_digest, path):
    if len(sha256_digest) != 32:
        raise ValueError("sha256 digest must be 32 bytes")
    return struct.pack("<I", size) + bytes(sha256_digest) + _path(path)


def pack_put_data(offset, data):
    return struct.pack("<I", offset) + bytes(data)


def pack_get(path, offset, max_bytes):
    return struct.pack("<IH", offset, max_bytes) + _path(path)


def parse_get(payload):
    """GET reply -> (file size, data)."""
    return struct.unpack_from("<I", payload)[0], bytes(payload[4:])


def pack_load(path, backend="auto", keep_free_bytes=0):
    """LOAD: backend NUL path, then NUL and the heap (decimal bytes) the model is to leave free for what comes after
    it (a stream: tinyhost.stream.STREAM_KEEP_FREE_BYTES) when there is any."""
    payload = str(backend).encode() + b"\0" + _path(path)
    return payload + b"\0%d" % keep_free_bytes if keep_free_bytes else payload


def pack_set_input(index, offset, data):
    return struct.pack("<BI", index, offset) + bytes(data)


def pack_get_output(index, offset, max_bytes):
    return struct.pack("<BIH", index, offset, max_bytes)


parse_get_output = parse_get


def pack_invoke(runs, warmup):
    return struct.pack("<II", runs, warmup)


@dataclass(frozen=True)
class InvokeSummary:
    runs: int
    total_us: int
    min_us: int
    max_us: int
    alloc_bytes: int        # heap the engine allocated during the timed runs (0 when it keeps its promise)


def parse_invoke(payload):
    runs, lo, hi, t_min, t_max, alloc = struct.unpack("<IIIIII", payload)
    return InvokeSummary(runs, lo | (hi << 32), t_min, t_max, alloc)


def pack_times(offset, count):
    return struct.pack("<IH", offset, count)


def parse_times(payload):
    return list(struct.unpack(f"<{len(payload) // 4}I", payload))


def parse_infer(payload):
    """INFER reply -> (time_us, output bytes)."""
    return struct.unpack_from("<I", payload)[0], bytes(payload[4:])


def parse_infer_info(payload):
    """INFER-with-FLAG_INFO reply (time u32, info length u8, info block, output 0) -> (time_us, the info block's
    fields as INFO_BLOCK unpacks them, output bytes). ValueError on a reply without the block."""
    payload = bytes(payload)
    if len(payload) < 5 or payload[4] < INFO_BYTES or len(payload) < 5 + payload[4]:
        raise ValueError("INFER reply carries no info block")
    time_us, n = struct.unpack_from("<IB", payload)
    return time_us, INFO_BLOCK.unpack_from(payload, 5), payload[5 + n:]


# STREAM_START (docs/protocol.md, docs/streaming.md); device/tinyfw/cmd_stream.py's START_FORMAT (checked by
# tests/test_stream.py)
STREAM_START_FORMAT = "<HBBHBxIIIHH"
STREAM_SOURCE_SERIAL = 0
STREAM_SOURCE_MIC = 1
DETECTION_BYTES = 10            # board ms u32, audio ms u32, class u8, score u8
BUSY_BYTES = 8                  # start u32, end u32 of a hop's work: board time since the stream started, 10 us units
BUSY_TICK_S = 1e-5


def pack_stream_start(infer_every=0, smooth=0, threshold=200, refractory_ms=1000, source=STREAM_SOURCE_SERIAL,
                      classes=0, backlog_hops=0, seconds=0, mic="", window_samples=0, fft_size=0):
    return struct.pack(STREAM_START_FORMAT, infer_every, smooth, threshold, refractory_ms, source, classes,
                       backlog_hops, seconds, window_samples, fft_size) + mic.encode()


def parse_detection(raw):
    """10 detection bytes -> (board_ms, audio_ms, class, score)."""
    return struct.unpack("<IIBB", raw)


def parse_audio(payload):
    """AUDIO reply -> (hops so far, [(board_ms, audio_ms, class, score), ...])."""
    hops, n = struct.unpack_from("<IB", payload, 0)
    return hops, [parse_detection(payload[5 + i * DETECTION_BYTES:5 + (i + 1) * DETECTION_BYTES]) for i in range(n)]


def parse_audio_busy(payload):
    """AUDIO reply -> [(start_s, end_s), ...]: when the board was busy with each hop since the last reply (its
    duty-cycle pin high), in the board's clock since the stream started."""
    at = 5 + payload[4] * DETECTION_BYTES
    if len(payload) <= at:
        return []
    n = payload[at]
    ticks = struct.unpack_from(f"<{2 * n}I", payload, at + 1)
    return [(ticks[2 * i] * BUSY_TICK_S, ticks[2 * i + 1] * BUSY_TICK_S) for i in range(n)]
