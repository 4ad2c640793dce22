# Loading a model from its load plan: the small load path (it never imports reader, ops, planner or loader).
# plancheck.py decides whether a plan may be used; then the engine allocates the arena, then this module builds.
#
# A plan (MODEL.plan next to MODEL.tflite, see plan_path) is everything the engine computes at load -- arena
# placement, kernel parameter arrays, per-channel bias/multiplier/shift, softmax tables, where each operator's
# weights lie in the .tflite -- packed by the host (`tinyhost flash`, tinyhost.model.plan) with the same engine
# code (planwrite.py). The .tflite itself is never changed: weights are read from it, and the plan is only used
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
#            dying input, see planner.band_distance); softmax u32 channel data offset (exp tables: 2 x 256 int32); reshape
#            u32 elements; float quantize/dequantize u32 elements, u32 scale bits, i32 zero point
#   channel data, then the sha256 of everything before it (32 bytes)
# ref: an arena offset (>= 0) or -1 - k for the k-th float32 graph buffer (outside the arena).

import struct
from array import array

from . import ModelError, TensorInfo, _mem_free, _gc, _int8_buffer, _kernels_ref, _stage, STREAM_SCRATCH_BYTES

K_CONV_MAX = 3          # kinds 1..3: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED
K_ADD = 6
K_SOFTMAX = 7
K_RESHAPE = 8
K_REQUANT = 9
K_QUANT_F = 10
K_DEQUANT = 11
T_INT8 = 9
_P_CONV = 25            # params.P_LEN: a convolution's parameter count
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
    tables = 2048 if kind == K_ADD else 1024 if kind == K_REQUANT else 0
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
        if head[2] == K_SOFTMAX:
            return True
        pos += head[0] | (head[1] << 8)
    return False


def _view(m, views, ref, nbytes, arena_mv, arena_bytes):
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


# Operation kinds (same numbers as ops.K_*) -> kernel function name
_KERNEL_NAMES = (None, "conv2d", "depthwise_conv2d", "fully_connected", "avg_pool2d", "max_pool2d", "add", "softmax",
                 "copy", "requantize")
_OP_NAMES = (None, "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD",
             "SOFTMAX", "RESHAPE", "QUANTIZE")


def _kernel(k, kind, fallback, fallback_softmax=None):
    """Kernel function of operation `kind` in backend module k; kernels_ref's (noted in fallback) if k lacks it
    (fallback_softmax: the reference softmax when it is imported already)."""
    if kind == 10 or kind == 11:           # float boundary ops: always the reference ones
        return getattr(_kernels_ref(), "quantize_float" if kind == 10 else "dequantize")
    name = _KERNEL_NAMES[kind] if 0 < kind < 10 else None
    if name is None:
        raise ModelError("corrupt plan: unknown operation kind %d" % kind)
    fn = getattr(k, name, None)
    if fn is None:
        if kind == 7:                      # just the reference softmax, not every reference kernel
            fn = fallback_softmax
            if fn is None:
                from .ref_softmax import softmax as fn
        else:
            fn = getattr(_kernels_ref(), name)
        fallback.append(_OP_NAMES[kind])
    return fn


