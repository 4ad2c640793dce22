# The MLPerf Tiny / EEMBC runner's text protocol, on the device (plain MicroPython; also imports under CPython).
#
# The runner sends commands ending in '%' and reads reply lines until one holds 'm-ready' (mlcommons/tiny
# benchmark/runner serial_device.py and device_under_test.py). Commands, as in the reference firmware
# (mlcommons/tiny api/internally_implemented.cpp):
#   name              m-name-dut-[tinyhost]
#   profile           m-profile-[...] and m-model-[kws01|vww01|ic01|ad01] by the model's input size, or the
#                     benchmark /mlperf_model names (sww01)
#   db load N         m-[Expecting N bytes]
#   db HEX            hex bytes into the buffer (the runner sends 31 a command); m-load-done when N arrived
#   db print [N] [O]  m-buffer-xx-xx-... lines, 8 bytes each
#   infer N W         m-warmup-start-W, m-warmup-done, m-infer-start-N, m-lap-us-T, (N inferences), m-lap-us-T,
#                     m-infer-done, m-results-[f,...]
#   results           m-results-[f,...] of the last inference
#   timestamp         m-lap-us-T
#   start, stop, state, print_detections   streaming wakeword (MLPerf Tiny v1.3, tinyfw.stream)
#   help              the command list
# m-lap-us is the board's clock: the real one on a board; board time (the board-time model's estimate, tinyfw.clock)
# on the virtual board once the host has told it the model's cost. The streams are tinyfw.cmd_stream's.
# Errors are e-[...]; every reply ends with m-ready. handle_command() never raises.
#
# The tinyfw runtime passes each text command here with itself as `rt` (rt.model, rt.load_model(path),
# rt.write_text(s), and rt.input_copies when it keeps a copy of the inputs); tinyfw.eembc_dut.serve() runs a DUT
# that speaks only this protocol, on the REPL's stdin/stdout (a module of its own: the runtime does not carry it).

import gc
import sys
import time
import binascii
import struct

try:
    from micropython import const
except ImportError:     # CPython (host-side tests)
    def const(x):
        return x

NAME = "tinyhost"
PROFILE = "tinyhost MLPerf Tiny DUT 1.0"
# the MLPerf Tiny benchmark `profile` names (m-model-[...]) when it is not the loaded model's own: sww01 for a
# streaming wakeword DUT over the kws model (`tinyhost flash --mlperf-model` writes it)
MLPERF_MODEL_FILE = "/mlperf_model"
# MLPerf Tiny benchmark by the element count of the model input (kws01 49x10, vww01 96x96x3, ic01 32x32x3,
# ad01 640 values).
_BENCHMARKS = ((490, "kws01"), (27648, "vww01"), (3072, "ic01"), (640, "ad01"))

# The protocol state, a list indexed by these (no dict keys or globals on the heap):
_BUF = const(0)         # the separate `db` buffer; None while a direct load writes into the model's input tensor
_EXPECTED = const(1)    # N of the last `db load`
_POS = const(2)         # bytes arrived
_RESULTS = const(3)     # m-results text of the last inference
_CLOCK = const(4)       # now_us(): microseconds so far, and the last ticks_us() reading
_TICKS = const(5)
_DIRECT = const(6)      # id() of the model whose input tensor takes the data (not the model: that would keep an
_FLIP = const(7)        # unloaded model's arena alive); flip/signed: how bytes go into that tensor
_SIGNED = const(8)
_CRC = const(9)         # the tensor's CRC-32 after a direct load when the runtime keeps no copy of input 0
_state = [None, 0, 0, None, 0, None, None, 0, False, None]

_STALE = "e-[The model changed since db load; send db load N and the data again]"


def now_us():
    """The board's clock in microseconds: tinyfw.clock's when it is resident (board time on a virtual board that
    knows the model's costs: it is imported only then, or for a stream), else time.ticks_us() without its
    wrap-around (correct as long as it is read at least every ~8 minutes; ticks wrap every 2**30 us on most
    ports)."""
    c = sys.modules.get("tinyfw.clock")
    if c is not None:
        return c.now_us()
    if not hasattr(time, "ticks_us"):          # CPython (host-side tests)
        return time.perf_counter_ns() // 1000
    st = _state
    t = time.ticks_us()
    if st[_TICKS] is not None:
        st[_CLOCK] += time.ticks_diff(t, st[_TICKS])
    st[_TICKS] = t
    return st[_CLOCK]


def _invoked(n):
    """n invokes were run: board time advances by their cost (tinyfw.clock, when resident)."""
    c = sys.modules.get("tinyfw.clock")
    if c is not None:
        c.invoked(n)


