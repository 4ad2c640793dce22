# Load-time half, part 2: serialise a prepared model (loader.Recipe) into a load plan (format: plan_read.py, header: plan_check.py).
#
# The host runs this under CPython when `tinyhost flash` puts a model on a board (tinyhost.model.plan), so the
# board can load the model from the plan with plan_read.py alone. The board runs it too when a model comes without
# a usable plan: the full path (model_prepare.prepare) builds the same bytes in RAM and loads them the same way, so there
# is one way from a prepared model to a running one. Dropped from the heap after every load, like model_prepare.py.

import struct
import hashlib

from .plan_check import MAGIC, PLAN_VERSION, HEADER_FMT, HEADER_BYTES
from .plan_read import K_CONV_MAX, K_SOFTMAX, K_RESHAPE, K_QUANT_F, K_DEQUANT, work_floor, _align16


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
    k = rec[0]
    ins = rec[1]
    out = refs[rec[2]]
    body = struct.pack("<BBiII", k, len(ins), out[0], out[1], top)
    for i in ins:
        body += struct.pack("<iI", refs[i][0], refs[i][1])
    p = rec[3] if k not in (K_RESHAPE, K_QUANT_F, K_DEQUANT) else None
    n_p = len(p) if p is not None else 0
    body += struct.pack("<B", n_p)
    if n_p:
        body += struct.pack("<%di" % n_p, *p)
    added = 0
    if k <= K_CONV_MAX:
        n = rec[4]
        body += struct.pack("<IIIIII", n, rec[5], rec[6], rec[7], chan_pos, band)
        added = 12 * n
    elif k == K_SOFTMAX:
        body += struct.pack("<I", chan_pos)
        added = 2 * 4 * 256
    elif k == K_RESHAPE:
        body += struct.pack("<I", rec[3])
    elif k in (K_QUANT_F, K_DEQUANT):
        body += struct.pack("<IIi", rec[3], rec[4], rec[5])
    return struct.pack("<H", 2 + len(body)) + body, added


def _channel_arrays(rec):
    k = rec[0]
    if k <= K_CONV_MAX:
        return rec[8], rec[9], rec[10]       # bias, multipliers, shifts (array('i'))
    if k == K_SOFTMAX:
        return rec[4], rec[5]                # exp tables (array('i', 256) each)
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
        k = rec[0]
        conv = k <= K_CONV_MAX
        if conv:
            filter_total += rec[6]
            filter_max = max(filter_max, rec[6])
        need_ram = max(need_ram, top + work_floor(k, 0))
        # streamed: the weight block above the live tensors, the operator's channel data at the arena's end
        need_streamed = max(need_streamed, top + work_floor(k, (rec[7] or rec[6]) if conv else 0)
                            + (_align16(12 * rec[4]) if conv else 0))
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
