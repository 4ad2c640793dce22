# tinyfw frame codec, device side (docs/protocol.md). Plain MicroPython; also imports under CPython for tests.
#
# Frame: magic FE A7 | type u8 | flags u8 | seq u16 | length u16 | hcheck u16 | payload | crc u32
# All integers little-endian. hcheck = crc32(type..length) & 0xFFFF, so a damaged length is never trusted;
# crc = crc32(payload) continued from crc32(type..length), so it covers the header fields as well.
# Buffers are allocated once in FrameIO.__init__; reading and writing a frame allocate nothing on a 64-bit port
# and at most the CRC integers on a 32-bit one.
#
# The protocol numbers below are private (`_X = const(...)` is compiled away: no global, no qstr, no RAM); the
# modules that use them keep private copies, and tests/test_device_constants.py checks every copy against
# tinyhost.protocol. Public are only the few names the device-side test scripts read (tests/device/).
from binascii import crc32

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_MAGIC0 = const(0xFE)
_MAGIC1 = const(0xA7)
HEADER_BYTES = const(10)
TRAILER_BYTES = const(4)
_PROTOCOL_VERSION = const(1)
_PAYLOAD_LIMIT = const(16384)        # no frame carries more, whatever a device offers

_FLAG_SYNC = const(1)                # host: accept this seq as the start of a new session
_FLAG_STREAM = const(2)              # host: INVOKE streams an EVENT frame per run
_FLAG_INFO = const(4)                # host: INFER's reply carries the info block (tinyfw.cmd_model)
_INFO_BYTES = const(56)              # the info block of an INFER reply with FLAG_INFO

# Requests (host -> device)
_HELLO = const(0x01)
_INFO = const(0x02)
_STATS = const(0x03)
_BYE = const(0x04)
_RESET = const(0x05)
_TIMES = const(0x06)
_LIST = const(0x10)
_HASH = const(0x11)
_REMOVE = const(0x12)
_RENAME = const(0x13)
_MKDIR = const(0x14)
_PUT_BEGIN = const(0x15)
PUT_DATA = const(0x16)
_PUT_END = const(0x17)
_PUT_ABORT = const(0x18)
_GET = const(0x19)
_LOAD = const(0x20)
_SET_INPUT = const(0x21)
_INVOKE = const(0x22)
_GET_OUTPUT = const(0x23)
_INFER = const(0x24)
_UNLOAD = const(0x25)
_STREAM_START = const(0x26)
_AUDIO = const(0x27)
_STREAM_STOP = const(0x28)
# Replies and events (device -> host)
_OK = const(0x80)
_ERR = const(0x81)
_ACK = const(0x82)
_NAK = const(0x83)
_EVENT = const(0x84)
_READY = const(0x85)

# Error codes carried by ERR replies (payload: code u16, then a UTF-8 message)
_E_UNKNOWN_COMMAND = const(1)
_E_BAD_ARGS = const(2)
_E_NOT_FOUND = const(3)
_E_EXISTS = const(4)
_E_NO_SPACE = const(5)
_E_IO = const(6)
_E_HASH_MISMATCH = const(7)
_E_NO_MODEL = const(8)
_E_MODEL = const(9)
_E_NO_MEMORY = const(10)
_E_STATE = const(11)
_E_NO_ENGINE = const(12)
_E_TOO_BIG = const(13)
_E_INTERNAL = const(14)

# NAK reasons (payload: expected seq u16, reason u8)
_NAK_BAD_HEADER = const(1)
_NAK_BAD_CRC = const(2)
_NAK_STALL = const(3)
_NAK_GAP = const(4)
_NAK_TOO_BIG = const(5)

# read_frame() results (R_FRAME is 0: any other result is a reason the frame was not taken)
R_FRAME = const(0)
R_EOF = const(1)
_R_BAD_HEADER = const(2)
_R_TOO_BIG = const(3)
_R_BAD_CRC = const(4)
_R_STALL = const(5)
_R_INTERRUPT = const(6)
_R_REST = const(7)                  # the line rested while `rest_wanted` was set

_TAIL = const(8)                    # last bytes of a frame read one by one, each with a timeout
_IDLE_MS = const(30)                # a byte after this long without one starts a new burst (FrameIO.idle)
_SMALL = const(22)                  # header + 8 payload bytes + trailer: the ACK/NAK/EVENT buffer


