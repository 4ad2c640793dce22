# tinyfw.engine: an int8 .tflite interpreter with TFLM's semantics, in MicroPython-compatible Python.
#
#   m = engine.load("/model.tflite")          # parse + validate, plan, allocate the arena once
#   m.input_buffer()[:] = data; m.invoke(); m.output_buffer()
#
# This module is what stays in RAM while a model runs. load() takes one of two paths to a plan file (everything
# computed at load: arena layout, kernel parameters, per-channel constants; format in plan_read.py):
# - MODEL.plan next to MODEL.tflite (put there by `tinyhost flash`), used only when it was made from this very
#   model file (sha256) by this plan format (plan_check.py);
# - otherwise the full path: model_prepare.py (with reader.py, op_prepare.py, arena_layout.py) parses, validates
#   and prepares the model, and plan_write.py packs it into a plan in RAM.
# Then arena_alloc.py allocates the arena and plan_read.py reads the plan into steps: one tuple per operator, in
# the _S_* layout below, run by Model.invoke. Load-time modules are dropped from the heap again (del
# sys.modules[...], gc.collect()). Weights and per-channel constants stay in RAM when they fit comfortably;
# otherwise they are streamed from flash per operator while it runs (docs/engine.md, "Memory"). invoke() allocates
# nothing. Kernels come from a backend module (kernels_ref = the specification, kernels_viper).

import sys
from array import array

try:
    from micropython import const
except ImportError:                        # CPython (host tools)
    def const(x):
        return x

try:
    import gc as _gc
    _mem_free = _gc.mem_free
except (ImportError, AttributeError):      # CPython
    _gc = None
    _mem_free = None
try:
    from time import ticks_us as _ticks_us, ticks_diff as _ticks_diff
except ImportError:                        # CPython: profiling in microseconds all the same
    from time import perf_counter_ns as _ns

    def _ticks_us():
        return _ns() // 1000

    def _ticks_diff(a, b):
        return a - b


class ModelError(ValueError):
    """A model is corrupt, malformed or uses something this engine does not support. The message names it."""


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

# Largest weight block read at once when weights are streamed from flash (bytes); it lives in the operator's work
# area in the arena, so it is also bounded by the free arena above the operator's live tensors.
STREAM_SCRATCH_BYTES = 32768
# Kernel scratch added on top of the plan's work-area floors when the heap has room (viper's fast paths).
WORK_RESERVE = 4096
# Modules only load() needs; dropped from the heap after each load on MicroPython.
_LOAD_MODULES = ("model_prepare", "reader", "op_prepare", "arena_layout", "quant", "params", "plan_write",
                 "plan_check", "arena_alloc", "plan_read", "fixedpoint", "ref_softmax")
# The load plan of MODEL.tflite: MODEL.plan (plan_path; format in plan_read.py).
PLAN_SUFFIX = ".plan"

_EXTRA_BACKENDS = {}

