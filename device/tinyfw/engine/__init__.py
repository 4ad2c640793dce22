# tinyfw.engine: an int8 .tflite interpreter with TFLM's semantics, in MicroPython-compatible Python.
#
#   m = engine.load("/model.tflite")          # parse + validate, plan, allocate the arena once
#   m.input_buffer()[:] = data; m.invoke(); m.output_buffer()
#
# This module is what stays in RAM while a model runs. load() takes one of two paths to a load plan (everything
# computed at load: arena placement, kernel parameters, per-channel constants; format in plan_read.py):
# - MODEL.plan next to MODEL.tflite (put there by `tinyhost flash`), used only when it was made from this very
#   model file (sha256) by this plan format: plan_read.py alone reads it, allocating the arena first;
# - otherwise the full path: model_prepare.py (with reader.py, op_prepare.py, arena_layout.py) parses, validates and prepares the
#   model, plan_write.py packs it into a plan in RAM, and plan_read.py builds from that.
# Load-time modules are dropped from the heap again (del sys.modules[...], gc.collect()). Weights and per-channel
# constants stay in RAM when they fit comfortably; otherwise they are streamed from flash per operator while it
# runs (docs/engine.md, "Memory"). invoke() allocates nothing. Kernels come from a backend module (kernels_ref =
# the specification, kernels_viper).

import sys
from array import array

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
_LOAD_MODULES = ("model_prepare", "reader", "op_prepare", "arena_layout", "quant", "params", "plan_write", "plan_check", "arena_alloc",
                 "plan_read",
                 "fixedpoint", "ref_softmax")
# The load plan of MODEL.tflite: MODEL.plan (plan_path; format in plan_read.py).
PLAN_SUFFIX = ".plan"

_EXTRA_BACKENDS = {}

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


def plan_arena(md, specs):
    """(offset per int8 activation tensor index, arena bytes, row band per operator) for op_prepare.prepare(md)'s
    specs (host tools)."""
    from .model_prepare import plan_arena as plan
    return plan(md, specs)


def activation_lifetimes(md, specs):
    from .model_prepare import activation_lifetimes as lifetimes
    return lifetimes(md, specs)


