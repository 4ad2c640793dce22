# .tflite flatbuffer reader that never holds the file in RAM.
#
# The model is read with seek/readinto of small pieces through one 256-byte window, so a 300 KB model parses in a
# few KB of heap. Everything is checked at load (check at load, trust at run): the file identifier and schema
# version, every offset and vector length against the file size, operator codes, tensor types, shapes and
# quantisation. Anything wrong or unsupported is a ModelError that names the field, tensor or operator; a damaged
# file never surfaces as an IndexError or a silently wrong answer. Runs unchanged under CPython and MicroPython.

import struct

from . import quant
from . import ModelError   # defined in the package so that it outlives this module (dropped after load)


# TensorType codes (tflite schema) -> (name, bytes per element)
TYPES = {0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
         5: ("string", 0), 6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1),
         10: ("float64", 8), 11: ("complex128", 16), 12: ("uint64", 8), 13: ("resource", 0),
         14: ("variant", 0), 15: ("uint32", 4), 16: ("uint16", 2), 17: ("int4", 0)}
T_FLOAT32 = 0
T_INT32 = 2
T_INT8 = 9
T_INT64 = 4

# BuiltinOperator codes this engine runs -> name
OPS = {0: "ADD", 1: "AVERAGE_POOL_2D", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 6: "DEQUANTIZE",
       9: "FULLY_CONNECTED", 17: "MAX_POOL_2D", 22: "RESHAPE", 25: "SOFTMAX", 114: "QUANTIZE"}
# A few other common names, only so that an unsupported operator is named rather than numbered.
_OTHER_OP_NAMES = {2: "CONCATENATION", 14: "LOGISTIC", 18: "MUL", 19: "RELU", 21: "RELU6", 28: "TANH",
                   34: "PAD", 40: "MEAN", 41: "SUB", 45: "SQUEEZE", 49: "STRIDED_SLICE", 53: "TRANSPOSE",
                   97: "HARD_SWISH", 98: "PADV2", 83: "PACK", 88: "UNPACK", 32: "CUSTOM", 7: "EMBEDDING_LOOKUP",
                   15: "LSH_PROJECTION", 16: "LSTM", 39: "ARG_MAX", 67: "TRANSPOSE_CONV", 54: "MEAN"}

# BuiltinOptions union type expected for each operator (0 = none)
_OPTIONS_TYPE = {0: 11, 1: 5, 3: 1, 4: 2, 9: 8, 17: 5, 22: 17, 25: 9, 6: 38, 114: 89}

ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6"}
PADDINGS = {0: "SAME", 1: "VALID"}

_MAX_TENSORS = 4096
_MAX_OPS = 4096
_MAX_RANK = 6
_MAX_ELEMENTS = 1 << 28


def op_name(code):
    return OPS.get(code) or _OTHER_OP_NAMES.get(code) or ("builtin operator %d" % code)


class _File:
    """Bounds-checked little-endian reads from a seekable file through one small window."""

    def __init__(self, f, size, window=256):
        self.f = f
        self.size = size
        self.buf = bytearray(window)
        self.mv = memoryview(self.buf)
        self.base = 0
        self.n = 0

    def check(self, pos, n, what):
        if pos < 0 or n < 0 or pos + n > self.size:
            raise ModelError("corrupt or truncated model: %s at byte %d (+%d) lies outside the %d-byte file"
                             % (what, pos, n, self.size))

    def raw(self, pos, n, what):
        self.check(pos, n, what)
        if n > len(self.buf):
            self.f.seek(pos)
            data = self.f.read(n)
            if data is None or len(data) != n:
                raise ModelError("could not read %s at byte %d: file shorter than it claims" % (what, pos))
            return data
        if pos < self.base or pos + n > self.base + self.n:
            self.f.seek(pos)
            got = self.f.readinto(self.mv)
            self.base = pos
            self.n = got or 0
            if self.n < n:
                raise ModelError("could not read %s at byte %d: file shorter than it claims" % (what, pos))
        off = pos - self.base
        return self.buf[off:off + n]

    def u8(self, pos, what):
        return self.raw(pos, 1, what)[0]

    def u16(self, pos, what):
        return struct.unpack("<H", self.raw(pos, 2, what))[0]

    def i32(self, pos, what):
        return struct.unpack("<i", self.raw(pos, 4, what))[0]

    def u32(self, pos, what):
        return struct.unpack("<I", self.raw(pos, 4, what))[0]

    def string(self, pos):
        """The flatbuffer string at pos (its u32 length first); "" for pos 0."""
        if not pos:
            return ""
        n = self.u32(pos, "string")
        try:
            return str(bytes(self.raw(pos + 4, n, "string")), "utf-8")
        except UnicodeError:               # only the bytes: a MemoryError here is the heap's, not the model's
            raise ModelError("corrupt model: a name at byte %d is not valid UTF-8" % pos)

    def i64(self, pos, what):
        lo, hi = struct.unpack("<Ii", self.raw(pos, 8, what))
        return (hi << 32) | lo