def build(m, g, h, k, scratch_bytes, stream_ok, mapped=None):
    """Read the plan's records from g into m's steps; m's arena is allocated already (m._arena, m.arena_bytes,
    m.weights_mode: "ram" or "flash").

    h: plancheck.check()'s header tuple; k: backend module; scratch_bytes: the largest streamed weight block
    (default STREAM_SCRATCH_BYTES); stream_ok: whether g may stay open for streaming per-channel data at invoke
    (a plan file, not the full path's in-RAM plan).

    Every operator's work area is the arena above its live tensors (record field `top`) up to the arena's end:
    a streamed weight block goes first, the rest is the kernel's scratch (planner.tops, docs/engine.md)."""
    m.model_bytes = h[4]
    m.macs = h[6]
    n_ops, ops_at, chan_at, chan_bytes = h[7], h[8], h[9], h[10]
    max_ch = h[15]
    total = m.arena_bytes
    arena_mv = memoryview(m._arena)
    weights = m.weights_mode
    stream_chan = stream_ok and m._stream_chan
    # streamed to a backend that reads them as raw int32 (viper's ptr32): each operator's channel data goes to the
    # arena's end (the plan's floors keep it free), no buffer of its own
    in_arena = stream_chan and getattr(k, "CHANNELS_AS_BYTES", False)
    m._chan_in_arena = in_arena
    ram = 0
    chan = None                                 # per-channel data: all of it, or one op's at a time
    soft_at = 0 if in_arena else 3 * max_ch     # streamed: the softmax tables lie after one op's channel data
    if chan_bytes:
        # one buffer for everything read per op and the softmax tables, made before anything else (fragmentation)
        n_chan = soft_at + (512 if _has_softmax(g, ops_at, n_ops) else 0) if stream_chan else chan_bytes // 4
        if n_chan:
            chan = memoryview(_int32_buffer(n_chan))
            ram += len(chan) * 4
        if not stream_chan:
            g.seek(chan_at)
            if g.readinto(chan) != chan_bytes:
                raise ModelError("corrupt plan: channel data truncated")
    chan_views = {}
    if stream_chan:
        m._side = g
    block_cap = scratch_bytes or STREAM_SCRATCH_BYTES
    largest_block = 0

    rd = _Reader(g, h[2])
    views = {}
    infos = []
    io_views = []
    for _ in range(h[16] + h[17]):
        b = rd.next()
        ttype, rank, ref, nbytes, scale_bits, zp = struct.unpack_from("<BBiIIi", b, 2)
        shape = struct.unpack_from("<%dI" % rank, b, 20)
        at = 20 + 4 * rank
        name = str(bytes(b[at + 1:at + 1 + b[at]]), "utf-8")
        scale = struct.unpack("<f", struct.pack("<I", scale_bits))[0]
        infos.append(TensorInfo(name, shape, "int8" if ttype == T_INT8 else "float32", scale, zp, nbytes))
        io_views.append(_view(m, views, ref, nbytes, arena_mv, total))
    m.inputs = infos[:h[16]]
    m.outputs = infos[h[16]:]
    m._in_views = io_views[:h[16]]
    m._out_views = io_views[h[16]:]
    infos = io_views = None
    if rd.pos != ops_at:
        raise ModelError("corrupt plan: the operator records do not start where the header says")

    f = m._f
    steps = []
    fallback = m._fallback
    model_bytes = h[4]
    p_shared = None                             # streamed: the one parameter array all convolutions read into
    for _ in range(n_ops):
        if _gc is not None:
            _gc.collect()                       # the last record's temporaries go before this record's views
        rec_at = rd.pos
        b = rd.next()
        kind, n_in, o_ref, o_n, top = struct.unpack_from("<BBiII", b, 2)
        if top > total:
            raise ModelError("corrupt plan: an operator's live tensors end outside the arena")
        out = _view(m, views, o_ref, o_n, arena_mv, total)
        at = 16
        ins = []
        for _ in range(n_in):
            ref, n = struct.unpack_from("<iI", b, at)
            ins.append(_view(m, views, ref, n, arena_mv, total))
            at += 8
        inp = ins[0]
        n_p = b[at]
        at += 1
        p = None
        p_at = rec_at + at                      # where the parameters lie in the plan file
        if n_p:
            # a convolution's array also holds the six u32 after its parameters in the record (channels, weights
            # offset and bytes, bytes per output channel, channel data offset, row band): slots n_p.. (invoke)
            p = array("i", struct.unpack_from("<%di" % (n_p + 6 if kind <= K_CONV_MAX else n_p), b, at))
            at += 4 * n_p
        fn = _kernel(k, kind, fallback, m._softmax)
        if kind <= K_CONV_MAX:
            n, w_pos, w_bytes, rb, c_pos, band = struct.unpack_from("<IIIIII", b, at)
            if w_pos + w_bytes > model_bytes or c_pos + 12 * n > chan_bytes:
                raise ModelError("corrupt plan: operator data lies outside the model or the plan")
            if n_p != _P_CONV:
                raise ModelError("corrupt plan: a convolution with %d parameters" % n_p)
            if band and (kind == K_CONV_MAX or band > p[4]):       # p[P_OUT_H]; FULLY_CONNECTED has no rows
                raise ModelError("corrupt plan: a row band that does not fit the operator")
            if band:
                m._banded += 1
            depth = p[3]                        # P_IN_C, before p becomes a position in the plan (streamed)
            side_pos = -1
            ch_all = None
            end = total                         # the work area's end
            if stream_chan:
                v = chan_views.get(n)
                if v is None:
                    if in_arena:
                        c0 = (total - 12 * n) & ~15
                        v = (arena_mv[c0:c0 + 12 * n], arena_mv[c0:c0 + 4 * n], arena_mv[c0 + 4 * n:c0 + 8 * n],
                             arena_mv[c0 + 8 * n:c0 + 12 * n])
                    else:
                        v = (chan[:3 * n], chan[:n], chan[n:2 * n], chan[2 * n:3 * n])
                    chan_views[n] = v
                ch_all, bias, mult, shift = v
                side_pos = chan_at + c_pos
                # the kernel parameters are read from the plan too, into one shared array, before each run of
                # the operator (Model.invoke): the step keeps their file position, not an array of its own
                if p_shared is None:
                    p_shared = m._p = _int32_buffer(n_p + 6)
                p = p_at
                if in_arena:
                    end = (total - 12 * n) & ~15
                    if end < top:
                        raise ModelError("corrupt plan: the arena has no room for an operator's channel data")
            else:
                c = c_pos // 4
                bias, mult, shift = chan[c:c + n], chan[c + n:c + 2 * n], chan[c + 2 * n:c + 3 * n]
            if weights == "mapped":             # in place: a view of the mapped model file, no RAM; the
                # scratch ends where streamed channel data begins
                steps.append((1, fn, out, inp, mapped[w_pos:w_pos + w_bytes], bias, mult, shift, p, None, 0,
                              side_pos, ch_all, _view(m, views, top, end - top, arena_mv, total)))
            elif weights == "ram":
                filt = _int8_buffer(w_bytes)
                f.seek(w_pos)
                f.readinto(filt)
                ram += w_bytes
                steps.append((1, fn, out, inp, memoryview(filt), bias, mult, shift, p, None, 0, side_pos, ch_all,
                              _view(m, views, top, total - top, arena_mv, total)))
            else:
                # the weight block: as many output channels as fit, at most block_cap bytes (at least one: the
                # plan's floor guarantees it); the kernel's scratch is the rest: half the work area for a
                # convolution (it copies the block's weights there), one int32 input row for FULLY_CONNECTED
                room = end - top
                if rb:
                    fit = room - 4 * depth - 32 if kind == K_CONV_MAX else room // 2
                    block = min(n, max(1, min(fit, block_cap) // rb))
                    blk_bytes = block * rb
                else:                           # depthwise: the whole filter at once
                    block = n
                    blk_bytes = w_bytes
                if top + blk_bytes > end:
                    raise ModelError("corrupt plan: the arena has no room for a weight block")
                rest = n % block if rb else 0
                full = _view(m, views, top, blk_bytes, arena_mv, total)
                tail = arena_mv[top:top + rest * rb] if rest else full
                if blk_bytes > largest_block:
                    largest_block = blk_bytes
                w_end = top + _align16(blk_bytes)
                scratch = _view(m, views, w_end, end - w_end, arena_mv, total) if w_end < end else full[:0]
                steps.append((1, fn, out, inp, full, bias, mult, shift, p, tail, block, side_pos, ch_all, scratch))
        elif kind == K_ADD:
            steps.append((4, fn, out, inp, ins[1], p, _view(m, views, top, total - top, arena_mv, total)))
        elif kind == K_SOFTMAX:
            c = struct.unpack_from("<I", b, at)[0] // 4
            if stream_chan:                    # the tables stay in RAM: read them out of the plan
                if len(chan) < soft_at + 512:
                    raise ModelError("corrupt plan: a SOFTMAX record the pre-scan did not see")
                t = chan[soft_at:soft_at + 512]
                g.seek(chan_at + 4 * c)
                g.readinto(t)
                c = 0
            else:
                t = chan
            steps.append((5, fn, out, inp, t[c:c + 256], t[c + 256:c + 512], p))
        elif kind == K_RESHAPE:                 # a copy only when the planner could not alias
            if o_ref != struct.unpack_from("<i", b, 16)[0]:
                steps.append((6, fn, out, inp, struct.unpack_from("<I", b, at)[0]))
        elif kind == K_QUANT_F or kind == K_DEQUANT:
            n, s_bits, zp = struct.unpack_from("<IIi", b, at)
            scale = struct.unpack("<f", struct.pack("<I", s_bits))[0]
            if kind == K_QUANT_F:
                steps.append((7, fn, out, inp, n, scale, zp, array("f", [0.0])))
            else:
                steps.append((8, fn, out, inp, n, scale, zp))
        elif kind == K_REQUANT:
            steps.append((2, fn, out, inp, p, _view(m, views, top, total - top, arena_mv, total)))
        else:                                   # pools
            steps.append((3, fn, out, inp, p))
    m._steps = steps
    m._specs_count = n_ops
    m.weights_ram_bytes = ram
    m.scratch_bytes = largest_block
    _stage("steps built")
