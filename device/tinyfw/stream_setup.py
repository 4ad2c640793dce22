# tinyfw stream set-up: what a stream's start does once, before its buffers are made (docs/streaming.md, "Memory"):
# the front end (tinyfw.mfcc) built beside the model, the model loaded again leaving room for it where it does not
# fit, the board's costs measured and the settings left at 0 chosen from them. tinyfw.cmd_stream.start imports this
# module for prepare() and drops it again, so that its code takes no heap while the stream runs.
import gc
import sys

try:
    from micropython import const
except ImportError:         # CPython (host-side tests)
    def const(x):
        return x

from tinyfw import clock
from tinyfw.frame import DevError

_E_NO_MEMORY = const(10)
_E_STATE = const(11)
# Heap the front end (tinyfw.mfcc: its tables and work buffers, 15 KB for kws in the 64-bit virtual board, and the
# code that makes them) and the stream's buffers take beside the model; a model loaded again for a stream leaves it
# free (engine.load's keep_free_bytes). tinyhost.stream.STREAM_HEAP_BYTES is a copy (tests/test_stream.py).
_STREAM_HEAP_BYTES = const(28672)


def prepare(model, infer_every, smooth, classes, backlog_hops, rt, window_samples, fft_size, line):
    """The stream's model (loaded again when ``rt`` is given and the front end does not fit beside it), its front
    end and settings (tinyfw.cmd_stream.start's arguments, 0 chosen here): (model, front end, infer_every, smooth,
    classes, backlog_hops, window_samples, baud of the virtual board's line or 0)."""
    window_samples = window_samples or 640
    fft_size = fft_size or 1024
    info = model.inputs[0]
    scale, zp = info.scale, info.zero_point
    info = None
    gc.collect()
    fe = None
    free = getattr(gc, "mem_free", None)              # None under CPython (host-side tests)
    if rt is None or free is None or free() >= _STREAM_HEAP_BYTES:     # else it cannot fit: no half-built tables
        try:
            fe = frontend(scale, zp, window_samples, fft_size)
        except MemoryError:
            gc.collect()
    if fe is None:
        if rt is None:
            raise DevError(_E_NO_MEMORY, "no room for the front end's tables (tinyfw.mfcc) next to the model (heap "
                           "free %d bytes)" % gc.mem_free())
        model = None            # the model goes: nothing may keep it
        model = _reload_leaving_room(rt)
        try:
            fe = frontend(scale, zp, window_samples, fft_size)
        except MemoryError as e:
            gc.collect()
            raise DevError(_E_NO_MEMORY, "model and front end do not fit together: no room for the front end "
                           "(tinyfw.mfcc: %s) beside the model (weights %s, heap free %d bytes)"
                           % (e, model.weights_mode, gc.mem_free()))
    from tinyfw import stream               # its code comes in after the front end's tables are made
    inv, hop = _measure(model, fe)
    if not infer_every:
        infer_every = stream.infer_every_for(inv, hop) or 1
    if not smooth:
        smooth = 1 if infer_every * 20 >= 250 else max(1, 250 // (infer_every * 20))
    if not classes:
        n = model.outputs[0].nbytes
        classes = (1 << (n - 2)) - 1 if n > 2 else 1      # the keywords: all classes but silence and unknown
    if not backlog_hops:
        # the audio that arrives while one inference and its front ends run
        backlog_hops = (inv + hop * infer_every) // stream.HOP_NS + 2
    baud = 0
    if line and clock.virtual():
        import _vboard
        baud = _vboard.baud
    return model, fe, infer_every, smooth, classes, backlog_hops, window_samples, baud


def frontend(scale, zero_point, window_samples=640, fft_size=1024):
    """The on-board MFCC front end for a model input quantised with ``scale`` and ``zero_point`` (tinyfw.mfcc: the
    host's front end with this window and FFT, the other parameters the shipped kws model's)."""
    try:
        from tinyfw import mfcc
    except ImportError as e:
        raise DevError(_E_STATE, "no front end on this board (tinyfw.mfcc: %s); run `tinyhost flash`" % e)
    return mfcc.Mfcc(scale, zero_point, window_samples=window_samples, fft_size=fft_size)


def _measure(model, fe):
    """(invoke_ns, hop_ns) of this board: the board-time model's on a virtual board, else one invoke and one front
    end frame timed with the real clock."""
    inv, hop = clock.costs_ns()
    if inv or hop:
        return inv, hop
    import time
    from array import array
    ring = array("h", bytes(2 * 1024))
    out = bytearray(16)
    t = time.ticks_us()
    fe.frame(ring, 0, out, 0)
    hop = time.ticks_diff(time.ticks_us(), t) * 1000
    t = time.ticks_us()
    model.invoke()
    inv = time.ticks_diff(time.ticks_us(), t) * 1000
    return inv, hop


def _reload_leaving_room(rt):
    """The loaded model unloaded and loaded again (``rt`` loads it), leaving _STREAM_HEAP_BYTES of heap free: the
    engine then streams its weights from flash where they would not fit beside the front end, which is built after
    it. Returns the model; DevError when it does not load."""
    path = clock.loaded_path()
    if not path:
        raise DevError(_E_NO_MEMORY, "no room for the front end's tables (tinyfw.mfcc) next to the model, and no "
                       "model file to load it again from (heap free %d bytes)" % gc.mem_free())
    cmd_model = sys.modules.get("tinyfw.cmd_model")
    if cmd_model is not None:
        cmd_model.unload(rt)         # the model, its input copies and offload's Predictor
    else:                            # no Predictor without it: the model and its input copies
        rt.input_copies = None
        m, rt.model = rt.model, None
        if m is not None:
            m.close()
    cmd_model = m = None
    rt.drop_commands()               # the model commands' code too: tinyfw.cmd_model is imported again when needed
    gc.collect()
    try:
        model = rt.load_model(path, keep_free_bytes=_STREAM_HEAP_BYTES)
    except DevError as e:
        raise DevError(_E_NO_MEMORY, "%s does not fit beside a stream: %s" % (path, e.args[1]))
    gc.collect()
    return model
