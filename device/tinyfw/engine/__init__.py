# tinyfw.engine: an int8 .tflite interpreter with TFLM's semantics, in MicroPython-compatible Python.
#
#   m = engine.load("/model.tflite")          # parse + validate, plan, allocate the arena once
#   m.input_buffer()[:] = data; m.invoke(); m.output_buffer()
#
# load() reads the flatbuffer piecewise from the file (reader.py), prepares every operator (ops.py), places the
# activation tensors in one arena (planner.py) and loads weights into RAM when they fit comfortably; otherwise it
# keeps the file open and streams each operator's weights from flash into one scratch buffer while it runs.
# invoke() allocates nothing. Kernels come from a backend module (kernels_ref = the specification, kernels_viper).

from array import array

from .reader import ModelError, read_model, TYPES, T_INT8, T_FLOAT32
from . import ops as _ops
from . import planner
from . import kernels_ref

try:
    import gc as _gc
    _mem_free = _gc.mem_free
except (ImportError, AttributeError):      # CPython
    _gc = None
    _mem_free = None


def _probe_viper():
    try:
        from . import kernels_viper
    except Exception:
        return None
    check = getattr(kernels_viper, "usable", None)
    try:
        if check is not None and not check():
            return None
    except Exception:
        return None
    return kernels_viper


_VIPER = _probe_viper()
BACKENDS = ("viper", "ref") if _VIPER is not None else ("ref",)

_KERNEL_NAMES = {_ops.K_CONV: "conv2d", _ops.K_DW: "depthwise_conv2d", _ops.K_FC: "fully_connected",
                 _ops.K_AVG: "avg_pool2d", _ops.K_MAX: "max_pool2d", _ops.K_ADD: "add", _ops.K_SOFTMAX: "softmax",
                 _ops.K_REQUANT: "requantize", _ops.K_RESHAPE: "copy"}

# Default size of the weight scratch buffer when weights are streamed from flash (bytes).
STREAM_SCRATCH_BYTES = 16384


_EXTRA_BACKENDS = {}


def register_backend(name, module):
    """Add a backend that only some hosts have (the host tool's numpy kernels); not listed in BACKENDS."""
    _EXTRA_BACKENDS[name] = module


def backend_module(name):
    """The kernel module of backend `name`; ValueError for an unknown or unusable backend (never a fallback)."""
    if name in _EXTRA_BACKENDS:
        return _EXTRA_BACKENDS[name]
    if name == "ref":
        return kernels_ref
    if name == "viper" and _VIPER is not None:
        return _VIPER
    raise ValueError("unknown backend %r: this port offers %s" % (name, ", ".join(BACKENDS)))


def _int8_buffer(n):
    try:
        return array("b", range(n)) if n <= 0 or _mem_free is not None else array("b", bytes(n))
    except OverflowError:              # a port that range-checks: fall back to a zeroed copy
        return array("b", bytes(n))


class TensorInfo:
    def __init__(self, t):
        self.name = t.name
        self.shape = tuple(t.shape)
        self.dtype = t.dtype
        self.scale = t.scale
        self.zero_point = t.zero_point
        self.nbytes = t.nbytes

    def __repr__(self):
        return "TensorInfo(%r, %s, %s, scale=%r, zero_point=%d)" % (self.name, self.shape, self.dtype,
                                                                   self.scale, self.zero_point)


def activation_lifetimes(md, specs):
    """Activation buffers of the graph: list of (tensor indices sharing it, first op, last op, bytes).

    RESHAPE outputs share their input's buffer; float32 graph I/O lives outside the arena."""
    n_ops = len(specs)
    group = {}

    def root(i):
        while group.get(i, i) != i:
            i = group[i]
        return i

    for s in specs:
        if s.kind == _ops.K_RESHAPE:
            group[root(s.out)] = root(s.ins[0])
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
    for k, s in enumerate(specs):
        for i in s.ins:
            touch(i, k)
        touch(s.out, k)
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


def plan_arena(md, specs):
    """(offset per int8 activation tensor index, arena bytes)."""
    bufs = activation_lifetimes(md, specs)
    offsets, arena = planner.plan([b[3] for b in bufs], [b[1] for b in bufs], [b[2] for b in bufs])
    where = {}
    for b, off in zip(bufs, offsets):
        for i in b[0]:
            where[i] = off
    return where, arena