class _Table:
    """A flatbuffer table: field(i) returns the absolute position of field i, or 0 when absent."""

    def __init__(self, fb, pos, what):
        self.fb = fb
        self.pos = pos
        self.what = what
        vt = pos - fb.i32(pos, what + " (table offset)")
        vt_len = fb.u16(vt, what + " (vtable)")
        if vt_len < 4 or vt_len & 1:
            raise ModelError("corrupt model: %s has a malformed vtable (length %d)" % (what, vt_len))
        fb.check(vt, vt_len, what + " (vtable)")
        self.vt = vt
        self.nfields = (vt_len - 4) >> 1
        self.obj_len = fb.u16(vt + 2, what + " (vtable)")
        fb.check(pos, self.obj_len, what)

    def field(self, i):
        if i >= self.nfields:
            return 0
        off = self.fb.u16(self.vt + 4 + 2 * i, self.what)
        if off == 0:
            return 0
        if off >= self.obj_len:
            raise ModelError("corrupt model: %s field %d points outside its table" % (self.what, i))
        return self.pos + off

    def scalar(self, i, kind, default):
        p = self.field(i)
        if not p:
            return default
        fb = self.fb
        if kind == "u8":
            return fb.u8(p, self.what)
        if kind == "i8":
            v = fb.u8(p, self.what)
            return v - 256 if v > 127 else v
        if kind == "i32":
            return fb.i32(p, self.what)
        if kind == "u32":
            return fb.u32(p, self.what)
        if kind == "f32":
            return fb.u32(p, self.what)   # raw bits; see quant.f32_parts
        if kind == "u64":
            return fb.i64(p, self.what) & 0xFFFFFFFFFFFFFFFF
        raise ValueError(kind)

    def ref(self, i, what):
        """Absolute position of the object (table, vector, string) that field i refers to, or 0."""
        p = self.field(i)
        if not p:
            return 0
        target = p + self.fb.u32(p, what)
        self.fb.check(target, 4, what)
        return target

    def table(self, i, what):
        p = self.ref(i, what)
        return _Table(self.fb, p, what) if p else None

    def vector(self, i, elem_bytes, what, limit=None):
        """(start, length) of the vector in field i; (0, 0) when absent."""
        p = self.ref(i, what)
        if not p:
            return 0, 0
        n = self.fb.u32(p, what + " (length)")
        if limit is not None and n > limit:
            raise ModelError("unsupported model: %s has %d entries (at most %d)" % (what, n, limit))
        self.fb.check(p + 4, n * elem_bytes, what)
        return p + 4, n

    def ints(self, i, what, limit=None):
        start, n = self.vector(i, 4, what, limit)
        fb = self.fb
        return tuple(fb.i32(start + 4 * k, what) for k in range(n))

    def string(self, i, what):
        start, n = self.vector(i, 1, what, 4096)
        if not n:
            return ""
        try:
            return str(bytes(self.fb.raw(start, n, what)), "utf-8")
        except UnicodeError:
            raise ModelError("corrupt model: %s is not valid UTF-8" % what)

    def tables(self, i, what, limit):
        """The vector of tables in field i as a _Tables (tables are built one at a time, when asked)."""
        start, n = self.vector(i, 4, what, limit)
        return _Tables(self.fb, start, n, what)

    def string_pos(self, i, what):
        """Position of the string in field i (read later with _File.string), 0 when absent; length checked."""
        start, n = self.vector(i, 1, what, 4096)
        return start - 4 if n else 0


class _Tables:
    """A flatbuffer vector of tables, without a Python object per element until one is asked for."""

    def __init__(self, fb, start, n, what):
        self.fb = fb
        self.start = start
        self.n = n
        self.what = what

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        if k < 0 or k >= self.n:
            raise IndexError(k)
        p = self.start + 4 * k
        return _Table(self.fb, p + self.fb.u32(p, self.what), "%s[%d]" % (self.what, k))


