"""The offload frame codec (host side): round trips, every error path, and the serial stream scanner."""

import struct
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from tinyhost.errors import ProtocolError
from tinyhost.offload import auth, wire

dtypes = st.sampled_from(sorted(wire.DTYPE_CODES))
shapes = st.lists(st.integers(0, 40), min_size=0, max_size=wire.MAX_NDIM).map(tuple)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=wire.MAX_ID_BYTES)
f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
seqs = st.integers(0, 0xFFFFFFFF)


@st.composite
def tensors(draw):
    shape = draw(shapes)
    data = draw(st.binary(max_size=600))
    return wire.Tensor(draw(dtypes), shape, draw(f32), draw(st.integers(-2**31, 2**31 - 1)), data)


@given(seqs, ids, st.sampled_from([0, 1, 2]), tensors(), st.one_of(st.none(), st.binary(min_size=1, max_size=80)))
@settings(max_examples=150, deadline=None)
def test_request_round_trip(seq, model_id, want, tensor, key):
    mac_fn = auth.frame_mac(key) if key else None
    frame = wire.encode_request(seq, wire.Request(model_id, want, tensor), mac_fn)
    f = wire.decode_frame(frame)
    assert (f.kind, f.seq) == (wire.KIND_REQUEST, seq)
    assert f.mac == (mac_fn(f.signed) if key else b"")
    assert wire.decode_request(f.body) == wire.Request(model_id, want, tensor)


@given(seqs, st.sampled_from(sorted(wire.STATUS_NAMES)), st.sampled_from([0, 1]), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), tensors(), st.text(max_size=300))
@settings(max_examples=150, deadline=None)
def test_reply_round_trip(seq, status, source, queue_us, compute_us, tensor, message):
    reply = wire.Reply(status, source, queue_us, compute_us, tensor if status == wire.OK else None,
                       "" if status == wire.OK else message)
    f = wire.decode_frame(wire.encode_reply(seq, reply))
    assert f.kind == wire.KIND_REPLY and f.seq == seq
    assert wire.decode_reply(f.body) == reply


@given(seqs, ids, st.binary(min_size=16, max_size=16), st.booleans(), st.integers(0, 2**32 - 1), st.text(max_size=50))
@settings(max_examples=60, deadline=None)
def test_hello_and_welcome_round_trip(seq, device_id, nonce, auth_on, max_frame, message):
    f = wire.decode_frame(wire.encode_hello(seq, device_id, nonce))
    assert f.kind == wire.KIND_HELLO and wire.decode_hello(f.body) == wire.Hello(device_id, nonce)
    proof = bytes(range(32))
    f = wire.decode_frame(wire.encode_welcome(seq, wire.OK, auth_on, nonce, proof, max_frame, message))
    assert wire.decode_welcome(f.body) == wire.Welcome(wire.OK, auth_on, nonce, proof, max_frame, message)


def _kws_request(seq=1):
    t = wire.Tensor("int8", (1, 49, 10, 1), 0.5847, 83, bytes(490))
    return wire.encode_request(seq, wire.Request("kws", 0, t))


def test_frame_layout_is_the_documented_one():
    frame = _kws_request(seq=7)
    magic, version, kind, flags, seq, body_len = struct.unpack_from("<2sBBHII", frame)
    assert (magic, version, kind, flags, seq) == (b"TO", 1, wire.KIND_REQUEST, 0, 7)
    assert len(frame) == 14 + body_len + 4
    assert struct.unpack_from("<I", frame, len(frame) - 4)[0] == zlib.crc32(frame[:-4])
    # body: model id, want, dtype, ndim, dims, scale, zero point, length, data
    assert frame[14:19] == b"\x03kws\x00" and frame[19:21] == bytes([1, 4])
    assert struct.unpack_from("<4HfiI", frame, 21)[0:4] == (1, 49, 10, 1)
    assert body_len == 5 + 2 + 8 + 12 + 490