class DevError(Exception):
    """``DevError(code, msg)``: a command failed; the runtime turns it into an ERR reply carrying ``args``, the
    error code (E_*) and the message."""


def u16(b, i):
    return b[i] | (b[i + 1] << 8)


def u32(b, i):
    return b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24)


def put16(b, i, v):
    b[i] = v & 0xFF
    b[i + 1] = (v >> 8) & 0xFF


def put32(b, i, v):
    b[i] = v & 0xFF
    b[i + 1] = (v >> 8) & 0xFF
    b[i + 2] = (v >> 16) & 0xFF
    b[i + 3] = (v >> 24) & 0xFF


def seal(buf, ftype, flags, seq, n):
    """Fill in header and trailer around the ``n`` payload bytes already at buf[10:10+n]; returns frame length."""
    mv = memoryview(buf)
    buf[0] = _MAGIC0
    buf[1] = _MAGIC1
    buf[2] = ftype
    buf[3] = flags
    put16(buf, 4, seq)
    put16(buf, 6, n)
    hc = crc32(mv[2:8])
    put16(buf, 8, hc & 0xFFFF)
    put32(buf, HEADER_BYTES + n, crc32(mv[HEADER_BYTES:HEADER_BYTES + n], hc))
    return HEADER_BYTES + n + TRAILER_BYTES


