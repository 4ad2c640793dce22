"""Property tests of the host frame codec (tinyhost.protocol) and its payload codecs."""

import struct
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyhost import protocol as P

payloads = st.binary(min_size=0, max_size=3000)
seqs = st.integers(0, 0xFFFF)
types = st.sampled_from(list(P.T))
flags = st.integers(0, 255)


@given(types, seqs, payloads, flags)
def test_round_trip(ftype, seq, payload, flag):
    raw = P.encode_frame(ftype, seq, payload, flag)
    assert len(raw) == P.OVERHEAD_BYTES + len(payload)
    status, frame, end = P.decode_at(raw)
    assert status is P.Status.FRAME and end == len(raw)
    assert frame == P.Frame(ftype, seq, payload, flag)
    assert P.FrameDecoder().feed(raw) == [frame]


@given(types, seqs, payloads, st.data())
def test_truncated_frame_is_incomplete_never_a_frame(ftype, seq, payload, data):
    raw = P.encode_frame(ftype, seq, payload)
    cut = data.draw(st.integers(0, len(raw) - 1))
    status, frame, end = P.decode_at(raw[:cut])
    assert status is P.Status.INCOMPLETE and frame is None and end == 0
    decoder = P.FrameDecoder()
    assert decoder.feed(raw[:cut]) == []
    assert decoder.feed(raw[cut:]) == [P.Frame(ftype, seq, payload)]     # the rest completes it


@given(types, seqs, payloads, st.data())
def test_any_corrupted_byte_is_rejected(ftype, seq, payload, data):
    raw = bytearray(P.encode_frame(ftype, seq, payload))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    status, frame, _ = P.decode_at(bytes(raw))
    assert status is not P.Status.FRAME and frame is None
    if pos >= 2:    # magic intact: the header check, the length limit or the CRC catches it
        assert status in (P.Status.BAD_HEADER, P.Status.BAD_CRC, P.Status.TOO_BIG, P.Status.INCOMPLETE)
    decoder = P.FrameDecoder()
    assert decoder.feed(bytes(raw)) == []


@settings(max_examples=200)
@given(st.lists(st.tuples(st.binary(max_size=300), types, seqs, st.binary(max_size=500)), min_size=1, max_size=6),
       st.binary(max_size=300), st.integers(1, 64))
def test_garbage_between_frames_resync_finds_every_frame(parts, tail, chunk):
    stream = b""
    frames = []
    for garbage, ftype, seq, payload in parts:
        frames.append(P.Frame(ftype, seq, payload))
        stream += garbage + P.encode_frame(ftype, seq, payload)
    stream += tail
    decoder = P.FrameDecoder()
    got = []
    for i in range(0, len(stream), chunk):     # fed in arbitrary pieces, as a serial port delivers them
        got += decoder.feed(stream[i:i + chunk])
    # garbage could in principle hold a frame of its own; the real ones must all be found, in order
    it = iter(got)
    assert all(any(g == f for g in it) for f in frames)


@given(types, seqs, payloads)
def test_damaged_frame_followed_by_good_frame(ftype, seq, payload):
    bad = bytearray(P.encode_frame(ftype, seq, payload))
    bad[-1] ^= 1
    good = P.encode_frame(P.T.ACK, (seq + 1) & 0xFFFF)
    decoder = P.FrameDecoder()
    assert decoder.feed(bytes(bad) + good) == [P.Frame(P.T.ACK, (seq + 1) & 0xFFFF)]
    assert decoder.frames_bad >= 1


def test_length_over_limit_is_rejected_before_waiting_for_it():
    fields = struct.pack("<BBHH", P.T.PUT_DATA, 0, 1, 40000)
    raw = P.MAGIC + fields + struct.pack("<H", zlib.crc32(fields) & 0xFFFF)
    assert P.decode_at(raw)[0] is P.Status.TOO_BIG
    with pytest.raises(ValueError):
        P.encode_frame(P.T.PUT_DATA, 1, bytes(P.PAYLOAD_LIMIT + 1))


def test_text_outside_frames_is_kept():
    decoder = P.FrameDecoder()
    frames = decoder.feed(b"m-ready\r\n" + P.encode_frame(P.T.OK, 3) + b"\xfe\x00after")
    assert frames == [P.Frame(P.T.OK, 3)]
    assert decoder.take_text() == b"m-ready\r\n\xfe\x00after"


def test_payload_codecs():
    assert P.parse_kv(b"a=1\nb=x=y\n\nnoequals") == {"a": "1", "b": "x=y"}
    assert P.parse_error(struct.pack("<H", 3) + b"gone") == (P.ErrorCode.NOT_FOUND, "gone")
    assert P.parse_nak(struct.pack("<HB", 7, 2)) == (7, P.NakReason.BAD_CRC)
    assert P.parse_list(b"\x01d 0 lib\nf 12 a b.txt\n") == (True, [("lib", 0, True), ("a b.txt", 12, False)])
    s = P.parse_invoke(struct.pack("<IIIIII", 3, 5, 1, 10, 20, 0))
    assert s.runs == 3 and s.total_us == 5 + (1 << 32) and (s.min_us, s.max_us) == (10, 20)
    assert P.parse_times(struct.pack("<3I", 1, 2, 3)) == [1, 2, 3]
    with pytest.raises(ValueError):
        P.pack_rename("a\0b", "c")
    with pytest.raises(ValueError):
        P.pack_put_begin(1, b"short", "/x")


