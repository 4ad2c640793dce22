# The MLPerf Tiny / EEMBC runner's text protocol, on the device (plain MicroPython; also imports under CPython).
#
# The runner sends commands ending in '%' and reads reply lines until one holds 'm-ready' (mlcommons/tiny
# benchmark/runner serial_device.py and device_under_test.py). Commands, as in the reference firmware
# (mlcommons/tiny api/internally_implemented.cpp):
#   name              m-name-dut-[tinyhost]
#   profile           m-profile-[...] and m-model-[kws01|vww01|ic01|ad01]
#   db load N         m-[Expecting N bytes]
#   db HEX            hex bytes into the buffer (the runner sends 31 a command); m-load-done when N arrived
#   db print [N] [O]  m-buffer-xx-xx-... lines, 8 bytes each
#   infer N W         m-warmup-start-W, m-warmup-done, m-infer-start-N, m-lap-us-T, (N inferences), m-lap-us-T,
#                     m-infer-done, m-results-[f,...]
#   results           m-results-[f,...] of the last inference
#   timestamp         m-lap-us-T
#   help              the command list
# Errors are e-[...]; every reply ends with m-ready. handle_command() never raises.
#
# The tinyfw runtime passes each text command here with itself as `rt` (rt.model, rt.load_model(path),
# rt.write_text(s)); serve() runs a DUT that speaks only this protocol, on the REPL's stdin/stdout.

import time

try:
    import binascii
except ImportError:     # pragma: no cover - every MicroPython port we support has binascii
    import ubinascii as binascii

try:
    import struct
except ImportError:     # pragma: no cover
    import ustruct as struct

NAME = "tinyhost"
PROFILE = "tinyhost MLPerf Tiny DUT 1.0"
DEFAULT_MODELS = ("/model.tflite", "/models/model.tflite")
# MLPerf Tiny benchmark by the element count of the model input (kws01 49x10, vww01 96x96x3, ic01 32x32x3,
# ad01 640 values).
_BENCHMARKS = ((490, "kws01"), (27648, "vww01"), (3072, "ic01"), (640, "ad01"))

_state = {"buf": None, "expected": 0, "pos": 0, "results": None, "model_id": None, "clock_us": 0, "ticks": None}


def now_us():
    """Microseconds since the first call, from time.ticks_us() without its wrap-around (ticks wrap every
    2**30 us on most ports); correct as long as it is called at least every ~8 minutes."""
    if not hasattr(time, "ticks_us"):          # CPython (host-side tests)
        return time.perf_counter_ns() // 1000
    t = time.ticks_us()
    last = _state["ticks"]
    if last is not None:
        _state["clock_us"] += time.ticks_diff(t, last)
    _state["ticks"] = t
    return _state["clock_us"]


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


def _say(rt, line):
    rt.write_text(line + "\r\n")


def _ensure_model(rt):
    if rt.model is not None:
        return rt.model
    import os

    for path in DEFAULT_MODELS:
        try:
            os.stat(path)
        except OSError:
            continue
        rt.load_model(path)
        return rt.model
    return None


def _db(rt, args):
    st = _state
    if not args:
        _say(rt, "e-[Command 'db' requires a subcommand]")
        return
    sub = args[0]
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
        if st["buf"] is None or len(st["buf"]) != n:
            st["buf"] = None
            try:
                st["buf"] = bytearray(n)
            except MemoryError:
                st["expected"] = 0
                _say(rt, "e-[No memory for a %d-byte buffer]" % n)
                return
        st["expected"] = n
        st["pos"] = 0
        _say(rt, "m-[Expecting %d bytes]" % n)
    elif sub == "print":
        buf, n_filled = st["buf"], st["pos"]
        try:
            count = int(args[1]) if len(args) > 1 else n_filled
            offset = int(args[2]) if len(args) > 2 else 0
        except ValueError:
            _say(rt, "e-[db print takes numbers: db print [N] [offset]]")
            return
        if buf is None:
            return
        end = min(offset + count, n_filled)
        for start in range(offset, end, 8):
            chunk = buf[start:min(start + 8, end)]
            _say(rt, "m-buffer-" + "-".join("%02x" % b for b in chunk))
    else:
        if st["buf"] is None or st["expected"] == 0:
            _say(rt, "e-[db load N must come before db data]")
            return
        digits = sub
        if len(digits) & 1:
            _say(rt, "e-[Insufficent number of hex digits]")
            return
        try:
            data = binascii.unhexlify(digits)
        except ValueError:
            _say(rt, "e-[Invalid hex digits '%s']" % digits[:16])
            return
        room = st["expected"] - st["pos"]
        if room <= 0:
            _say(rt, "e-[Buffer already holds %d bytes; send db load N first]" % st["expected"])
            return
        take = min(room, len(data))
        st["buf"][st["pos"]:st["pos"] + take] = data[:take]
        st["pos"] += take
        if st["pos"] == st["expected"]:
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


