# Model preparation, the engine's full path: parse the .tflite (reader.py), prepare each operator (op_prepare.py)
# and lay out the activations in the arena (arena_layout.py) into a compact Recipe, which plan_write.py packs into
# a plan file (the same bytes `tinyhost flash` puts next to the model as MODEL.plan) and plan_read.py turns into
# steps. The host runs it too (`tinyhost flash`, `model inspect`).
#
# The engine drops this module, reader, op_prepare and arena_layout from the heap after every load (del
# sys.modules[...]), so none of their code, and none of the per-tensor objects the reader builds, stays in RAM
# while a model runs.

from array import array

from . import ModelError
from .reader import read_model, T_INT8, T_FLOAT32
from . import op_prepare
from . import arena_layout
from .params import (P_BATCHES, P_IN_W, P_IN_C, P_OUT_H, P_OUT_W, P_OUT_C, P_STRIDE_H, P_STRIDE_W, P_PAD_H, P_PAD_W,
                     P_K_H, P_K_W)

try:
    from micropython import const
except ImportError:          # CPython (host tools)
    def const(x):
        return x

# Operator kinds (op_prepare's numbering; copies tied by tests/test_device_constants.py)
_K_CONV = const(1)
_K_DW = const(2)
_K_FC = const(3)         # kinds up to _K_FC are convolution-like
_K_SOFTMAX = const(7)
_K_RESHAPE = const(8)
_K_QUANT_F = const(10)
_K_DEQUANT = const(11)


class Recipe:
    """Everything a load plan holds (plan_write.py packs it)."""

    def __init__(self):
        self.model_bytes = 0
        self.macs = 0
        self.arena_bytes = 0       # planned
        self.where = None          # int8 activation tensor index -> arena offset
        self.nbytes = None         # int8 activation tensor index -> bytes
        self.floats = None         # float32 graph I/O tensor index -> elements
        self.inputs = ()           # tensor indices
        self.outputs = ()
        self.input_info = ()       # (name, shape, type, scale bits, zero point) per graph input
        self.output_info = ()
        self.records = []          # one tuple per operator (_record)
        self.tops = ()             # per operator: arena bytes below it that hold live activations (work area above)
        self.bands = ()            # per operator: output rows per kernel call (0: all at once)
        self.max_channels = 0


def _lifetimes(md, triples):
    """Activation buffers: list of (tensor indices sharing it, first op, last op, bytes); triples (kind, ins, out).

    RESHAPE outputs share their input's buffer; float32 graph I/O lives outside the arena."""
    n_ops = len(triples)
    group = {}

    def root(i):
        while group.get(i, i) != i:
            i = group[i]
        return i

    for kind, ins, out in triples:
        if kind == _K_RESHAPE:
            group[root(out)] = root(ins[0])
    first = {}
    last = {}

    def touch(i, k):
        r = root(i)
        if r not in first or k < first[r]:
            first[r] = k
        if r not in last or k > last[r]:
            last[r] = k

    for i in md.inputs:
        touch(i, 0)
    for k, (kind, ins, out) in enumerate(triples):
        for i in ins:
            touch(i, k)
        touch(out, k)
    for i in md.outputs:
        touch(i, n_ops - 1)
    members = {}
    for t in md.tensors:
        if t.is_const or t.type != T_INT8:
            continue
        r = root(t.index)
        if r in first:
            members.setdefault(r, []).append(t.index)
    out = []
    for r in sorted(members):
        size = max(md.tensors[i].nbytes for i in members[r])
        out.append((members[r], first[r], last[r], size))
    return out


def _bands(md, triples, ps, bufs, last):
    """Convolutions that may run in bands of output rows over their dying input: [(op, input buf, output buf)]."""
    where = {}
    for b, (members, _, _, _) in enumerate(bufs):
        for i in members:
            where[i] = b
    kept = set(where.get(i) for i in md.outputs)
    out = []
    for k, (kind, ins, o) in enumerate(triples):
        p = ps[k]
        if p is None or p[P_BATCHES] != 1:
            continue
        x, y = where.get(ins[0]), where.get(o)
        if x is None or y is None or x == y or last[x] != k or x in kept:
            continue
        out.append((k, x, y))
    return out


