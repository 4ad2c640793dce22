# Reading a plan file into the steps Model.invoke runs: the small load path (it never imports reader, op_prepare,
# arena_layout or model_prepare). plan_check.py decides whether a plan may be used; arena_alloc.py allocates the
# arena; then build() here reads the records and returns what the Model keeps.
#
# A plan (MODEL.plan next to MODEL.tflite, see plan_path) is everything the engine computes at load -- arena
# placement, kernel parameter arrays, per-channel bias/multiplier/shift, softmax tables, where each operator's
# weights lie in the .tflite -- packed by the host (`tinyhost flash`, tinyhost.model.plan) with the same engine
# code (plan_write.py). The .tflite itself is never changed: weights are read from it, and the plan is only used
# when its header's sha256 of the model equals the model file's (computed here), its format version is this one
# and its own trailing sha256 checks out. Anything else: the plan is ignored and the engine takes its full path.
#
# Format (little-endian):
#   header   HEADER_FMT: b"TFPL", version, header bytes, model sha256, model bytes, arena bytes, MACs, ops,
#            ops section offset, channel data section offset, channel data bytes, filter bytes (all, largest),
#            arena bytes with each operator's work area floor when weights are streamed (one output channel's
#            filter, or a whole depthwise filter, + lookup tables), the same with weights in RAM, widest layer's
#            channels, inputs, outputs
#   I/O      per graph input then output: u16 record bytes, u8 type (9 int8, 0 float32), u8 rank, i32 ref,
#            u32 bytes, u32 scale (float32 bits), i32 zero point, u32 dims[rank], u8 name length, name
#   ops      per operator: u16 record bytes, u8 kind, u8 inputs, i32 output ref, u32 output bytes, u32 top (the
#            end of the highest activation alive during the operator: the arena above it is the operator's work
#            area), (i32 ref, u32 bytes) of each input,
#            u8 parameter count, i32 parameters[count], then by kind: conv-like u32 channels, weights offset in
#            the .tflite, weights bytes, bytes per output channel, channel data offset (bias, multipliers,
#            shifts: 3 x channels int32), output rows per call (0: all; else the output may overlap the
#            dying input, see arena_layout.band_distance); softmax u32 channel data offset (exp tables:
#            2 x 256 int32); reshape u32 elements; float quantize/dequantize u32 elements, u32 scale bits,
#            i32 zero point
#            (kind: op_prepare's numbering, which is also the step's kind in Model.invoke)
#   channel data, then the sha256 of everything before it (32 bytes)
# ref: an arena offset (>= 0) or -1 - k for the k-th float32 graph buffer (outside the arena).

import struct
from array import array

from . import ModelError, TensorInfo, _mem_free, _gc, _int8_buffer, _kernels_ref, _stage, STREAM_SCRATCH_BYTES

try:
    from micropython import const
except ImportError:          # CPython (host tools)
    def const(x):
        return x

# Private copies (compiled away on the board), tied to their definitions by tests/test_device_constants.py:
# operator kinds (op_prepare)
_K_DW = const(2)
_K_FC = const(3)             # kinds up to _K_FC are convolution-like
_K_ADD = const(6)
_K_SOFTMAX = const(7)
_K_RESHAPE = const(8)
_K_REQUANT = const(9)
_K_QUANT_F = const(10)
_K_DEQUANT = const(11)
# header fields (plan_check)
_H_HEADER_BYTES = const(2)
_H_MODEL_BYTES = const(4)
_H_OPS = const(7)
_H_OPS_AT = const(8)
_H_CHAN_AT = const(9)
_H_CHAN_BYTES = const(10)
_H_MAX_CHANNELS = const(15)
_H_INPUTS = const(16)
_H_OUTPUTS = const(17)
# kernel parameter slots (params); a convolution's array here also holds the six u32 after its parameters in
# the record, from _P_LEN on (Model.invoke reads them; the kernels do not)
_P_IN_C = const(3)
_P_OUT_H = const(4)
_P_LEN = const(25)

T_INT8 = 9
_RECORD_MAX = 512


class _Reader:
    """Length-prefixed records from the plan, through one buffer."""

    def __init__(self, g, pos):
        self.g = g
        self.pos = pos
        self.buf = bytearray(_RECORD_MAX)

    def next(self):
        g = self.g
        g.seek(self.pos)
        if g.readinto(memoryview(self.buf)[:2]) != 2:
            raise ModelError("corrupt plan: truncated record")
        n = struct.unpack_from("<H", self.buf, 0)[0]
        if n < 4 or n > _RECORD_MAX:
            raise ModelError("corrupt plan: record of %d bytes" % n)
        if g.readinto(memoryview(self.buf)[2:n]) != n - 2:
            raise ModelError("corrupt plan: truncated record")
        self.pos += n
        return self.buf