class FrameIO:
    """Reads frames from ``stream_in`` (readinto) and writes them to ``stream_out`` (write).

    Bytes outside frames are text: they are handed to ``on_text(byte, burst_start)`` one by one. A frame whose
    bytes stop arriving is abandoned after ``byte_timeout_ms`` (when ``select.poll`` exists on this port).
    ACK, NAK and EVENT frames share one small buffer (``small``; payload at small[10:18]), see send_small.
    """

    def __init__(self, stream_in, stream_out, max_payload, byte_timeout_ms=150):
        self.inp = stream_in
        self.out = stream_out
        self.buf = bytearray(HEADER_BYTES + max_payload + TRAILER_BYTES)
        mv = self.mv = memoryview(self.buf)
        self.payload = mv[HEADER_BYTES:]
        self.full_payload = mv[HEADER_BYTES:HEADER_BYTES + max_payload]     # its length is max_payload
        small = self.small = bytearray(_SMALL)
        small[0] = _MAGIC0
        small[1] = _MAGIC1
        smv = memoryview(small)
        # header fields of the frame buffer and of the small one; then per small-frame size (0, 3 or 8 payload
        # bytes, index n // 3) the payload the CRC covers and the whole frame
        self.views = (mv[2:8], smv[2:8], smv[10:10], smv[:14], smv[10:13], smv[:17], smv[10:18], smv[:22],
                      mv[0:1])
        # views[8]: where bytes are read one at a time (the frame buffer's first byte, written only when a reply
        # is sealed there); a view in this tuple, not an attribute: the instance stays at 17 attributes, the
        # smallest attribute table on the 64-bit VM
        self.byte_timeout_ms = byte_timeout_ms
        self.poll = None
        try:
            import select
            self.poll = select.poll()
            self.poll.register(stream_in, select.POLLIN)
            self.poll.poll(0)         # a stream that cannot be polled fails here, not in the loop
        except (ImportError, AttributeError, OSError, TypeError):
            self.poll = None
        self.ftype = 0
        self.flags = 0
        self.seq = 0
        self.n = 0
        self.header_ok = False       # the last bad frame still had a valid header (its seq can be trusted)
        self.idle = True             # nothing arrived for _IDLE_MS before the current byte
        self.rest_wanted = False     # read_frame returns _R_REST when the line next rests _IDLE_MS (set by the
        #                              runtime while damage it has not answered with a NAK is outstanding)

    # -- reading ---------------------------------------------------------------------------------------------
    def _wait(self, timeout_ms):
        """True when a byte can be read within timeout_ms (always True without poll)."""
        if self.poll is None:
            return True
        for _ in self.poll.ipoll(timeout_ms):
            return True
        return False

    def _read_timed(self, start, count):
        """Read ``count`` bytes one by one into buf[start:], each within byte_timeout_ms; R_FRAME when all came,
        else R_EOF or _R_STALL."""
        buf = self.buf
        one = self.views[8]
        for i in range(start, start + count):
            if not self._wait(self.byte_timeout_ms):
                return _R_STALL
            if self.inp.readinto(one) != 1:
                return R_EOF
            buf[i] = one[0]
        return R_FRAME

    def read_frame(self, on_text):
        """Read bytes until a frame or a reason to stop; returns one of the R_* codes.

        After R_FRAME: ``ftype``, ``flags``, ``seq``, ``n`` describe it and ``payload[:n]`` holds its payload.
        ``on_text(byte, burst_start)`` returns True to stop reading (_R_INTERRUPT) or None/False to go on.
        A Ctrl-C (0x03) that starts a burst is held back like a magic byte: followed at once by the magic's
        second byte it is a frame start damaged on the line (taken as the magic), else it is text.
        """
        one = self.views[8]
        pending_magic = False
        held = False                        # a burst-starting Ctrl-C waiting for the byte after it
        while True:
            if self.poll is not None and not self._wait(_IDLE_MS):
                self.idle = True
                if held:
                    held = False
                    if on_text(3, True):
                        return _R_INTERRUPT
                if self.rest_wanted:
                    self.rest_wanted = False
                    return _R_REST
                while not self._wait(1000):
                    pass
            burst_start = self.idle
            self.idle = False
            if self.inp.readinto(one) != 1:
                return R_EOF
            c = one[0]
            if (pending_magic or held) and c == _MAGIC1:
                break
            if held:
                held = False
                if on_text(3, True):
                    return _R_INTERRUPT
                burst_start = False
            elif burst_start and c == 3 and self.poll is not None:
                held = True
                continue
            pending_magic = c == _MAGIC0    # held back: the next byte says whether a frame starts
            if not pending_magic and on_text(c, burst_start):
                return _R_INTERRUPT
        # the rest of a frame: header fields, checked before its length is trusted, then payload and CRC
        buf = self.buf
        self.header_ok = False
        r = self._read_timed(2, HEADER_BYTES - 2)
        if r:
            return r
        hc = crc32(self.views[0])
        if hc & 0xFFFF != u16(buf, 8):
            return _R_BAD_HEADER
        self.header_ok = True
        self.ftype = buf[2]
        self.flags = buf[3]
        self.seq = u16(buf, 4)
        n = u16(buf, 6)
        self.n = n
        full = self.full_payload
        if n > len(full):
            return _R_TOO_BIG
        total = n + TRAILER_BYTES
        bulk = total - _TAIL if total > _TAIL else 0
        if bulk and self.inp.readinto(self.payload, bulk) != bulk:
            return R_EOF
        r = self._read_timed(HEADER_BYTES + bulk, total - bulk)
        if r:
            return r
        data = full if n == len(full) else self.mv[HEADER_BYTES:HEADER_BYTES + n]
        if crc32(data, hc) != u32(buf, HEADER_BYTES + n):
            return _R_BAD_CRC
        return R_FRAME

    # -- writing ---------------------------------------------------------------------------------------------
    def send_buffer(self, buf, ftype, flags, seq, n):
        """Send the frame whose ``n`` payload bytes are already at buf[10:10+n]; returns the frame length."""
        length = seal(buf, ftype, flags, seq, n)
        self.write(memoryview(buf)[:length])
        return length

    def send_small(self, ftype, seq, n):
        """Send an ACK (n 0), NAK (n 3) or EVENT (n 8) whose payload is at small[10:10+n]; allocates nothing
        beyond the CRC integers on a 32-bit port."""
        b = self.small
        v = self.views
        b[2] = ftype
        put16(b, 4, seq)
        b[6] = n
        hc = crc32(v[1])
        put16(b, 8, hc & 0xFFFF)
        k = 2 + 2 * (n // 3)
        put32(b, HEADER_BYTES + n, crc32(v[k], hc))
        self.write(v[k + 1])

    def write(self, mv):
        out = self.out
        done = 0
        total = len(mv)
        while done < total:
            w = out.write(mv[done:] if done else mv)
            if w is None:            # a stream that does not report progress wrote it all
                return
            done += w