@given(types, seqs, st.binary(max_size=400), st.binary(max_size=400), st.integers(1, 64))
def test_a_damaged_frames_bytes_are_not_text(ftype, seq, before, after, chunk):
    payload = before + b"\x04>Traceback (most recent call last)\x04\x04>" + after
    bad = bytearray(P.encode_frame(ftype, seq, payload))
    bad[-1] ^= 0x55                                      # the CRC: header sound, extent known
    stream = b"hello\r\n" + bytes(bad) + P.encode_frame(P.T.OK, 7) + b"bye"
    decoder = P.FrameDecoder()
    frames = []
    for i in range(0, len(stream), chunk):
        frames += decoder.feed(stream[i:i + chunk])
    assert P.Frame(P.T.OK, 7) in frames
    text = decoder.take_text()
    assert text.startswith(b"hello\r\n") and text.endswith(b"bye")
    assert b"\x04>" not in text and decoder.frames_bad >= 1


def test_runtime_end_is_the_raw_repls_marker_not_two_bytes_of_binary():
    from tinyhost.errors import DeviceError
    from tinyhost.link import Link

    link = Link(None)
    damaged = bytearray(P.encode_frame(P.T.OK, 3, b"\x00\x04>\xff" * 20))
    damaged[20] ^= 0x10
    link._feed(bytes(damaged))
    link._feed(b"\x93\x04>\x11")          # binary outside any frame (a frame whose header was hit) holding \x04>
    link._check_alive()                   # no end of the runtime in that
    link.take_text()
    link._feed(b"out\x04Traceback (most recent call last):\r\n  File \"main.py\"\r\nMemoryError: \r\n\x04>")
    with pytest.raises(DeviceError, match="stopped: out / Traceback .* / MemoryError"):
        link._check_alive()
    link.take_text()
    link._feed(b"done\x04\x04>")
    with pytest.raises(DeviceError, match="runtime on the board stopped: done"):
        link._check_alive()


class _LineAfterReset:
    """A transport whose board was reset: whatever is sent, it prints MicroPython's reboot text and a prompt."""

    port = "fake"

    def __init__(self, text):
        self.text = text
        self.pending = b""

    def write(self, data):
        self.pending += self.text

    def read_some(self, timeout_s):
        data, self.pending = self.pending, b""
        if not data:
            time.sleep(timeout_s)
        return data

    def wire_time_s(self, nbytes):
        return nbytes * 10 / 115200


@pytest.mark.parametrize("text", [b"MPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>",
                                  b"\x00\xffets Jul 29 2019\r\nMicroPython v1.24 on esp32\r\nType \"help()\" for more "
                                  b"information.\r\n>>> "])
def test_a_reset_board_is_recognised_while_a_request_waits(text):
    from tinyhost.errors import DeviceError
    from tinyhost.link import Link

    link = Link(_LineAfterReset(text))
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="was reset"):
        link.request(P.T.INFER, bytes(490), timeout_s=120.0, what="infer")     # 8 tries of 120 s before
    assert time.monotonic() - t0 < 2.0


def test_infer_waits_from_the_boards_own_time_once_it_is_known():
    from tinyhost.client import Device

    dev = Device(_LineAfterReset(b""))
    assert dev.infer_wait_s(490, timeout_s=120.0) == (10.0, 120.0)   # nothing known yet
    dev.infer_reply_bytes = 30                                       # KWS: 12 output bytes
    dev._took(20_000)                                                # 20 ms
    first, longest = dev.infer_wait_s(490, timeout_s=120.0)
    assert 0.4 < first < 0.7 and 2.0 <= longest < 2.7               # a lost reply costs about half a second
    dev._took(3_000_000)                                             # a 3 s inference
    first, longest = dev.infer_wait_s(490, timeout_s=120.0)
    assert 6.0 <= first < 7.0 and 12.0 <= longest < 13.0
    assert dev.infer_wait_s(490, timeout_s=5.0) == (5.0, 5.0)


class _NoisyLine:
    """A board behind a line that damages the first ``bad`` sends of every request (the device NAKs them), then
    answers OK."""

    port = "fake"

    def __init__(self, bad):
        self.bad = bad
        self.sends = 0
        self.pending = b""

    def write(self, data):
        self.sends += 1
        seq = struct.unpack_from("<H", data, 4)[0]
        if self.sends <= self.bad:
            self.pending += P.encode_frame(P.T.NAK, seq, struct.pack("<HB", seq, 2))
        else:
            self.pending += P.encode_frame(P.T.OK, seq, struct.pack("<I", 1234) + bytes(12))

    def read_some(self, timeout_s):
        data, self.pending = self.pending, b""
        return data

    def wire_time_s(self, nbytes):
        return nbytes * 10 / 115200


def test_a_large_request_damaged_on_most_sends_still_gets_through():
    from tinyhost.client import Device
    from tinyhost.errors import ProtocolError

    dev = Device(_NoisyLine(bad=20))
    dev.link.max_payload = 1024
    assert dev.infer(bytes(40)).time_us == 1234           # 20 NAKs, then the answer (too small for pieces)
    assert dev.link.stats.naks_received == 20
    with pytest.raises(ProtocolError, match="failed 8 times"):
        Device(_NoisyLine(bad=20)).link.request(P.T.INFER, bytes(490), what="infer")   # the plain budget