def _align16(n):
    return (n + 15) & ~15


def work_floor(kind, weights_floor):
    """Bytes of work area (arena above the live tensors) an operator of `kind` must have: the lookup tables of
    ADD (2 x 256 int32) and QUANTIZE (256 int32), plus weights_floor (the smallest streamed weight block)."""
    tables = 2048 if kind == _K_ADD else 1024 if kind == _K_REQUANT else 0
    return tables + _align16(weights_floor)


def _int32_buffer(n):
    """array('i') of n items, to be overwritten: no zeroed bytes object in between on MicroPython."""
    return array("i", range(n)) if _mem_free is not None else array("i", bytes(4 * n))


def _has_softmax(g, pos, n_ops):
    """Whether one of the n_ops operator records from pos is a SOFTMAX (a pre-scan: kind bytes only)."""
    head = bytearray(3)
    for _ in range(n_ops):
        g.seek(pos)
        if g.readinto(head) != 3:
            raise ModelError("corrupt plan: truncated record")
        if head[2] == _K_SOFTMAX:
            return True
        pos += head[0] | (head[1] << 8)
    return False


def _view(views, ref, nbytes, arena_mv, arena_bytes):
    """A view of nbytes at arena offset ref (or a new float32 buffer for ref < 0: raw little-endian bytes, so
    the host reads and writes it like any tensor); views: ref -> the view made first there, shared by the
    operators that use the same tensor (int keys: no tuple per entry)."""
    v = views.get(ref)
    if v is None or len(v) != nbytes:
        if ref >= 0:
            if ref + nbytes > arena_bytes:
                raise ModelError("corrupt plan: a tensor lies outside the arena")
            v = arena_mv[ref:ref + nbytes]
        else:
            v = memoryview(bytearray(nbytes))
        if ref not in views:
            views[ref] = v
    return v


# Operator kind -> kernel function name, operator name
_KERNEL_NAMES = (None, "conv2d", "depthwise_conv2d", "fully_connected", "avg_pool2d", "max_pool2d", "add", "softmax",
                 "copy", "requantize")
_OP_NAMES = (None, "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD",
             "SOFTMAX", "RESHAPE", "QUANTIZE")


def _kernel(k, kind, fallback, fallback_softmax=None):
    """Kernel function of operation `kind` in backend module k; kernels_ref's (noted in fallback) if k lacks it
    (fallback_softmax: the reference softmax when it is imported already)."""
    if kind == _K_QUANT_F or kind == _K_DEQUANT:       # float boundary ops: always the reference ones
        return getattr(_kernels_ref(), "quantize_float" if kind == _K_QUANT_F else "dequantize")
    name = _KERNEL_NAMES[kind] if 0 < kind < _K_QUANT_F else None
    if name is None:
        raise ModelError("corrupt plan: unknown operation kind %d" % kind)
    fn = getattr(k, name, None)
    if fn is None:
        if kind == _K_SOFTMAX:             # just the reference softmax, not every reference kernel
            fn = fallback_softmax
            if fn is None:
                from .ref_softmax import softmax as fn
        else:
            fn = getattr(_kernels_ref(), name)
        fallback.append(_OP_NAMES[kind])
    return fn