class Tensor:
    """One tensor of the graph. Quantisation scales stay in the file (scale_pos); scale_bits is the first one."""

    def __init__(self, index, fb):
        self.index = index
        self.fb = fb
        self.name_pos = 0      # the name stays in the file: read by .name, only when asked
        self.shape = ()
        self.type = T_FLOAT32
        self.data_pos = -1     # file offset of constant data, -1 for activations
        self.nq = 0            # number of scales (0 = not quantised, >1 = per channel)
        self.scale_pos = 0
        self.scale_bits = 0
        self.zero_point = 0
        self.zp_pos = 0
        self.qdim = 0

    @property
    def name(self):
        return self.fb.string(self.name_pos)

    @property
    def dtype(self):
        return TYPES[self.type][0]

    @property
    def elements(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self):
        return self.elements * TYPES[self.type][1]

    @property
    def is_const(self):
        return self.data_pos >= 0

    @property
    def scale(self):
        return quant.f32_to_float(self.scale_bits) if self.nq else 0.0

    def describe(self):
        name = self.name
        if len(name) > 40:       # converters join a fused operator's names with ';' into hundreds of characters:
            name = name[:37] + "..."     # cut, so that an error still ends with its reason in a board's reply
        return "tensor %d '%s'" % (self.index, name)


class Op:
    def __init__(self, index, code, inputs, outputs, options):
        self.index = index
        self.code = code
        self.inputs = inputs
        self.outputs = outputs
        self.options = options

    @property
    def name(self):
        return op_name(self.code)

    def describe(self):
        return "operator %d (%s)" % (self.index, self.name)


class ModelDef:
    """The parsed, validated graph: tensors, ops (in execution order), graph inputs and outputs."""

    def __init__(self):
        self.file_size = 0
        self.version = 0
        self.description = ""
        self.tensors = []
        self.ops = []
        self.inputs = ()
        self.outputs = ()
        self.fb = None

    def scales(self, t):
        """All scales of tensor t as float32 bit patterns."""
        return [self.fb.u32(t.scale_pos + 4 * k, t.describe() + " scale") for k in range(t.nq)]

    def zero_points(self, t):
        if not t.zp_pos:
            return [0] * t.nq
        return [self.fb.i64(t.zp_pos + 8 * k, t.describe() + " zero point") for k in range(t.nq)]


def _read_options(code, op_t, what):
    kind = op_t.scalar(3, "u8", 0)
    expected = _OPTIONS_TYPE.get(code, 0)
    opt = op_t.table(4, what + " builtin options") if kind else None
    if kind and expected and kind != expected:
        raise ModelError("corrupt model: %s has builtin options of type %d, expected %d" % (what, kind, expected))
    o = {}
    t = opt
    if code == 3:        # CONV_2D
        o["padding"] = t.scalar(0, "i8", 0) if t else 0
        o["stride_w"] = t.scalar(1, "i32", 0) if t else 0
        o["stride_h"] = t.scalar(2, "i32", 0) if t else 0
        o["activation"] = t.scalar(3, "i8", 0) if t else 0
        o["dilation_w"] = t.scalar(4, "i32", 1) if t else 1
        o["dilation_h"] = t.scalar(5, "i32", 1) if t else 1
    elif code == 4:      # DEPTHWISE_CONV_2D
        o["padding"] = t.scalar(0, "i8", 0) if t else 0
        o["stride_w"] = t.scalar(1, "i32", 0) if t else 0
        o["stride_h"] = t.scalar(2, "i32", 0) if t else 0
        o["depth_multiplier"] = t.scalar(3, "i32", 0) if t else 0
        o["activation"] = t.scalar(4, "i8", 0) if t else 0
        o["dilation_w"] = t.scalar(5, "i32", 1) if t else 1
        o["dilation_h"] = t.scalar(6, "i32", 1) if t else 1
    elif code in (1, 17):  # pools
        o["padding"] = t.scalar(0, "i8", 0) if t else 0
        o["stride_w"] = t.scalar(1, "i32", 0) if t else 0
        o["stride_h"] = t.scalar(2, "i32", 0) if t else 0
        o["filter_w"] = t.scalar(3, "i32", 0) if t else 0
        o["filter_h"] = t.scalar(4, "i32", 0) if t else 0
        o["activation"] = t.scalar(5, "i8", 0) if t else 0
    elif code == 9:      # FULLY_CONNECTED
        o["activation"] = t.scalar(0, "i8", 0) if t else 0
        o["weights_format"] = t.scalar(1, "i8", 0) if t else 0
        o["keep_num_dims"] = t.scalar(2, "u8", 0) if t else 0
    elif code == 25:     # SOFTMAX
        o["beta_bits"] = t.scalar(0, "f32", 0) if t else 0
    elif code == 0:      # ADD
        o["activation"] = t.scalar(0, "i8", 0) if t else 0
    elif code == 22:     # RESHAPE
        o["new_shape"] = t.ints(0, what + " new_shape", _MAX_RANK) if t else ()
    for key in ("padding",):
        if key in o and o[key] not in PADDINGS:
            raise ModelError("unsupported model: %s has padding %d" % (what, o[key]))
    if "activation" in o and o["activation"] not in ACTIVATIONS:
        raise ModelError("unsupported model: %s uses fused activation %d (supported: NONE, RELU, RELU_N1_TO_1, "
                         "RELU6)" % (what, o["activation"]))
    return o