def model_id(model):
    """kws01/vww01/ic01/ad01 from the model's input size, else 'unknown'."""
    if model is None:
        return "none"
    n = 1
    for d in model.inputs[0].shape:
        n *= d
    for count, name in _BENCHMARKS:
        if n == count:
            return name
    return "unknown"


def mlperf_model():
    """The benchmark MLPERF_MODEL_FILE names; "" when there is none (`profile` then tells it by the input's size).
    Here, not in tinyfw.boot_model: `profile` imports nothing, as a board with VWW loaded has no heap for a module."""
    try:
        with open(MLPERF_MODEL_FILE) as f:
            return f.read().strip()
    except OSError:
        return ""


def _say(rt, line):
    rt.write_text(line + "\r\n")


def _ensure_model(rt):
    if rt.model is None:
        from tinyfw import boot_model

        boot_model.load(rt)
    return rt.model


def _direct(rt):
    """(model, the runtime's copy of input 0 or None) while a direct load's model is still the loaded one, else
    None. tinyfw.cmd_model keeps that copy (rt.input_copies) when it fits next to the model."""
    model = rt.model
    if model is None or id(model) != _state[_DIRECT]:
        return None
    copies = getattr(rt, "input_copies", None)
    copy = copies[0] if copies and len(copies[0]) == _state[_EXPECTED] else None
    return model, copy


def _put(dst, at, src, flip, signed):
    """dst[at:] = src as the reference firmware converts: x ^ flip (0x80: uint8 pixel minus 128), as -128..127 when
    dst holds signed bytes."""
    if not flip and not signed:
        dst[at:at + len(src)] = src
        return
    for i in range(len(src)):
        v = src[i] ^ flip
        dst[at + i] = v - 256 if signed and v > 127 else v


def _db(rt, args):
    st = _state
    sub = args[0] if args else ""
    if sub == "load":
        if len(args) < 2:
            _say(rt, "e-[Command 'db load' requires the # of bytes]")
            return
        try:
            n = int(args[1])
        except ValueError:
            n = 0
        if n <= 0:
            _say(rt, "e-[Command 'db load' must be >0 bytes]")
            return
        st[_EXPECTED] = st[_POS] = 0
        st[_DIRECT] = st[_CRC] = None
        model = _ensure_model(rt)
        if model is not None and model.inputs[0].nbytes == n and model.inputs[0].dtype in ("int8", "uint8"):
            # straight into the input tensor: no second copy of a 27 KB vww01 image next to the model
            st[_BUF] = None
            st[_DIRECT] = id(model)
            st[_SIGNED] = _signed_view(model.input_buffer(0))
            st[_FLIP] = 0x80 if model_id(model) in ("vww01", "ic01") and model.inputs[0].dtype == "int8" else 0
        elif st[_BUF] is None or len(st[_BUF]) != n:
            st[_BUF] = None
            gc.collect()
            try:
                st[_BUF] = bytearray(n)
            except MemoryError:
                gc.collect()
                free = gc.mem_free() if hasattr(gc, "mem_free") else -1
                if model is None:
                    _say(rt, "e-[db load %d: out of memory, %d bytes free; load a model first so the input goes "
                             "straight into its tensor]" % (n, free))
                else:
                    _say(rt, "e-[db load %d: out of memory, %d bytes free; the model's input takes %d bytes, only "
                             "that many go straight into its tensor]" % (n, free, model.inputs[0].nbytes))
                return
        st[_EXPECTED] = n
        _say(rt, "m-[Expecting %d bytes]" % n)
    elif sub == "print":
        try:
            count = int(args[1]) if len(args) > 1 else st[_POS]
            offset = int(args[2]) if len(args) > 2 else 0
        except ValueError:
            _say(rt, "e-[db print takes numbers: db print [N] [offset]]")
            return
        buf, flip = st[_BUF], 0
        if st[_DIRECT] is not None:
            d = _direct(rt)
            if d is None:
                _say(rt, _STALE)
                return
            buf, flip = d[1], st[_FLIP]
            if buf is None:
                buf = d[0].input_buffer(0)
                if st[_CRC] is not None and binascii.crc32(buf) != st[_CRC]:
                    _say(rt, "e-[Inference overwrote the input tensor (no room for a copy); send db load N again]")
                    return
        if buf is None:
            return
        end = min(offset + count, st[_POS])
        for start in range(offset, end, 8):
            _say(rt, "m-buffer-" + "-".join("%02x" % ((buf[i] & 0xFF) ^ flip)
                                            for i in range(start, min(start + 8, end))))
    elif not sub:
        _say(rt, "e-[Command 'db' requires a subcommand]")
    elif st[_EXPECTED] == 0:
        _say(rt, "e-[db load N must come before db data]")
    elif len(sub) & 1:
        _say(rt, "e-[Insufficent number of hex digits]")
    else:
        try:
            data = binascii.unhexlify(sub)
        except ValueError:
            _say(rt, "e-[Invalid hex digits '%s']" % sub[:16])
            return
        pos = st[_POS]
        take = st[_EXPECTED] - pos
        if take <= 0:
            _say(rt, "e-[Buffer already holds %d bytes; send db load N first]" % st[_EXPECTED])
            return
        if take < len(data):
            data = data[:take]
        if st[_DIRECT] is None:
            st[_BUF][pos:pos + len(data)] = data
        else:
            d = _direct(rt)
            if d is None:
                _say(rt, _STALE)
                return
            dst = d[0].input_buffer(0)
            _put(dst, pos, data, st[_FLIP], st[_SIGNED])
            if d[1] is not None:
                d[1][pos:pos + len(data)] = dst[pos:pos + len(data)]
            elif pos + len(data) == st[_EXPECTED]:
                st[_CRC] = binascii.crc32(dst)
        st[_POS] = pos + len(data)
        if st[_POS] == st[_EXPECTED]:
            _say(rt, "m-load-done")