def _load_tensor(model, buf, bench):
    """Copy the db buffer into the input tensor the way the reference firmware does: int8 as is, uint8 pixels
    minus 128 for vww01/ic01, float32 quantized with the input's scale and zero point (ad01). Returns None,
    True (float input: the results are the reconstruction error) or an error message."""
    info = model.inputs[0]
    dst = model.input_buffer(0)
    n = info.nbytes
    signed = _signed_view(dst)
    if len(buf) == n:
        flip = 0x80 if bench in ("vww01", "ic01") and info.dtype == "int8" else 0
        if not flip and not signed:
            dst[:] = buf
            return None
        for i in range(n):
            v = buf[i] ^ flip            # x - 128 in two's complement when flipping
            dst[i] = v - 256 if signed and v > 127 else v
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
        _say(rt, "e-[No model loaded: load one with tinyhost or put it at /model.tflite]")
        return
    if st["buf"] is None or st["pos"] != st["expected"] or st["expected"] == 0:
        _say(rt, "e-[Input incomplete: %d of %d bytes; send db load N and db data first]"
             % (st["pos"], st["expected"]))
        return
    bench = model_id(model)
    loaded = _load_tensor(model, st["buf"], bench)
    if isinstance(loaded, str):
        _say(rt, "e-[" + loaded + "]")
        return
    invoke = model.invoke
    _say(rt, "m-warmup-start-%d" % w)
    for _ in range(w):
        invoke()
    _say(rt, "m-warmup-done")
    _say(rt, "m-infer-start-%d" % n)
    _say(rt, "m-lap-us-%d" % now_us())
    for _ in range(n):
        invoke()
    t_end = now_us()
    _say(rt, "m-lap-us-%d" % t_end)
    _say(rt, "m-infer-done")
    st["results"] = _results(model, st["buf"], loaded is True)
    _say(rt, "m-results-[%s]" % st["results"])


def _help(rt):
    _say(rt, PROFILE)
    _say(rt, "commands: name, profile, timestamp, db load N, db HEX, db print [N] [offset], infer N [W], results")


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
            _say(rt, "m-model-[%s]" % model_id(model))
        elif cmd == "db":
            _db(rt, args)
        elif cmd == "infer":
            _infer(rt, args)
        elif cmd == "results":
            if _state["results"] is None:
                _say(rt, "e-[No results yet: run infer first]")
            else:
                _say(rt, "m-results-[%s]" % _state["results"])
        elif cmd == "timestamp":
            _say(rt, "m-lap-us-%d" % now_us())
        elif cmd == "help":
            _help(rt)
        elif cmd == "":
            pass
        else:
            _say(rt, "e-[Unknown command: %s]" % cmd[:32])
    except MemoryError:
        _say(rt, "e-[Out of memory]")
    except Exception as e:       # the DUT must keep answering whatever arrives
        _say(rt, "e-[%s: %s]" % (type(e).__name__, str(e)[:80]))
    rt.write_text("m-ready\r\n")


class StandaloneRuntime:
    """The smallest `rt` for serve(): a model from tinyfw.engine and text to stdout."""

    def __init__(self, out=None):
        import sys

        self.model = None
        self._out = out or sys.stdout

    def load_model(self, path, backend="auto"):
        from tinyfw import engine

        if self.model is not None:
            self.model.close()
            self.model = None
        self.model = engine.load(path, backend=backend)
        return self.model

    def write_text(self, s):
        self._out.write(s)
        try:
            self._out.flush()
        except AttributeError:
            pass


def serve(rt=None, read=None, max_command=512):
    """Run a DUT that speaks only this protocol: read bytes, dispatch each '%'-terminated command, forever.

    ``read()`` returns one byte (bytes/str of length 1, empty at end of input); default: stdin.
    """
    import sys

    if rt is None:
        rt = StandaloneRuntime()
    if read is None:
        stream = getattr(sys.stdin, "buffer", sys.stdin)

        def read():
            return stream.read(1)

    cmd = bytearray(max_command)
    n = 0
    rt.write_text("m-init-done\r\nm-ready\r\n")
    while True:
        c = read()
        if not c:
            return
        b = c[0] if not isinstance(c, str) else ord(c)
        if b == 0x25:          # '%'
            handle_command(bytes(cmd[:n]).decode(), rt)
            n = 0
        elif b in (0x0A, 0x0D):
            continue
        elif n < max_command:
            cmd[n] = b
            n += 1