def _read_quant(fb, md, t, q_t):
    what = t.describe() + " quantization"
    s_start, s_n = q_t.vector(2, 4, what + " scale", 65536)
    z_start, z_n = q_t.vector(3, 8, what + " zero_point", 65536)
    if s_n == 0:
        return
    if z_n not in (0, s_n):
        raise ModelError("corrupt model: %s has %d scales but %d zero points" % (what, s_n, z_n))
    t.nq = s_n
    t.scale_pos = s_start
    t.zp_pos = z_start
    t.qdim = q_t.scalar(6, "i32", 0)
    for k in range(s_n):
        bits = fb.u32(s_start + 4 * k, what)
        try:
            sign, m, _ = quant.f32_parts(bits)
        except ValueError:
            raise ModelError("invalid model: %s scale %d is not a finite number" % (what, k))
        if m == 0:
            raise ModelError("invalid model: %s scale %d is zero" % (what, k))
        if sign:
            raise ModelError("invalid model: %s scale %d is negative" % (what, k))
    t.scale_bits = fb.u32(s_start, what)
    t.zero_point = fb.i64(z_start, what) if z_n else 0
    if s_n > 1:
        if t.qdim < 0 or t.qdim >= len(t.shape) or t.shape[t.qdim] != s_n:
            raise ModelError("invalid model: %s has %d per-channel scales but dimension %d of shape %s does not "
                             "match" % (what, s_n, t.qdim, t.shape))