def _signed_view(view):
    """True when a memoryview holds signed bytes (typecode 'b'): it then takes -128..127, not 0..255."""
    old = view[0]
    try:
        view[0] = 255
        signed = view[0] != 255
    except (ValueError, OverflowError, TypeError):
        signed = True
    view[0] = old
    return signed


def _load_tensor(model, buf):
    """Copy the db buffer into the input tensor the way the reference firmware does: int8 as is, uint8 pixels
    minus 128 for vww01/ic01, float32 quantized with the input's scale and zero point (ad01). Returns None,
    True (float input: the results are the reconstruction error) or an error message."""
    info = model.inputs[0]
    dst = model.input_buffer(0)
    n = info.nbytes
    signed = _signed_view(dst)
    if len(buf) == n:
        _put(dst, 0, buf, 0x80 if model_id(model) in ("vww01", "ic01") and info.dtype == "int8" else 0, signed)
        return None
    if len(buf) == 4 * n and info.dtype in ("int8", "uint8"):
        lo, hi = (-128, 127) if info.dtype == "int8" else (0, 255)
        inv = 1.0 / info.scale
        zp = info.zero_point
        for i in range(n):
            q = int(round(struct.unpack_from("<f", buf, 4 * i)[0] * inv)) + zp
            q = lo if q < lo else hi if q > hi else q
            dst[i] = q if signed else q & 0xFF
        return True
    return "input needs %d bytes (%s), the buffer holds %d" % (n, info.dtype, len(buf))


def _signed(v, dtype):
    return v - 256 if dtype == "int8" and v > 127 else v


def _results(model, buf, float_input):
    out = model.output_buffer(0)
    info = model.outputs[0]
    scale, zp, dtype = info.scale, info.zero_point, info.dtype
    if float_input:
        # anomaly score: mean squared error between the float input and its dequantized reconstruction
        n = info.nbytes
        total = 0.0
        for i in range(n):
            diff = struct.unpack_from("<f", buf, 4 * i)[0] - (_signed(out[i], dtype) - zp) * scale
            total += diff * diff
        return "%.6f" % (total / n)
    if dtype == "float32":
        count = info.nbytes // 4
        return ",".join("%.5f" % struct.unpack_from("<f", out, 4 * i)[0] for i in range(count))
    return ",".join("%.5f" % ((_signed(out[i], dtype) - zp) * scale) for i in range(info.nbytes))


