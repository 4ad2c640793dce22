# tinyfw stream commands: STREAM_START, AUDIO, STREAM_STOP (docs/protocol.md, docs/streaming.md).
#
# STREAM_START sets up tinyfw.stream's Listener over the loaded model and the front end (tinyfw.mfcc); audio then
# comes in AUDIO frames (int16 little-endian samples, any even count), each answered with the hops done so far, the
# detections made since the last answer and when the board was busy with each hop since then; or, for the microphone source, the board reads machine.I2S (a stand-in
# on the virtual board: tinyfw.mic) for the seconds asked, sends each detection as an EVENT frame at once and answers
# with its counters. STREAM_STOP ends the stream and answers with its counters. The runtime imports this module on
# the first of these frames; the EEMBC text commands start, stop, state and print_detections (tinyfw.eembc) use the
# same Listener.
# Protocol numbers are private copies (compiled away; tests/test_device_constants.py checks them).
import gc
import struct
import sys

try:
    from micropython import const
except ImportError:         # CPython (host-side tests)
    def const(x):
        return x

from tinyfw import clock
from tinyfw.frame import DevError, put32

_HEADER_BYTES = const(10)
_SMALL_PAYLOAD = const(240)
_STREAM_START = const(0x26)
_AUDIO = const(0x27)
_STREAM_STOP = const(0x28)
_EVENT_BYTES = const(10)        # tinyfw.stream's EVENT_BYTES, BUSY_MAX, BUSY_BYTES (tests/test_stream.py checks the copies)
_BUSY_MAX = const(8)
_BUSY_BYTES = const(8)
_E_BAD_ARGS = const(2)
_E_NO_MODEL = const(8)
_E_NO_MEMORY = const(10)
_E_STATE = const(11)

# STREAM_START: infer_every u16 (0: as few hops as keep up), smooth u8, threshold u8, refractory_ms u16,
# source u8 (0 serial link, 1 microphone), pad u8, classes u32 (bit c: class c may be detected), ring_samples u32
# backlog_hops u32 (audio held while the board is busy; 0: one inference's and its front ends' time), seconds u32
# (microphone), window_samples u16 and fft_size u16 of the model's MFCC front end (0: the shipped kws model's, 640
# and 1024; MLPerf Tiny's kws01 was trained with 480 and 512), then for the microphone "id sck ws sd" as text
START_FORMAT = "<HBBHBxIIIHH"
START_BYTES = const(24)
_SOURCE_SERIAL = const(0)
_SOURCE_MIC = const(1)

_state = [None, None, 0]       # the Listener; board ms of the stream's detections (for print_detections), count
_LISTENER = const(0)
_LOG = const(1)
_LOG_N = const(2)
_LOG_MAX = const(256)
def listener():
    return _state[_LISTENER]


def start(model, infer_every=0, smooth=0, threshold=128, refractory_ms=1000, classes=0, backlog_hops=0, rt=None,
          window_samples=0, fft_size=0, line=True, keep_log=False):
    """A new Listener over ``model`` (the old one goes first); returns it. 0 for infer_every, smooth, classes and
    backlog_hops: chosen from the board's costs (docs/streaming.md). With ``rt``, the model may be loaded again
    before the front end is built (tinyfw.stream_setup): use the Listener's model afterwards. ``line``: the audio
    crosses the serial link (a virtual board then models its line rate), not the microphone. ``keep_log``: the
    detections' board times are kept for print_detections (a stream the runner's text command started)."""
    import array
    if model is None:
        raise DevError(_E_NO_MODEL, "no model loaded: load one before STREAM_START")
    stop()
    _state[_LOG] = None
    from tinyfw import stream_setup     # the start's code: dropped before the stream's buffers are made
    try:
        (model, fe, infer_every, smooth, classes, backlog_hops, window_samples,
         baud) = stream_setup.prepare(model, infer_every, smooth, classes, backlog_hops, rt, window_samples, fft_size,
                                      line)
    finally:
        stream_setup = None
        _drop("stream_setup")
    from tinyfw import stream
    gc.collect()
    try:
        li = stream.Listener(model, fe, infer_every, smooth, threshold, refractory_ms, classes, backlog_hops,
                             window_samples, baud)
        if keep_log:
            _state[_LOG] = log = array.array("i", range(_LOG_MAX))   # allocated once at its size (no list as large)
            for i in range(_LOG_MAX):
                log[i] = 0
    except MemoryError:
        fe = model = None
        gc.collect()
        raise DevError(_E_NO_MEMORY, "no room for the stream's buffers next to the model (heap free %d bytes)"
                       % gc.mem_free())
    _state[_LOG_N] = 0
    _state[_LISTENER] = li
    return li