def build(g, h, k, f, arena, weights, stream_chan, scratch_bytes=None, mapped=None, softmax=None):
    """Read the plan's records from g into the steps Model.invoke runs, over the allocated arena (arena_alloc).

    h: plan_check.check()'s header tuple; k: backend module; f: the open model file (weights in RAM are read from
    it); weights: "ram", "flash" (streamed) or "mapped" (mapped: the model file's bytes in place);
    stream_chan: per-channel data is read from g at invoke (g then stays open: a plan file, not the full path's
    in-RAM plan); scratch_bytes: the largest streamed weight block (default STREAM_SCRATCH_BYTES); softmax: the
    reference softmax when the backend has none (imported before the arena).

    Every operator's work area is the arena above its live tensors (record field `top`) up to the arena's end:
    a streamed weight block goes first, the rest is the kernel's scratch (arena_layout.tops, docs/engine.md).

    Returns what the Model keeps: (steps, input TensorInfos, output TensorInfos, input views, output views, the
    shared parameter array convolutions read into at invoke or None, g when it stays open or None, where the
    channel data lives ("ram", "flash" or "flash, into the arena"), convolutions run in row bands, operators on
    reference kernels (names), weight bytes in RAM, largest streamed weight block)."""
    n_ops, ops_at, chan_base, chan_bytes = h[_H_OPS], h[_H_OPS_AT], h[_H_CHAN_AT], h[_H_CHAN_BYTES]
    max_ch = h[_H_MAX_CHANNELS]
    total = len(arena)
    arena_mv = memoryview(arena)
    # streamed to a backend that reads them as raw int32 (viper's ptr32): each operator's channel data goes to the
    # arena's end (the plan's floors keep it free), no buffer of its own
    in_arena = stream_chan and getattr(k, "CHANNELS_AS_BYTES", False)
    ram = 0
    chan_buf = None                             # per-channel data: all of it, or one op's at a time
    soft_at = 0 if in_arena else 3 * max_ch     # streamed: the softmax tables lie after one op's channel data
    if chan_bytes:
        # one buffer for everything read per op and the softmax tables, made before anything else (fragmentation)
        n_chan = soft_at + (512 if _has_softmax(g, ops_at, n_ops) else 0) if stream_chan else chan_bytes // 4
        if n_chan:
            chan_buf = memoryview(_int32_buffer(n_chan))
            ram += len(chan_buf) * 4
        if not stream_chan:
            g.seek(chan_base)
            if g.readinto(chan_buf) != chan_bytes:
                raise ModelError("corrupt plan: channel data truncated")
    chan_views = {}
    block_cap = scratch_bytes or STREAM_SCRATCH_BYTES
    largest_block = 0

    rd = _Reader(g, h[_H_HEADER_BYTES])
    views = {}
    infos = []
    io_views = []
    n_in = h[_H_INPUTS]
    for _ in range(n_in + h[_H_OUTPUTS]):
        b = rd.next()
        ttype, rank, ref, nbytes, scale_bits, zp = struct.unpack_from("<BBiIIi", b, 2)
        shape = struct.unpack_from("<%dI" % rank, b, 20)
        at = 20 + 4 * rank
        name = str(bytes(b[at + 1:at + 1 + b[at]]), "utf-8")
        scale = struct.unpack("<f", struct.pack("<I", scale_bits))[0]
        infos.append(TensorInfo(name, shape, "int8" if ttype == T_INT8 else "float32", scale, zp, nbytes))
        io_views.append(_view(views, ref, nbytes, arena_mv, total))
    inputs, outputs = infos[:n_in], infos[n_in:]
    in_views, out_views = io_views[:n_in], io_views[n_in:]
    infos = io_views = None
    if rd.pos != ops_at:
        raise ModelError("corrupt plan: the operator records do not start where the header says")

    steps = []
    fallback = []
    banded = 0
    model_bytes = h[_H_MODEL_BYTES]
    p_shared = None                             # streamed: the one parameter array all convolutions read into
    for _ in range(n_ops):
        if _gc is not None:
            _gc.collect()                       # the last record's temporaries go before this record's views
        rec_at = rd.pos
        b = rd.next()
        kind, n_in, o_ref, o_n, top = struct.unpack_from("<BBiII", b, 2)
        if top > total:
            raise ModelError("corrupt plan: an operator's live tensors end outside the arena")
        out = _view(views, o_ref, o_n, arena_mv, total)
        at = 16
        ins = []
        for _ in range(n_in):
            ref, n = struct.unpack_from("<iI", b, at)
            ins.append(_view(views, ref, n, arena_mv, total))
            at += 8
        inp = ins[0]
        n_p = b[at]
        at += 1
        p = None
        p_at = rec_at + at                      # where the parameters lie in the plan file
        if n_p:
            # a convolution's array also holds the six u32 after its parameters in the record (channels, weights
            # offset and bytes, bytes per output channel, channel data offset, row band): slots _P_LEN.. (invoke)
            p = array("i", struct.unpack_from("<%di" % (n_p + 6 if kind <= _K_FC else n_p), b, at))
            at += 4 * n_p
        fn = _kernel(k, kind, fallback, softmax)
        if kind <= _K_FC:
            n, w_pos, w_bytes, rb, c_pos, band = struct.unpack_from("<IIIIII", b, at)
            if w_pos + w_bytes > model_bytes or c_pos + 12 * n > chan_bytes:
                raise ModelError("corrupt plan: operator data lies outside the model or the plan")
            if n_p != _P_LEN:
                raise ModelError("corrupt plan: a convolution with %d parameters" % n_p)
            if band and (kind == _K_FC or band > p[_P_OUT_H]):     # FULLY_CONNECTED has no rows
                raise ModelError("corrupt plan: a row band that does not fit the operator")
            if band:
                banded += 1
            depth = p[_P_IN_C]                  # before p becomes a position in the plan (streamed)
            chan_at = -1                        # the channel data's position in the plan; -1: in RAM
            chan = None
            end = total                         # the work area's end
            if stream_chan:
                v = chan_views.get(n)
                if v is None:
                    if in_arena:
                        c0 = (total - 12 * n) & ~15
                        v = (arena_mv[c0:c0 + 12 * n], arena_mv[c0:c0 + 4 * n], arena_mv[c0 + 4 * n:c0 + 8 * n],
                             arena_mv[c0 + 8 * n:c0 + 12 * n])
                    else:
                        v = (chan_buf[:3 * n], chan_buf[:n], chan_buf[n:2 * n], chan_buf[2 * n:3 * n])
                    chan_views[n] = v
                chan, bias, mult, shift = v
                chan_at = chan_base + c_pos
                # the kernel parameters are read from the plan too, into one shared array, before each run of
                # the operator (Model.invoke): the step keeps their file position, not an array of its own
                if p_shared is None:
                    p_shared = _int32_buffer(n_p + 6)
                p = p_at
                if in_arena:
                    end = (total - 12 * n) & ~15
                    if end < top:
                        raise ModelError("corrupt plan: the arena has no room for an operator's channel data")
            else:
                c = c_pos // 4
                bias, mult, shift = chan_buf[c:c + n], chan_buf[c + n:c + 2 * n], chan_buf[c + 2 * n:c + 3 * n]
            tail = None                         # weights in RAM or mapped: one kernel call with all of them
            block = 0
            if weights == "mapped":             # in place: a view of the mapped model file, no RAM; the
                w = mapped[w_pos:w_pos + w_bytes]   # scratch ends where streamed channel data begins
                scratch = _view(views, top, end - top, arena_mv, total)
            elif weights == "ram":
                filt = _int8_buffer(w_bytes)
                f.seek(w_pos)
                f.readinto(filt)
                ram += w_bytes
                w = memoryview(filt)
                filt = None
                scratch = _view(views, top, total - top, arena_mv, total)
            else:
                # the weight block: as many output channels as fit, at most block_cap bytes (at least one: the
                # plan's floor guarantees it); the kernel's scratch is the rest: half the work area for a
                # convolution (it copies the block's weights there), one int32 input row for FULLY_CONNECTED
                room = end - top
                if rb:
                    fit = room - 4 * depth - 32 if kind == _K_FC else room // 2
                    block = min(n, max(1, min(fit, block_cap) // rb))
                    blk_bytes = block * rb
                else:                           # depthwise: the whole filter at once
                    block = n
                    blk_bytes = w_bytes
                if top + blk_bytes > end:
                    raise ModelError("corrupt plan: the arena has no room for a weight block")
                rest = n % block if rb else 0
                w = _view(views, top, blk_bytes, arena_mv, total)
                tail = arena_mv[top:top + rest * rb] if rest else w
                if blk_bytes > largest_block:
                    largest_block = blk_bytes
                w_end = top + _align16(blk_bytes)
                scratch = _view(views, w_end, end - w_end, arena_mv, total) if w_end < end else w[:0]
            steps.append((kind, fn, out, inp, w, bias, mult, shift, p, tail, block, chan_at, chan, scratch))
        elif kind == _K_ADD:
            steps.append((kind, fn, out, inp, ins[1], p, _view(views, top, total - top, arena_mv, total)))
        elif kind == _K_SOFTMAX:
            c = struct.unpack_from("<I", b, at)[0] // 4
            if stream_chan:                    # the tables stay in RAM: read them out of the plan
                if len(chan_buf) < soft_at + 512:
                    raise ModelError("corrupt plan: a SOFTMAX record the pre-scan did not see")
                t = chan_buf[soft_at:soft_at + 512]
                g.seek(chan_base + 4 * c)
                g.readinto(t)
                c = 0
            else:
                t = chan_buf
            steps.append((kind, fn, out, inp, t[c:c + 256], t[c + 256:c + 512], p))
        elif kind == _K_RESHAPE:                # a copy only when the planner could not alias
            if o_ref != struct.unpack_from("<i", b, 16)[0]:
                steps.append((kind, fn, out, inp, struct.unpack_from("<I", b, at)[0]))
        elif kind == _K_QUANT_F or kind == _K_DEQUANT:
            n, s_bits, zp = struct.unpack_from("<IIi", b, at)
            scale = struct.unpack("<f", struct.pack("<I", s_bits))[0]
            if kind == _K_QUANT_F:
                steps.append((kind, fn, out, inp, n, scale, zp, array("f", [0.0])))
            else:
                steps.append((kind, fn, out, inp, n, scale, zp))
        elif kind == _K_REQUANT:
            steps.append((kind, fn, out, inp, p, _view(views, top, total - top, arena_mv, total)))
        else:                                   # pools
            steps.append((kind, fn, out, inp, p))
    _stage("steps built")
    return (steps, inputs, outputs, in_views, out_views, p_shared, g if stream_chan else None,
            "flash, into the arena" if in_arena else "flash" if stream_chan else "ram", banded, fallback, ram,
            largest_block)
