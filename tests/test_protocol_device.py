"""The device frame codec (device/tinyfw/frame.py) under the MicroPython VM, cross-checked with the host codec.

Frames built by tinyhost.protocol are decoded by the device's FrameIO (tests/device/codec_check.py), and frames
sealed by the device are decoded by the host. Each direction runs one VM over a whole hypothesis-drawn batch.
"""

import ast
import subprocess
import sys
import zlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tinyhost import protocol as P

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "device" / "codec_check.py"
LAUNCHER = "import sys, micropython_unix as m; sys.exit(m.run_main(['micropython'] + sys.argv[1:]))"


def _vm(mode, data):
    p = subprocess.run([sys.executable, "-c", LAUNCHER, str(CHECK), str(ROOT / "device"), mode], input=data,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def _device_reads(stream):
    """What the device's FrameIO makes of ``stream``: list of ("F", type, flags, seq, n, crc) / ("B", code) /
    ("T", bytes)."""
    out = []
    for line in _vm("read", stream).decode().splitlines():
        kind, *rest = line.split()
        out.append(("T", bytes.fromhex(rest[0])) if kind == "T" else (kind, *map(int, rest)))
    return out


frames = st.lists(st.tuples(st.sampled_from(list(P.T)), st.integers(0, 0xFFFF), st.binary(max_size=1500),
                            st.integers(0, 255)), min_size=1, max_size=12)


@settings(max_examples=5, deadline=None)
@given(frames)
def test_device_decodes_host_frames(batch):
    stream = b"".join(P.encode_frame(t, s, p, f) for t, s, p, f in batch)
    got = _device_reads(stream)
    assert got == [("F", int(t), f, s, len(p), zlib.crc32(p)) for t, s, p, f in batch]


@settings(max_examples=5, deadline=None)
@given(frames, st.data())
def test_device_rejects_damaged_frames_and_resyncs(batch, data):
    stream = b""
    expect = []
    for t, s, p, f in batch:
        raw = bytearray(P.encode_frame(t, s, p, f))
        if data.draw(st.booleans()):
            raw[data.draw(st.integers(2, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
            expect.append(None)
        else:
            expect.append(("F", int(t), f, s, len(p), zlib.crc32(p)))
        stream += bytes(raw)
    good = [e for e in expect if e is not None]
    # every damaged frame is rejected (header check or CRC) and every intact one after it is still found
    assert [g for g in _device_reads(stream) if g[0] == "F"] == good


def test_device_bad_frame_codes_and_text():
    good = P.encode_frame(P.T.INFO, 1, b"abc")
    bad_crc = bytearray(good)
    bad_crc[-2] ^= 0xFF
    bad_header = bytearray(good)
    bad_header[5] ^= 0x01
    stream = b"hello " + bytes(bad_crc) + bytes(bad_header) + good
    got = _device_reads(stream)
    assert got[0] == ("T", b"hello ")
    assert ("B", 4) in got and ("B", 2) in got          # R_BAD_CRC, R_BAD_HEADER
    assert got[-1] == ("F", int(P.T.INFO), 0, 1, 3, zlib.crc32(b"abc"))


@settings(max_examples=5, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(P.T)), st.integers(0, 0xFFFF), st.binary(max_size=2000)),
                min_size=1, max_size=10))
def test_host_decodes_device_frames(batch):
    lines = "".join(f"{int(t)} {s} {p.hex()}\n" for t, s, p in batch).encode()
    assert P.FrameDecoder().feed(_vm("write", lines)) == [P.Frame(t, s, p) for t, s, p in batch]


def _device_constants():
    tree = ast.parse((ROOT / "device" / "tinyfw" / "frame.py").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", "") == "const":
            out[node.targets[0].id.lstrip("_")] = node.value.args[0].value
    return out


def test_host_and_device_constants_agree():
    dev = _device_constants()
    assert bytes([dev["MAGIC0"], dev["MAGIC1"]]) == P.MAGIC
    assert dev["HEADER_BYTES"] == P.HEADER_BYTES and dev["TRAILER_BYTES"] == P.TRAILER_BYTES
    assert dev["PAYLOAD_LIMIT"] == P.PAYLOAD_LIMIT and dev["PROTOCOL_VERSION"] == P.PROTOCOL_VERSION
    assert dev["FLAG_SYNC"] == P.FLAG_SYNC and dev["FLAG_STREAM"] == P.FLAG_STREAM
    for t in P.T:
        assert dev[t.name] == t.value, t
    for code in P.ErrorCode:
        assert dev["E_" + code.name] == code.value, code
    for reason in P.NakReason:
        assert dev["NAK_" + reason.name] == reason.value, reason