def _drop(name):
    """Forget the module tinyfw.<name> so that its code is garbage (MicroPython only: the host keeps it)."""
    if sys.implementation.name != "micropython":
        return
    sys.modules.pop("tinyfw." + name, None)
    pkg = sys.modules.get("tinyfw")
    if pkg is not None and name in pkg.__dict__:
        delattr(pkg, name)


def stop():
    """End the stream: its buffers and front end go back to the heap at once (so that what follows, a reply of its
    counters, has room); returns its Listener, counters and settings kept (None when none ran)."""
    li = _state[_LISTENER]
    _state[_LISTENER] = None
    if li is not None:
        li.release()
        gc.collect()
    return li


def take(li, dst, off, most):
    """Pending detections into dst[off:] (at most ``most``), also noted for print_detections; returns how many."""
    n = li.take_events(dst, off, most)
    log = _state[_LOG]
    if log is None:
        return n
    for i in range(n):
        k = _state[_LOG_N]
        if k < _LOG_MAX:
            b = off + i * _EVENT_BYTES
            log[k] = dst[b] | dst[b + 1] << 8 | dst[b + 2] << 16 | dst[b + 3] << 24
            _state[_LOG_N] = k + 1
    return n


def detections_ms():
    """Board ms of the detections of the last stream that the host (or print_detections) has taken."""
    log = _state[_LOG]
    return [] if log is None else [log[i] for i in range(_state[_LOG_N])]


def counters(rt, li):
    """STREAM_STOP's and the microphone's reply: the Listener's counters and its settings."""
    from tinyfw import stream
    pairs = [(name, li.counts[i]) for i, name in enumerate(stream.COUNT_NAMES)]
    inv, hop = clock.costs_ns()
    pairs += [("infer_every", li.infer_every), ("smooth", li.smooth), ("threshold", li.threshold),
              ("backlog_hops", li.backlog_hops), ("clock", clock.model() or "real"),
              ("invoke_ns", inv), ("hop_ns", hop), ("events_pending", li.ev_n)]
    rt.reply_kv(pairs)


def cmd_start(rt):
    p = rt.payload_view()
    if len(p) < START_BYTES:
        raise DevError(_E_BAD_ARGS, "STREAM_START needs %d bytes" % START_BYTES)
    (every, smooth, threshold, refractory, source, classes, backlog, seconds, window,
     fft) = struct.unpack_from(START_FORMAT, p, 0)
    text = bytes(p[START_BYTES:]).decode() if len(p) > START_BYTES else ""
    p = None
    if getattr(sys.modules.get("tinyfw.cmd_model"), "_predictor", None) is None:
        rt.drop_commands()      # a stream uses none of the session, file and model commands: their code goes
    li = start(rt.model, every, smooth, threshold, refractory, classes, backlog, rt, window, fft,
               source != _SOURCE_MIC)
    if source == _SOURCE_MIC:
        from tinyfw import mic
        mic.run(rt, li, text, seconds)
        return
    inv, hop = clock.costs_ns()
    rt.reply_kv((("infer_every", li.infer_every), ("smooth", li.smooth), ("backlog_hops", li.backlog_hops),
                 ("clock", clock.model() or "real"), ("invoke_ns", inv), ("hop_ns", hop),
                 ("heap_free_bytes", gc.mem_free())))


def cmd_audio(rt):
    li = _state[_LISTENER]
    if li is None:
        raise DevError(_E_STATE, "no stream: send STREAM_START first")
    n = rt.fio.n
    if n & 1:
        raise DevError(_E_BAD_ARGS, "AUDIO carries whole int16 samples (an even number of bytes)")
    li.feed(rt.fio.buf, _HEADER_BYTES, n)
    small = rt.small
    put32(small, 0, li.counts[0])
    k = take(li, small, 5, (_SMALL_PAYLOAD - 6 - _BUSY_MAX * _BUSY_BYTES) // _EVENT_BYTES)
    small[4] = k
    at = 5 + k * _EVENT_BYTES
    m = li.take_busy(small, at + 1)
    small[at] = m
    rt.reply_small(at + 1 + m * _BUSY_BYTES)


def drain(li, scratch):
    """Note the detections nobody has taken yet (for print_detections)."""
    while take(li, scratch, 0, len(scratch) // _EVENT_BYTES):
        pass


def cmd_stop(rt):
    li = _state[_LISTENER]
    if li is None:
        raise DevError(_E_STATE, "no stream: send STREAM_START first")
    drain(li, rt.small)
    counters(rt, stop())


STREAM_COMMANDS = {_STREAM_START: cmd_start, _AUDIO: cmd_audio, _STREAM_STOP: cmd_stop}
