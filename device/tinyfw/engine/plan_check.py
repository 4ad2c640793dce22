# Whether a load plan (MODEL.plan, format in plan_read.py) may be used for a model: the first, smallest step of a
# load. It reads the plan's header, checks its magic and format version, that it was made from this very model file
# (size and sha256 of the .tflite, computed here in small chunks) and that the plan's own trailing sha256 matches
# its contents. Only then does the engine allocate the arena (first, so that it is not fragmented by what follows)
# and hand the plan to plan_read.py. A stale, truncated or corrupt plan is never used.

import struct
import hashlib

try:
    from micropython import const
except ImportError:          # CPython (host tools)
    def const(x):
        return x

MAGIC = b"TFPL"
PLAN_VERSION = 4                # 2: each operator record says where the free arena above its live buffers begins
                                # 3: convolutions carry their output row band (in-place bands)
                                # 4: arena floors with weights streamed include each operator's channel data
HEADER_FMT = "<4sHH32sIIQIIIIIIIIIHH"
HEADER_BYTES = struct.calcsize(HEADER_FMT)
# Fields of the header tuple check() returns (HEADER_FMT order; meanings in plan_read.py's format). Private (`_X =
# const()` is compiled away: no global, no qstr on the board): the modules that read them during a load keep
# copies, tied to these by tests/test_device_constants.py.
_H_MAGIC = const(0)
_H_VERSION = const(1)
_H_HEADER_BYTES = const(2)       # also where the I/O records begin
_H_MODEL_SHA256 = const(3)
_H_MODEL_BYTES = const(4)
_H_ARENA_BYTES = const(5)        # the activations as laid out (arena_layout)
_H_MACS = const(6)
_H_OPS = const(7)
_H_OPS_AT = const(8)
_H_CHAN_AT = const(9)
_H_CHAN_BYTES = const(10)
_H_FILTER_BYTES = const(11)
_H_LARGEST_FILTER_BYTES = const(12)
_H_ARENA_STREAMED_BYTES = const(13)
_H_ARENA_RAM_BYTES = const(14)
_H_MAX_CHANNELS = const(15)
_H_INPUTS = const(16)
_H_OUTPUTS = const(17)
_CHUNK = 512


def _sha256_of(f, start, end, buf):
    h = hashlib.sha256()
    mv = memoryview(buf)
    f.seek(start)
    left = end - start
    while left > 0:
        n = f.readinto(mv[:min(left, len(buf))])
        if not n:
            return None
        h.update(mv[:n])
        left -= n
    return h.digest()


def model_sha256(f, size):
    """sha256 digest of the open model file (read in small chunks)."""
    return _sha256_of(f, 0, size, bytearray(_CHUNK))


def check(g, f):
    """The header (a tuple in HEADER_FMT order) of the plan in open file g when it belongs to the model in open
    file f; otherwise a string saying why not (stale, corrupt, truncated, another format version)."""
    plan_bytes = g.seek(0, 2)
    if plan_bytes < HEADER_BYTES + 32:
        return "truncated (%d bytes)" % plan_bytes
    g.seek(0)
    raw = g.read(HEADER_BYTES)
    if len(raw) != HEADER_BYTES:
        return "truncated"
    h = struct.unpack(HEADER_FMT, raw)
    if h[_H_MAGIC] != MAGIC:
        return "not a plan file"
    if h[_H_VERSION] != PLAN_VERSION or h[_H_HEADER_BYTES] != HEADER_BYTES:
        return "format version %d, this firmware reads %d" % (h[_H_VERSION], PLAN_VERSION)
    size = f.seek(0, 2)
    buf = bytearray(_CHUNK)
    if h[_H_MODEL_BYTES] != size or _sha256_of(f, 0, size, buf) != h[_H_MODEL_SHA256]:
        return "stale: it was made for another model file (sha256 differs)"
    ops_at, chan_at = h[_H_OPS_AT], h[_H_CHAN_AT]
    if ops_at < HEADER_BYTES or chan_at < ops_at or chan_at + h[_H_CHAN_BYTES] + 32 != plan_bytes:
        return "corrupt: section sizes do not add up"
    digest = _sha256_of(g, 0, plan_bytes - 32, buf)
    g.seek(plan_bytes - 32)
    if digest is None or g.read(32) != digest:
        return "corrupt: its sha256 does not match its contents"
    return h