# A step: one operator as Model.invoke runs it, a tuple plan_read.build makes (tests/test_device_constants.py checks
# that its tuples hold these names in these slots). Every step starts with
_S_KIND = const(0)          # the operator kind (op_prepare's numbering, as in the plan file)
_S_FN = const(1)            # the kernel function
_S_OUT = const(2)           # view of the output tensor
_S_IN = const(3)            # view of the (first) input tensor
_S_ARG = const(4)           # all but convolutions: the kernel's further arguments from here, in its order
# convolution-like steps (kinds up to _K_FC) go on:
_S_W = const(4)             # weights: all of them (in RAM, or mapped in place), or the view a block is read into
_S_BIAS = const(5)          # per-channel bias, multipliers, shifts
_S_MULT = const(6)
_S_SHIFT = const(7)
_S_P = const(8)             # the kernel parameter array, or (channel data streamed) its position in the plan file
_S_TAIL = const(9)          # weights streamed: the view of the last, shorter block; None: all weights at once
_S_BLOCK = const(10)        # weights streamed: output channels per block
_S_CHAN_AT = const(11)      # channel data streamed: its position in the plan file, else -1
_S_CHAN = const(12)         # channel data streamed: the view it is read into (bias, multipliers, shifts)
_S_SCRATCH = const(13)      # the kernel's scratch: free arena above the operator's live tensors
# Operator kinds (op_prepare's numbering; copies tied by tests/test_device_constants.py)
_K_FC = const(3)            # kinds up to _K_FC are convolution-like
_K_AVG = const(4)
_K_MAX = const(5)
_K_ADD = const(6)
_K_SOFTMAX = const(7)
_K_RESHAPE = const(8)
_K_REQUANT = const(9)
_K_DEQUANT = const(11)
# Slots of a convolution's parameter array (params' P_*), and the six after them that plan_read adds from the
# record (Model.invoke reads them, the kernels do not)
_P_OUT_H = const(4)
_P_OC_BEGIN = const(20)
_P_OC_END = const(21)
_P_OY_BEGIN = const(23)
_P_OY_END = const(24)
_P_CHANNELS = const(25)     # output channels (= params.P_LEN, the first slot past the kernel's)
_P_W_AT = const(26)         # where the weights lie in the .tflite
_P_ROW_BYTES = const(28)    # weight bytes per output channel (27: all weight bytes, 29: channel data offset)
_P_BAND = const(30)         # output rows per kernel call (0: all at once)
# Header fields of a plan (plan_check's)
_H_ARENA_BYTES = const(5)
_H_MODEL_BYTES = const(4)
_H_MACS = const(6)
_H_OPS = const(7)

# Load-stage hook for memory profiling (tests/engine_harness/heap_profile.py): trace(stage_name) or None.
trace = None


def _stage(name):
    if trace is not None:
        trace(name)


def register_backend(name, module):
    """Add a backend that only some hosts have (the host tool's numpy kernels); not listed in BACKENDS."""
    _EXTRA_BACKENDS[name] = module


def _kernels_ref():
    from . import kernels_ref
    return kernels_ref


def backend_module(name):
    """The kernel module of backend `name`; ValueError for an unknown or unusable backend (never a fallback)."""
    if name in _EXTRA_BACKENDS:
        return _EXTRA_BACKENDS[name]
    if name == "ref":
        return _kernels_ref()
    if name == "viper" and _VIPER is not None:
        return _VIPER
    raise ValueError("unknown backend %r: this port offers %s" % (name, ", ".join(BACKENDS)))


def _drop_load_modules(keep=()):
    """Forget the load-time modules so that their code is garbage (MicroPython only; the host keeps them)."""
    if _gc is None:
        return
    # The kernels bound params' and fixedpoint's names when they were imported: the modules themselves can go
    # (a kernel function in use keeps what it needs alive through its globals).
    g = globals()
    for name in _LOAD_MODULES:
        if name in keep:
            continue
        sys.modules.pop(__name__ + "." + name, None)
        g.pop(name, None)
    _gc.collect()


def _int8_buffer(n):
    try:
        return array("b", range(n)) if n <= 0 or _mem_free is not None else array("b", bytes(n))
    except OverflowError:              # a port that range-checks: fall back to a zeroed copy
        return array("b", bytes(n))


def _read_check(f):
    """The full path's first step: the model read and checked by the reader alone, the smallest part of the loader
    (its objects dropped again), so that a file that is no .tflite, is cut short or corrupt, or computes in float32
    is refused with its reason (ModelError) even where the rest of the loader does not fit beside the runtime."""
    from . import reader
    size = f.seek(0, 2)
    f.seek(0)
    try:
        reader.check_int8(reader.read_model(f, size))
    finally:
        reader = None
        _drop_load_modules(keep=("plan_check",))