def read_model(f, size):
    """Parse and validate the .tflite flatbuffer in the open binary file `f` of `size` bytes -> ModelDef."""
    fb = _File(f, size)
    if size < 16:
        raise ModelError("not a .tflite model: the file has only %d bytes" % size)
    ident = bytes(fb.raw(4, 4, "file identifier"))
    if ident != b"TFL3":
        raise ModelError("not a .tflite model: file identifier is %r, expected b'TFL3'" % ident)
    md = ModelDef()
    md.fb = fb
    md.file_size = size
    root = _Table(fb, fb.u32(0, "root offset"), "model")
    md.version = root.scalar(0, "u32", 0)
    if md.version != 3:
        raise ModelError("unsupported model: schema version %d, this engine reads version 3" % md.version)
    md.description = root.string(3, "model description")

    opcodes = []
    for k, oc in enumerate(root.tables(1, "operator_codes", 1024)):
        dep = oc.scalar(0, "i8", 0)
        code = oc.scalar(3, "i32", 0)
        code = max(code, dep)        # builtin_code; deprecated_builtin_code for old files (codes < 127)
        if code == 32:
            name = oc.string(1, "operator_codes[%d] custom_code" % k)
            opcodes.append(("CUSTOM", name))
        else:
            opcodes.append((code, None))

    buffers = root.tables(4, "buffers", 1 << 16)
    subgraphs = root.tables(2, "subgraphs", 64)
    if not subgraphs:
        raise ModelError("invalid model: it has no subgraph")
    if len(subgraphs) > 1:
        raise ModelError("unsupported model: %d subgraphs (control flow); this engine runs one" % len(subgraphs))
    sg = subgraphs[0]

    for k, t_t in enumerate(sg.tables(0, "tensors", _MAX_TENSORS)):
        t = Tensor(k, fb)
        t.name_pos = t_t.string_pos(3, "tensor %d name" % k)
        what = t.describe()
        t.shape = t_t.ints(0, what + " shape", _MAX_RANK)
        n = 1
        for d in t.shape:
            if d <= 0:
                raise ModelError("invalid model: %s has shape %s (dimensions must be positive)" % (what, t.shape))
            n *= d
            if n > _MAX_ELEMENTS:
                raise ModelError("invalid model: %s shape %s is too large" % (what, t.shape))
        t.type = t_t.scalar(1, "i8", 0)
        if t.type not in TYPES or TYPES[t.type][1] == 0:
            raise ModelError("unsupported model: %s has tensor type %d (%s)"
                             % (what, t.type, TYPES[t.type][0] if t.type in TYPES else "unknown"))
        if t_t.field(6):
            raise ModelError("unsupported model: %s is sparse" % what)
        if t_t.field(10) and t_t.scalar(10, "u32", 0):
            raise ModelError("unsupported model: %s keeps its data in an external buffer" % what)
        buf = t_t.scalar(2, "u32", 0)
        if buf >= max(len(buffers), 1):
            raise ModelError("corrupt model: %s refers to buffer %d, the model has %d"
                             % (what, buf, len(buffers)))
        if buf and len(buffers):
            b = buffers[buf]
            start, blen = b.vector(0, 1, "buffer %d data" % buf)
            if blen == 0 and b.field(1):
                start = b.scalar(1, "u64", 0)
                blen = b.scalar(2, "u64", 0)
                if start > 1:
                    fb.check(start, blen, "buffer %d data" % buf)
                else:
                    blen = 0
            if blen:
                if blen != t.nbytes:
                    raise ModelError("corrupt model: %s holds %d bytes of data but shape %s of %s needs %d"
                                     % (what, blen, t.shape, t.dtype, t.nbytes))
                t.data_pos = start
        q_t = t_t.table(4, what + " quantization")
        if q_t is not None:
            _read_quant(fb, md, t, q_t)
        if t.type == T_INT8:
            if t.nq == 0:
                raise ModelError("invalid model: %s is int8 but has no quantization scale" % what)
            for zp in md.zero_points(t):
                if zp < -128 or zp > 127:
                    raise ModelError("invalid model: %s zero point %d is outside int8" % (what, zp))
        md.tensors.append(t)

    nt = len(md.tensors)

    def check_indices(idx, what, optional):
        for i in idx:
            if (i == -1 and optional) or 0 <= i < nt:
                continue
            raise ModelError("corrupt model: %s refers to tensor %d, the graph has %d" % (what, i, nt))
        return idx

    md.inputs = check_indices(sg.ints(1, "subgraph inputs", 64), "subgraph inputs", False)
    md.outputs = check_indices(sg.ints(2, "subgraph outputs", 64), "subgraph outputs", False)
    if not md.inputs or not md.outputs:
        raise ModelError("invalid model: the graph has no inputs or no outputs")

    for k, o_t in enumerate(sg.tables(3, "operators", _MAX_OPS)):
        oi = o_t.scalar(0, "u32", 0)
        if oi >= len(opcodes):
            raise ModelError("corrupt model: operator %d uses operator code %d, the model has %d"
                             % (k, oi, len(opcodes)))
        code, custom = opcodes[oi]
        if code == "CUSTOM":
            raise ModelError("unsupported model: operator %d is the custom operator '%s'" % (k, custom))
        what = "operator %d (%s)" % (k, op_name(code))
        if code not in OPS:
            raise ModelError("unsupported model: %s; this engine runs %s"
                             % (what, ", ".join(sorted(OPS.values()))))
        ins = check_indices(o_t.ints(1, what + " inputs", 16), what + " inputs", True)
        outs = check_indices(o_t.ints(2, what + " outputs", 16), what + " outputs", False)
        md.ops.append(Op(k, code, ins, outs, _read_options(code, o_t, what)))
    if not md.ops:
        raise ModelError("invalid model: the graph has no operators")
    return md


def check_int8(md):
    """Refuse a model that computes in float32 (ModelError): this engine takes float32 only at a QUANTIZE's input
    and a DEQUANTIZE's output. op_prepare checks every operand of every operator; this is the part the parsed
    model alone tells, for a load that checks the model before the rest of the loader is imported."""
    for op in md.ops:
        for role, idx, allowed in (("input", op.inputs, 114), ("output", op.outputs, 6)):
            if op.code != allowed and idx and idx[0] >= 0 and md.tensors[idx[0]].type == T_FLOAT32:
                raise ModelError("unsupported model: %s %s %s is float32, expected int8 (this engine runs "
                                 "int8-quantised models: convert with full-integer quantisation)"
                                 % (op.describe(), role, md.tensors[idx[0]].describe()))