def _infer(rt, args):
    st = _state
    try:
        n = int(args[0]) if args else 1
        w = int(args[1]) if len(args) > 1 else 10
    except ValueError:
        _say(rt, "e-[infer takes numbers: infer N [W]]")
        return
    if n <= 0:
        _say(rt, "e-[Inference iterations must be >0]")
        return
    if w < 0:
        _say(rt, "e-[Inference warmup must be >=0]")
        return
    model = _ensure_model(rt)
    if model is None:
        _say(rt, "e-[No model loaded: load one with tinyhost or name one with `tinyhost flash --boot-model`]")
        return
    if st[_POS] != st[_EXPECTED] or st[_EXPECTED] == 0:
        _say(rt, "e-[Input incomplete: %d of %d bytes; send db load N and db data first]" % (st[_POS], st[_EXPECTED]))
        return
    loaded = None
    if st[_DIRECT] is not None:
        d = _direct(rt)
        if d is None:
            _say(rt, _STALE)
            return
        if d[1] is not None:                 # what db loaded, even if an earlier inference overwrote the tensor
            model.input_buffer(0)[:] = d[1]
    else:
        loaded = _load_tensor(model, st[_BUF])
        if isinstance(loaded, str):
            _say(rt, "e-[" + loaded + "]")
            return
    invoke = model.invoke
    _say(rt, "m-warmup-start-%d" % w)
    for _ in range(w):
        invoke()
    _invoked(w)
    _say(rt, "m-warmup-done")
    _say(rt, "m-infer-start-%d" % n)
    _say(rt, "m-lap-us-%d" % now_us())
    for _ in range(n):
        invoke()
    _invoked(n)
    t_end = now_us()
    _say(rt, "m-lap-us-%d" % t_end)
    _say(rt, "m-infer-done")
    st[_RESULTS] = _results(model, st[_BUF], loaded is True)
    _say(rt, "m-results-[%s]" % st[_RESULTS])


def _stream_command(rt, cmd):
    """start, stop, state, print_detections: MLPerf Tiny v1.3's streaming wakeword DUT commands (handle_command passes
    them here); the audio comes in AUDIO frames on the same link, into tinyfw.cmd_stream's Listener."""
    from tinyfw import clock, cmd_stream      # streaming wakeword: imported only for these
    li = cmd_stream.listener()
    if cmd == "start":
        if li is not None:
            _say(rt, "m-[Already streaming; send stop first]")
            return
        model = _ensure_model(rt)
        if model is None:
            _say(rt, "e-[No model loaded: load one with tinyhost or name one with `tinyhost flash --boot-model`]")
            return
        li = cmd_stream.start(model, rt=rt, keep_log=True)
        _say(rt, "m-[Listening for audio in AUDIO frames on this link: inference every %d hops of 20 ms, clock %s]"
             % (li.infer_every, clock.model() or "real"))
    elif cmd == "stop":
        if li is None:
            _say(rt, "m-[Already idle; ignoring stop]")
            return
        cmd_stream.drain(li, bytearray(10 * 8))
        li = None
        c = cmd_stream.stop().counts
        _say(rt, "Streaming stopped.")
        _say(rt, "m-[hops %d, inferences %d, skipped %d, hops dropped %d, detections %d, busy %d us of %d us, "
                 "clock %s]" % (c[0], c[1], c[2], c[3], c[4], c[6], c[7], clock.model() or "real"))
    elif cmd == "state":
        _say(rt, "m-[state %s]" % ("streaming" if li is not None else "idle"))
    else:       # print_detections: the stream's start (0), then each detection, in ms of the board's clock
        _say(rt, "Detection Timestamps (ms)")
        _say(rt, "0,")
        for t in cmd_stream.detections_ms():
            _say(rt, "%d," % t)


def handle_command(text, rt):
    """Answer one protocol command (with or without its trailing '%'); the reply always ends with m-ready."""
    try:
        text = text.strip()
        if text.endswith("%"):
            text = text[:-1]
        tokens = text.split()
        cmd = tokens[0] if tokens else ""
        args = tokens[1:]
        if cmd == "name":
            _say(rt, "m-name-dut-[%s]" % NAME)
        elif cmd == "profile":
            model = _ensure_model(rt)
            _say(rt, "m-profile-[%s]" % PROFILE)
            _say(rt, "m-model-[%s]" % (mlperf_model() or model_id(model)))
        elif cmd == "db":
            _db(rt, args)
        elif cmd == "infer":
            _infer(rt, args)
        elif cmd == "results":
            if _state[_RESULTS] is None:
                _say(rt, "e-[No results yet: run infer first]")
            else:
                _say(rt, "m-results-[%s]" % _state[_RESULTS])
        elif cmd in ("start", "stop", "state", "print_detections"):
            _stream_command(rt, cmd)
        elif cmd == "timestamp":
            _say(rt, "m-lap-us-%d" % now_us())
        elif cmd == "help":
            _say(rt, PROFILE)
            _say(rt, "commands: name, profile, timestamp, db load N, db HEX, db print [N] [offset], infer N [W], "
                     "results, start, stop, state, print_detections")
        elif cmd:
            _say(rt, "e-[Unknown command: %s]" % cmd[:32])
    except MemoryError:
        _say(rt, "e-[Out of memory]")
    except Exception as e:       # the DUT must keep answering whatever arrives
        _say(rt, "e-[%s: %s]" % (type(e).__name__, str(e)[:80]))
    rt.write_text("m-ready\r\n")