class TensorInfo:
    def __init__(self, name, shape, dtype, scale, zero_point, nbytes):
        self.name = name
        self.shape = tuple(shape)
        self.dtype = dtype
        self.scale = scale
        self.zero_point = zero_point
        self.nbytes = nbytes

    def __repr__(self):
        return "TensorInfo(%r, %s, %s, scale=%r, zero_point=%d)" % (self.name, self.shape, self.dtype,
                                                                   self.scale, self.zero_point)


def plan_path(path):
    """Where the load plan of the model at `path` lives: MODEL.tflite -> MODEL.plan (other names: + ".plan")."""
    return (path[:-7] if path.endswith(".tflite") else path) + PLAN_SUFFIX


class Model:
    """A loaded model. Build with engine.load()."""

    def __init__(self, path, backend="auto", arena_bytes=None, weights="auto", scratch_bytes=None, keep_free_bytes=0):
        if backend == "auto":
            backend = BACKENDS[0]
        k = backend_module(backend)
        if weights not in ("auto", "ram", "flash", "mapped"):
            raise ValueError("weights must be 'auto', 'ram', 'flash' or 'mapped', not %r" % (weights,))
        self.backend = backend
        self._steps = ()
        self._side = None              # the plan file, open while per-channel data is read from it at invoke
        self._p = None                 # ... and the parameter array each convolution's parameters are read into
        self._in_views = self._out_views = ()
        self._arena = None
        self.plan = None               # "file": loaded from MODEL.plan; "built": planned here (full path)
        self.plan_note = ""            # why MODEL.plan was not used
        self._f = open(path, "rb")
        try:
            self._load(path, k, arena_bytes, weights, scratch_bytes, keep_free_bytes)
        except BaseException:
            self.close()
            raise

    def _load(self, path, k, arena_bytes, weights, scratch_bytes, keep_free_bytes):
        g = None
        try:
            from . import plan_check
            h = "absent"
            try:
                g = open(plan_path(path), "rb")
            except OSError:
                pass
            if g is not None:
                h = plan_check.check(g, self._f)
            if isinstance(h, str):             # no usable plan: the full path builds one here, in RAM
                if g is not None:
                    g.close()
                self.plan = "built"
                self.plan_note = h
                try:
                    _read_check(self._f)
                    from .model_prepare import plan_in_ram
                    g = plan_in_ram(self._f, plan_check)
                    plan_in_ram = None
                except MemoryError:
                    raise MemoryError("no usable load plan beside it (%s) and preparing one on the board needs "
                                      "more heap than is free; `tinyhost flash --model` puts a plan next to it" % h)
                h = plan_check.check(g, self._f)
                if isinstance(h, str):
                    raise ModelError("internal error: the plan built here does not check: %s" % h)
            else:
                self.plan = "file"
            plan_check = None
            _drop_load_modules()
            softmax = None
            if getattr(k, "softmax", None) is None:    # the fallback softmax's code goes below the arena, not
                from . import ref_softmax               # in a hole at the end of the build (fragmentation)
                softmax = ref_softmax.softmax
                ref_softmax = None
            _stage("plan checked")
            from . import plan_read             # all of the rest of a load is in plan_read (dropped after it)
            # The arena decision estimates what the build needs beside it; when the heap proves that wrong (the
            # build runs out), once more with the lean choices: no work reserve, channel data streamed.
            for lean in (False, True):
                from . import arena_alloc       # the arena's size and place; this code goes before the build
                arena, weights_mode, stream_chan, mapped = arena_alloc.allocate(self._f, h, arena_bytes, weights,
                                                                                k, lean, keep_free_bytes)
                arena_alloc = None
                _drop_load_modules(keep=("plan_read",))
                try:
                    built = plan_read.build(g, h, k, self._f, arena, weights_mode, stream_chan and self.plan == "file",
                                            scratch_bytes, mapped, softmax)
                    break
                except MemoryError:
                    if lean or arena_bytes is not None:
                        raise
                    arena = mapped = None
                    _stage("build out of memory: lean retry")
            plan_read = mapped = softmax = None
            (self._steps, self.inputs, self.outputs, self._in_views, self._out_views, self._p, self._side,
             self.channel_data, self._banded, self._fallback, self.weights_ram_bytes, self.scratch_bytes) = built
            built = None
            self._arena = arena
            self.arena_bytes = len(arena)
            self.weights_mode = weights_mode
            self.planned_arena_bytes = h[_H_ARENA_BYTES]
            self.model_bytes = h[_H_MODEL_BYTES]
            self.macs = h[_H_MACS]
            self._ops = h[_H_OPS]
        finally:
            if g is not None and self._side is not g:     # nothing is streamed from the plan at invoke
                g.close()
            _drop_load_modules()
        _stage("load-time code dropped")
        if self.weights_mode != "flash":          # in RAM or mapped: nothing is read from the model at invoke
            self._f.close()
            self._f = None

    def input_buffer(self, i=0):
        return self._in_views[i]

    def output_buffer(self, i=0):
        return self._out_views[i]

    def invoke(self, times_us=None, start=0, stop=-1):
        """Run the model on what the input buffers hold. times_us (profiling; MicroPython): a buffer of one int
        per step (len(self.kernel_names())), filled with each step's time in microseconds; nothing is allocated.
        start, stop: run only steps [start, stop) (stop -1: to the last), for split inference: the head leaves
        the tensors alive at `stop` in the arena (arena_view), the tail reads them there from `start`."""
        f = self._f
        i = 0
        t0 = _ticks_us() if times_us is not None else 0
        steps = self._steps
        end = len(steps) if stop < 0 else stop
        j = start
        while j < end:
            s = steps[j]
            j += 1
            kind = s[_S_KIND]
            if kind <= _K_FC:
                p = s[_S_P]
                if s[_S_CHAN_AT] >= 0:             # per-channel bias, multiplier, shift from the plan file, and
                    g = self._side                 # the parameters (p: their place in it)
                    g.seek(s[_S_CHAN_AT])
                    g.readinto(s[_S_CHAN])
                    g.seek(p)
                    p = self._p
                    g.readinto(p)
                band = p[_P_BAND]
                if band:                           # output rows in bands over the dying input (plan)
                    rows = p[_P_OUT_H]
                    y = 0
                    while y < rows:
                        p[_P_OY_BEGIN] = y
                        y += band
                        p[_P_OY_END] = y if y < rows else rows
                        _conv(s, p, f)
                    p[_P_OY_BEGIN] = 0
                else:
                    _conv(s, p, f)
            elif kind == _K_AVG or kind == _K_MAX or kind == _K_RESHAPE:   # (p); RESHAPE copy: (elements)
                s[_S_FN](s[_S_OUT], s[_S_IN], s[_S_ARG])
            elif kind == _K_REQUANT:               # QUANTIZE int8 -> int8 (p, scratch: its table)
                s[_S_FN](s[_S_OUT], s[_S_IN], s[_S_ARG], s[_S_ARG + 1])
            elif kind == _K_ADD or kind == _K_SOFTMAX or kind == _K_DEQUANT:
                s[_S_FN](s[_S_OUT], s[_S_IN], s[_S_ARG], s[_S_ARG + 1], s[_S_ARG + 2])
            else:                                  # float QUANTIZE (elements, scale, zero point, a float32)
                s[_S_FN](s[_S_OUT], s[_S_IN], s[_S_ARG], s[_S_ARG + 1], s[_S_ARG + 2], s[_S_ARG + 3])
            if times_us is not None:
                t1 = _ticks_us()
                times_us[i] = _ticks_diff(t1, t0)
                t0 = t1
                i += 1

    def step_count(self):
        """Steps of one invoke (operators less the RESHAPEs the planner aliased)."""
        return len(self._steps)

    def arena_view(self, offset, nbytes):
        """A view (no copy) of nbytes of the arena at offset: where a split point's live tensor lies (the plan's
        placement; tinyhost.split lists them). Made once, not per invoke."""
        if offset < 0 or nbytes < 0 or offset + nbytes > len(self._arena):
            raise ValueError("arena bytes %d..%d are outside the arena (%d bytes)" % (offset, offset + nbytes,
                                                                                      len(self._arena)))
        return memoryview(self._arena)[offset:offset + nbytes]

    def kernel_names(self):
        """The kernel function each step runs, in order (the steps of invoke(times_us=...)); a viper function loaded
        from a .mpy file has no name: "softmax" for a SOFTMAX, else "kind N" (the operator kind)."""
        return [getattr(s[_S_FN], "__name__", None) or ("softmax" if s[_S_KIND] == _K_SOFTMAX
                                                         else "kind %d" % s[_S_KIND])
                for s in self._steps]

    def stats(self):
        return {"arena_bytes": self.arena_bytes, "planned_arena_bytes": self.planned_arena_bytes,
                "weights_ram_bytes": self.weights_ram_bytes, "weights_mode": self.weights_mode,
                "channel_data": self.channel_data,
                "scratch_bytes": self.scratch_bytes, "ops": self._ops, "macs": self.macs,
                "backend": self.backend, "model_bytes": self.model_bytes, "ref_ops": list(self._fallback),
                "plan": self.plan, "plan_note": self.plan_note,
                "row_band_ops": self._banded}

    def close(self):
        for name in ("_f", "_side"):
            g = getattr(self, name, None)
            if g is not None:
                g.close()
                setattr(self, name, None)
        # everything that points into the arena goes: a Model object the VM's conservative GC still sees (a stale
        # pointer on the C stack) must not keep the arena alive after UNLOAD
        self._steps = ()
        self._in_views = self._out_views = ()
        self._p = None
        self._arena = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _conv(s, p, f):
    """Run a conv-like step with parameters p (weights in RAM or mapped: one call; streamed: one call per block of
    output channels)."""
    if s[_S_TAIL] is None:                 # all weights at once
        s[_S_FN](s[_S_OUT], s[_S_IN], s[_S_W], s[_S_BIAS], s[_S_MULT], s[_S_SHIFT], p, s[_S_SCRATCH])
        return
    total = p[_P_CHANNELS]
    block = s[_S_BLOCK]
    oc = 0
    while oc < total:
        n = total - oc
        view = s[_S_W]
        if n < block:
            view = s[_S_TAIL]
        else:
            n = block
        f.seek(p[_P_W_AT] + oc * p[_P_ROW_BYTES])
        f.readinto(view)
        p[_P_OC_BEGIN] = oc
        p[_P_OC_END] = oc + n
        s[_S_FN](s[_S_OUT], s[_S_IN], view, s[_S_BIAS], s[_S_MULT], s[_S_SHIFT], p, s[_S_SCRATCH])
        oc += n
    p[_P_OC_BEGIN] = 0
    p[_P_OC_END] = total


def load(path, backend="auto", arena_bytes=None, weights="auto", scratch_bytes=None, keep_free_bytes=0):
    """Load the .tflite model at `path`; allocate its arena once. With a usable load plan beside it (plan_path;
    checked against the model's sha256) it is loaded from the plan, else parsed, validated and prepared here.

    backend: "auto" (fastest in BACKENDS) or a name in BACKENDS; anything else is a ValueError.
    weights: "ram", "flash" (streamed per operator from the file, with the per-channel constants), "mapped" (read in
    place where the filesystem maps the file into memory: MicroPython ROMFS, e.g. /rom; with a backend that reads
    filters as raw bytes) or "auto" (mapped when possible, else RAM
    when the filters take at most half of the free heap). keep_free_bytes: heap the caller needs once the model is
    loaded (a stream's front end): the weights' place and the arena's extra scratch are chosen as though that much
    were not free. Raises ModelError (bad/unsupported model, arena_bytes too small), OSError (no file), MemoryError
    (the arena does not fit the heap)."""
    return Model(path, backend, arena_bytes, weights, scratch_bytes, keep_free_bytes)
