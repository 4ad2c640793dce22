# Writing a plan file: a prepared model (model_prepare.Recipe) packed into the plan format (plan_read.py; header:
# plan_check.py).
#
# The host runs this under CPython when `tinyhost flash` puts a model on a board (tinyhost.model.plan), so the
# board can load the model from the plan with plan_read.py alone. The board runs it too when a model comes without
# a usable plan: the full path (model_prepare.prepare) builds the same bytes in RAM and loads them the same way, so
# there is one way from a prepared model to a running one. Dropped from the heap after every load, like
# model_prepare.py.

import struct
import hashlib

from .plan_check import MAGIC, PLAN_VERSION, HEADER_FMT, HEADER_BYTES
from .plan_read import work_floor, _align16

try:
    from micropython import const
except ImportError:          # CPython (host tools)
    def const(x):
        return x

# Operator kinds (op_prepare's numbering; copies tied by tests/test_device_constants.py)
_K_FC = const(3)         # kinds up to _K_FC are convolution-like
_K_SOFTMAX = const(7)
_K_RESHAPE = const(8)
_K_QUANT_F = const(10)
_K_DEQUANT = const(11)

# A Recipe's record (model_prepare._record builds them; tests/test_device_constants.py checks the order there).
# Every record starts with
_R_KIND = const(0)
_R_INS = const(1)        # input tensor indices
_R_OUT = const(2)        # output tensor index
_R_P = const(3)          # the kernel parameter array (all kinds but RESHAPE and float QUANTIZE / DEQUANTIZE)
# convolution-like
_R_CHANNELS = const(4)   # output channels
_R_W_AT = const(5)       # where the weights lie in the .tflite
_R_W_BYTES = const(6)
_R_ROW_BYTES = const(7)  # weight bytes per output channel (0: depthwise, streamed whole)
_R_BIAS = const(8)       # per-channel bias, multipliers, shifts (array('i') each)
_R_MULT = const(9)
_R_SHIFT = const(10)
# SOFTMAX
_R_EXP_Q31 = const(4)    # exp tables (array('i', 256) each)
_R_EXP_Q12 = const(5)
# RESHAPE, float QUANTIZE / DEQUANTIZE
_R_ELEMENTS = const(3)
_R_SCALE_BITS = const(4)  # float QUANTIZE / DEQUANTIZE: the int8 side's scale (float32 bits) and zero point
_R_ZERO_POINT = const(5)


def _refs(r):
    """Tensor index -> (ref, nbytes): arena offset (>= 0) or float32 buffer number k as -1 - k."""
    refs = {}
    for i, off in r.where.items():
        refs[i] = (off, r.nbytes[i])
    k = 0
    for i in sorted(r.floats):
        refs[i] = (-1 - k, 4 * r.floats[i])
        k += 1
    return refs


def _io_record(info, ref):
    name, shape, ttype, scale_bits, zero_point = info
    raw = name.encode("utf-8")[:255]
    body = struct.pack("<BBiIIi", ttype, len(shape), ref[0], ref[1], scale_bits, zero_point)
    body += struct.pack("<%dI" % len(shape), *shape) + struct.pack("<B", len(raw)) + raw
    return struct.pack("<H", 2 + len(body)) + body


def _op_record(rec, refs, chan_pos, top, band):
    """(record bytes, channel data bytes it adds). Record layout in plan_read.py."""
    k = rec[_R_KIND]
    ins = rec[_R_INS]
    out = refs[rec[_R_OUT]]
    body = struct.pack("<BBiII", k, len(ins), out[0], out[1], top)
    for i in ins:
        body += struct.pack("<iI", refs[i][0], refs[i][1])
    elements = k == _K_RESHAPE or k == _K_QUANT_F or k == _K_DEQUANT
    p = None if elements else rec[_R_P]
    n_p = len(p) if p is not None else 0
    body += struct.pack("<B", n_p)
    if n_p:
        body += struct.pack("<%di" % n_p, *p)
    added = 0
    if k <= _K_FC:
        n = rec[_R_CHANNELS]
        body += struct.pack("<IIIIII", n, rec[_R_W_AT], rec[_R_W_BYTES], rec[_R_ROW_BYTES], chan_pos, band)
        added = 12 * n
    elif k == _K_SOFTMAX:
        body += struct.pack("<I", chan_pos)
        added = 2 * 4 * 256
    elif k == _K_RESHAPE:
        body += struct.pack("<I", rec[_R_ELEMENTS])
    elif elements:
        body += struct.pack("<IIi", rec[_R_ELEMENTS], rec[_R_SCALE_BITS], rec[_R_ZERO_POINT])
    return struct.pack("<H", 2 + len(body)) + body, added


def _channel_arrays(rec):
    k = rec[_R_KIND]
    if k <= _K_FC:
        return rec[_R_BIAS], rec[_R_MULT], rec[_R_SHIFT]
    if k == _K_SOFTMAX:
        return rec[_R_EXP_Q31], rec[_R_EXP_Q12]
    return ()


def write(r, model_sha256, out):
    """Write the plan of Recipe `r` (its model's sha256 digest given) to the binary stream `out`; returns bytes
    written. The last 32 bytes are the sha256 of everything before them."""
    refs = _refs(r)
    io_part = b""
    for infos, idx in ((r.input_info, r.inputs), (r.output_info, r.outputs)):
        for info, i in zip(infos, idx):
            io_part += _io_record(info, refs[i])
    ops_part = []
    chan_bytes = 0
    filter_total = 0
    filter_max = 0
    need_streamed = need_ram = r.arena_bytes    # arena bytes with the work area every operator must have
    for rec, top, band in zip(r.records, r.tops, r.bands):
        data, added = _op_record(rec, refs, chan_bytes, top, band)
        ops_part.append(data)
        chan_bytes += added
        k = rec[_R_KIND]
        conv = k <= _K_FC
        if conv:
            filter_total += rec[_R_W_BYTES]
            filter_max = max(filter_max, rec[_R_W_BYTES])
        need_ram = max(need_ram, top + work_floor(k, 0))
        # streamed: the weight block above the live tensors, the operator's channel data at the arena's end
        need_streamed = max(need_streamed, top + work_floor(k, (rec[_R_ROW_BYTES] or rec[_R_W_BYTES]) if conv else 0)
                            + (_align16(12 * rec[_R_CHANNELS]) if conv else 0))
    ops_at = HEADER_BYTES + len(io_part)
    chan_at = ops_at + sum(len(d) for d in ops_part)
    header = struct.pack(HEADER_FMT, MAGIC, PLAN_VERSION, HEADER_BYTES, model_sha256, r.model_bytes,
                         r.arena_bytes, r.macs, len(r.records), ops_at, chan_at, chan_bytes, filter_total,
                         filter_max, need_streamed, need_ram, r.max_channels, len(r.inputs), len(r.outputs))
    h = hashlib.sha256()
    total = 0
    for piece in [header, io_part] + ops_part:
        h.update(piece)
        out.write(piece)
        total += len(piece)
    ops_part = None
    for rec in r.records:
        for a in _channel_arrays(rec):
            raw = struct.pack("<%di" % len(a), *a)
            h.update(raw)
            out.write(raw)
            total += len(raw)
    out.write(h.digest())
    return total + 32