def _weight_bytes(s):
    return s.weights.nbytes if s.weights is not None else 0


class Model:
    """A loaded model. Build with engine.load()."""

    def __init__(self, path, backend="auto", arena_bytes=None, weights="auto", scratch_bytes=None):
        if backend == "auto":
            backend = BACKENDS[0]
        k = backend_module(backend)
        if weights not in ("auto", "ram", "flash"):
            raise ValueError("weights must be 'auto', 'ram' or 'flash', not %r" % (weights,))
        self.backend = backend
        self._f = open(path, "rb")
        try:
            self._load(k, arena_bytes, weights, scratch_bytes)
        except BaseException:
            self.close()
            raise

    def _load(self, k, arena_bytes, weights, scratch_bytes):
        f = self._f
        size = f.seek(0, 2)
        f.seek(0)
        md = read_model(f, size)
        specs = _ops.prepare(md)
        where, needed = plan_arena(md, specs)
        self.model_bytes = size
        self.macs = sum(s.macs for s in specs)
        self.planned_arena_bytes = needed
        if arena_bytes is not None and arena_bytes < needed:
            raise ModelError("arena too small: the model needs %d bytes of tensor arena, arena_bytes=%d"
                             % (needed, arena_bytes))
        total = needed if arena_bytes is None else arena_bytes
        if _gc is not None:
            _gc.collect()
        try:
            self._arena = _int8_buffer(total)
        except MemoryError:
            raise MemoryError("tensor arena of %d bytes does not fit in the free heap (%s bytes)"
                              % (total, _mem_free() if _mem_free else "?"))
        self.arena_bytes = total
        arena_mv = memoryview(self._arena)
        views = {}
        for i, off in where.items():
            views[i] = arena_mv[off:off + md.tensors[i].nbytes]
        for i in list(md.inputs) + list(md.outputs):
            t = md.tensors[i]
            if i not in views:
                if t.type != T_FLOAT32:
                    raise ModelError("unsupported model: graph tensor %s is %s" % (t.describe(), t.dtype))
                views[i] = memoryview(array("f", [0.0] * t.elements))

        weight_total = sum(_weight_bytes(s) for s in specs)
        if weights == "auto":
            weights = "ram"
            if _mem_free is not None:
                _gc.collect()
                if weight_total > _mem_free() // 2:
                    weights = "flash"
        self.weights_mode = weights
        scratch = None
        if weights == "flash":
            want = scratch_bytes or STREAM_SCRATCH_BYTES
            floor = 0
            for s in specs:
                if s.weights is not None:
                    floor = max(floor, s.row_bytes if s.row_bytes else s.weights.nbytes)
            biggest = max(_weight_bytes(s) for s in specs)
            scratch = _int8_buffer(min(max(want, floor), biggest) if biggest else 0)
        self.scratch_bytes = len(scratch) if scratch is not None else 0

        ram = 0
        steps = []
        self._fallback = []
        for s in specs:
            name = _KERNEL_NAMES.get(s.kind)
            fn = getattr(k, name, None) if name else None
            if name and fn is None:
                fn = getattr(kernels_ref, name)
                self._fallback.append(s.op.name)
            out = views[s.out]
            inp = views[s.ins[0]]
            if s.kind in (_ops.K_CONV, _ops.K_DW, _ops.K_FC):
                bias = array("i", [0] * s.channels)
                if s.bias is not None:
                    f.seek(s.bias.data_pos)
                    f.readinto(memoryview(bias))
                ram += 4 * 3 * s.channels
                if weights == "ram":
                    filt = _int8_buffer(s.weights.nbytes)
                    f.seek(s.weights.data_pos)
                    f.readinto(memoryview(filt))
                    ram += s.weights.nbytes
                    steps.append((1, fn, out, inp, memoryview(filt), bias, s.mult, s.shift, s.p))
                else:
                    rb = s.row_bytes if s.row_bytes else s.weights.nbytes
                    per_block = len(scratch) // rb if s.row_bytes else s.channels
                    if per_block > s.channels:
                        per_block = s.channels
                    rest = s.channels % per_block if s.row_bytes else 0
                    smv = memoryview(scratch)
                    full = smv[:per_block * rb] if s.row_bytes else smv[:s.weights.nbytes]
                    tail = smv[:rest * rb] if rest else full
                    steps.append((2, fn, out, inp, full, bias, s.mult, s.shift, s.p, tail, s.weights.data_pos,
                                  per_block if s.row_bytes else s.channels, rb if s.row_bytes else 0, s.channels))
            elif s.kind in (_ops.K_AVG, _ops.K_MAX, _ops.K_REQUANT):
                steps.append((3, fn, out, inp, s.p))
            elif s.kind == _ops.K_ADD:
                steps.append((4, fn, out, inp, views[s.ins[1]], s.p))
            elif s.kind == _ops.K_SOFTMAX:
                ram += 2 * 4 * 256
                steps.append((5, fn, out, inp, s.exp_q31, s.exp_q12, s.p))
            elif s.kind == _ops.K_RESHAPE:
                if views[s.out] is not views[s.ins[0]] and where.get(s.out) != where.get(s.ins[0]):
                    steps.append((6, fn, out, inp, md.tensors[s.out].elements))
            elif s.kind == _ops.K_QUANT_F:
                t_out = md.tensors[s.out]
                steps.append((7, kernels_ref.quantize_float, out, inp, t_out.elements, t_out.scale,
                              t_out.zero_point, array("f", [0.0])))
            elif s.kind == _ops.K_DEQUANT:
                t_in = md.tensors[s.ins[0]]
                steps.append((8, kernels_ref.dequantize, out, inp, t_in.elements, t_in.scale, t_in.zero_point))
        self._steps = steps
        self._specs_count = len(specs)
        self.weights_ram_bytes = ram
        self.inputs = [TensorInfo(md.tensors[i]) for i in md.inputs]
        self.outputs = [TensorInfo(md.tensors[i]) for i in md.outputs]
        self._in_views = [views[i] for i in md.inputs]
        self._out_views = [views[i] for i in md.outputs]
        if weights == "ram":
            self._f.close()
            self._f = None

    def input_buffer(self, i=0):
        return self._in_views[i]

    def output_buffer(self, i=0):
        return self._out_views[i]

    def invoke(self):
        f = self._f
        for s in self._steps:
            kind = s[0]
            if kind == 1:
                s[1](s[2], s[3], s[4], s[5], s[6], s[7], s[8])
            elif kind == 2:
                p = s[8]
                total = s[13]
                block = s[11]
                oc = 0
                while oc < total:
                    n = total - oc
                    view = s[4]
                    if n < block:
                        view = s[9]
                    else:
                        n = block
                    f.seek(s[10] + oc * s[12])
                    f.readinto(view)
                    p[20] = oc           # P_OC_BEGIN
                    p[21] = oc + n       # P_OC_END
                    s[1](s[2], s[3], view, s[5], s[6], s[7], p)
                    oc += n
                p[20] = 0
                p[21] = total
            elif kind == 3:
                s[1](s[2], s[3], s[4])
            elif kind == 4:
                s[1](s[2], s[3], s[4], s[5])
            elif kind == 5:
                s[1](s[2], s[3], s[4], s[5], s[6])
            elif kind == 6:
                s[1](s[2], s[3], s[4])
            elif kind == 7:
                s[1](s[2], s[3], s[4], s[5], s[6], s[7])
            else:
                s[1](s[2], s[3], s[4], s[5], s[6])

    def stats(self):
        return {"arena_bytes": self.arena_bytes, "planned_arena_bytes": self.planned_arena_bytes,
                "weights_ram_bytes": self.weights_ram_bytes, "weights_mode": self.weights_mode,
                "scratch_bytes": self.scratch_bytes, "ops": self._specs_count, "macs": self.macs,
                "backend": self.backend, "model_bytes": self.model_bytes, "ref_ops": list(self._fallback)}

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None
        self._steps = []
        self._arena = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(path, backend="auto", arena_bytes=None, weights="auto", scratch_bytes=None):
    """Parse, validate and prepare the .tflite model at `path`; allocate its arena once.

    backend: "auto" (fastest in BACKENDS) or a name in BACKENDS; anything else is a ValueError.
    weights: "ram", "flash" (streamed per operator from the file) or "auto" (RAM when they take at most half
    of the free heap). Raises ModelError (bad/unsupported model, arena_bytes too small), OSError (no file),
    MemoryError (the arena does not fit the heap)."""
    return Model(path, backend, arena_bytes, weights, scratch_bytes)