@pytest.mark.parametrize("mutate, status", [
    (lambda f: b"XX" + f[2:], wire.BAD_FRAME),
    (lambda f: f[:2] + b"\x09" + f[3:], wire.BAD_VERSION),
    (lambda f: f[:3] + b"\x63" + f[4:], wire.BAD_FRAME),              # unknown kind
    (lambda f: f[:4] + b"\x02\x00" + f[6:], wire.BAD_FRAME),           # unknown flag
    (lambda f: f[:-5] + bytes([f[-5] ^ 1]) + f[-4:], wire.BAD_CRC),   # one payload bit flipped
    (lambda f: f[:-1], wire.BAD_FRAME),                                # truncated
    (lambda f: f + b"\x00", wire.BAD_FRAME),                           # trailing byte
])
def test_decode_frame_refuses_damage_with_the_right_status(mutate, status):
    with pytest.raises(wire.WireError) as e:
        wire.decode_frame(mutate(_kws_request()))
    assert e.value.status == status
    assert isinstance(e.value, ProtocolError)


def test_oversize_frame_is_refused_from_the_header_alone():
    header = wire.HEADER.pack(wire.MAGIC, wire.VERSION, wire.KIND_REQUEST, 0, 1, 5_000_000)
    with pytest.raises(wire.WireError) as e:
        wire.parse_header(header, max_frame_bytes=1 << 20)
    assert e.value.status == wire.TOO_LARGE


@pytest.mark.parametrize("body, status", [
    (b"\x03kws\x00\x09\x00" + bytes(16), wire.BAD_DTYPE),             # dtype code 9
    (b"\x03kws\x00\x01\x09" + bytes(40), wire.BAD_SHAPE),             # 9 dims
    (b"\x03kws\x07\x01\x00" + struct.pack("<fiI", 1, 0, 0), wire.BAD_FRAME),   # want 7
    (b"\x03kws\x00\x01\x01\x02\x00" + struct.pack("<fiI", 1, 0, 5) + b"ab", wire.BAD_FRAME),  # data cut short
    (b"\x03k\xffs\x00", wire.BAD_FRAME),                               # id not ASCII
    (b"", wire.BAD_FRAME),
])
def test_decode_request_refuses_bad_bodies(body, status):
    with pytest.raises(wire.WireError) as e:
        wire.decode_request(body)
    assert e.value.status == status


def test_encoder_refuses_what_the_wire_cannot_carry():
    with pytest.raises(ValueError):
        wire.encode_tensor(wire.Tensor("float64", (1,), 1.0, 0, b""))
    with pytest.raises(ValueError):
        wire.encode_tensor(wire.Tensor("int8", (70000,), 1.0, 0, b""))
    with pytest.raises(ValueError):
        wire.encode_hello(1, "", bytes(16))


@given(st.lists(st.one_of(st.binary(max_size=40).map(lambda b: ("text", b.replace(b"T", b"t"))),
                          st.integers(1, 2**31).map(lambda s: ("frame", _kws_request(s)))), max_size=8),
       st.integers(1, 64))
@settings(max_examples=80, deadline=None)
def test_scanner_splits_text_and_frames_fed_in_any_chunks(items, chunk):
    stream = b"".join(data for _, data in items)
    scanner = wire.FrameScanner()
    out = []
    for i in range(0, len(stream), chunk):
        out += scanner.feed(stream[i:i + chunk])
    frames = [d for k, d in out if k == "frame"]
    text = b"".join(d for k, d in out if k == "text") + bytes(scanner.buf)
    assert frames == [d for k, d in items if k == "frame"]
    assert text == b"".join(d for k, d in items if k == "text")


def test_scanner_passes_text_that_looks_like_a_frame_start_and_drops_corrupt_frames():
    good = _kws_request(5)
    bad = bytearray(_kws_request(6))
    bad[100] ^= 0xFF
    out = wire.FrameScanner().feed(b"GOTO 10\nTOTAL\n" + bytes(bad) + b"ok\n" + good)
    assert [k for k, _ in out] == ["text", "frame"]
    assert out[0][1].startswith(b"GOTO 10\nTOTAL\n") and out[0][1].endswith(b"ok\n")
    assert out[1][1] == good