# A band costs one kernel call, and each call copies (or streams) the operator's filter again: bands are made
# tall enough that the calls' overhead, counted as filter bytes + _CALL_BYTES each, stays under 1/_BAND_MACS_PER_BYTE
# of the operator's multiply-accumulates (about 3 % of its time with the viper kernels).
_CALL_BYTES = 256
_BAND_MACS_PER_BYTE = 32


def _min_rows(kind, p):
    """The shortest band (output rows) worth a call for this CONV_2D / DEPTHWISE_CONV_2D."""
    taps = p[P_K_H] * p[P_K_W] * (p[P_IN_C] if kind == _K_CONV else 1)
    filt = taps * p[P_OUT_C]
    rows = p[P_OUT_H]
    calls = rows * p[P_OUT_W] * p[P_OUT_C] * taps // (_BAND_MACS_PER_BYTE * (filt + _CALL_BYTES))
    calls = max(1, min(rows, calls))
    return (rows + calls - 1) // calls


def _distance(p, rows):
    return arena_layout.band_distance(rows, p[P_IN_W] * p[P_IN_C], p[P_OUT_W] * p[P_OUT_C], p[P_OUT_H],
                                 p[P_STRIDE_H], p[P_PAD_H])


def _lay_out(md, triples, ps):
    """(tensor index -> arena offset, arena bytes, per operator the first free arena byte above its live buffers,
    per operator its output row band (0: one call for all rows)).

    ps: per operator its kernel parameters when it is a CONV_2D or DEPTHWISE_CONV_2D, else None. Such an operator
    whose input dies with it may overwrite that input as it goes, in bands of output rows (arena_layout.band_distance):
    the arena is planned with the shortest bands worth a call (_min_rows), then each band is made as tall as the
    offsets placed allow; an operator whose input and output ended up side by side is not banded."""
    bufs = _lifetimes(md, triples)
    sizes, first, last = [b[3] for b in bufs], [b[1] for b in bufs], [b[2] for b in bufs]
    n_ops = len(triples)
    offsets, arena = arena_layout.plan(sizes, first, last)
    bands = [0] * n_ops
    cands = _bands(md, triples, ps, bufs, last)
    if cands:
        pairs = {(x, y): _distance(ps[k], _min_rows(triples[k][0], ps[k])) for k, x, y in cands}
        o1, a1 = arena_layout.plan(sizes, first, last, pairs)
        if a1 < arena:
            offsets, arena = o1, a1
            al = arena_layout._align
            for k, x, y in cands:
                gap = offsets[x] - offsets[y]
                if gap >= al(sizes[y]) or -gap >= al(sizes[x]):
                    continue                        # placed side by side: one call
                p = ps[k]
                h = p[P_OUT_H]                      # the tallest band these offsets allow (one row always does)
                while h > 1 and _distance(p, h) > gap:
                    h = (h + 1) // 2
                bands[k] = h
    where = {}
    for b, off in zip(bufs, offsets):
        for i in b[0]:
            where[i] = off
    return where, arena, arena_layout.tops(sizes, first, last, offsets, n_ops), bands


def _conv_p(s):
    return s.p if s.kind == _K_CONV or s.kind == _K_DW else None


def arena_layout_of(md, specs):
    """(offset per int8 activation tensor index, arena bytes, output rows per call of each operator (0: all))
    for op_prepare.prepare's specs (host tools)."""
    where, arena, _, bands = _lay_out(md, [(s.kind, s.ins, s.out) for s in specs], [_conv_p(s) for s in specs])
    return where, arena, bands


def pointwise(kind, p, band):
    """Whether a prepared operator is a 1x1 CONV_2D with stride 1 and no padding that runs in one call (no row
    band): a FULLY_CONNECTED over its N x H x W pixels (the same sums, bias and per-channel requantisation), which
    the plan records as one, so that it runs the fully-connected kernels (viper: no copy of its filter per call,
    which a streaming model's 1x1 layers over a few pixels pay most for)."""
    return (kind == _K_CONV and not band and p[P_K_H] == 1 and p[P_K_W] == 1 and p[P_STRIDE_H] == 1
            and p[P_STRIDE_W] == 1 and p[P_PAD_H] == 0 and p[P_PAD_W] == 0)


