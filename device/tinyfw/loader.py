# tinyfw bootstrap loader: takes the runtime's source in frames on a board that has stock MicroPython only.
#
# The host sends this file through the raw REPL (checked, in pieces) and calls load(globals(), the largest unit's
# size). It speaks a subset of the protocol (docs/protocol.md): READY when it starts; HELLO; PUT_BEGIN (size,
# sha256), PUT_DATA (by offset, idempotent), PUT_END (sha256 checked, then the source runs in ``namespace``: the
# runtime's modules are defined unit by unit); BYE returns. Sequence numbers, ACK, NAK and retried copies as the
# runtime has them; a frame that stops arriving is completed by the host's next bytes and fails its CRC, one whose
# magic was hit is NAKed when the line rests. "\r" Ctrl-C outside a frame (what tinyhost and mpremote send to
# interrupt) returns too. Small, since it travels as REPL text.
from binascii import crc32
from struct import pack, unpack_from

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

_HELLO = const(0x01)
_BYE = const(0x04)
_PUT_BEGIN = const(0x15)
_PUT_DATA = const(0x16)
_PUT_END = const(0x17)
_OK = const(0x80)
_ERR = const(0x81)
_ACK = const(0x82)
_NAK = const(0x83)
_READY = const(0x85)
_FLAG_SYNC = const(1)
_PROTOCOL_VERSION = const(1)
_E_NO_MEMORY = const(10)
_E_INTERNAL = const(14)
_NAK_BAD_CRC = const(2)
_NAK_STALL = const(3)
_MAX_PAYLOAD = const(1024)


def load(namespace, unit_bytes):
    import sys
    import gc
    import hashlib
    import micropython
    import select
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    hello = ("loader=1\nprotocol=%d\nmax_payload=%d\nwindow=%d" % (
        _PROTOCOL_VERSION, _MAX_PAYLOAD, 4 if sys.platform in ("linux", "darwin") else 1)).encode()
    # a frame after its magic: type flags seq length hcheck, payload, crc
    f = bytearray(12 + _MAX_PAYLOAD)
    mv = memoryview(f)
    # one buffer for every unit, allocated while the heap is empty: units defined later cannot leave it in pieces
    unit = bytearray(unit_bytes)
    um = memoryview(unit)
    sha = None
    size = got = expected = nak_seen = 0
    last = -1
    cached = b""
    nak_sent = False
    poll = select.poll()
    poll.register(inp, select.POLLIN)

    def send(ftype, seq, payload=b""):
        h = pack("<BBHH", ftype, 0, seq, len(payload))
        c = crc32(h)
        frame = b"\xfe\xa7" + h + pack("<H", c & 0xFFFF) + payload + pack("<I", crc32(payload, c))
        out.write(frame)
        return frame

    micropython.kbd_intr(-1)
    try:
        send(_READY, 0, hello)
        while True:
            f[0] = prev = 0
            garbage = False
            while not (prev == 0xFE and f[0] == 0xA7):
                # bytes >= 0x80 outside a frame: one whose magic was hit; NAKed once the line rests
                if garbage and not poll.poll(30):
                    send(_NAK, expected, pack("<HB", expected, _NAK_STALL))
                    garbage = False
                prev = f[0]
                inp.readinto(mv[:1])
                if prev == 13 and f[0] == 3:
                    return
                garbage = garbage or (f[0] >= 0x80 and not nak_sent)
            inp.readinto(mv[:8])
            ftype, flags, seq, n, hcheck = unpack_from("<BBHHH", f)
            hc = crc32(mv[:6])
            header = hc & 0xFFFF == hcheck and n <= _MAX_PAYLOAD
            if header:
                inp.readinto(mv[8:12 + n])
            d = (seq - expected) & 0xFFFF
            if header and flags & _FLAG_SYNC:
                d = 0
            if not header or crc32(mv[8:8 + n], hc) != unpack_from("<I", f, 8 + n)[0] or 0 < d < 0x8000:
                # damaged (NAKed at once when it is the expected frame, else once), or one before it was lost
                if (header and d == 0) or not nak_sent or (header and d <= nak_seen):
                    send(_NAK, expected, pack("<HB", expected, _NAK_BAD_CRC))
                    nak_sent = True
                nak_seen = d if header and d < 0x8000 else 0
                continue
            if d == 0:
                expected = (seq + 1) & 0xFFFF
                nak_sent = False
            # PUT_DATA, new or a copy: only the bytes past what it has are taken
            if ftype == _PUT_DATA:
                off = unpack_from("<I", f, 8)[0]
                end = off + n - 4
                if sha and 4 <= n and off <= got and end <= size:
                    if end > got:
                        um[got:end] = mv[12 + got - off:8 + n]
                        got = end
                elif d == 0:
                    send(_ERR, seq, pack("<H", _E_INTERNAL) + b"PUT_DATA out of place")
                    continue
                send(_ACK, seq)
                continue
            # a request already answered, again: the same answer
            if d:
                if seq == last:
                    out.write(cached)
                else:
                    send(_ACK, seq)
                continue
            last = seq
            answer = (_OK, b"")
            try:
                if ftype == _HELLO:
                    answer = (_OK, hello)
                elif ftype == _PUT_BEGIN:
                    sha = None
                    size = unpack_from("<I", f, 8)[0]
                    if size > unit_bytes:
                        raise ValueError("unit larger than %d bytes" % unit_bytes)
                    sha = bytes(mv[12:44])
                    got = 0
                elif ftype == _PUT_END:
                    if not sha or got < size or hashlib.sha256(um[:size]).digest() != sha:
                        raise ValueError("source incomplete or altered")
                    sha = None
                    exec(um[:size], namespace)
                    gc.collect()
                elif ftype != _BYE:
                    raise ValueError("not a loader command")
            except Exception as e:
                sha = None
                answer = (_ERR, pack("<H", _E_NO_MEMORY if isinstance(e, MemoryError) else _E_INTERNAL)
                          + repr(e).encode())
            cached = send(answer[0], seq, answer[1])
            if ftype == _BYE:
                # the bytes after it (the host pads every frame) would be taken for REPL input
                while poll.poll(50):
                    inp.readinto(mv[:1])
                return
    finally:
        micropython.kbd_intr(3)