def _int8_buffer(n):
    try:
        return array("b", range(n)) if n <= 0 or _mem_free is not None else array("b", bytes(n))
    except OverflowError:              # a port that range-checks: fall back to a zeroed copy
        return array("b", bytes(n))


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

    def __init__(self, path, backend="auto", arena_bytes=None, weights="auto", scratch_bytes=None):
        if backend == "auto":
            backend = BACKENDS[0]
        k = backend_module(backend)
        if weights not in ("auto", "ram", "flash", "mapped"):
            raise ValueError("weights must be 'auto', 'ram', 'flash' or 'mapped', not %r" % (weights,))
        self.backend = backend
        self._steps = ()
        self._side = None              # the open plan file when per-channel data is streamed from it
        self._p = None                 # streamed: the parameter array each convolution's parameters are read into
        self._banded = 0               # convolutions run in row bands
        self._chan_in_arena = False    # streamed channel data lands at the arena's end (plan_read.build)
        self._stream_chan = False      # per-channel data read per operator at invoke (plan_read.allocate_arena)
        self._arena = None
        self._fallback = []
        self._softmax = None           # the reference softmax, when the backend has none (imported before the arena)
        self.plan = None               # "file": loaded from MODEL.plan; "built": planned here (full path)
        self.plan_note = ""            # why MODEL.plan was not used
        self._f = open(path, "rb")
        try:
            self._load(path, k, arena_bytes, weights, scratch_bytes)
        except BaseException:
            self.close()
            raise

    def _load(self, path, k, arena_bytes, weights, scratch_bytes):
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
                    from .model_prepare import plan_in_ram
                    g = plan_in_ram(self._f, plan_check)
                    plan_in_ram = None
                except MemoryError:
                    raise MemoryError("%s does not fit in RAM when prepared on the board (its plan %s: %s); "
                                      "`tinyhost flash --model` puts a plan next to it" % (path, plan_path(path), h))
                h = plan_check.check(g, self._f)
                if isinstance(h, str):
                    raise ModelError("internal error: the plan built here does not check: %s" % h)
            else:
                self.plan = "file"
            plan_check = None
            _drop_load_modules()
            if getattr(k, "softmax", None) is None:    # the fallback softmax's code goes below the arena, not
                from . import ref_softmax               # in a hole at the end of the build (fragmentation)
                self._softmax = ref_softmax.softmax
                ref_softmax = None
            _stage("plan checked")
            from . import plan_read              # all of the rest of a load is in plan_read (dropped after it)
            # The arena decision estimates what the build needs beside it; when the heap proves that wrong (the
            # build runs out), once more with the lean choices: no work reserve, channel data streamed.
            for lean in (False, True):
                from . import arena_alloc         # the arena's size and place; this code goes before the build
                mapped = arena_alloc.allocate_arena(self, h, arena_bytes, weights, k, lean)
                arena_alloc = None
                _drop_load_modules(keep=("plan_read",))
                try:
                    plan_read.build(self, g, h, k, scratch_bytes, self.plan == "file", mapped)
                    break
                except MemoryError:
                    if lean or arena_bytes is not None:
                        raise
                    self._arena = self._in_views = self._out_views = self._side = mapped = None
                    self._steps = ()
                    _stage("build out of memory: lean retry")
            plan_read = mapped = None
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

    def invoke(self, times_us=None):
        """Run the model on what the input buffers hold. times_us (profiling; MicroPython): a buffer of one int
        per step (len(self.kernel_names())), filled with each step's time in microseconds; nothing is allocated."""
        f = self._f
        i = 0
        t0 = _ticks_us() if times_us is not None else 0
        for s in self._steps:
            kind = s[0]
            if kind == 1:
                # s: (1, kernel, out, in, weights or weight block, bias, mult, shift, p, tail block or None (weights
                # in RAM), output channels per block, channel data position in the plan or -1, channel data, scratch)
                # p: the kernel parameters, then channels, weights offset, weights bytes, bytes per output channel,
                # channel data offset, row band (slots 25..30)
                p = s[8]
                if s[11] >= 0:                     # per-channel bias, multiplier, shift from the plan file, and
                    g = self._side                 # the parameters (s[8]: their place in it)
                    g.seek(s[11])
                    g.readinto(s[12])
                    g.seek(p)
                    p = self._p
                    g.readinto(p)
                band = p[30]
                if band:                           # output rows in bands over the dying input (plan)
                    rows = p[4]                    # P_OUT_H
                    y = 0
                    while y < rows:
                        p[23] = y                  # P_OY_BEGIN
                        y += band
                        p[24] = y if y < rows else rows      # P_OY_END
                        _conv(s, p, f)
                    p[23] = 0
                else:
                    _conv(s, p, f)
            elif kind == 3 or kind == 6:           # pools; RESHAPE copy
                s[1](s[2], s[3], s[4])
            elif kind == 2:                        # QUANTIZE int8 -> int8 (scratch: its table)
                s[1](s[2], s[3], s[4], s[5])
            elif kind == 4 or kind == 5 or kind == 8:   # ADD (scratch), SOFTMAX, DEQUANTIZE
                s[1](s[2], s[3], s[4], s[5], s[6])
            else:                                  # 7: float QUANTIZE
                s[1](s[2], s[3], s[4], s[5], s[6], s[7])
            if times_us is not None:
                t1 = _ticks_us()
                times_us[i] = _ticks_diff(t1, t0)
                t0 = t1
                i += 1

    def kernel_names(self):
        """The kernel function each step runs, in order (the steps of invoke(times_us=...)); a viper function loaded
        from a .mpy file has no name: "softmax" for kind 5, else "kind N"."""
        return [getattr(s[1], "__name__", None) or ("softmax" if s[0] == 5 else "kind %d" % s[0])
                for s in self._steps]

    def stats(self):
        return {"arena_bytes": self.arena_bytes, "planned_arena_bytes": self.planned_arena_bytes,
                "weights_ram_bytes": self.weights_ram_bytes, "weights_mode": self.weights_mode,
                "channel_data": ("ram" if self._side is None else "flash, into the arena" if self._chan_in_arena
                                 else "flash"),
                "scratch_bytes": self.scratch_bytes, "ops": self._specs_count, "macs": self.macs,
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
    """Run a conv-like step with parameters p (weights in RAM: one call; streamed: one call per block of output
    channels)."""
    if s[9] is None:                       # weights in RAM
        s[1](s[2], s[3], s[4], s[5], s[6], s[7], p, s[13])
        return
    total = p[25]
    block = s[10]
    oc = 0
    while oc < total:
        n = total - oc
        view = s[4]
        if n < block:
            view = s[9]
        else:
            n = block
        f.seek(p[26] + oc * p[28])
        f.readinto(view)
        p[20] = oc           # P_OC_BEGIN
        p[21] = oc + n       # P_OC_END
        s[1](s[2], s[3], view, s[5], s[6], s[7], p, s[13])
        oc += n
    p[20] = 0
    p[21] = total


def load(path, backend="auto", arena_bytes=None, weights="auto", scratch_bytes=None):
    """Load the .tflite model at `path`; allocate its arena once. With a usable load plan beside it (plan_path;
    checked against the model's sha256) it is loaded from the plan, else parsed, validated and prepared here.

    backend: "auto" (fastest in BACKENDS) or a name in BACKENDS; anything else is a ValueError.
    weights: "ram", "flash" (streamed per operator from the file, with the per-channel constants), "mapped" (read in
    place where the filesystem maps the file into memory: MicroPython ROMFS, e.g. /rom; with a backend that reads
    filters as raw bytes) or "auto" (mapped when possible, else RAM
    when the filters take at most half of the free heap). Raises ModelError (bad/unsupported model, arena_bytes
    too small), OSError (no file), MemoryError (the arena does not fit the heap)."""
    return Model(path, backend, arena_bytes, weights, scratch_bytes)