def _record(md, s, f):
    """The record of one prepared operator: a tuple in the layout of its kind (plan_write's _R_* slots, which
    read it; tests/test_device_constants.py checks that the names here sit in those slots)."""
    kind, ins, out, p = s.kind, s.ins, s.out, s.p
    if kind <= _K_FC:
        channels = s.channels
        bias = array("i", bytes(4 * channels))
        if s.bias is not None:
            f.seek(s.bias.data_pos)
            f.readinto(bias)
        w_at, w_bytes, row_bytes, mult, shift = s.weights.data_pos, s.weights.nbytes, s.row_bytes, s.mult, s.shift
        return (kind, ins, out, p, channels, w_at, w_bytes, row_bytes, bias, mult, shift)
    if kind == _K_SOFTMAX:
        exp_q31, exp_q12 = s.exp_q31, s.exp_q12
        return (kind, ins, out, p, exp_q31, exp_q12)
    if kind == _K_RESHAPE:
        elements = md.tensors[out].elements
        return (kind, ins, out, elements)
    if kind == _K_QUANT_F or kind == _K_DEQUANT:
        t = md.tensors[out if kind == _K_QUANT_F else ins[0]]      # the int8 side
        elements, scale_bits, zero_point = t.elements, t.scale_bits, t.zero_point
        return (kind, ins, out, elements, scale_bits, zero_point)
    return (kind, ins, out, p)


def _info(t):
    return (t.name, tuple(t.shape), t.type, t.scale_bits if t.nq else 0, t.zero_point)


def prepare(f, stage=None):
    """Parse, validate, prepare and plan the model in the open file f -> Recipe (packed by plan_write.py)."""
    size = f.seek(0, 2)
    f.seek(0)
    md = read_model(f, size)
    if stage:
        stage("model parsed")
    r = Recipe()
    r.model_bytes = size
    triples = []
    ps = []
    for op in md.ops:
        s = op_prepare.prepare_op(md, op)
        r.macs += s.macs
        if s.kind <= _K_FC and s.channels > r.max_channels:
            r.max_channels = s.channels
        triples.append((s.kind, s.ins, s.out))
        ps.append(_conv_p(s))
        r.records.append(_record(md, s, f))
        s = None
    if stage:
        stage("operators prepared")
    where, r.arena_bytes, r.tops, r.bands = _lay_out(md, triples, ps)
    triples = ps = None
    for k, rec in enumerate(r.records):
        if pointwise(rec[0], rec[3], r.bands[k]):      # recorded as the FULLY_CONNECTED it is (pointwise)
            p = rec[3]
            p[P_BATCHES] = p[P_BATCHES] * p[P_OUT_H] * p[P_OUT_W]
            r.records[k] = (_K_FC,) + rec[1:]
    r.where = where
    r.nbytes = {}
    for i in where:
        r.nbytes[i] = md.tensors[i].nbytes
    r.floats = {}
    for i in list(md.inputs) + list(md.outputs):
        t = md.tensors[i]
        if i not in where:
            if t.type != T_FLOAT32:
                raise ModelError("unsupported model: graph tensor %s is %s" % (t.describe(), t.dtype))
            r.floats[i] = t.elements
    r.inputs = tuple(md.inputs)
    r.outputs = tuple(md.outputs)
    r.input_info = [_info(md.tensors[i]) for i in md.inputs]
    r.output_info = [_info(md.tensors[i]) for i in md.outputs]
    if stage:
        stage("arena planned")
    return r


def plan_in_ram(f, plan_check):
    """The full path: parse, validate, prepare and plan the model in open file f into an in-RAM plan (io.BytesIO);
    this module, reader, ops, planner and plan_write leave sys.modules again before it returns."""
    import io
    from . import plan_write, _stage, _drop_load_modules
    _stage("loader imported")
    r = prepare(f, _stage)
    digest = plan_check.model_sha256(f, r.model_bytes)
    g = io.BytesIO()
    plan_write.write(r, digest, g)
    r = plan_write = None
    _drop_load_modules(keep=("plan_check",))
    return g
